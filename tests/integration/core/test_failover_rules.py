"""Every failover rule of SPEC section 7, driven through the real engine and a real
journal (each test runs on SQLite and on PostgreSQL) with scriptable in-process providers. Each test also checks the money
invariants of SPEC section 18 against the providers' ledgers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from harness import SETTINGS, Core

from channels.memory import HARD_CODE, SOFT_CODE, Action, MemoryChannel


def script(authorize: Action, *, inquire: Action = Action.OK, void: Action = Action.OK, refund: Action = Action.OK):
    table = {"authorize": authorize, "inquire": inquire, "void": void, "refund": refund}
    return lambda op, ref, n: table[op]


def healthy(name: str) -> MemoryChannel:
    return MemoryChannel(name)


async def test_capture_on_the_best_channel_succeeds_and_credits_once(store):
    a, b = healthy("a"), healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded" and rec.channel == "a"
        assert [x.outcome for x in rec.attempts] == ["captured"]
        assert b.calls == []
        wallet = await core.journal.wallet("u1")
        assert wallet.coins == rec.coins + rec.bonus_coins
        report = await core.check()
        assert report.ok, report.violations
        assert report.credits == 1


async def test_hard_decline_ends_the_recharge_without_trying_another_channel(store):
    a, b = MemoryChannel("a", script(Action.DECLINE_HARD)), healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "declined" and rec.decline_code == HARD_CODE
        assert b.calls == []
        assert (await core.journal.wallet("u1")).coins == 0
        assert (await core.check()).ok


async def test_soft_decline_fails_over_to_the_next_channel(store):
    a, b = MemoryChannel("a", script(Action.DECLINE_SOFT)), healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded" and rec.channel == "b"
        assert [x.outcome for x in rec.attempts] == ["declined", "captured"]
        assert rec.attempts[0].decline_code == SOFT_CODE
        assert (await core.check()).ok


async def test_soft_declines_everywhere_end_declined_with_the_last_code(store):
    chans = [MemoryChannel(n, script(Action.DECLINE_SOFT)) for n in "abc"]
    async with Core(store, chans) as core:
        rec = await core.run("k1")
        assert rec.status == "declined" and rec.decline_code == SOFT_CODE
        assert len(rec.attempts) == 3
        assert (await core.check()).ok


async def test_not_processed_fails_over_at_once_without_inquiry(store):
    a, b = MemoryChannel("a", script(Action.NOT_PROCESSED)), healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded" and rec.channel == "b"
        assert [op for op, _ in a.calls] == ["authorize"]
        assert (await core.check()).ok


async def test_unknown_then_inquiry_404_is_voided_before_it_fails_over(store):
    """A 404 is no proof (the charge may still be on its way): the attempt is voided by
    reference, and only the provider's confirmation lets the recharge move on."""
    a, b = MemoryChannel("a", script(Action.LOST_BEFORE)), healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded" and rec.channel == "b"
        assert [op for op, _ in a.calls] == ["authorize", "inquire", "inquire", "inquire", "void"]
        assert rec.attempts[0].outcome == "voided"
        assert a.ledger[rec.attempts[0].reference].status == "voided", "a tombstone: a late charge is refused"
        assert rec.attempts[0].late_check_at == rec.attempts[0].updated_at + SETTINGS.late_capture_check_s
        assert (await core.check()).ok


async def test_unknown_then_404_and_a_void_that_is_not_confirmed_never_fails_over(store):
    a = MemoryChannel("a", script(Action.LOST_BEFORE, void=Action.FAIL))
    b = healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "pending" and rec.reason == "void_unconfirmed"
        assert b.calls == [], "nothing else is tried while the first attempt may still charge"
        assert (await core.check(settled=False)).ok


async def test_unknown_then_inquiry_captured_succeeds_without_touching_another_channel(store):
    a, b = MemoryChannel("a", script(Action.LOST_AFTER)), healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded" and rec.channel == "a"
        assert b.calls == []
        assert len(a.captured()) == 1
        assert (await core.check()).ok


async def test_unknown_inquiry_keeps_failing_then_void_confirmed_fails_over(store):
    a = MemoryChannel("a", script(Action.LOST_AFTER_PEND, inquire=Action.FAIL))
    b = healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        ops = [op for op, _ in a.calls]
        assert ops == ["authorize"] + ["inquire"] * SETTINGS.inquiry_attempts + ["void"]
        assert rec.status == "succeeded" and rec.channel == "b"
        assert rec.attempts[0].outcome == "voided"
        assert (await core.check()).ok


