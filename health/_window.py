"""Bounded-memory measurement windows over an injected clock.

Each structure holds a fixed number of slots whatever the traffic: a ring of time
buckets for counts, a ring of samples for latency quantiles, one float for the EWMA.
"""

from __future__ import annotations

import math
from array import array

__all__ = ["LatencyWindow", "SlidingCounts", "TimeDecayedEwma"]

_NO_EPOCH = -(2**62)  # marks an empty bucket; no clock reading maps to it


class SlidingCounts:
    """Successes and failures over the last ``window_s`` seconds, in ``bucket_s`` buckets.

    ``decayed()`` weighs each bucket by its age (half-life ``half_life_s``), so old
    evidence fades smoothly instead of falling off the window's edge all at once: a
    recovered channel is not held to its outage for a full minute.
    """

    __slots__ = ("_bucket_s", "_decay", "_epoch", "_fail", "_n", "_ok")

    def __init__(self, window_s: float = 60.0, bucket_s: float = 2.0, half_life_s: float = 10.0):
        if window_s <= 0 or bucket_s <= 0 or half_life_s <= 0:
            raise ValueError("window_s, bucket_s and half_life_s must be > 0")
        self._bucket_s = bucket_s
        self._n = max(1, math.ceil(window_s / bucket_s))
        self._ok = [0] * self._n
        self._fail = [0] * self._n
        self._epoch = [_NO_EPOCH] * self._n
        self._decay = [0.5 ** (age * bucket_s / half_life_s) for age in range(self._n)]

    @property
    def buckets(self) -> int:
        return self._n

    def add(self, ok: bool, now: float) -> None:
        epoch = int(now // self._bucket_s)
        slot = epoch % self._n
        if self._epoch[slot] != epoch:
            self._epoch[slot] = epoch
            self._ok[slot] = 0
            self._fail[slot] = 0
        if ok:
            self._ok[slot] += 1
        else:
            self._fail[slot] += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(successes, failures) inside the window."""
        current = int(now // self._bucket_s)
        ok = fail = 0
        for slot in range(self._n):
            if 0 <= current - self._epoch[slot] < self._n:
                ok += self._ok[slot]
                fail += self._fail[slot]
        return ok, fail

    def decayed(self, now: float) -> tuple[float, float]:
        """(successes, failures) inside the window, each bucket weighted by its age."""
        current = int(now // self._bucket_s)
        ok = fail = 0.0
        for slot in range(self._n):
            age = current - self._epoch[slot]
            if 0 <= age < self._n:
                factor = self._decay[age]
                ok += self._ok[slot] * factor
                fail += self._fail[slot] * factor
        return ok, fail

    def clear(self) -> None:
        for slot in range(self._n):
            self._epoch[slot] = _NO_EPOCH
            self._ok[slot] = 0
            self._fail[slot] = 0


class LatencyWindow:
    """The last ``capacity`` latency samples no older than ``max_age_s``, for quantiles.

    Quantiles are computed by sorting (exact over the window) and cached until
    ``refresh_every`` new samples arrived or ``refresh_s`` passed, so a caller polling
    p99 for every snapshot does not sort on every call.
    """

    __slots__ = ("_cache", "_cached_at", "_capacity", "_max_age_s", "_next", "_refresh_every",
                 "_refresh_s", "_since_cache", "_size", "_times", "_values")

    def __init__(self, capacity: int = 512, max_age_s: float = 60.0, refresh_s: float = 0.5,
                 refresh_every: int = 32):
        if capacity < 1 or max_age_s <= 0:
            raise ValueError("capacity must be >= 1 and max_age_s > 0")
        self._capacity = capacity
        self._max_age_s = max_age_s
        self._values = array("d", bytes(8 * capacity))
        self._times = array("d", bytes(8 * capacity))
        self._next = 0
        self._size = 0
        self._refresh_s = refresh_s
        self._refresh_every = refresh_every
        self._cache: list[float] = []
        self._cached_at = -math.inf
        self._since_cache = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return self._size

    def add(self, latency_ms: float, now: float) -> None:
        self._values[self._next] = latency_ms
        self._times[self._next] = now
        self._next = (self._next + 1) % self._capacity
        self._size = min(self._size + 1, self._capacity)
        self._since_cache += 1

    def quantiles(self, now: float, qs: tuple[float, ...], *, fresh: bool = False
                  ) -> tuple[float | None, ...]:
        """The ``qs`` quantiles (0..1, nearest-rank) of the window; None when empty."""
        if (fresh or self._since_cache >= self._refresh_every
                or now - self._cached_at >= self._refresh_s):
            self._recompute(now)
        ordered = self._cache
        if not ordered:
            return tuple(None for _ in qs)
        last = len(ordered) - 1
        return tuple(ordered[min(last, max(0, math.ceil(q * len(ordered)) - 1))] for q in qs)

    def _recompute(self, now: float) -> None:
        oldest = now - self._max_age_s
        self._cache = sorted(v for v, t in zip(self._values[: self._size], self._times[: self._size])
                             if t >= oldest)
        self._cached_at = now
        self._since_cache = 0


class TimeDecayedEwma:
    """An exponentially weighted moving average whose memory is measured in time.

    Each sample moves the average by ``max(min_alpha, 1 - exp(-dt / tau_s))``: under heavy
    traffic it averages the last ~1/min_alpha samples; when samples are seconds apart
    (probes only) a new one mostly replaces a stale average, so a channel that got fast
    again is believed within a few probes.
    """

    __slots__ = ("_last", "_min_alpha", "_tau_s", "value")

    def __init__(self, tau_s: float = 2.0, min_alpha: float = 0.05):
        if tau_s <= 0 or not 0 < min_alpha <= 1:
            raise ValueError("tau_s must be > 0 and 0 < min_alpha <= 1")
        self._tau_s = tau_s
        self._min_alpha = min_alpha
        self._last: float | None = None
        self.value: float | None = None

    def add(self, sample: float, now: float) -> None:
        if self.value is None or self._last is None:
            self.value = sample
        else:
            alpha = max(self._min_alpha, 1.0 - math.exp(-(now - self._last) / self._tau_s))
            self.value += alpha * (sample - self.value)
        self._last = now
