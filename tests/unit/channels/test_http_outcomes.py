"""The adapter's one mapping from wire answers to attempt outcomes (SPEC sections 6 and 7),
case by case, without a network: what the loopback tests reach only through the simulator
is pinned here too (odd bodies, odd statuses, every operation)."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp.client_reqrep import ConnectionKey

from channels import AttemptOutcome
from channels.http import KIND_DEFAULTS, HttpChannel, Op, WireAnswer, WirePayment, _no_answer, outcome_of

O = AttemptOutcome
KEY = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
A, I, V, R, P = Op.AUTHORIZE, Op.INQUIRE, Op.VOID, Op.REFUND, Op.PING


def payment(status: str, **extra: object) -> bytes:
    return orjson.dumps({"reference": "r1", "provider_ref": "pr_1", "status": status, "decline_code": None, **extra})


@pytest.mark.parametrize(("answer", "expected"), [
    # authorize: what the provider answered
    (WireAnswer(A, 200, payment("captured")), O.CAPTURED),
    (WireAnswer(A, 200, payment("pending")), O.PENDING),
    (WireAnswer(A, 200, payment("declined", decline_code="do_not_honor")), O.DECLINED),
    (WireAnswer(A, 409, payment("captured")), O.CAPTURED),
    (WireAnswer(A, 429, b""), O.NOT_PROCESSED),
    (WireAnswer(A, 503, b"<html>busy</html>"), O.NOT_PROCESSED),
    (WireAnswer(A, 400, b""), O.NOT_PROCESSED),
    (WireAnswer(A, 401, b""), O.NOT_PROCESSED),
    (WireAnswer(A, 404, b""), O.NOT_PROCESSED),
    (WireAnswer(A, 422, b""), O.NOT_PROCESSED),
    (WireAnswer(A, 500, b""), O.UNKNOWN),
    (WireAnswer(A, 502, b""), O.UNKNOWN),
    (WireAnswer(A, 504, b""), O.UNKNOWN),
    (WireAnswer(A, 302, b""), O.UNKNOWN),
    # authorize: a 200 or 409 that cannot be read may hide a charge
    (WireAnswer(A, 200, b""), O.UNKNOWN),
    (WireAnswer(A, 200, b"not json"), O.UNKNOWN),
    (WireAnswer(A, 200, b"[1]"), O.UNKNOWN),
    (WireAnswer(A, 200, payment("settled")), O.UNKNOWN),
    (WireAnswer(A, 200, b'{"status": ["captured"]}'), O.UNKNOWN),
    (WireAnswer(A, 409, b'{"error": "request in progress"}'), O.UNKNOWN),
    # authorize: no answer
    (WireAnswer(A, None, sent=False, error="connect failed"), O.NOT_PROCESSED),
    (WireAnswer(A, None, sent=True, error="timeout"), O.UNKNOWN),
    # inquire
    (WireAnswer(I, 200, payment("captured")), O.CAPTURED),
    (WireAnswer(I, 200, payment("voided")), O.VOIDED),
    (WireAnswer(I, 200, payment("refunded")), O.REFUNDED),
    # A 404 is no proof: the charge may still be in flight at the provider (SPEC 6, 7).
    (WireAnswer(I, 404, b""), O.UNKNOWN),
    (WireAnswer(I, 429, b""), O.UNKNOWN),
    (WireAnswer(I, 503, b""), O.UNKNOWN),
    (WireAnswer(I, 401, b""), O.UNKNOWN),
    (WireAnswer(I, 200, b"{}"), O.UNKNOWN),
    (WireAnswer(I, None, sent=False), O.UNKNOWN),
    # void and refund
    (WireAnswer(V, 200, payment("voided")), O.VOIDED),
    (WireAnswer(V, 409, payment("captured")), O.CAPTURED),
    (WireAnswer(V, 404, b""), O.UNKNOWN),
    (WireAnswer(R, 404, b""), O.UNKNOWN),
    (WireAnswer(V, 429, b""), O.UNKNOWN),
    (WireAnswer(V, None, sent=False), O.UNKNOWN),
    (WireAnswer(R, 200, payment("refunded")), O.REFUNDED),
    (WireAnswer(R, 409, payment("pending")), O.PENDING),
    (WireAnswer(R, 500, b""), O.UNKNOWN),
    # ping: CAPTURED reads "ok"
    (WireAnswer(P, 200, b'{"status": "ok"}'), O.CAPTURED),
    (WireAnswer(P, 200, b"<html>captive portal</html>"), O.NOT_PROCESSED),
    (WireAnswer(P, 503, b""), O.NOT_PROCESSED),
    (WireAnswer(P, None, sent=False), O.NOT_PROCESSED),
    (WireAnswer(P, None, sent=True), O.UNKNOWN),
])
def test_every_wire_case_maps_to_one_outcome(answer, expected):
    assert outcome_of(answer).outcome is expected


def test_the_payment_fields_are_carried_over():
    res = outcome_of(WireAnswer(A, 200, payment("declined", decline_code="insufficient_funds")))
    assert (res.provider_ref, res.decline_code, res.error) == ("pr_1", "insufficient_funds", None)


def test_a_409_says_why_the_operation_was_refused():
    res = outcome_of(WireAnswer(V, 409, payment("captured")))
    assert res.error == "void refused (409): the payment is captured"


def test_failures_carry_a_reason():
    assert outcome_of(WireAnswer(A, 503, b"")).error == "provider answered 503: not processed"
    assert outcome_of(WireAnswer(A, 400, b"")).error == "provider rejected the request (400)"
    assert outcome_of(WireAnswer(A, None, sent=False, error="connect failed: X")).error == "connect failed: X"
    assert outcome_of(WireAnswer(I, 404, b"")).error == "inquire answered 404: no such payment (yet), which proves nothing"


def test_an_answer_about_another_payment_is_unknown():
    ans = WireAnswer(I, 200, b'{"reference": "rc_other.1", "status": "captured"}', reference="rc_mine.1")
    res = outcome_of(ans)
    assert res.outcome is O.UNKNOWN and "not the one asked" in (res.error or "")
    same = WireAnswer(I, 200, b'{"reference": "rc_mine.1", "status": "captured"}', reference="rc_mine.1")
    assert outcome_of(same).outcome is O.CAPTURED


def test_the_amount_the_provider_states_rides_on_the_result():
    res = outcome_of(WireAnswer(I, 200, b'{"status": "captured", "amount_minor": 8400, "currency": "CNY"}'))
    assert (res.amount_minor, res.currency) == (8400, "CNY")
    silent = outcome_of(WireAnswer(I, 200, b'{"status": "captured", "amount_minor": "8400"}'))
    assert (silent.amount_minor, silent.currency) == (None, None)


@pytest.mark.parametrize(("exc", "possibly_sent", "sent"), [
    (aiohttp.ClientConnectorError(KEY, OSError(111, "refused")), True, False),
    (aiohttp.ConnectionTimeoutError(), True, False),
    (aiohttp.InvalidURL("x"), True, False),
    (TimeoutError(), False, False),  # a caller that knows nothing was written
    (TimeoutError(), True, True),
    (aiohttp.SocketTimeoutError(), True, True),
    (aiohttp.ServerDisconnectedError(), True, True),
    (aiohttp.ClientOSError(104, "reset"), True, True),
    (aiohttp.ClientPayloadError(), True, True),
])
def test_a_failure_without_an_answer_is_sent_unless_proven_otherwise(exc, possibly_sent, sent):
    assert _no_answer(Op.AUTHORIZE, exc, possibly_sent).sent is sent


def test_wire_payments_ignore_fields_of_the_wrong_type():
    parsed = WirePayment.parse(b'{"status": "captured", "provider_ref": 12, "decline_code": ["x"]}')
    assert parsed == WirePayment(None, None, "captured", None)


def test_kinds_differ_only_in_defaults():
    assert set(KIND_DEFAULTS) == {"direct_api", "digital_currency", "bank"}
    assert [KIND_DEFAULTS[k].expects_pending for k in ("direct_api", "digital_currency", "bank")] == \
        [False, True, True]
    assert KIND_DEFAULTS["direct_api"].timeout_ms < KIND_DEFAULTS["digital_currency"].timeout_ms \
        < KIND_DEFAULTS["bank"].timeout_ms
    bank = HttpChannel("b", "bank", "http://127.0.0.1:1/b")
    assert bank.poll_schedule_s == KIND_DEFAULTS["bank"].poll_schedule_s and bank.expects_pending


@pytest.mark.parametrize("kw", [{"timeout_ms": 0}, {"connect_timeout_ms": -1}, {"max_in_flight": 0}])
def test_nonsense_settings_are_refused_at_construction(kw):
    with pytest.raises(ValueError):
        HttpChannel("x", "direct_api", "http://127.0.0.1:1/x", **kw)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        HttpChannel("x", "carrier_pigeon", "http://127.0.0.1:1/x")
