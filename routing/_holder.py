"""Publication of the current snapshot: readers never lock, writers swap whole.

A decision reads ``holder.current`` once and works on that snapshot to the end, so an
in-flight recharge finishes on the config it started with. Writers (config reload,
health updates) run on the event loop and ``update`` never awaits, so one writer's
read-modify-write cannot interleave with another's.
"""

from __future__ import annotations

from collections.abc import Callable

from routing._snapshot import Snapshot

__all__ = ["SnapshotHolder"]


class SnapshotHolder:
    """Holds the current ``Snapshot`` and a generation counter bumped on every swap."""

    __slots__ = ("_current", "_generation")

    def __init__(self, snapshot: Snapshot) -> None:
        self._current = snapshot
        self._generation = 0

    @property
    def current(self) -> Snapshot:
        """The snapshot to decide on. One attribute read: atomic, lock-free."""
        return self._current

    @property
    def generation(self) -> int:
        return self._generation

    def publish(self, snapshot: Snapshot) -> Snapshot:
        """Replace the snapshot outright; returns the previous one (for rollback)."""
        previous, self._current = self._current, snapshot
        self._generation += 1
        return previous

    def update(self, change: Callable[[Snapshot], Snapshot]) -> Snapshot:
        """Build the next snapshot from the current one and publish it, atomically with
        respect to other writers. ``change`` must be pure and quick; returns the new one."""
        new = change(self._current)
        self._current = new
        self._generation += 1
        return new
