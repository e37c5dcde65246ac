"""Several drivers on one store: each recharge is driven by the instance holding its
lease; a dead instance's work is claimed by a live one once its leases expire."""

from __future__ import annotations

import asyncio

import pytest
from harness import SETTINGS, make_recharge

from channels.memory import Action, MemoryChannel
from orchestrator.clock import VirtualClock
from orchestrator.driver import Driver, HeldElsewhere
from orchestrator.invariants import LedgerPayment, check
from orchestrator.journal import SqliteJournal


def engine(journal, channels, clock, owner):
    by_name = {c.name: c for c in channels}
    return Driver(journal, by_name.get, lambda rec: [c.name for c in channels], clock, lambda: SETTINGS,
                  owner=owner, lease_s=15.0)


async def test_the_same_key_on_two_instances_is_driven_once(tmp_path):
    clock = VirtualClock()
    gate = asyncio.Event()
    ch = MemoryChannel("a")
    orig = ch.authorize

    async def slow(req):
        await gate.wait()
        return await orig(req)

    ch.authorize = slow
    j1, j2 = SqliteJournal(tmp_path / "j.db", clock=clock.now), SqliteJournal(tmp_path / "j.db", clock=clock.now)
    await j1.open()
    await j2.open()
    try:
        e1, e2 = engine(j1, [ch], clock, "one"), engine(j2, [ch], clock, "two")
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
    finally:
        await j1.close()
        await j2.close()


async def test_a_dead_instances_work_is_claimed_after_its_leases_expire(tmp_path):
    clock = VirtualClock()
    hang = asyncio.Event()
    ch = MemoryChannel("a", lambda op, ref, n: Action.LOST_AFTER if op == "authorize" else Action.OK)
    orig = ch.authorize

    async def dies_mid_call(req):
        await orig(req)
        await hang.wait()  # the instance is killed while waiting for the answer

    ch.authorize = dies_mid_call
    j1, j2 = SqliteJournal(tmp_path / "j.db", clock=clock.now), SqliteJournal(tmp_path / "j.db", clock=clock.now)
    await j1.open()
    await j2.open()
    try:
        e1 = engine(j1, [ch], clock, "one")
        rec, trail = make_recharge(clock, "k1")
        await e1.submit(rec, trail)
        await asyncio.sleep(0.05)
        await e1.stop()  # dead: no more steps, lease left behind
        ch.authorize = orig
        e2 = engine(j2, [ch], clock, "two")
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
    finally:
        await j1.close()
        await j2.close()


async def test_a_lease_is_renewed_through_a_call_longer_than_it(tmp_path):
    """A provider call may outlast a lease: the renewal keeps it, so no other instance
    takes the recharge over meanwhile (it used to be renewed only by the reconciler,
    which may run less often than the lease lasts)."""
    from orchestrator.clock import SystemClock

    gate = asyncio.Event()
    ch = MemoryChannel("a")
    orig = ch.authorize

    async def slow(req):
        await gate.wait()
        return await orig(req)

    ch.authorize = slow
    clock = SystemClock()
    j1, j2 = SqliteJournal(tmp_path / "j.db"), SqliteJournal(tmp_path / "j.db")
    await j1.open()
    await j2.open()
    e1 = Driver(j1, {"a": ch}.get, lambda rec: ["a"], clock, lambda: SETTINGS, owner="one", lease_s=0.6,
                renew_s=0.2)
    e2 = Driver(j2, {"a": ch}.get, lambda rec: ["a"], clock, lambda: SETTINGS, owner="two", lease_s=0.6)
    try:
        e1.start_background()
        rec, trail = make_recharge(VirtualClock(clock.now()), "k1")
        await e1.submit(rec, trail)
        for _ in range(5):
            await asyncio.sleep(0.3)  # 1.5 s in all: the lease would have lapsed twice over
            assert await e2.recover() == 0, "the lease was taken while its holder was still calling"
        gate.set()
        await e1.live(rec.id)[0]
        assert (await j2.get(rec.id)).status == "succeeded" and len(ch.ledger) == 1
    finally:
        await e1.stop()
        await e2.stop()
        await j1.close()
        await j2.close()


async def test_a_lease_ends_by_the_stores_clock_not_a_claimers(tmp_path):
    """An instance whose clock runs 100 s ahead cannot take a live lease: expiry is the
    store's to judge (it used to compare the claimer's own 'now')."""
    store_clock = VirtualClock()
    ahead = VirtualClock(store_clock.now() + 100)
    ch = MemoryChannel("a", lambda op, ref, n: Action.LOST_AFTER_PEND if op == "authorize" else Action.FAIL)
    j1 = SqliteJournal(tmp_path / "j.db", clock=store_clock.now)
    j2 = SqliteJournal(tmp_path / "j.db", clock=store_clock.now)
    await j1.open()
    await j2.open()
    try:
        e1, e2 = engine(j1, [ch], store_clock, "one"), engine(j2, [ch], ahead, "two")
        rec, trail = make_recharge(store_clock, "k1")
        await e1.submit(rec, trail)
        await e1.live(rec.id)[0]
        assert await e2.recover() == 0
        store_clock.advance(16)
        assert await e2.recover() == 1, "once the store says it lapsed"
    finally:
        await e1.stop()
        await e2.stop()
        await j1.close()
        await j2.close()


async def test_an_instance_whose_lease_moved_on_stops_driving(tmp_path):
    """A paused instance wakes with a stale view and a lease it still trusts: its next
    decision carries that lease, the store refuses it, and it stops driving."""
    from orchestrator.driver import _Held

    clock = VirtualClock()
    ch = MemoryChannel("a", lambda op, ref, n: Action.LOST_AFTER_PEND if op == "authorize" else Action.FAIL)
    j1 = SqliteJournal(tmp_path / "j.db", clock=clock.now)
    j2 = SqliteJournal(tmp_path / "j.db", clock=clock.now)
    await j1.open()
    await j2.open()
    try:
        e1, e2 = engine(j1, [ch], clock, "one"), engine(j2, [ch], clock, "two")
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
    finally:
        await e1.stop()
        await e2.stop()
        await j1.close()
        await j2.close()
