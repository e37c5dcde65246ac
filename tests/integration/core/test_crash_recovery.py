"""Crash the core at every journal write in turn, before and after the write lands; a
new instance opens the same store (SQLite file or PostgreSQL database), recovers, and
the clients retry. SPEC section
18's invariants must hold every time: no recharge lost, none charged or credited twice,
none left non-terminal."""

from __future__ import annotations

import asyncio

import pytest
from crashing import CrashingJournal, SimulatedCrash
from harness import Core, Store, make_recharge

from channels.memory import Action, MemoryChannel

# One recharge per path through the state machine, keyed by idempotency key.
BEHAVIOURS = {
    "k-capture": [Action.CAPTURE],
    "k-failover": [Action.NOT_PROCESSED, Action.CAPTURE],
    "k-lost-after": [Action.LOST_AFTER],
    "k-lost-before": [Action.LOST_BEFORE, Action.CAPTURE],
    "k-pending": [Action.PEND],
    "k-hard-decline": [Action.DECLINE_HARD],
    "k-void": [Action.LOST_AFTER_PEND, Action.CAPTURE],
}


class World:
    """The providers, which outlive any orchestrator instance."""

    def __init__(self) -> None:
        self.key_of: dict[str, str] = {}
        self.a = MemoryChannel("a", self._script("a"))
        self.b = MemoryChannel("b", self._script("b"))

    def _script(self, channel: str):
        def script(op: str, ref: str, n: int) -> Action:
            key = self.key_of.get(ref.rsplit(".", 1)[0], "k-capture")
            plan = BEHAVIOURS[key]
            if op == "authorize":
                idx = 0 if channel == "a" else 1
                return plan[min(idx, len(plan) - 1)]
            if op == "inquire":
                if key == "k-pending" and n >= 2:
                    self.a.settle(ref, "captured")
                if key == "k-void":
                    return Action.FAIL
            return Action.OK

        return script


async def _submit(core: Core, world: World, key: str, i: int) -> None:
    rec, trail = make_recharge(core.clock, key, user=f"u{i}")
    world.key_of[rec.id] = key  # before the provider can be called for it
    await core.driver.submit(rec, trail, core.settings)


async def _run(store: Store, world: World, *, crash_at: int | None, mode: str) -> tuple[int, Core]:
    journal = CrashingJournal(store.journal(), crash_at, mode)
    first = Core(store, [world.a, world.b], journal=journal)
    await first.journal.open()

    async def submit(key: str, i: int) -> None:
        await _submit(first, world, key, i)

    results = await asyncio.gather(*(submit(k, i) for i, k in enumerate(BEHAVIOURS)), return_exceptions=True)
    assert all(r is None or isinstance(r, SimulatedCrash) for r in results), results
    tasks = [t for t, _ in list(first.driver._running.values())]
    await asyncio.gather(*tasks, return_exceptions=True)
    # The instance is dead: stop its tasks without letting them write anything more.
    await first.driver.stop()
    await journal.inner.close()
    return journal.writes, first


async def _recover_and_retry(store: Store, world: World, clock) -> Core:
    core = Core(store, [world.a, world.b], clock=clock)
    await core.journal.open()
    clock.advance(1.0)
    await core.settle_all()
    # Every client that did not hear back retries with the same key and body.
    for i, key in enumerate(BEHAVIOURS):
        await _submit(core, world, key, i)
    await core.settle_all()
    return core


async def _assert_invariants(core: Core) -> None:
    report = await core.check(settled=True)
    assert report.ok, report.violations
    assert report.recharges == len(BEHAVIOURS), report
    statuses = report.by_status
    assert set(statuses) <= {"succeeded", "declined", "failed"}, statuses
    rows = await core.journal.query("SELECT idempotency_key, status FROM recharges")
    by_key = dict(rows)
    assert by_key["k-hard-decline"] == "declined"
    assert by_key["k-capture"] == "succeeded"


def _count_writes(store: Store) -> int:
    async def go() -> int:
        world = World()
        writes, first = await _run(store, world, crash_at=None, mode="before")
        return writes

    return asyncio.run(go())


def test_a_crash_at_every_journal_write_loses_nothing_and_charges_nothing_twice(new_store, tmp_path):
    total = _count_writes(new_store(tmp_path / "probe"))
    assert total >= 3 * len(BEHAVIOURS), "the scenario must make many journal writes"
    for mode in ("before", "after"):
        for at in range(1, total + 1):
            store = new_store(tmp_path / f"{mode}-{at}")

            async def go() -> None:
                world = World()
                writes, first = await _run(store, world, crash_at=at, mode=mode)
                core = await _recover_and_retry(store, world, first.clock)
                try:
                    await _assert_invariants(core)
                finally:
                    await core.driver.stop()
                    await core.journal.close()

            try:
                asyncio.run(go())
            except AssertionError as exc:
                pytest.fail(f"crash {mode} write {at} of {total}: {exc}")
            finally:
                store.dispose()


async def test_without_a_crash_the_scenario_ends_as_planned(store):
    world = World()
    writes, first = await _run(store, world, crash_at=None, mode="before")
    core = await _recover_and_retry(store, world, first.clock)
    try:
        await _assert_invariants(core)
        rows = dict(await core.journal.query("SELECT idempotency_key, status FROM recharges"))
        assert rows == {
            "k-capture": "succeeded", "k-failover": "succeeded", "k-lost-after": "succeeded",
            "k-lost-before": "succeeded", "k-pending": "succeeded", "k-hard-decline": "declined",
            "k-void": "succeeded",
        }
    finally:
        await core.driver.stop()
        await core.journal.close()
