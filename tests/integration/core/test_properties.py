"""Property test: random provider behaviour, client replays and a crash at a random
journal write, through the real engine on SQLite and on PostgreSQL. Whatever hypothesis
draws, SPEC section 18's invariants hold after recovery."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

from crashing import CrashingJournal, SimulatedCrash
from harness import Core, PgStore, SqliteStore, Store, make_recharge
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.memory import Action, MemoryChannel

AUTHORIZE = [Action.CAPTURE, Action.PEND, Action.DECLINE_HARD, Action.DECLINE_SOFT, Action.NOT_PROCESSED,
             Action.LOST_BEFORE, Action.LOST_AFTER, Action.LOST_AFTER_PEND]
CHANNELS = ("a", "b", "c")


@dataclass(frozen=True)
class Plan:
    authorize: tuple[Action, ...]  # per channel, in routing order
    failing_inquiries: int  # the first N inquiries of each attempt fail
    void_fails: bool
    settle: str | None  # what a pending payment becomes at its 2nd inquiry


plans = st.builds(
    Plan,
    authorize=st.tuples(*(st.sampled_from(AUTHORIZE) for _ in CHANNELS)),
    failing_inquiries=st.integers(0, 4),
    void_fails=st.booleans(),
    settle=st.sampled_from([None, "captured", "declined"]),
)


class World:
    def __init__(self, plans: list[Plan]) -> None:
        self.plans = plans
        self.plan_of: dict[str, Plan] = {}
        self.healed = False
        self.channels = [MemoryChannel(name, self._script(i)) for i, name in enumerate(CHANNELS)]

    def _script(self, idx: int):
        def script(op: str, ref: str, n: int) -> Action:
            plan = self.plan_of[ref.rsplit(".", 1)[0]]
            if op == "authorize":
                return plan.authorize[idx]
            if self.healed:
                return Action.OK
            if op == "inquire":
                if n <= plan.failing_inquiries:
                    return Action.FAIL
                if plan.settle and n >= 2 and ref in self.channels[idx].ledger:
                    self.channels[idx].settle(ref, plan.settle, "insufficient_funds")
                return Action.OK
            if op == "void" and plan.void_fails:
                return Action.FAIL
            return Action.OK

        return script


async def _submit(core: Core, world: World, i: int) -> None:
    rec, trail = make_recharge(core.clock, f"key-{i}", user=f"u{i % 2}", amount=1000 + i)
    world.plan_of[rec.id] = world.plans[i]
    await core.driver.submit(rec, trail, core.settings)


async def scenario(store: Store, plans_: list[Plan], replays: list[int], crash_at: int | None, mode: str) -> None:
    world = World(plans_)
    journal = CrashingJournal(store.journal(), crash_at, mode)
    first = Core(store, world.channels, journal=journal)
    await journal.open()
    order = list(range(len(plans_))) + [r % len(plans_) for r in replays]
    results = await asyncio.gather(*(_submit(first, world, i) for i in order), return_exceptions=True)
    assert all(r is None or isinstance(r, SimulatedCrash) for r in results), results
    await asyncio.gather(*(t for t, _ in list(first.driver._running.values())), return_exceptions=True)
    await first.driver.stop()
    await journal.inner.close()

    core = Core(store, world.channels, clock=first.clock)
    await core.journal.open()
    try:
        core.clock.advance(1)
        await core.settle_all(rounds=5)
        for i in order:  # every client retries what it may not have heard back about
            await _submit(core, world, i)
        await core.settle_all(rounds=5)
        world.healed = True  # providers answer inquiries and voids again
        await core.settle_all(rounds=5)
        report = await core.check(settled=True)
        assert report.ok, report.violations
        assert report.recharges == len(plans_)
        assert set(report.by_status) <= {"succeeded", "declined", "failed"}, report.by_status
    finally:
        await core.driver.stop()
        await core.journal.close()


draws = given(
    plans_=st.lists(plans, min_size=1, max_size=4),
    replays=st.lists(st.integers(0, 10), max_size=4),
    crash_at=st.none() | st.integers(1, 40),
    mode=st.sampled_from(["before", "after"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@draws
def test_random_outcomes_replays_and_crashes_keep_the_money_right_on_sqlite(plans_, replays, crash_at, mode):
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(SqliteStore(Path(tmp) / "j.db"), plans_, replays, crash_at, mode))


# Fewer examples: each costs a schema and two connection pools.
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@draws
def test_random_outcomes_replays_and_crashes_keep_the_money_right_on_postgres(pg_server, plans_, replays, crash_at,
                                                                             mode):
    store = PgStore.fresh(pg_server)
    try:
        asyncio.run(scenario(store, plans_, replays, crash_at, mode))
    finally:
        store.dispose()