async def test_void_that_finds_a_capture_succeeds_on_that_channel(store):
    a = MemoryChannel("a", script(Action.LOST_AFTER, inquire=Action.FAIL))
    b = healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded" and rec.channel == "a"
        assert b.calls == []
        assert (await core.check()).ok


async def test_unconfirmed_void_leaves_the_recharge_pending_and_never_tries_elsewhere(store):
    a = MemoryChannel("a", script(Action.LOST_AFTER_PEND, inquire=Action.FAIL, void=Action.FAIL))
    b = healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "pending" and rec.reason == "void_unconfirmed"
        assert b.calls == []
        report = await core.check()
        assert report.ok, report.violations
        # The provider heals; the reconciler resolves it: void confirmed, then failover.
        a.script = script(Action.CAPTURE)
        await core.settle_all()
        rec = await core.journal.get(rec.id)
        assert rec.status == "succeeded" and rec.channel == "b"
        assert a.ledger[rec.attempts[0].reference].status == "voided"
        assert (await core.check()).ok


async def test_pending_is_polled_until_the_provider_captures(store):
    a = MemoryChannel("a", lambda op, ref, n: Action.PEND if op == "authorize" else Action.OK, kind="bank")
    async with Core(store, [a, healthy("b")]) as core:
        rec, _ = await core.submit("k1")
        # The provider settles after the third inquiry.
        orig = a.script

        def settle_after_three(op, ref, n):
            if op == "inquire" and n == 3:
                a.settle(ref, "captured")
            return orig(op, ref, n)

        a.script = settle_after_three
        await core.driver.live(rec.id)[0]
        rec = await core.journal.get(rec.id)
        assert rec.status == "succeeded" and rec.channel == "a"
        assert [x.outcome for x in rec.attempts] == ["captured"]
        assert (await core.check()).ok


async def test_pending_past_the_deadline_is_voided_and_fails(store):
    a = MemoryChannel("a", lambda op, ref, n: Action.PEND if op == "authorize" else Action.OK, kind="bank")
    b = healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "failed" and rec.reason == "deadline_exceeded"
        assert a.ledger[rec.attempts[0].reference].status == "voided"
        assert b.calls == [], "no new attempt after the deadline"
        assert (await core.check()).ok


async def test_max_attempts_bounds_the_channels_tried(store):
    chans = [MemoryChannel(n, script(Action.NOT_PROCESSED)) for n in "abcd"]
    async with Core(store, chans) as core:
        rec = await core.run("k1")
        assert rec.status == "failed" and rec.reason == "max_attempts_reached"
        assert len(rec.attempts) == 3 and chans[3].calls == []
        assert (await core.check()).ok


async def test_no_route_fails_with_a_reason(store):
    async with Core(store, []) as core:
        rec = await core.run("k1")
        assert rec.status == "failed" and rec.reason == "no_route"
        assert (await core.check()).ok


async def test_each_attempt_is_journaled_before_the_provider_hears_of_it(store):
    seen: list[bool] = []

    def check_journal(op, ref, n):
        if op == "authorize":  # another connection must already see the attempt
            seen.append(store.peek("SELECT count(*) FROM attempts WHERE reference=?", ref) == [(1,)])
        return Action.NOT_PROCESSED if ref.endswith(".1") else Action.CAPTURE

    a, b = MemoryChannel("a", check_journal), MemoryChannel("b", check_journal)
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        assert rec.status == "succeeded"
        assert seen == [True, True]


async def test_the_trail_records_every_step_in_order(store):
    a, b = MemoryChannel("a", script(Action.LOST_BEFORE)), healthy("b")
    async with Core(store, [a, b]) as core:
        rec = await core.run("k1")
        events = [e.event for e in await core.journal.trail(rec.id)]
        assert events == [
            "created", "attempt_started", "attempt_unknown", "void_requested", "void_voided",
            "attempt_started", "attempt_captured", "credited",
        ]


async def test_the_deadline_stops_new_attempts(store):
    a = MemoryChannel("a", script(Action.NOT_PROCESSED))
    b = healthy("b")
    settings = replace(SETTINGS, deadline_s=0.0)
    async with Core(store, [a, b], settings=settings) as core:
        rec = await core.run("k1")
        assert rec.status == "failed" and rec.reason == "deadline_exceeded"
        assert a.calls == [] and b.calls == []


@pytest.mark.parametrize("same_body", [True, False])
async def test_same_key_makes_one_recharge(store, same_body):
    async with Core(store, [healthy("a")]) as core:
        first = await core.run("k1")
        if same_body:
            again, fresh = await core.submit("k1")
            assert not fresh and again.id == first.id
        else:
            from orchestrator.driver import IdempotencyConflict

            with pytest.raises(IdempotencyConflict):
                await core.submit("k1", amount=9900)
        assert (await core.check()).recharges == 1
