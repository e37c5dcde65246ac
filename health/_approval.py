"""Approval evidence per (channel, segment): how often a channel's payments of one kind
are approved, the quantity routing's expected value is made of (issue 26).

A channel that *works* may still be declined by issuers; whether it is approved is a
property of the channel *and* the segment (method, market, amount band, issuer), and
it drifts. Each key keeps two time-decayed tallies: a slow one (the estimate) and a fast
one that takes over when it disagrees with the slow one beyond chance, so a break shows
within seconds without making every estimate jumpy. Memory is bounded (LRU of keys).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from health._stats import Monotonic
from routing import ALL_SEGMENTS

__all__ = ["ApprovalBook", "ApprovalConfig", "lessons"]


def lessons(tried: Sequence[tuple[str, bool]], approved_by: str) -> list[tuple[str, bool]]:
    """What one payment that ``approved_by`` captured teaches: (channel, approved) pairs.

    ``tried`` is every earlier attempt as (channel, soft-declined). The capturing channel
    approved; a channel that soft-declined the payer another then approved declined for
    its own reasons. A hard decline, a soft one nobody then approved, or a channel that
    failed outright (the breaker's business) teaches nothing about approval.
    """
    out = [(channel, False) for channel, soft in tried if soft and channel != approved_by]
    out.append((approved_by, True))
    return out


@dataclass(frozen=True, slots=True)
class ApprovalConfig:
    """``half_life_s``: memory of the estimate; ``fast_half_life_s``: of the change
    detector, which wins when it has ``min_fast`` observations and differs from the slow
    tally by more than ``change_z`` standard errors. ``max_keys`` bounds memory."""

    half_life_s: float = 120.0
    fast_half_life_s: float = 10.0
    change_z: float = 3.0
    min_fast: float = 8.0
    max_keys: int = 20_000

    def __post_init__(self) -> None:
        if not 0 < self.fast_half_life_s < self.half_life_s:
            raise ValueError("need 0 < fast_half_life_s < half_life_s")
        if self.change_z <= 0 or self.min_fast <= 0 or self.max_keys < 1:
            raise ValueError("change_z and min_fast must be > 0, max_keys >= 1")


class _Tally:
    __slots__ = ("at", "fast_no", "fast_yes", "no", "yes")

    def __init__(self, at: float) -> None:
        self.yes = self.no = self.fast_yes = self.fast_no = 0.0
        self.at = at

    def age(self, now: float, cfg: ApprovalConfig) -> None:
        dt = now - self.at
        if dt > 0:
            slow = 0.5 ** (dt / cfg.half_life_s)
            fast = 0.5 ** (dt / cfg.fast_half_life_s)
            self.yes *= slow
            self.no *= slow
            self.fast_yes *= fast
            self.fast_no *= fast
            self.at = now

    def effective(self, cfg: ApprovalConfig) -> tuple[float, float]:
        """(approved, declined): the slow tally, or the fast one when it tells a change."""
        n_fast = self.fast_yes + self.fast_no
        n_slow = self.yes + self.no
        if n_fast < cfg.min_fast or n_slow <= n_fast:
            return self.yes, self.no
        p = self.yes / n_slow
        q = self.fast_yes / n_fast
        se = math.sqrt(max(p * (1.0 - p), 0.01 * 0.99) / n_fast)
        if abs(q - p) > cfg.change_z * se:
            return self.fast_yes, self.fast_no
        return self.yes, self.no


class ApprovalBook:
    """``record`` an approval or a decline; ``counts`` gives each segment's evidence as of
    now (``ALL_SEGMENTS`` included), ready for a routing snapshot."""

    def __init__(self, clock: Monotonic, config: ApprovalConfig = ApprovalConfig()) -> None:
        self._clock = clock
        self.config = config
        self._tallies: OrderedDict[tuple[str, str], _Tally] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tallies)

    def record(self, channel: str, segment: str, approved: bool) -> None:
        """One payment of ``segment`` on ``channel`` was approved (captured), or declined in
        a way that was the channel's doing (a soft decline another channel then approved)."""
        now = self._clock()
        for key in ((channel, segment), (channel, ALL_SEGMENTS)) if segment != ALL_SEGMENTS else (
                (channel, ALL_SEGMENTS),):
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally(now)
                if len(self._tallies) > self.config.max_keys:
                    self._evict()
            else:
                self._tallies.move_to_end(key)
                tally.age(now, self.config)
            if approved:
                tally.yes += 1.0
                tally.fast_yes += 1.0
            else:
                tally.no += 1.0
                tally.fast_no += 1.0

    def _evict(self) -> None:
        # The least recently fed segment goes; a channel's own tally is fed with each of
        # its segments, so it is never the least recent while the channel has traffic.
        self._tallies.popitem(last=False)

    def by_channel(self) -> dict[str, dict[str, tuple[float, float]]]:
        """channel -> segment -> (approved, declined) as of now, in one pass; tallies
        decayed to nothing are left out."""
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for (channel, segment), pair in self.items():
            out.setdefault(channel, {})[segment] = pair
        return out

    def items(self) -> Iterator[tuple[tuple[str, str], tuple[float, float]]]:
        """((channel, segment), (approved, declined)) for every tally still worth a tenth
        of an observation."""
        now, cfg = self._clock(), self.config
        for key, tally in list(self._tallies.items()):
            tally.age(now, cfg)
            yes, no = tally.effective(cfg)
            if yes + no >= 0.1:
                yield key, (yes, no)

    def forget(self, channel: str) -> None:
        """Drop a channel's tallies (removed by a reload)."""
        for key in [k for k in self._tallies if k[0] == channel]:
            del self._tallies[key]
