"""The clock, injected everywhere time is read or waited on.

``now()`` is wall time (epoch seconds) for what is stored and shown; ``monotonic()``
measures durations; ``sleep()`` waits. Tests hand the core a ``VirtualClock`` so backoff
and deadlines run in virtual time, without real sleeps.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock", "VirtualClock", "iso", "month_of"]


class Clock(Protocol):
    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class VirtualClock:
    """Time that moves only when someone sleeps: each sleep yields to the loop once,
    then jumps the clock forward. Deadlines and backoff stay exact and instant."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)
        self._now += max(0.0, seconds)


_ISO_SECONDS: dict[int, str] = {}


def iso(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, the one timestamp format of the API. Every answer
    formats two, so the seconds part is formatted once per second
    (docs/performance.md#timestamp-formatting)."""
    sec = int(ts // 1)
    head = _ISO_SECONDS.get(sec)
    if head is None:
        if len(_ISO_SECONDS) > 256:
            _ISO_SECONDS.clear()
        head = _ISO_SECONDS[sec] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{min(999, int((ts - sec) * 1000)):03d}Z"


def month_of(created_at: float) -> int:
    """The start (epoch seconds) of the UTC calendar month holding ``created_at``: the M
    with M <= created_at < the next month's start, as ``created_at >= M`` tells. Floored
    to the second first: ``datetime`` rounds to the microsecond, which would move a time
    a hair before midnight into the next month. The backfill (migration 7) floors too."""
    t = datetime.fromtimestamp(math.floor(created_at), UTC)
    return int(datetime(t.year, t.month, 1, tzinfo=UTC).timestamp())
