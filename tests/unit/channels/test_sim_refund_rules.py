"""The simulator's refund rules as pure ledger operations, over any sequence of refunds
and settlements: never more refunded (or held by pending refunds) than was captured,
``refunded_minor`` is what the refunded refunds add up to, and the payment is
``refunded`` exactly when nothing is left."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from channels.simulator import KIND_DEFAULTS, ChannelSpec, Payment, SimChannel

AMOUNT = 1000
STATUSES = ("refunded", "pending", "failed")

steps = st.lists(st.one_of(
    st.tuples(st.just("refund"), st.integers(1, 600), st.sampled_from(STATUSES)),
    st.tuples(st.just("settle"), st.integers(0, 20), st.sampled_from(("refunded", "failed"))),
), max_size=30)


def _captured() -> tuple[SimChannel, Payment]:
    ch = SimChannel(ChannelSpec("t1", "direct_api", "whsec_test_t1", KIND_DEFAULTS["direct_api"], "1"))
    payment = ch.record("r1", AMOUNT, "CNY", None)
    ch.move(payment, "captured")
    return ch, payment


@given(steps)
def test_refunds_never_exceed_the_capture_and_add_up(steps):
    ch, payment = _captured()
    for i, (op, n, status) in enumerate(steps):
        if op == "settle":
            pending = [r for r in payment.refunds if r.status == "pending"]
            if pending:
                ch.settle_refund(payment, pending[n % len(pending)], status)
        else:
            left = payment.refundable_minor
            refusal = payment.refund_refusal(n)
            if payment.status == "refunded":
                assert refusal is not None and refusal.code == "already_refunded"
            else:
                assert (refusal is not None) == (n > left)
            if refusal is None:
                ch.refund(payment, f"rf{i}", n, status)
        held = sum(r.amount_minor for r in payment.refunds if r.status == "pending")
        assert payment.refunded_minor == sum(r.amount_minor for r in payment.refunds if r.status == "refunded")
        assert payment.refunded_minor + held <= AMOUNT
        assert (payment.status == "refunded") == (payment.refunded_minor == AMOUNT)
    assert set(ch.refunds) == {r.refund_reference for r in payment.refunds}


def test_the_whole_rest_is_refused_only_when_nothing_is_left():
    ch, payment = _captured()
    ch.refund(payment, "rf1", 400, "pending")
    assert payment.refund_refusal(None) is None and payment.refundable_minor == 600
    ch.refund(payment, "rf2", 600, "refunded")
    assert payment.refund_refusal(None).code == "refund_exceeds_amount"  # 400 held by the pending one
    ch.settle_refund(payment, payment.refunds[0], "refunded")
    assert payment.status == "refunded" and payment.refund_refusal(None).code == "already_refunded"
