"""Webhook signatures (SPEC section 6): what is accepted, what is refused and why, and
that no header or body makes ``verify`` raise anything but a WebhookError."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.webhooks import (
    EVENT_STATUSES,
    MalformedEvent,
    SignatureError,
    WebhookError,
    WebhookEvent,
    event_body,
    parse_event,
    sign,
    verify,
)

SECRET = "whsec_alipay_direct"
T = 1_760_000_000
EVENT = WebhookEvent("evt_1", "att_1", "pr_1", "captured", None)
BODY = event_body(EVENT)


def test_sign_is_the_documented_hmac():
    mac = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, T) == f"t={T},v1={mac}"


def test_a_good_signature_verifies_and_parses():
    assert verify(SECRET, sign(SECRET, BODY, T), BODY, T + 10) == EVENT


@pytest.mark.parametrize("skew", [-300, 300])
def test_the_tolerance_is_inclusive(skew):
    assert verify(SECRET, sign(SECRET, BODY, T), BODY, now=T + skew) == EVENT


@pytest.mark.parametrize("skew", [-301, 301, 10**6])
def test_a_stale_or_future_signature_is_refused(skew):
    with pytest.raises(SignatureError, match="away from now") as exc:
        verify(SECRET, sign(SECRET, BODY, T), BODY, now=T + skew)
    assert exc.value.reason.startswith("timestamp")


def test_the_tolerance_can_be_narrowed():
    with pytest.raises(SignatureError):
        verify(SECRET, sign(SECRET, BODY, T), BODY, now=T + 11, tolerance_s=10)


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_signature_is_refused(header):
    with pytest.raises(SignatureError, match="missing X-Provider-Signature"):
        verify(SECRET, header, BODY, now=T)


def test_a_wrong_secret_or_a_changed_body_is_refused():
    with pytest.raises(SignatureError, match="does not match"):
        verify("whsec_other", sign(SECRET, BODY, T), BODY, now=T)
    tampered = BODY.replace(b"captured", b"declined")
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, sign(SECRET, BODY, T), tampered, now=T)


def test_a_changed_timestamp_is_refused():
    header = sign(SECRET, BODY, T).replace(f"t={T}", f"t={T + 1}")
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, header, BODY, now=T)


@pytest.mark.parametrize("header", [
    "garbage",
    f"t={T}",
    "v1=abc",
    f"t=abc,v1={'0' * 64}",
    f"t=-{T},v1={'0' * 64}",
    f"t=\u00b2,v1={'0' * 64}",  # a digit to str.isdigit(), not to int()
    f"t={'9' * 13},v1={'0' * 64}",
    f"t={T},v1=\u00e9\u00e9",  # compare_digest refuses non-ASCII str
    f"t={T},v0={'0' * 64}",
])
def test_a_malformed_header_is_refused_as_a_signature_error(header):
    with pytest.raises(SignatureError):
        verify(SECRET, header, BODY, now=T)


def test_any_matching_v1_passes_during_a_secret_rotation():
    good = sign(SECRET, BODY, T).split(",")[1]
    old = sign("whsec_old_secret", BODY, T).split(",")[1]
    assert verify(SECRET, f"t={T},{old},{good}", BODY, now=T) == EVENT
    assert verify(SECRET, f"t={T}, {good} ,v2=future", BODY, now=T) == EVENT


def test_signatures_are_checked_before_the_body_is_read():
    with pytest.raises(SignatureError):
        verify(SECRET, sign("whsec_other", b"not json", T), b"not json", now=T)


def _signed(doc: object) -> tuple[str, bytes]:
    body = orjson.dumps(doc)
    return sign(SECRET, body, T), body


@pytest.mark.parametrize(("doc", "reason"), [
    ([1, 2], "JSON object"),
    ({"reference": "r", "status": "captured"}, "event_id is required"),
    ({"event_id": "e", "status": "captured"}, "reference is required"),
    ({"event_id": "e", "reference": "r"}, "status is required"),
    ({"event_id": "e", "reference": "r", "status": "settled"}, "status must be one of"),
    ({"event_id": 7, "reference": "r", "status": "captured"}, "event_id must be a string"),
    ({"event_id": "e", "reference": "", "status": "captured"}, "reference must be a string"),
    ({"event_id": "e", "reference": "r" * 256, "status": "captured"}, "reference must be a string"),
    ({"event_id": "e", "reference": "r", "status": "captured", "decline_code": 5}, "decline_code must"),
    ({"event_id": "e", "reference": "r", "status": "refunded", "refund_reference": ""}, "refund_reference must"),
    ({"event_id": "e", "reference": "r", "status": "refunded", "refund_reference": 3}, "refund_reference must"),
])
def test_a_signed_but_malformed_body_names_what_is_wrong(doc, reason):
    header, body = _signed(doc)
    with pytest.raises(MalformedEvent, match=reason):
        verify(SECRET, header, body, now=T)


def test_a_body_that_is_not_json_is_malformed():
    for body in (b"{", b"\xff\xfe", b""):
        with pytest.raises(MalformedEvent, match="not JSON"):
            verify(SECRET, sign(SECRET, body, T), body, now=T)


def test_optional_fields_may_be_absent_or_null():
    header, body = _signed({"event_id": "e", "reference": "r", "status": "declined", "provider_ref": None})
    assert verify(SECRET, header, body, now=T) == WebhookEvent("e", "r", None, "declined", None)


@pytest.mark.parametrize("status", ["refunded", "failed", "disputed", "dispute_won", "dispute_lost"])
def test_refund_and_dispute_statuses_parse_and_a_refund_names_itself(status):
    header, body = _signed({"event_id": "e", "reference": "r", "status": status, "amount_minor": 300,
                            "refund_reference": "rf_1" if status in ("refunded", "failed") else None})
    event = verify(SECRET, header, body, now=T)
    assert (event.status, event.amount_minor) == (status, 300)
    assert event.refund_reference == ("rf_1" if status in ("refunded", "failed") else None)


def test_only_a_refund_event_carries_a_refund_reference_on_the_wire():
    assert "refund_reference" not in orjson.loads(BODY)
    refund = WebhookEvent("evt_2", "att_1", "pr_1", "refunded", None, 300, "CNY", "rf_1")
    assert orjson.loads(event_body(refund))["refund_reference"] == "rf_1"
    assert parse_event(event_body(refund)) == refund


def test_sign_refuses_a_timestamp_that_is_not_unix_seconds():
    for t in (-1, 1.5, True):
        with pytest.raises(ValueError):
            sign(SECRET, BODY, t)  # type: ignore[arg-type]


events = st.builds(
    WebhookEvent,
    event_id=st.text(min_size=1, max_size=40),
    reference=st.text(min_size=1, max_size=40),
    provider_ref=st.none() | st.text(min_size=1, max_size=40),
    status=st.sampled_from(sorted(EVENT_STATUSES)),
    decline_code=st.none() | st.text(min_size=1, max_size=40),
    refund_reference=st.none() | st.text(min_size=1, max_size=40),
)


@given(secret=st.text(min_size=1, max_size=64), event=events, t=st.integers(0, 10**11))
def test_what_is_signed_verifies_back_to_the_same_event(secret, event, t):
    assert parse_event(event_body(event)) == event
    assert verify(secret, sign(secret, event_body(event), t), event_body(event), now=t) == event


@given(header=st.text(max_size=200), body=st.binary(max_size=200))
def test_no_header_or_body_raises_anything_but_a_webhook_error(header, body):
    with pytest.raises(WebhookError):
        verify(SECRET, header, body, now=T)
