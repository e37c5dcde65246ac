"""Active probing: one asyncio task per channel calls ``channel.ping()`` every
``interval_s`` (with jitter, so probes of many channels and many instances do not
synchronise) and records the result in the registry.

Time is injected twice: ``clock`` for measuring and ``sleep`` for waiting (the probe
timeout too), so tests and the simulator run it in virtual time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping

import structlog

from channels import AttemptOutcome, Channel
from health._registry import HealthRegistry
from health._stats import Monotonic

__all__ = ["Prober", "Sleep"]

Sleep = Callable[[float], Awaitable[None]]

log = structlog.get_logger("health.prober")


class Prober:
    """Probes every channel on its own schedule; ``start()``/``stop()`` own the tasks."""

    def __init__(self, registry: HealthRegistry, channels: Mapping[str, Channel] | Iterable[Channel],
                 *, clock: Monotonic, sleep: Sleep = asyncio.sleep, interval_s: float = 2.0,
                 timeout_s: float = 1.0, timeouts_s: Mapping[str, float] | None = None,
                 jitter: float = 0.1, rng: random.Random | None = None) -> None:
        if interval_s <= 0 or timeout_s <= 0 or not 0 <= jitter < 1:
            raise ValueError("need interval_s > 0, timeout_s > 0 and 0 <= jitter < 1")
        self._registry = registry
        self._channels = _by_name(channels)
        self._clock = clock
        self._sleep = sleep
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        # Per-channel overrides: a bank's health check may legitimately take longer.
        self.timeouts_s = dict(timeouts_s or {})
        self.jitter = jitter
        # Unseeded by default: instances of a fleet must not probe in lockstep. Tests and
        # the simulator pass a seeded one for a reproducible schedule.
        self._rng = rng if rng is not None else random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def probing(self) -> tuple[str, ...]:
        """Names of the channels with a live probe task."""
        return tuple(name for name, task in self._tasks.items() if not task.done())

    async def start(self) -> None:
        """Start one task per channel (idempotent). The first probe of each channel comes
        after a random fraction of the interval, spreading the load."""
        if self._running:
            return
        self._running = True
        for name, channel in self._channels.items():
            self._spawn(name, channel)

    async def stop(self) -> None:
        """Cancel every task and wait for them to finish (idempotent)."""
        self._running = False
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def set_channels(self, channels: Mapping[str, Channel] | Iterable[Channel]) -> None:
        """Config reload: stop probing channels that are gone, start probing new ones.
        A channel whose object changed is restarted with the new one."""
        new = _by_name(channels)
        stale = [name for name, ch in self._channels.items() if new.get(name) is not ch]
        self._channels = new
        tasks = [self._tasks.pop(name) for name in stale if name in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._running:
            for name, channel in new.items():
                if name not in self._tasks:
                    self._spawn(name, channel)

    def _spawn(self, name: str, channel: Channel) -> None:
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._run(name, channel), name=f"probe:{name}")

    def next_delay(self) -> float:
        """The wait before the next probe: the interval, +/- ``jitter`` of it."""
        return self.interval_s * (1.0 + self._rng.uniform(-self.jitter, self.jitter))

    async def _run(self, name: str, channel: Channel) -> None:
        await self._sleep(self._rng.uniform(0.0, self.interval_s))
        while True:
            ok, latency_ms = await self.probe(channel, self.timeouts_s.get(name, self.timeout_s))
            try:
                self._registry.record_probe(name, ok, latency_ms)
            except Exception:
                # A failing on_change hook must not end probing for good.
                log.exception("probe_record_failed", channel=name)
            await self._sleep(self.next_delay())

    async def probe(self, channel: Channel, timeout_s: float | None = None) -> tuple[bool, float]:
        """One probe: (ok, latency_ms). A timeout or an exception is a failed probe."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        started = self._clock()
        ping = asyncio.ensure_future(channel.ping())
        timer = asyncio.ensure_future(self._sleep(timeout_s))
        try:
            await asyncio.wait((ping, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Runs on cancellation too: never leave a ping or a timer behind.
            for task in (ping, timer):
                if not task.done():
                    task.cancel()
            await asyncio.gather(ping, timer, return_exceptions=True)
        elapsed_ms = (self._clock() - started) * 1000.0
        if ping.cancelled():
            return False, timeout_s * 1000.0
        error = ping.exception()
        if error is not None:
            log.warning("probe_raised", channel=channel.name, error=repr(error))
            return False, elapsed_ms
        result = ping.result()
        latency_ms = result.latency_ms if result.latency_ms > 0 else elapsed_ms
        return result.outcome == AttemptOutcome.CAPTURED, latency_ms


def _by_name(channels: Mapping[str, Channel] | Iterable[Channel]) -> dict[str, Channel]:
    if isinstance(channels, Mapping):
        return dict(channels)
    return {channel.name: channel for channel in channels}
