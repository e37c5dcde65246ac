"""Partial refunds at the in-memory provider: the simulator's rules (SPEC 6), so a core test
against it meets what a real provider says: idempotent by refund_reference, never more
than was captured, a refusal FAILED with its code and nothing changed."""

from __future__ import annotations

import pytest

from channels import AttemptOutcome, Channel, PaymentRequest, RefundOutcome, RefundRequest, RefundResult
from channels.memory import Action, MemoryChannel

R = RefundOutcome


def charge(reference: str = "r1", amount: int = 1000) -> PaymentRequest:
    return PaymentRequest(reference, amount, "CNY", "ewallet", {"token": "t"})


def refund(refund_reference: str, amount: int, reference: str = "r1") -> RefundRequest:
    return RefundRequest(reference, refund_reference, amount)


def script(**refunds: list[Action]):
    """Authorize as asked by reference prefix ('d' declines, 'p' pends), and each
    refund_reference's calls in turn from ``refunds`` (then OK)."""
    def decide(op: str, key: str, n: int) -> Action:
        if op == "authorize":
            return {"d": Action.DECLINE_HARD, "p": Action.PEND}.get(key[0], Action.CAPTURE)
        actions = refunds.get(key, []) if op == "issue_refund" else []
        return actions[n - 1] if n <= len(actions) else Action.OK
    return decide


@pytest.fixture
async def ch() -> MemoryChannel:
    channel = MemoryChannel("m", script(**{"rf-pend": [Action.PEND], "rf-fail": [Action.DECLINE_SOFT],
                                            "rf-lost": [Action.LOST_AFTER], "rf-err": [Action.FAIL, Action.OK]}))
    await channel.authorize(charge())
    return channel


async def test_it_is_a_channel(ch):
    assert isinstance(ch, Channel)


async def test_partial_refunds_add_up_and_the_last_refunds_the_payment(ch):
    assert await ch.issue_refund(refund("rf1", 300)) == RefundResult(R.REFUNDED, 300)
    assert (ch.ledger["r1"].status, ch.ledger["r1"].refunded_minor) == ("captured", 300)
    assert (await ch.issue_refund(refund("rf2", 700))).outcome is R.REFUNDED
    assert (ch.ledger["r1"].status, ch.ledger["r1"].refunded_minor) == ("refunded", 1000)
    assert (await ch.inquire("r1")).outcome is AttemptOutcome.REFUNDED
    assert ch.ledger["r1"].history == ["captured", "refunded"]


async def test_the_same_refund_reference_again_answers_that_refund(ch):
    first = await ch.issue_refund(refund("rf1", 300))
    assert await ch.issue_refund(refund("rf1", 300)) == first
    assert ch.ledger["r1"].refunded_minor == 300 and ch.ledger["r1"].refunds == ["rf1"]


async def test_a_reused_refund_reference_is_refused(ch):
    await ch.authorize(charge("r2"))
    await ch.issue_refund(refund("rf1", 300))
    for request in (refund("rf1", 301), refund("rf1", 300, "r2")):
        res = await ch.issue_refund(request)
        assert (res.outcome, res.code) == (R.FAILED, "refund_reference_reused")
    assert [ch.ledger[r].refunded_minor for r in ("r1", "r2")] == [300, 0]


async def test_more_than_is_left_is_refused_and_changes_nothing(ch):
    await ch.issue_refund(refund("rf1", 600))
    res = await ch.issue_refund(refund("rf2", 401))
    assert (res.outcome, res.code) == (R.FAILED, "refund_exceeds_amount") and "400 is left" in res.error
    assert "rf2" not in ch.refunds and ch.ledger["r1"].refunded_minor == 600
    assert (await ch.issue_refund(refund("rf2", 400))).outcome is R.REFUNDED  # the name is still free


async def test_what_is_not_captured_refunded_or_disputed_is_refused(ch):
    await ch.authorize(charge("d1"))
    await ch.authorize(charge("p1"))
    await ch.authorize(charge("r2"))
    await ch.void("v1")
    await ch.issue_refund(refund("rf-all", 1000, "r2"))
    await ch.authorize(charge("r3"))
    ch.dispute("r3")
    cases = {"d1": "not_captured", "p1": "not_captured", "v1": "not_captured", "r2": "already_refunded",
             "r3": "disputed"}
    for i, (reference, code) in enumerate(cases.items()):
        res = await ch.issue_refund(refund(f"rf{i}", 100, reference))
        assert (res.outcome, res.code) == (R.FAILED, code), reference
    assert (await ch.refund("r3")).outcome is AttemptOutcome.CAPTURED  # nor the whole of it


async def test_no_such_payment_is_unknown(ch):
    assert (await ch.issue_refund(refund("rf1", 100, "never"))).outcome is R.UNKNOWN


async def test_a_pending_refund_holds_its_share_until_it_settles(ch):
    assert await ch.issue_refund(refund("rf-pend", 600)) == RefundResult(R.PENDING, 600)
    assert ch.ledger["r1"].refunded_minor == 0
    assert (await ch.issue_refund(refund("rf2", 401))).code == "refund_exceeds_amount"
    ch.settle_refund("rf-pend")
    assert await ch.issue_refund(refund("rf-pend", 600)) == RefundResult(R.REFUNDED, 600)
    assert ch.ledger["r1"].refunded_minor == 600


async def test_a_failed_refund_gives_its_share_back(ch):
    assert await ch.issue_refund(refund("rf-fail", 1000)) == RefundResult(R.FAILED, 1000)
    assert ch.ledger["r1"].refunded_minor == 0
    assert (await ch.issue_refund(refund("rf-fail", 1000))).outcome is R.FAILED  # stays failed
    assert (await ch.issue_refund(refund("rf2", 1000))).outcome is R.REFUNDED


async def test_a_pending_refund_may_settle_failed(ch):
    await ch.issue_refund(refund("rf-pend", 1000))
    ch.settle_refund("rf-pend", "failed")
    assert await ch.issue_refund(refund("rf-pend", 1000)) == RefundResult(R.FAILED, 1000)
    assert ch.ledger["r1"].refunded_minor == 0


async def test_a_lost_answer_is_unknown_but_the_refund_happened(ch):
    res = await ch.issue_refund(refund("rf-lost", 300))
    assert res.outcome is R.UNKNOWN
    assert ch.ledger["r1"].refunded_minor == 300
    assert await ch.issue_refund(refund("rf-lost", 300)) == RefundResult(R.REFUNDED, 300)


async def test_a_failed_call_is_unknown_and_refunds_nothing(ch):
    assert (await ch.issue_refund(refund("rf-err", 300))).outcome is R.UNKNOWN
    assert ch.ledger["r1"].refunded_minor == 0
    assert (await ch.issue_refund(refund("rf-err", 300))).outcome is R.REFUNDED
    assert ch.calls.count(("issue_refund", "rf-err")) == 2


async def test_the_whole_refund_takes_the_rest_after_partial_ones(ch):
    await ch.issue_refund(refund("rf1", 300))
    assert (await ch.refund("r1")).outcome is AttemptOutcome.REFUNDED
    assert ch.ledger["r1"].refunded_minor == 1000
    assert (await ch.issue_refund(refund("rf2", 1))).code == "already_refunded"


async def test_the_whole_refund_waits_for_pending_partial_ones(ch):
    await ch.issue_refund(refund("rf-pend", 300))
    assert (await ch.refund("r1")).outcome is AttemptOutcome.CAPTURED
    ch.settle_refund("rf-pend")
    assert (ch.ledger["r1"].status, ch.ledger["r1"].refunded_minor) == ("refunded", 1000)
