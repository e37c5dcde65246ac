"""Token-bucket rate limits per client and per user, checked before any work is done.

Memory is bounded: user buckets live in an LRU of at most ``max_keys`` entries (a user
evicted while idle comes back with a full bucket, which is what an idle user has anyway).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Limiter", "TokenBucket"]


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token. 0.0 when granted, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else math.inf


class Limiter:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float], *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, key: str) -> float:
        """0.0 when ``key`` may proceed, else seconds to wait (for ``Retry-After``)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def reconfigure(self, rate: float, burst: float) -> None:
        """New limits from a reload; buckets keep their level (capped at the new burst)."""
        self.rate, self.burst = rate, burst
        for b in self._buckets.values():
            b.rate, b.burst, b.tokens = rate, burst, min(b.tokens, burst)

    def __len__(self) -> int:
        return len(self._buckets)
