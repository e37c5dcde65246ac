"""Recent activity for on-call: traffic share per channel, recharge outcomes per minute,
the last failovers. Bounded in memory whatever the traffic (time buckets and a ring)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Activity", "Failover"]


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


class Activity:
    def __init__(self, clock: Callable[[], float], *, window_s: float = 60.0, failovers: int = 50) -> None:
        self._clock = clock
        self.window_s = window_s
        self._attempts = _Buckets(window_s, 5.0)
        self._outcomes = _Buckets(window_s, 5.0)
        self._failovers: deque[Failover] = deque(maxlen=failovers)

    def attempt(self, channel: str) -> None:
        self._attempts.add(self._clock(), channel)

    def outcome(self, status: str) -> None:
        self._outcomes.add(self._clock(), status)

    def failover(self, recharge_id: str, from_channel: str, to_channel: str, reason: str) -> None:
        self._failovers.append(Failover(self._clock(), recharge_id, from_channel, to_channel, reason))

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
