"""Provider webhooks, protocol v1: signing, verification and the event body.

    X-Provider-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

The signature covers the raw bytes as received, so verification happens before any
parsing; ``t`` bounds replays to a tolerance window (300 s by default). Both functions are
pure (the caller passes the time), so the simulator signs with them and the orchestrator
verifies with them, and tests need no clock.

Notifications to front services (SPEC 19) are signed the same way under
``X-Orchestrator-Signature`` (``NOTIFY_SIGNATURE_HEADER``): ``sign`` makes it, and
``check_signature`` is what a receiver checks, with no provider event to parse.

    WebhookError (ValueError)
     ├── SignatureError   missing, malformed, wrong or stale signature: answer 401
     └── MalformedEvent   correctly signed, but not an event body: answer 422
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "EVENT_STATUSES",
    "SIGNATURE_HEADER",
    "TOLERANCE_S",
    "NOTIFY_SIGNATURE_HEADER",
    "MalformedEvent",
    "SignatureError",
    "WebhookError",
    "WebhookEvent",
    "check_signature",
    "event_body",
    "parse_event",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Provider-Signature"
NOTIFY_SIGNATURE_HEADER = "X-Orchestrator-Signature"
TOLERANCE_S = 300
EVENT_STATUSES = frozenset({"captured", "pending", "requires_action", "expired", "declined", "voided", "refunded",
                            "failed", "disputed", "dispute_won", "dispute_lost"})
"""A payment's statuses (``expired``: a step-up the payer let lapse), a refund's (``refunded``, ``failed``: the event carries its
``refund_reference``) and a dispute's (SPEC 6)."""
_MAX_FIELD = 255
_MAX_T_DIGITS = 12  # unix seconds stay under 12 digits for 30,000 years; longer is an attack


class WebhookError(ValueError):
    """Base of every webhook rejection; ``reason`` is safe to show the sender."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureError(WebhookError):
    """The body cannot be trusted: nothing in it may be acted on."""


class MalformedEvent(WebhookError):
    """The body is authentic but is not a protocol-v1 event."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One provider event. ``event_id`` deduplicates deliveries; ``status`` is the
    payment's state as the provider saw it when it sent the event (it may be stale)."""

    event_id: str
    reference: str
    provider_ref: str | None
    status: str
    decline_code: str | None
    amount_minor: int | None = None  # what the provider says it charged (or refunded), when it says so
    currency: str | None = None
    refund_reference: str | None = None  # set on a refund's event: which refund, as the client named it


def _mac(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int) -> str:
    """The signature header's value for ``body`` sent at unix time ``t`` (a provider's
    webhook and a notification to a front service are signed alike)."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError("t must be a non-negative integer of unix seconds")
    return f"t={t},v1={_mac(secret, t, body)}"


def _parse_header(header: str) -> tuple[int, list[bytes]]:
    """``t`` and every ``v1`` candidate (several during a secret rotation). Unknown
    schemes (``v0=``, a future ``v2=``) are ignored, as the header format allows."""
    t: int | None = None
    candidates: list[bytes] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            # isdigit() alone accepts '²' and other non-ASCII digits int() refuses.
            if not (value.isascii() and value.isdigit()) or len(value) > _MAX_T_DIGITS:
                raise SignatureError("malformed timestamp in signature header")
            t = int(value)
        elif key == "v1":
            # compare_digest refuses non-ASCII str; bytes keep a hostile header a 401, not a 500.
            candidates.append(value.encode("utf-8", "surrogateescape"))
    if t is None or not candidates:
        raise SignatureError("signature header needs t= and v1=")
    return t, candidates


def check_signature(secret: str, header: str | None, body: bytes, now: float, tolerance_s: float = TOLERANCE_S,
                    header_name: str = SIGNATURE_HEADER) -> None:
    """Check ``header`` signs ``body`` with ``secret`` (constant time, within
    ``tolerance_s`` of ``now``). Raises ``SignatureError``, naming ``header_name`` when it
    is missing; never anything else for any header or body."""
    if not header:
        raise SignatureError(f"missing {header_name}")
    t, candidates = _parse_header(header)
    if not math.isfinite(now) or abs(now - t) > tolerance_s:
        raise SignatureError(f"timestamp {t} is more than {tolerance_s:g} s away from now")
    expected = _mac(secret, t, body).encode()
    # Compare with every candidate, without stopping early, so timing says nothing.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("signature does not match")


def verify(secret: str, header: str | None, body: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> WebhookEvent:
    """Check the signature (``check_signature``), then parse the event. Raises
    ``SignatureError`` or ``MalformedEvent``; never anything else for any header or body."""
    check_signature(secret, header, body, now, tolerance_s)
    return parse_event(body)


def _optional(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_FIELD:
        raise MalformedEvent(f"{key} must be a string of 1 to {_MAX_FIELD} characters")
    return value


def _required(doc: dict[str, Any], key: str) -> str:
    value = _optional(doc, key)
    if value is None:
        raise MalformedEvent(f"{key} is required")
    return value


def parse_event(body: bytes) -> WebhookEvent:
    """The event in a (verified) body; ``MalformedEvent`` names the first bad field."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("the event must be a JSON object")
    event_id, reference, status = (_required(doc, k) for k in ("event_id", "reference", "status"))
    if status not in EVENT_STATUSES:
        raise MalformedEvent(f"status must be one of {sorted(EVENT_STATUSES)}")
    amount = doc.get("amount_minor")
    if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool) or amount < 0):
        raise MalformedEvent("amount_minor must be a non-negative integer")
    currency = _optional(doc, "currency")
    if currency is not None and not (len(currency) == 3 and currency.isascii() and currency.isupper()):
        raise MalformedEvent("currency must be a 3-letter ISO 4217 code")
    return WebhookEvent(event_id, reference, _optional(doc, "provider_ref"), status, _optional(doc, "decline_code"),
                        amount, currency, _optional(doc, "refund_reference"))


def event_body(event: WebhookEvent) -> bytes:
    """The wire body of ``event``: what a provider signs and sends. ``refund_reference``
    only on a refund's event, so a payment's event keeps its seven keys."""
    doc = {
        "event_id": event.event_id,
        "reference": event.reference,
        "provider_ref": event.provider_ref,
        "status": event.status,
        "decline_code": event.decline_code,
        "amount_minor": event.amount_minor,
        "currency": event.currency,
    }
    if event.refund_reference is not None:
        doc["refund_reference"] = event.refund_reference
    return orjson.dumps(doc)
