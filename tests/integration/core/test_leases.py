"""Several drivers on one store: each recharge is driven by the instance holding its
lease; a dead instance's work is claimed by a live one once its leases expire."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from harness import SETTINGS, make_recharge

from channels.memory import Action, MemoryChannel
from orchestrator.clock import VirtualClock
from orchestrator.driver import Driver, HeldElsewhere
from orchestrator.invariants import LedgerPayment, check
from orchestrator.journal import SqliteJournal


def engine(journal, channels, clock, owner, **kw):
    by_name = {c.name: c for c in channels}
    return Driver(journal, by_name.get, lambda rec: [c.name for c in channels], clock, lambda: SETTINGS,
                  owner=owner, **{"lease_s": 15.0, **kw})


@contextlib.asynccontextmanager
async def two_instances(tmp_path, store_clock=None):
    """Two journals on one SQLite file, their leases timed by ``store_clock`` (the
    system clock when None); every driver made with ``make`` is stopped at the end."""
    kw = {} if store_clock is None else {"clock": store_clock}
    journals = [SqliteJournal(tmp_path / "j.db", **kw) for _ in range(2)]
    drivers: list[Driver] = []

    def make(i, *args, **kwargs):
        drivers.append(engine(journals[i], *args, **kwargs))
        return drivers[-1]

    for j in journals:
        await j.open()
    try:
        yield journals, make
    finally:
        for d in drivers:
            await d.stop()
        for j in journals:
            await j.close()


def gated_channel() -> tuple[MemoryChannel, asyncio.Event]:
    """A healthy channel whose charges wait until the event is set."""
    ch, gate = MemoryChannel("a"), asyncio.Event()
    orig = ch.authorize

    async def slow(req):
        await gate.wait()
        return await orig(req)

    ch.authorize = slow  # type: ignore[method-assign]
    return ch, gate


async def test_the_same_key_on_two_instances_is_driven_once(tmp_path):
    clock = VirtualClock()
    ch, gate = gated_channel()
    async with two_instances(tmp_path, clock.now) as ((j1, j2), make):
        e1, e2 = make(0, [ch], clock, "one"), make(1, [ch], clock, "two")
        rec, trail = make_recharge(clock, "k1")
        first, fresh = await e1.submit(rec, trail)
        assert fresh
        dup, trail2 = make_recharge(clock, "k1")
        with pytest.raises(HeldElsewhere):
            await e2.submit(dup, trail2)
        assert await e2.recover() == 0, "a live lease is not claimed"
        gate.set()
        await e1.live(rec.id)[0]
        again, fresh = await e2.submit(dup, trail2)
        assert not fresh and again.status == "succeeded"
        assert len(ch.ledger) == 1
        ledger = [LedgerPayment("a", p.reference, p.status) for p in ch.ledger.values()]
        assert (await check(j1, ledger)).ok


async def test_a_dead_instances_work_is_claimed_after_its_leases_expire(tmp_path):
    clock = VirtualClock()
    hang = asyncio.Event()
    ch = MemoryChannel("a", lambda op, ref, n: Action.LOST_AFTER if op == "authorize" else Action.OK)
    orig = ch.authorize

    async def dies_mid_call(req):
        await orig(req)
        await hang.wait()  # the instance is killed while waiting for the answer

    ch.authorize = dies_mid_call
    async with two_instances(tmp_path, clock.now) as ((j1, j2), make):
        e1 = make(0, [ch], clock, "one")
        rec, trail = make_recharge(clock, "k1")
        await e1.submit(rec, trail)
        await asyncio.sleep(0.05)
        await e1.stop()  # dead: no more steps, lease left behind
        ch.authorize = orig
        e2 = make(1, [ch], clock, "two")
        assert await e2.recover() == 0, "not before the lease expires"
        clock.advance(16)
        assert await e2.recover() == 1
        running = e2.live(rec.id)  # None: the claimed recharge already finished during recover()
        if running is not None:
            await running[0]
        fresh = await j2.get(rec.id)
        assert fresh.status == "succeeded" and len(ch.ledger) == 1, "inquiry found the capture; no second charge"
        ledger = [LedgerPayment("a", p.reference, p.status) for p in ch.ledger.values()]
        assert (await check(j2, ledger)).ok


async def test_a_lease_is_renewed_through_a_call_longer_than_it(tmp_path):
    """A provider call may outlast a lease: the renewal keeps it, so no other instance
    takes the recharge over meanwhile (it used to be renewed only by the reconciler,
    which may run less often than the lease lasts)."""
    from orchestrator.clock import SystemClock

    ch, gate = gated_channel()
    clock = SystemClock()
    async with two_instances(tmp_path) as ((j1, j2), make):
        e1 = make(0, [ch], clock, "one", lease_s=0.6, renew_s=0.2)
        e2 = make(1, [ch], clock, "two", lease_s=0.6)
        e1.start_background()
        rec, trail = make_recharge(VirtualClock(clock.now()), "k1")
        await e1.submit(rec, trail)
        for _ in range(5):
            await asyncio.sleep(0.3)  # 1.5 s in all: the lease would have lapsed twice over
            assert await e2.recover() == 0, "the lease was taken while its holder was still calling"
        gate.set()
        await e1.live(rec.id)[0]
        assert (await j2.get(rec.id)).status == "succeeded" and len(ch.ledger) == 1


async def test_a_lease_ends_by_the_stores_clock_not_a_claimers(tmp_path):
    """An instance whose clock runs 100 s ahead cannot take a live lease: expiry is the
    store's to judge (it used to compare the claimer's own 'now')."""
    store_clock = VirtualClock()
    ahead = VirtualClock(store_clock.now() + 100)
    ch = MemoryChannel("a", lambda op, ref, n: Action.LOST_AFTER_PEND if op == "authorize" else Action.FAIL)
    async with two_instances(tmp_path, store_clock.now) as (_, make):
        e1, e2 = make(0, [ch], store_clock, "one"), make(1, [ch], ahead, "two")
        rec, trail = make_recharge(store_clock, "k1")
        await e1.submit(rec, trail)
        await e1.live(rec.id)[0]
        assert await e2.recover() == 0
        store_clock.advance(16)
        assert await e2.recover() == 1, "once the store says it lapsed"


async def test_an_instance_whose_lease_moved_on_stops_driving(tmp_path):
    """A paused instance wakes with a stale view and a lease it still trusts: its next
    decision carries that lease, the store refuses it, and it stops driving."""
    from orchestrator.driver import _Held

    clock = VirtualClock()
    ch = MemoryChannel("a", lambda op, ref, n: Action.LOST_AFTER_PEND if op == "authorize" else Action.FAIL)
    async with two_instances(tmp_path, clock.now) as ((j1, _), make):
        e1, e2 = make(0, [ch], clock, "one"), make(1, [ch], clock, "two")
        rec, trail = make_recharge(clock, "k1")
        await e1.submit(rec, trail)
        await e1.live(rec.id)[0]
        stale = await j1.get(rec.id)
        clock.advance(16)
        assert await e2.recover() == 1
        if e2.live(rec.id):
            await e2.live(rec.id)[0]
        assert await j1.lease_of(rec.id) == ("two", 2)
        before = len(await j1.trail(rec.id))
        e1._held[rec.id] = _Held(1, clock.monotonic() + 3600)  # it has not noticed
        await e1.start(stale)
        assert rec.id not in e1._held, "it learned it lost the lease"
        after = await j1.trail(rec.id)
        assert len(after) == before, f"a decision under a lost lease landed: {after[before:]}"
