"""Refunds and disputes (SPEC 19) through the use cases, on every store, against the
in-memory provider: coins leave with the refund's journal entry and come back when it
fails, no refund passes its recharge, a dispute freezes, frees or claws back, and every
change a client subscribed to is in the outbox with it."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from harness import Core

from channels.memory import Action, MemoryChannel
from config import ClientConfig, NotifyConfig, RefundsConfig
from orchestrator import disputes, refunds
from channels import RefundOutcome, RefundResult
from orchestrator.errors import EventTooEarly, IdempotencyConflict, NotFound, RefundRefused
from orchestrator.metrics import Metrics
from orchestrator.notifications import Notifier
from orchestrator.recharges import Viewer

FRONT = Viewer("front")
OPS = Viewer("ops", admin=True)
EVERYTHING = ["recharge.succeeded", "refund.succeeded", "refund.failed", "dispute.opened", "dispute.won",
              "dispute.lost"]


def _clients(events: list[str] = EVERYTHING) -> list[ClientConfig]:
    return [ClientConfig(name="front", key_sha256="0" * 64, scopes=["recharge"],
                         notify=NotifyConfig(url="http://127.0.0.1:9/hook", secret="s" * 16, events=events))]


class AfterSale:
    def __init__(self, core: Core, *, allow_negative: bool = False) -> None:
        self.core = core
        clients = _clients()
        self.notifier = Notifier(lambda: clients)
        self.config = RefundsConfig(allow_negative_balance=allow_negative, retry_interval_s=30)

        async def channel(name: str, now: float):
            return core.channels.get(name)

        self.refunds = refunds.RefundDeps(core.journal, channel, core.clock, Metrics(), self.notifier,
                                          lambda: self.config)
        self.disputes = disputes.DisputeDeps(core.journal, core.clock, Metrics(), self.notifier)

    async def refund(self, rid: str, key: str, amount: int | None = None, viewer: Viewer = FRONT):
        body = {} if amount is None else {"amount_minor": amount}
        return await refunds.request(refunds.NewRefund(viewer, key, rid, amount, None, body), self.refunds)

    async def coins(self, user: str = "u1") -> tuple[int, int]:
        w = await self.core.journal.wallet(user, 1000)
        assert w.coins == sum(e.coins for e in w.entries), "the balance is the sum of its entries"
        return w.coins, w.frozen_coins

    async def notices(self) -> list[tuple[str, str]]:
        rows = await self.core.journal.notices("pending", 1000)
        return [(r.notice.type, orjson.loads(r.notice.body)["data"]["status"]) for r in rows]


async def _credited(store, channel: MemoryChannel | None = None, **kw):
    core = Core(store, [channel or MemoryChannel("a")])
    await core.__aenter__()
    rec = await core.run("k1")
    assert rec.status == "succeeded"
    return core, AfterSale(core, **kw), rec, rec.coins + rec.bonus_coins


@pytest.fixture
async def sold(store):
    core, after, rec, total = await _credited(store)
    yield core, after, rec, total
    await _closed(core)


async def _closed(core: Core) -> None:
    """SPEC 18, refunds and disputes included, then the core stops."""
    try:
        report = await core.check()
        assert report.ok, report.violations
    finally:
        await core.__aexit__(None, None, None)


async def test_a_whole_refund_takes_the_coins_and_the_provider_gives_the_money_back(sold):
    core, after, rec, total = sold
    refund, replayed = await after.refund(rec.id, "r1")
    assert not replayed and (refund.status, refund.amount_minor, refund.coins) == ("succeeded", rec.amount_minor, total)
    assert core.channels["a"].ledger[rec.attempts[0].reference].status == "refunded"
    assert await after.coins() == (0, 0)
    events = [e.event for e in await core.journal.trail(rec.id)]
    assert events[-2:] == ["refund_requested", "refund_succeeded"]
    assert await after.notices() == [("refund.succeeded", "succeeded")]
    # Nothing is left to refund.
    with pytest.raises(RefundRefused) as err:
        await after.refund(rec.id, "r2")
    assert (err.value.code, err.value.field) == ("refund_exceeds_amount", "amount_minor")


async def test_partial_refunds_take_back_exactly_the_coins_in_total_and_never_more(sold):
    core, after, rec, total = sold
    parts = [rec.amount_minor // 3, rec.amount_minor // 3]
    got = [(await after.refund(rec.id, f"r{i}", amount))[0] for i, amount in enumerate(parts)]
    with pytest.raises(RefundRefused) as err:
        await after.refund(rec.id, "too-much", rec.amount_minor - sum(parts) + 1)
    assert err.value.code == "refund_exceeds_amount"
    rest, _ = await after.refund(rec.id, "rest")
    assert rest.amount_minor == rec.amount_minor - sum(parts)
    assert sum(r.coins for r in [*got, rest]) == total
    assert await after.coins() == (0, 0)
    assert core.channels["a"].ledger[rec.attempts[0].reference].status == "refunded"


async def test_a_key_answers_its_refund_again_and_refuses_another_request(sold):
    _, after, rec, _ = sold
    first, _ = await after.refund(rec.id, "r1", 100)
    again, replayed = await after.refund(rec.id, "r1", 100)
    assert replayed and again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await after.refund(rec.id, "r1", 200)
    assert len(await after.core.journal.refunds_of(rec.id)) == 1


async def test_only_the_callers_succeeded_recharges_can_be_refunded(store):
    core, after, rec, _ = await _credited(store)
    try:
        with pytest.raises(NotFound):
            await after.refund(rec.id, "r1", viewer=Viewer("someone-else"))
        with pytest.raises(NotFound):
            await after.refund("rc_0123", "r1")
        core.channels["a"].script = lambda op, ref, n: Action.DECLINE_HARD if op == "authorize" else Action.OK
        declined = await core.run("k2")
        assert declined.status == "declined"
        with pytest.raises(RefundRefused) as err:
            await after.refund(declined.id, "r2")
        assert (err.value.code, err.value.field) == ("not_refundable", "recharge_id")
        assert await core.journal.refunds_of(declined.id) == []
    finally:
        await _closed(core)


async def test_concurrent_refunds_of_one_recharge_never_pass_its_amount(sold):
    core, after, rec, total = sold
    share = rec.amount_minor * 3 // 10
    answers = await asyncio.gather(*(after.refund(rec.id, f"r{i}", share) for i in range(6)), return_exceptions=True)
    made = [a[0] for a in answers if isinstance(a, tuple)]
    refused = [a for a in answers if isinstance(a, RefundRefused)]
    assert len(made) == 3 and len(refused) == 3, answers
    assert all(e.code == "refund_exceeds_amount" for e in refused)
    stored = await core.journal.refunds_of(rec.id)
    assert sum(r.amount_minor for r in stored) <= rec.amount_minor
    assert (await after.coins())[0] == total - sum(r.coins for r in stored)


async def test_a_refund_the_provider_fails_gives_the_coins_back(store):
    a = MemoryChannel("a", lambda op, ref, n: Action.DECLINE_HARD if op == "issue_refund" else Action.CAPTURE
                      if op == "authorize" else Action.OK)
    core, after, rec, total = await _credited(store, a)
    try:
        refund, _ = await after.refund(rec.id, "r1", 1000)
        assert refund.status == "failed" and refund.error
        assert await after.coins() == (total, 0)
        kinds = [e.kind for e in (await core.journal.wallet("u1")).entries]
        assert kinds == ["refund_reversal", "refund", "credit"]
        assert await after.notices() == [("refund.failed", "failed")]
        # The failed one does not count: the whole amount can still be refunded.
        a.script = lambda op, ref, n: Action.OK
        whole, _ = await after.refund(rec.id, "r2")
        assert (whole.status, whole.amount_minor) == ("succeeded", rec.amount_minor)
    finally:
        await _closed(core)


async def test_a_pending_refund_is_settled_by_its_webhook_or_by_asking_again(store):
    a = MemoryChannel("a", lambda op, ref, n: Action.PEND if op == "issue_refund" else Action.CAPTURE
                      if op == "authorize" else Action.OK)
    core, after, rec, total = await _credited(store, a)
    try:
        by_hook, _ = await after.refund(rec.id, "r1", 1000)
        by_poll, _ = await after.refund(rec.id, "r2", 2000)
        assert by_hook.status == by_poll.status == "pending"
        a.settle_refund(by_hook.id, "refunded")
        ref = rec.attempts[0].reference
        assert await refunds.on_event("a", "ev1", ref, by_hook.id, "refunded", after.refunds) == "refund_succeeded"
        assert await refunds.on_event("a", "ev1", ref, by_hook.id, "refunded", after.refunds) == "duplicate"
        assert await refunds.on_event("a", "ev2", "other-ref", by_hook.id, "refunded", after.refunds) is None
        worker = refunds.RefundWorker(after.refunds)
        assert await worker.pass_once() == 0, "not due yet"
        core.clock.advance(31)
        a.settle_refund(by_poll.id, "failed")
        assert await worker.pass_once() == 1
        assert (await core.journal.get_refund(by_poll.id)).status == "failed"
        assert (await core.journal.get_refund(by_hook.id)).status == "succeeded"
        assert await after.coins() == (total - by_hook.coins, 0)
        core.clock.advance(31)
        assert await worker.pass_once() == 0, "nothing pending"
    finally:
        await _closed(core)


# -- disputes -------------------------------------------------------------------------------


async def test_a_dispute_freezes_the_coins_and_a_loss_claws_them_back(sold):
    core, after, rec, total = sold
    ref = rec.attempts[0].reference
    part, _ = await after.refund(rec.id, "r1", 1000)
    assert await disputes.on_event("a", "d1", ref, "disputed", after.disputes) == "dispute_open"
    assert await disputes.on_event("a", "d1", ref, "disputed", after.disputes) == "duplicate"
    assert await after.coins() == (total - part.coins, total - part.coins)
    with pytest.raises(RefundRefused) as err:
        await after.refund(rec.id, "r2", 1000)
    assert err.value.code == "recharge_disputed"
    assert await disputes.on_event("a", "d2", ref, "dispute_lost", after.disputes) == "dispute_lost"
    assert await after.coins() == (0, 0)
    assert await disputes.on_event("a", "d3", ref, "dispute_won", after.disputes) == "ignored", "the outcome is final"
    assert [t for t, _ in await after.notices()] == ["refund.succeeded", "dispute.opened", "dispute.lost"]
    events = [e.event for e in await core.journal.trail(rec.id)]
    assert events[-3:] == ["dispute_open", "dispute_lost", "dispute_event_ignored"]


async def test_a_won_dispute_unfreezes_and_refunds_work_again(sold):
    core, after, rec, total = sold
    ref = rec.attempts[0].reference
    await disputes.on_event("a", "d1", ref, "disputed", after.disputes)
    assert await disputes.on_event("a", "d2", ref, "dispute_won", after.disputes) == "dispute_won"
    assert await after.coins() == (total, 0)
    refund, _ = await after.refund(rec.id, "r1")
    assert refund.status == "succeeded"


async def test_a_loss_that_arrives_before_the_opening_still_claws_back_once(sold):
    core, after, rec, total = sold
    ref = rec.attempts[0].reference
    assert await disputes.on_event("a", "d2", ref, "dispute_lost", after.disputes) == "dispute_lost"
    assert await disputes.on_event("a", "d1", ref, "disputed", after.disputes) == "ignored"
    assert await after.coins() == (0, 0)
    assert [e.kind for e in (await core.journal.wallet("u1")).entries] == ["clawback", "credit"]


async def test_a_dispute_of_a_payment_we_do_not_know_changes_nothing(sold):
    core, after, rec, total = sold
    assert await disputes.on_event("a", "d9", "no-such-payment", "disputed", after.disputes) == "unknown_payment"
    assert await disputes.on_event("b", "d9", rec.attempts[0].reference, "disputed", after.disputes) == (
        "unknown_payment"), "the payment is on another channel"
    assert await after.coins() == (total, 0)


async def test_an_admins_refund_is_notified_to_the_recharges_owner_who_can_read_it(sold):
    core, after, rec, _ = sold
    refund, _ = await after.refund(rec.id, "ops-1", 1000, viewer=OPS)
    assert refund.client == "ops" and refund.status == "succeeded"
    rows = await core.journal.notices("pending", 100)
    assert [(r.notice.client, r.notice.type) for r in rows] == [("front", "refund.succeeded")]
    assert (await refunds.get(refund.id, FRONT, after.refunds)).id == refund.id
    with pytest.raises(NotFound):
        await refunds.get(refund.id, Viewer("someone-else"), after.refunds)


async def test_a_refund_of_another_amount_than_asked_stays_pending_for_a_person(sold):
    core, after, rec, total = sold

    class Generous:
        async def issue_refund(self, request):
            return RefundResult(RefundOutcome.REFUNDED, amount_minor=request.amount_minor + 1)

    async def channel(name, now):
        return Generous()

    after.refunds.channels = channel
    refund, _ = await after.refund(rec.id, "r1", 1000)
    assert refund.status == "pending" and refund.error.startswith("amount_mismatch"), refund
    assert (await after.coins())[0] == total - refund.coins, "its coins stay out meanwhile"
    ref = rec.attempts[0].reference
    assert await refunds.on_event("a", "ev1", ref, refund.id, "refunded", after.refunds, 1001) == "amount_mismatch"
    assert (await core.journal.get_refund(refund.id)).status == "pending"
    # Put right by hand at the provider, it settles on the next answer.
    after.refunds.channels = lambda name, now: _memory(core)
    core.clock.advance(31)
    assert await refunds.RefundWorker(after.refunds).pass_once() == 1
    assert (await core.journal.get_refund(refund.id)).status == "succeeded"


async def _memory(core):
    return core.channels["a"]


async def test_an_event_about_a_refund_we_do_not_know_is_recorded_once(sold):
    core, after, rec, _ = sold
    ref = rec.attempts[0].reference
    assert await refunds.on_event("a", "ev1", ref, "rf_not_ours", "failed", after.refunds) == "unknown_refund"
    assert await refunds.on_event("a", "ev1", ref, "rf_not_ours", "failed", after.refunds) == "duplicate"
    assert await refunds.on_event("a", "ev2", ref, "rf_not_ours", "refunded", after.refunds) is None, (
        "a whole refund is the payment's news: the driver's")
    assert await refunds.on_event("a", "ev3", "nope", "rf_x", "failed", after.refunds) == "unknown_payment"


async def test_a_dispute_before_the_capture_reached_the_journal_is_refused_unrecorded(store):
    pend = MemoryChannel("a", lambda op, ref, n: Action.PEND if op == "authorize" else Action.OK, kind="bank")
    core = Core(store, [pend])
    await core.__aenter__()
    try:
        core.clock.sleep = lambda s: asyncio.sleep(10)  # only the capture's event finishes it
        rec, _ = await core.submit("k1")
        for _ in range(200):
            rec = await core.journal.get(rec.id)
            if rec.attempts and rec.attempts[0].state == "pending":
                break
            await asyncio.sleep(0.005)
        after = AfterSale(core)
        ref = rec.attempts[0].reference
        with pytest.raises(EventTooEarly):
            await disputes.on_event("a", "d1", ref, "disputed", after.disputes)
        assert not await core.journal.event_seen("a", "d1"), "not recorded: the provider sends it again"
        pend.settle(ref, "captured")
        from channels import AttemptOutcome
        assert await core.driver.on_event("a", "c1", ref, AttemptOutcome.CAPTURED) == "succeeded"
        assert await disputes.on_event("a", "d1", ref, "disputed", after.disputes) == "dispute_open"
        total = rec.coins + rec.bonus_coins
        assert await after.coins() == (total, total)
    finally:
        await _closed(core)
