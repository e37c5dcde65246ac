"""The journal contract after the sale (SPEC 19), for every store: refunds debit coins in
the transaction that journals them and give them back when they fail, disputes freeze,
release or claw back, and the outbox holds each notice with the change it reports and
hands it to one dispatcher at a time, in order per key."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from harness import make_recharge
from test_conformance import clock, cstore, journal, kind, pair  # noqa: F401  (fixtures)

from orchestrator import transitions as tr
from orchestrator.audit import verify_rows
from orchestrator.journal import RefundGuard
from orchestrator.model import (
    Credit,
    Dispute,
    DisputeStatus,
    Notice,
    RechargeStatus,
    Refund,
    RefundStatus,
    Step,
    TrailEntry,
)

OPEN = RefundGuard(0, 0, None, False)


async def _succeeded(journal, clock, key="k1", user="u1"):
    rec, trail = make_recharge(clock, key, user=user)
    assert await journal.create(rec, trail) is None
    total = rec.coins + rec.bonus_coins
    step = Step(rec.id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=tr.NONTERMINAL, channel="a",
                credit=Credit(rec.id, rec.user_id, total, clock.now()))
    assert await journal.apply(step)
    return await journal.get(rec.id), total


def _refund(rec, n: int, amount: int, coins: int, at: float, key: str | None = None) -> Refund:
    return Refund(f"rf_{rec.id[-6:]}{n}", rec.id, rec.client, key or f"r{n}", "fp", rec.user_id, "a", f"{rec.id}.1",
                  amount, rec.currency, coins, RefundStatus.PENDING, "asked", at, at, next_at=at)


def _notice(n: str, key: str, at: float) -> Notice:
    return Notice(f"evt_{n}", "front", key, "refund.succeeded", at, f'{{"id": "evt_{n}"}}')


def _entry(rec, at: float, event: str = "refund_requested") -> TrailEntry:
    return TrailEntry(rec.id, at, event, rec.status.value)


async def _wallet_sums(journal, user: str) -> tuple[int, int]:
    w = await journal.wallet(user, 1000)
    return w.coins, sum(e.coins for e in w.entries)


# -- refunds --------------------------------------------------------------------------------


async def test_a_refund_debits_its_coins_with_its_trail_and_notice_and_its_key_holds_it(journal, clock):
    rec, total = await _succeeded(journal, clock)
    now = clock.now()
    rf = _refund(rec, 1, 4250, 470, now)
    assert await journal.create_refund(rf, _entry(rec, now), OPEN, (_notice("1", rec.id, now),)) is None
    wallet = await journal.wallet(rec.user_id)
    assert wallet.coins == total - 470
    assert (wallet.entries[0].kind, wallet.entries[0].coins, wallet.entries[0].ref) == ("refund", -470, rf.id)
    assert await journal.get_refund(rf.id) == rf
    assert await journal.find_refund(rec.client, "r1") == rf
    assert await journal.refunds_of(rec.id) == [rf]
    assert [e.event for e in await journal.trail(rec.id)][-1] == "refund_requested"
    assert [r.notice.id for r in await journal.notices("pending")] == ["evt_1"]
    # The same key again answers the refund it holds, and writes nothing.
    again = replace(rf, id="rf_other", amount_minor=1)
    assert await journal.create_refund(again, _entry(rec, now), RefundGuard(4250, 470, None, False)) == rf
    assert await journal.get_refund("rf_other") is None
    assert await _wallet_sums(journal, rec.user_id) == (total - 470, total - 470)
    verify_rows(await journal.audit_rows())


async def test_a_refund_decided_on_stale_reads_is_refused_whole(journal, clock):
    rec, total = await _succeeded(journal, clock)
    now = clock.now()
    assert await journal.create_refund(_refund(rec, 1, 1000, 100, now), _entry(rec, now), OPEN) is None
    # Decided without seeing the first refund: refused, nothing written.
    assert await journal.create_refund(_refund(rec, 2, 1000, 100, now), _entry(rec, now), OPEN) == "stale"
    assert await journal.create_refund(_refund(rec, 3, 1000, 100, now), _entry(rec, now),
                                       RefundGuard(1000, 100, DisputeStatus.OPEN, False)) == "stale"
    assert len(await journal.refunds_of(rec.id)) == 1
    assert (await journal.wallet(rec.user_id)).coins == total - 100


async def test_a_refund_needs_the_coins_unless_negative_balances_are_allowed(journal, clock):
    rec, total = await _succeeded(journal, clock)
    now = clock.now()
    assert await journal.create_refund(_refund(rec, 1, 8500, total + 1, now), _entry(rec, now),
                                       OPEN) == "insufficient_coins"
    assert await journal.refunds_of(rec.id) == []
    assert await journal.create_refund(_refund(rec, 1, 8500, total + 1, now), _entry(rec, now),
                                       RefundGuard(0, 0, None, True)) is None
    assert await _wallet_sums(journal, rec.user_id) == (-1, -1)


async def test_settling_a_refund_happens_once_and_a_failed_one_gives_its_coins_back(journal, clock):
    rec, total = await _succeeded(journal, clock)
    now = clock.now()
    a, b = _refund(rec, 1, 1000, 100, now), _refund(rec, 2, 2000, 200, now)
    assert await journal.create_refund(a, _entry(rec, now), OPEN) is None
    assert await journal.create_refund(b, _entry(rec, now), RefundGuard(1000, 100, None, False)) is None
    clock.advance(1)
    t = clock.now()
    assert await journal.settle_refund(a.id, RefundStatus.SUCCEEDED, t, event=("a", "e1"),
                                       trail=(_entry(rec, t, "refund_succeeded"),),
                                       notices=(_notice("a", rec.id, t),))
    assert not await journal.settle_refund(a.id, RefundStatus.FAILED, t), "settled once"
    assert not await journal.settle_refund(b.id, RefundStatus.FAILED, t, event=("a", "e1")), "an event applies once"
    assert await journal.event_seen("a", "e1")
    assert await journal.settle_refund(b.id, RefundStatus.FAILED, t, error="declined by the bank")
    got = await journal.get_refund(b.id)
    assert (got.status, got.error, got.next_at) == (RefundStatus.FAILED, "declined by the bank", None)
    assert (await journal.get_refund(a.id)).status is RefundStatus.SUCCEEDED
    assert await _wallet_sums(journal, rec.user_id) == (total - 100, total - 100)
    kinds = [e.kind for e in (await journal.wallet(rec.user_id)).entries]
    assert kinds == ["refund_reversal", "refund", "refund", "credit"]


async def test_pending_refunds_are_claimed_when_due_and_postponed(journal, clock):
    rec, _ = await _succeeded(journal, clock)
    now = clock.now()
    rf = _refund(rec, 1, 1000, 100, now)
    assert await journal.create_refund(rf, _entry(rec, now), OPEN) is None
    claimed = await journal.claim_refunds(now, now + 30)
    assert [(r.id, r.next_at) for r in claimed] == [(rf.id, now + 30)]
    assert await journal.claim_refunds(now + 10, now + 40) == []
    await journal.retry_refund(rf.id, now + 5, "no answer")
    got = await journal.get_refund(rf.id)
    assert (got.next_at, got.error, got.tries) == (now + 5, "no answer", 1)
    assert [r.id for r in await journal.claim_refunds(now + 5, now + 60)] == [rf.id]
    assert await journal.settle_refund(rf.id, RefundStatus.SUCCEEDED, now + 6)
    assert await journal.claim_refunds(now + 100, now + 200) == []


async def test_two_instances_refunding_one_recharge_at_once_never_pass_its_amount(pair, clock):
    a, b = pair
    rec, total = await _succeeded(a, clock)
    now = clock.now()
    # Both decided on the same reads (nothing refunded yet): one lands, one is told to decide again.
    answers = await asyncio.gather(
        a.create_refund(_refund(rec, 1, 8500, total, now), _entry(rec, now), OPEN),
        b.create_refund(_refund(rec, 2, 8500, total, now), _entry(rec, now), OPEN))
    assert sorted(map(str, answers)) == ["None", "stale"]
    assert len(await a.refunds_of(rec.id)) == 1
    assert await _wallet_sums(a, rec.user_id) == (0, 0)


# -- disputes -------------------------------------------------------------------------------


def _dispute(rec, status: DisputeStatus, coins: int, at: float, opened: float | None = None) -> Dispute:
    return Dispute(rec.id, rec.user_id, status, coins, opened if opened is not None else at, at)


async def test_a_dispute_freezes_then_a_loss_claws_back_into_debt(journal, clock):
    rec, total = await _succeeded(journal, clock)
    now = clock.now()
    opened = _dispute(rec, DisputeStatus.OPEN, total, now)
    assert await journal.apply_dispute(opened, None, 0, ("a", "d1"), (_entry(rec, now, "dispute_opened"),),
                                       (_notice("d1", rec.id, now),))
    assert not await journal.apply_dispute(opened, None, 0, ("a", "d1b")), "the dispute is no longer None"
    assert not await journal.apply_dispute(_dispute(rec, DisputeStatus.LOST, total, now), DisputeStatus.OPEN, 0,
                                           ("a", "d1")), "an event applies once"
    wallet = await journal.wallet(rec.user_id)
    assert (wallet.coins, wallet.frozen_coins) == (total, total)
    assert await journal.dispute_of(rec.id) == opened
    # The user spent some coins meanwhile: the loss leaves a debt.
    clock.advance(1)
    t = clock.now()
    lost = _dispute(rec, DisputeStatus.LOST, total, t, opened=now)
    assert await journal.apply_dispute(lost, DisputeStatus.OPEN, 0, ("a", "d2"))
    wallet = await journal.wallet(rec.user_id)
    assert (wallet.coins, wallet.frozen_coins) == (0, 0)
    assert (wallet.entries[0].kind, wallet.entries[0].coins) == ("clawback", -total)
    assert await journal.dispute_of(rec.id) == lost


async def test_a_won_dispute_unfreezes_and_a_guard_on_refunds_holds(journal, clock):
    rec, total = await _succeeded(journal, clock)
    now = clock.now()
    rf = _refund(rec, 1, 1000, 100, now)
    assert await journal.create_refund(rf, _entry(rec, now), OPEN) is None
    assert not await journal.apply_dispute(_dispute(rec, DisputeStatus.OPEN, total, now), None, 0, ("a", "d1")), (
        "decided without the refund")
    assert not await journal.event_seen("a", "d1")
    assert await journal.apply_dispute(_dispute(rec, DisputeStatus.OPEN, total - 100, now), None, 100, ("a", "d1"))
    # A refund that fails while its recharge is disputed: its coins come back frozen.
    assert await journal.settle_refund(rf.id, RefundStatus.FAILED, now)
    wallet = await journal.wallet(rec.user_id)
    assert (wallet.coins, wallet.frozen_coins) == (total, total)
    assert (await journal.dispute_of(rec.id)).coins == total
    won = _dispute(rec, DisputeStatus.WON, total, now + 1, opened=now)
    assert await journal.apply_dispute(won, DisputeStatus.OPEN, 0, ("a", "d2"))
    wallet = await journal.wallet(rec.user_id)
    assert (wallet.coins, wallet.frozen_coins) == (total, 0)


async def test_an_event_that_changes_nothing_is_recorded_once(journal, clock):
    rec, _ = await _succeeded(journal, clock)
    assert await journal.record_event(("a", "x1"), rec.id, (_entry(rec, clock.now(), "webhook_ignored"),))
    assert not await journal.record_event(("a", "x1"), rec.id, (_entry(rec, clock.now(), "webhook_ignored"),))
    assert await journal.event_seen("a", "x1")
    assert [e.event for e in await journal.trail(rec.id)].count("webhook_ignored") == 1


# -- the outbox -----------------------------------------------------------------------------


async def test_a_steps_notices_land_with_it_or_not_at_all(journal, clock):
    rec, trail = make_recharge(clock, "k1")
    assert await journal.create(rec, trail, notices=(_notice("0", rec.id, clock.now()),)) is None
    fail = Step(rec.id, clock.now(), status=RechargeStatus.FAILED, expect_status=tr.NONTERMINAL,
                notices=(_notice("1", rec.id, clock.now()),))
    assert await journal.apply(fail)
    assert not await journal.apply(replace(fail, notices=(_notice("2", rec.id, clock.now()),)))
    assert [r.notice.id for r in await journal.notices("pending")] == ["evt_0", "evt_1"]
    row = await journal.notice("evt_1")
    assert (row.notice, row.state, row.attempts) == (_notice("1", rec.id, clock.now()), "pending", 0)


async def test_notices_go_out_in_order_per_key_to_one_claimer_at_a_time(pair, clock):
    a, b = pair
    now = clock.now()
    await a.add_notices((_notice("1", "rc_x", now), _notice("2", "rc_x", now), _notice("3", "rc_y", now)))
    got = await a.claim_notices("A", now, 30)
    assert [r.notice.id for r in got] == ["evt_1", "evt_3"], "only the first of each key"
    assert await b.claim_notices("B", now, 30) == [], "held by A"
    assert not await b.notice_delivered("evt_1", "B", now), "B does not hold it"
    assert await a.notice_delivered("evt_1", "A", now)
    assert [r.notice.id for r in await b.claim_notices("B", now, 30)] == ["evt_2"]
    # A failed delivery waits for its time; then it is claimable again, once.
    assert await b.notice_failed("evt_2", "B", now + 10, "503")
    assert await a.claim_notices("A", now + 5, 30) == [], "evt_3 is still A's, evt_2 not yet due"
    (row,) = await a.claim_notices("A", now + 10, 30)
    assert (row.notice.id, row.attempts, row.last_error) == ("evt_2", 1, "503")
    # A claim that ran out lets another claimer take the notice.
    assert [r.notice.id for r in await b.claim_notices("B", now + 41, 30)] == ["evt_3", "evt_2"]
    stats = await a.outbox_stats()
    assert (stats.pending, stats.dead, stats.oldest_pending_at) == (2, 0, now)


async def test_a_dead_notice_can_be_redelivered(journal, clock):
    now = clock.now()
    await journal.add_notices((_notice("1", "rc_x", now), _notice("2", "rc_x", now)))
    (row,) = await journal.claim_notices("A", now, 30)
    assert await journal.notice_failed("evt_1", "A", None, "gave up")
    assert [r.notice.id for r in await journal.notices("dead")] == ["evt_1"]
    assert [r.notice.id for r in await journal.claim_notices("A", now, 30)] == ["evt_2"], "a dead one blocks nothing"
    assert await journal.notice_delivered("evt_2", "A", now)
    again = await journal.redeliver("evt_1", now + 100)
    assert (again.state, again.next_at, again.window_start) == ("pending", now + 100, now + 100)
    assert await journal.redeliver("evt_nope", now) is None
    assert [r.notice.id for r in await journal.claim_notices("A", now + 100, 30)] == ["evt_1"]
    assert [r.notice.id for r in await journal.notices("delivered")] == ["evt_2"]
    assert (await journal.outbox_stats()).dead == 0


async def test_one_clients_pending_notice_never_holds_back_anothers(journal, clock):
    now = clock.now()
    theirs = Notice("evt_o1", "ops", "rc_x", "refund.succeeded", now, "{}")
    await journal.add_notices((theirs, _notice("1", "rc_x", now)))
    assert sorted(r.notice.id for r in await journal.claim_notices("A", now, 30)) == ["evt_1", "evt_o1"]
