"""Provider events (the state machine's side of webhooks): applied once, never
backwards, and a capture nobody keeps is refunded."""

from __future__ import annotations

import asyncio

from harness import Core

from channels import AttemptOutcome
from channels.memory import Action, MemoryChannel, Payment

CAPTURED, PENDING, DECLINED = AttemptOutcome.CAPTURED, AttemptOutcome.PENDING, AttemptOutcome.DECLINED


def pending_channel(name: str = "a") -> MemoryChannel:
    return MemoryChannel(name, lambda op, ref, n: Action.PEND if op == "authorize" else Action.OK, kind="bank")


async def _until(pred, core: Core, rid: str, tries: int = 200):
    for _ in range(tries):
        rec = await core.journal.get(rid)
        if pred(rec):
            return rec
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition never held for {rid}: {rec}")


async def test_a_capture_event_completes_a_pending_recharge_once(store):
    a = pending_channel()
    async with Core(store, [a]) as core:
        core.clock.sleep = lambda s: asyncio.sleep(10)  # polls would take long: only the event can finish it
        rec, _ = await core.submit("k1")
        rec = await _until(lambda r: r.attempts and r.attempts[0].state == "pending", core, rec.id)
        ref = rec.attempts[0].reference
        a.settle(ref, "captured")
        assert await core.driver.on_event("a", "ev1", ref, CAPTURED, "pr_1") == "succeeded"
        assert await core.driver.on_event("a", "ev1", ref, CAPTURED, "pr_1") == "duplicate"
        rec = await core.journal.get(rec.id)
        assert rec.status == "succeeded"
        await asyncio.wait_for(core.driver.live(rec.id)[0], 2) if core.driver.live(rec.id) else None
        assert (await core.journal.wallet("u1")).coins == rec.coins + rec.bonus_coins
        report = await core.check()
        assert report.ok and report.credits == 1, report


async def test_a_late_or_out_of_order_event_never_moves_a_recharge_backwards(store):
    a = MemoryChannel("a")
    async with Core(store, [a]) as core:
        rec = await core.run("k1")
        ref = rec.attempts[0].reference
        assert await core.driver.on_event("a", "ev-old", ref, PENDING) == "ignored"
        assert await core.driver.on_event("a", "ev-old2", ref, DECLINED, decline_code="x") == "ignored"
        rec = await core.journal.get(rec.id)
        assert rec.status == "succeeded" and rec.attempts[0].state == "captured"
        assert (await core.check()).ok


async def test_a_hard_decline_event_ends_a_pending_recharge(store):
    a, b = pending_channel("a"), MemoryChannel("b")
    async with Core(store, [a, b]) as core:
        core.clock.sleep = lambda s: asyncio.sleep(10)
        rec, _ = await core.submit("k1")
        rec = await _until(lambda r: r.attempts and r.attempts[0].state == "pending", core, rec.id)
        ref = rec.attempts[0].reference
        a.settle(ref, "declined", "insufficient_funds")
        assert await core.driver.on_event("a", "ev1", ref, DECLINED, decline_code="insufficient_funds") == "attempt_declined"
        rec = await core.journal.get(rec.id)
        assert rec.status == "declined" and b.calls == []
        assert (await core.check()).ok


async def test_a_capture_after_a_confirmed_failover_is_refunded(store):
    a = MemoryChannel("a", lambda op, ref, n: Action.LOST_BEFORE if op == "authorize" else Action.OK)
    b = MemoryChannel("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded" and rec.channel == "b"
        ref = rec.attempts[0].reference
        # The lost request reached provider a after all, and it captured late.
        a.ledger[ref] = Payment(ref, rec.amount_minor, rec.currency, "captured", "pr_late", history=["captured"])
        assert await core.driver.on_event("a", "ev-late", ref, CAPTURED, "pr_late") == "late_capture_refunding"
        await core.idle()
        assert a.ledger[ref].status == "refunded"
        rec = await core.journal.get(rec.id)
        assert rec.attempts[0].state == "refunded"
        events = [e.event for e in await core.journal.trail(rec.id)]
        assert "late_capture_refund_requested" in events and "late_capture_refunded" in events
        report = await core.check()
        assert report.ok and report.refunded == 1 and report.credits == 1, report


async def test_an_unconfirmed_refund_is_retried_by_the_reconciler(store):
    fail_refund = {"on": True}
    a = MemoryChannel("a", lambda op, ref, n: Action.LOST_BEFORE if op == "authorize" else (
        Action.FAIL if op == "refund" and fail_refund["on"] else Action.OK))
    async with Core(store, [a, MemoryChannel("b")]) as core:
        rec = await core.run("k1")
        ref = rec.attempts[0].reference
        a.ledger[ref] = Payment(ref, rec.amount_minor, rec.currency, "captured", "pr_late", history=["captured"])
        await core.driver.on_event("a", "ev-late", ref, CAPTURED)
        await core.idle()
        assert a.ledger[ref].status == "captured"
        assert (await core.journal.get(rec.id)).attempts[0].state == "refund_requested"
        fail_refund["on"] = False
        await core.driver.recover()
        await core.idle()
        assert a.ledger[ref].status == "refunded"
        assert (await core.check()).ok


async def test_concurrent_copies_of_one_event_apply_once(store):
    a = pending_channel()
    async with Core(store, [a]) as core:
        core.clock.sleep = lambda s: asyncio.sleep(10)
        rec, _ = await core.submit("k1")
        rec = await _until(lambda r: r.attempts and r.attempts[0].state == "pending", core, rec.id)
        ref = rec.attempts[0].reference
        a.settle(ref, "captured")
        results = await asyncio.gather(*(core.driver.on_event("a", "ev1", ref, CAPTURED) for _ in range(10)))
        assert results.count("succeeded") == 1 and set(results) == {"succeeded", "duplicate"}
        assert (await core.check()).credits == 1


async def test_an_event_for_a_payment_we_never_made_changes_nothing(store):
    async with Core(store, [MemoryChannel("a")]) as core:
        assert await core.driver.on_event("a", "ev1", "rc_nope.1", CAPTURED) == "unknown_payment"
        rec = await core.run("k1")
        assert await core.driver.on_event("b", "ev2", rec.attempts[0].reference, CAPTURED) == "unknown_payment"
