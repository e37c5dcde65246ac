"""The simulator process keeps its ever-growing ledger out of the garbage collector: what
survives a full collection is frozen, so the next collections scan only what is new,
and garbage cycles made before a freeze are still reclaimed by the collection before it."""

from __future__ import annotations

import asyncio
import gc
import weakref

from channels.simulator import _freeze_survivors


class _Node:
    me: _Node | None = None


async def test_survivors_are_frozen_and_older_garbage_cycles_collected():
    dead = _Node()
    dead.me = dead  # a cycle: only the collector can free it
    dead_ref = weakref.ref(dead)
    del dead
    kept = _Node()
    kept.me = kept
    task = asyncio.get_running_loop().create_task(_freeze_survivors(0.01))
    try:
        await asyncio.sleep(0.1)
        assert dead_ref() is None
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # out of every scanned generation
        made_after = _Node()
        await asyncio.sleep(0.1)
        assert not any(o is made_after for o in gc.get_objects())  # the next round froze it too
    finally:
        task.cancel()
        gc.unfreeze()  # the rest of the suite runs with a normal collector
    assert any(o is kept for o in gc.get_objects())
