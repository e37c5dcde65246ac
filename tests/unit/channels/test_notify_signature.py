"""``check_signature``: the provider webhooks' check, usable for any body under any
header, as front services check the orchestrator's notifications (SPEC 19)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from channels.webhooks import NOTIFY_SIGNATURE_HEADER, SIGNATURE_HEADER, SignatureError, check_signature, sign, verify

SECRET = "nsec_front"
T = 1_760_000_000
BODY = b'{"id":"evt_1","type":"recharge.succeeded","created_at":"2025-10-09T08:53:20Z","data":{}}'


def test_the_header_is_named_as_the_spec_says():
    assert (NOTIFY_SIGNATURE_HEADER, SIGNATURE_HEADER) == ("X-Orchestrator-Signature", "X-Provider-Signature")


def test_a_notification_signed_with_the_documented_hmac_passes():
    mac = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert check_signature(SECRET, f"t={T},v1={mac}", BODY, T + 300, header_name=NOTIFY_SIGNATURE_HEADER) is None


@pytest.mark.parametrize(("header", "body", "now", "reason"), [
    (None, BODY, T, "missing X-Orchestrator-Signature"),
    ("", BODY, T, "missing X-Orchestrator-Signature"),
    (sign(SECRET, BODY, T), BODY + b" ", T, "signature does not match"),
    (sign("another", BODY, T), BODY, T, "signature does not match"),
    (sign(SECRET, BODY, T - 301), BODY, T, "away from now"),
    (sign(SECRET, BODY, T + 301), BODY, T, "away from now"),
    ("v1=abc", BODY, T, "needs t= and v1="),
    (f"t={T}", BODY, T, "needs t= and v1="),
])
def test_anything_else_is_a_signature_error(header, body, now, reason):
    with pytest.raises(SignatureError, match=reason):
        check_signature(SECRET, header, body, now, header_name=NOTIFY_SIGNATURE_HEADER)


def test_the_tolerance_is_the_callers():
    with pytest.raises(SignatureError):
        check_signature(SECRET, sign(SECRET, BODY, T), BODY, T + 11, tolerance_s=10)


def test_verify_checks_the_same_way_and_names_the_provider_header():
    with pytest.raises(SignatureError, match="missing X-Provider-Signature"):
        verify(SECRET, None, BODY, T)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, sign(SECRET, BODY, T), BODY + b" ", T)
