"""Fakes for health tests: a clock you set, a sleep that waits on it, channels you script."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from channels._protocol import AttemptOutcome, ChannelResult, PaymentRequest


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class VirtualTime(FakeClock):
    """A clock plus an injectable ``sleep``: sleepers wake when ``advance`` passes their
    deadline, in deadline order, with the loop given a chance to run in between."""

    def __init__(self, now: float = 1000.0) -> None:
        super().__init__(now)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._seq), future))
        await future

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance_async(self, seconds: float) -> None:
        target = self.now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            if not future.done():
                future.set_result(None)
            await self.settle()
        self.now = target
        await self.settle()

    @property
    def pending_sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())


class ScriptedChannel:
    """A Channel whose ping answers with whatever ``behaviour()`` returns (or raises)."""

    kind = "direct_api"

    def __init__(self, name: str, behaviour: Callable[[], ChannelResult] | None = None,
                 hang: asyncio.Event | None = None) -> None:
        self.name = name
        self.behaviour = behaviour or (lambda: ChannelResult(AttemptOutcome.CAPTURED, latency_ms=28.0))
        self.hang = hang
        self.pings = 0
        self.cancelled = 0

    async def ping(self) -> ChannelResult:
        self.pings += 1
        if self.hang is not None:
            try:
                await self.hang.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return self.behaviour()

    async def authorize(self, request: PaymentRequest) -> ChannelResult:
        raise NotImplementedError("probes only")

    async def inquire(self, reference: str) -> ChannelResult:
        raise NotImplementedError("probes only")

    async def void(self, reference: str) -> ChannelResult:
        raise NotImplementedError("probes only")

    async def refund(self, reference: str) -> ChannelResult:
        raise NotImplementedError("probes only")

    async def close(self) -> None:
        return None
