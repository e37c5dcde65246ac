"""Recent activity for on-call: traffic share per channel, recharge outcomes per minute,
the last failovers, and the last hour of them (per bucket: each channel's approval rate,
p99 and share, recharges by outcome, failovers) for the status page's charts.

Bounded in memory whatever the traffic: time buckets in rings, and latency kept as
counts in fixed bins rather than samples. Everything is read off the injected clock, so
a test moves an hour in a loop."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels import AttemptOutcome

__all__ = ["HISTORY_BUCKETS", "Activity", "Failover"]

HISTORY_BUCKETS = 60  # with server.status_bucket_s at its default 60 s: the last hour

# Latency bins: 8 per doubling from 1 ms to 2**17 ms (131 s; longer lands in the last),
# so a p99 read off them (a bin's upper edge) is at most 9 % high, and one channel's
# bucket holds at most 137 counters however many attempts it saw.
_BINS_PER_DOUBLING = 8
_LAST_BIN = 17 * _BINS_PER_DOUBLING

# An authorize answer decides approval when it is final; pending and requires_action end
# later (by webhook, inquiry or the payer), so they count in neither side.
_APPROVED = AttemptOutcome.CAPTURED
_DECIDED = frozenset({AttemptOutcome.CAPTURED, AttemptOutcome.DECLINED, AttemptOutcome.NOT_PROCESSED,
                      AttemptOutcome.UNKNOWN})


@dataclass(frozen=True, slots=True)
class Failover:
    at: float
    recharge_id: str
    from_channel: str
    to_channel: str
    reason: str


class _Buckets:
    """Counts per key over the last ``window_s``, in ``bucket_s`` buckets."""

    def __init__(self, window_s: float, bucket_s: float) -> None:
        self._bucket_s = bucket_s
        self._n = max(1, int(window_s / bucket_s))
        self._buckets: deque[tuple[int, Counter[str]]] = deque()

    def add(self, now: float, key: str) -> None:
        idx = int(now // self._bucket_s)
        if not self._buckets or self._buckets[-1][0] != idx:
            self._buckets.append((idx, Counter()))
            while len(self._buckets) > self._n:
                self._buckets.popleft()
        self._buckets[-1][1][key] += 1

    def totals(self, now: float) -> Counter[str]:
        oldest = int(now // self._bucket_s) - self._n + 1
        out: Counter[str] = Counter()
        for idx, counts in self._buckets:
            if idx >= oldest:
                out.update(counts)
        return out


def _latency_bin(ms: float) -> int:
    if ms <= 1.0:
        return 0
    return min(_LAST_BIN, math.ceil(math.log2(ms) * _BINS_PER_DOUBLING))


def _bin_upper_ms(b: int) -> float:
    return 2.0 ** (b / _BINS_PER_DOUBLING)


class _ChannelSlot:
    """One channel in one history bucket."""

    __slots__ = ("approved", "attempts", "decided", "latency")

    def __init__(self) -> None:
        self.attempts = 0  # sent: the share of traffic
        self.approved = 0
        self.decided = 0
        self.latency: Counter[int] = Counter()  # bin -> answers, timeouts included

    def p99_ms(self) -> float | None:
        n = sum(self.latency.values())
        if not n:
            return None
        rank, seen = math.ceil(0.99 * n), 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen >= rank:
                return round(_bin_upper_ms(b), 1)
        raise AssertionError("unreachable: the counts add up to n")


class _Slot:
    """One history bucket: ``index`` is its start divided by the bucket size."""

    __slots__ = ("channels", "failovers", "index", "outcomes")

    def __init__(self, index: int) -> None:
        self.index = index
        self.channels: dict[str, _ChannelSlot] = {}
        self.outcomes: Counter[str] = Counter()
        self.failovers = 0

    def channel(self, name: str) -> _ChannelSlot:
        slot = self.channels.get(name)
        if slot is None:
            slot = self.channels[name] = _ChannelSlot()
        return slot

    def point(self, age_s: float) -> dict[str, Any]:
        total = sum(c.attempts for c in self.channels.values())
        return {
            "age_s": round(age_s, 1),
            "outcomes": dict(self.outcomes),
            "failovers": self.failovers,
            "channels": {name: {"attempts": c.attempts, "share": round(c.attempts / total, 4) if total else 0.0,
                                "answers": c.decided,
                                "approval": round(c.approved / c.decided, 4) if c.decided else None,
                                "p99_ms": c.p99_ms()}
                         for name, c in sorted(self.channels.items())},
        }


class _History:
    """The last ``buckets`` buckets of ``bucket_s`` seconds, oldest first. A bucket is
    made when something happens in it; the view fills the quiet ones in."""

    def __init__(self, bucket_s: float, buckets: int) -> None:
        if bucket_s <= 0 or buckets < 1:
            raise ValueError("bucket_s must be > 0 and buckets >= 1")
        self.bucket_s = bucket_s
        self.buckets = buckets
        self._ring: deque[_Slot] = deque(maxlen=buckets)

    def at(self, now: float) -> _Slot:
        idx = int(now // self.bucket_s)
        # A reading older than the newest bucket (none from a monotonic clock) joins it.
        if not self._ring or self._ring[-1].index < idx:
            self._ring.append(_Slot(idx))
        return self._ring[-1]

    def view(self, now: float) -> dict[str, Any]:
        current = int(now // self.bucket_s)
        kept = {s.index: s for s in self._ring}
        points = []
        for idx in range(current - self.buckets + 1, current + 1):
            slot = kept.get(idx) or _Slot(idx)
            points.append(slot.point(now - idx * self.bucket_s))
        return {"bucket_s": self.bucket_s, "buckets": self.buckets, "points": points}


class Activity:
    """Fed by the driver (attempts sent, failovers, recharges finished) and the health
    gate (attempts answered); read by the status page."""

    def __init__(self, clock: Callable[[], float], *, window_s: float = 60.0, failovers: int = 50,
                 history_bucket_s: float = 60.0, history_buckets: int = HISTORY_BUCKETS) -> None:
        self._clock = clock
        self.window_s = window_s
        self._attempts = _Buckets(window_s, 5.0)
        self._outcomes = _Buckets(window_s, 5.0)
        self._failovers: deque[Failover] = deque(maxlen=failovers)
        self._history = _History(history_bucket_s, history_buckets)

    def attempt(self, channel: str) -> None:
        now = self._clock()
        self._attempts.add(now, channel)
        self._history.at(now).channel(channel).attempts += 1

    def answered(self, channel: str, outcome: AttemptOutcome | str, latency_ms: float) -> None:
        """A provider answered an attempt's authorize (or it timed out: ``unknown``)."""
        outcome = AttemptOutcome(outcome)
        slot = self._history.at(self._clock()).channel(channel)
        slot.latency[_latency_bin(latency_ms)] += 1
        if outcome in _DECIDED:
            slot.decided += 1
            if outcome is _APPROVED:
                slot.approved += 1

    def outcome(self, status: str) -> None:
        now = self._clock()
        self._outcomes.add(now, status)
        self._history.at(now).outcomes[status] += 1

    def failover(self, recharge_id: str, from_channel: str, to_channel: str, reason: str) -> None:
        now = self._clock()
        self._failovers.append(Failover(now, recharge_id, from_channel, to_channel, reason))
        self._history.at(now).failovers += 1

    def view(self) -> dict[str, Any]:
        now = self._clock()
        attempts = self._attempts.totals(now)
        total = sum(attempts.values())
        return {
            "window_s": self.window_s,
            "share": {ch: n / total for ch, n in attempts.items()} if total else {},
            "attempts": dict(attempts),
            "outcomes_per_min": {k: v * 60 / self.window_s for k, v in self._outcomes.totals(now).items()},
            "failovers": [
                {"age_s": round(now - f.at, 1), "recharge_id": f.recharge_id, "from": f.from_channel, "to": f.to_channel,
                 "reason": f.reason}
                for f in reversed(self._failovers)
            ],
        }

    def history(self) -> dict[str, Any]:
        """The last ``history_buckets`` buckets, oldest first, each with ``age_s`` (how
        long ago it began), its figures per channel, recharges by outcome and failovers."""
        return self._history.view(self._clock())
