"""An asyncio event loop on virtual time, for the deterministic simulation.

asyncio's own loop, with one change: when nothing is ready, the selector does not wait
for the next timer, it moves the clock to it. Nothing sleeps for real, a timer fires
exactly when the clock reaches it, and with one seeded source of randomness the same run
replays step for step. Nothing in a simulated world uses sockets or threads; a loop with
no ready callback and no timer left is a deadlock, and says so.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

__all__ = ["Deadlock", "VirtualLoop"]


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is set: the world can never move again."""


class _Selector(selectors.BaseSelector):
    """Registers what the loop registers (its self-pipe), reports nothing, and turns
    every wait into a jump of the clock."""

    def __init__(self) -> None:
        self._keys: dict[int, selectors.SelectorKey] = {}
        self.loop: VirtualLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        if timeout is None:
            raise Deadlock("nothing is ready and no timer is set")
        if timeout > 0:
            self.loop.advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _Selector()
        self._now = 0.0
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
