"""Provider webhooks, protocol v1: signing and verification, and the event body.

    X-Provider-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

The signature covers the raw bytes as received, so verification happens before any
parsing; ``t`` bounds replays to a tolerance window (300 s by default).

    WebhookError
     ├── SignatureError   missing, malformed, wrong or stale signature (401)
     └── MalformedEvent   signed, but not an event body (422)
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import orjson

__all__ = ["MalformedEvent", "SignatureError", "WebhookError", "WebhookEvent", "parse_event", "sign", "verify"]

TOLERANCE_S = 300
_STATUSES = frozenset({"captured", "pending", "declined", "voided", "refunded"})


class WebhookError(ValueError):
    pass


class SignatureError(WebhookError):
    pass


class MalformedEvent(WebhookError):
    pass


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    event_id: str
    reference: str
    provider_ref: str | None
    status: str
    decline_code: str | None


def _mac(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int) -> str:
    """The ``X-Provider-Signature`` header value for ``body`` sent at unix time ``t``."""
    return f"t={t},v1={_mac(secret, t, body)}"


def _parse_header(header: str) -> tuple[int, list[str]]:
    t: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            if not value.isdigit() or len(value) > 12:
                raise SignatureError("malformed timestamp")
            t = int(value)
        elif key == "v1":
            sigs.append(value)
    if t is None or not sigs:
        raise SignatureError("signature header needs t= and v1=")
    return t, sigs


def verify(secret: str, header: str | None, body: bytes, *, now: float, tolerance_s: float = TOLERANCE_S) -> WebhookEvent:
    """Check the signature (constant time, within the tolerance), then parse the event."""
    if not header:
        raise SignatureError("missing X-Provider-Signature")
    t, sigs = _parse_header(header)
    if abs(now - t) > tolerance_s:
        raise SignatureError(f"timestamp {t} is more than {tolerance_s:.0f} s away")
    expected = _mac(secret, t, body)
    # Compare against every v1 given (rotation), each in constant time, all of them.
    ok = False
    for sig in sigs:
        ok |= hmac.compare_digest(expected, sig)
    if not ok:
        raise SignatureError("signature does not match")
    return parse_event(body)


def _text(doc: dict[str, object], key: str, *, required: bool) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise MalformedEvent(f"{key} is required")
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 255:
        raise MalformedEvent(f"{key} must be a string of 1 to 255 characters")
    return value


def parse_event(body: bytes) -> WebhookEvent:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("the event must be a JSON object")
    status = _text(doc, "status", required=True)
    if status not in _STATUSES:
        raise MalformedEvent(f"status must be one of {sorted(_STATUSES)}")
    return WebhookEvent(
        event_id=_text(doc, "event_id", required=True) or "",
        reference=_text(doc, "reference", required=True) or "",
        provider_ref=_text(doc, "provider_ref", required=False),
        status=status,
        decline_code=_text(doc, "decline_code", required=False),
    )
