"""The Channel protocol: the one seam between the orchestrator and a payment provider.

Everything the core knows about a provider is an ``AttemptOutcome``; nothing outside
``channels/`` knows HTTP status codes.

    AttemptOutcome
     ├── CAPTURED        money moved (kept, or refunded later)
     ├── PENDING         accepted, the final state comes later (webhook or inquiry)
     ├── REQUIRES_ACTION the payer must pass a step-up (3-D Secure) at ``action_url`` first;
     │                   nothing is charged until then (a challenge that expires is VOIDED)
     ├── DECLINED        refused, with a decline code (hard or soft: the core decides)
     ├── NOT_PROCESSED   nothing was charged: safe to go elsewhere
     ├── UNKNOWN         the request may have been processed
     ├── VOIDED          cancelled before capture
     └── REFUNDED        captured, then given back

A partial refund has outcomes of its own, keyed by its ``refund_reference`` (the provider's
idempotency key for it), so asking again is always safe:

    RefundOutcome
     ├── REFUNDED        the provider gave the amount back
     ├── PENDING         accepted, settles later (webhook, or ask again)
     ├── FAILED          refused or failed: nothing was refunded under this refund_reference
     └── UNKNOWN         no answer we can trust: ask again with the same refund_reference

A settlement report (SPEC 6, 21) is read whole or not at all: ``settlements(date)`` yields
``SettlementItem`` batches as they arrive, and raises ``SettlementReportError`` at any
point (a body cut short is found only at its end), so its caller discards every batch
of a run that raised.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ACTION_ABANDONED",
    "ACTION_EXPIRED",
    "AttemptOutcome",
    "Channel",
    "ChannelResult",
    "PaymentRequest",
    "RefundOutcome",
    "RefundRequest",
    "RefundResult",
    "SettlementItem",
    "SettlementReportError",
    "payment_outcome",
]


class AttemptOutcome(enum.StrEnum):
    CAPTURED = "captured"
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    DECLINED = "declined"
    NOT_PROCESSED = "not_processed"
    UNKNOWN = "unknown"
    VOIDED = "voided"
    REFUNDED = "refunded"

    @property
    def charged(self) -> bool:
        """True when money is held or taken on the provider's side right now."""
        return self in (AttemptOutcome.CAPTURED, AttemptOutcome.PENDING)


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """One attempt's charge, as sent to a provider. ``reference`` is the provider's
    idempotency key: resending the same reference never charges twice."""

    reference: str
    amount_minor: int
    currency: str
    method: str
    instrument: dict[str, Any]
    callback_url: str | None = None
    # "required" for a recharge risk challenged (SPEC 22); None: the provider decides.
    three_ds: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelResult:
    """What one call to a provider came to.

    ``outcome`` is the spec's attempt outcome. ``NOT_PROCESSED`` comes only from a charge
    the provider refused before processing; an inquiry, void or refund that finds no
    such payment is ``UNKNOWN`` (a 404 proves nothing: the charge may still be in
    flight). ``amount_minor`` and ``currency`` are what the provider says it charged,
    when it says so: the core checks them against the attempt.
    """

    outcome: AttemptOutcome
    provider_ref: str | None = None
    decline_code: str | None = None
    error: str | None = None
    latency_ms: float = 0.0
    amount_minor: int | None = None
    currency: str | None = None
    action_url: str | None = None  # REQUIRES_ACTION: where the payer completes the step-up


# A challenge the payer let lapse: the provider's ``expired`` payment, a void by another name.
ACTION_EXPIRED = "action_expired"
ACTION_ABANDONED = "action_abandoned"  # the decline code of a challenge the payer abandoned


def payment_outcome(status: str) -> tuple[AttemptOutcome, str | None]:
    """A protocol-v1 payment status as an outcome and the decline code it implies
    (``expired`` is a void: the step-up lapsed and nothing was charged). ValueError if unknown."""
    if status == "expired":
        return AttemptOutcome.VOIDED, ACTION_EXPIRED
    return AttemptOutcome(status), None


class RefundOutcome(enum.StrEnum):
    REFUNDED = "refunded"
    PENDING = "pending"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """One partial refund of an attempt's payment (``reference``). ``refund_reference`` is
    the provider's idempotency key: the same one again never refunds twice, so a refund
    whose answer was lost is asked again under it, never under a new one."""

    reference: str
    refund_reference: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class RefundResult:
    """What one refund call came to. ``amount_minor`` is what the provider says it
    refunded (or holds pending), when it says so: the core checks it against the request.
    ``code`` is the provider's refusal code on a FAILED it refused (``disputed``,
    ``refund_exceeds_amount``, ...), so the core can tell why without knowing HTTP."""

    outcome: RefundOutcome
    amount_minor: int | None = None
    code: str | None = None
    error: str | None = None
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class SettlementItem:
    """One payment a provider says it settled on a day (SPEC 6, 21), as it reports it."""

    reference: str
    provider_ref: str | None
    status: str  # as reported: captured, refunded, ...
    amount_minor: int
    currency: str
    fee_minor: int
    settled_at: str  # as reported (ISO 8601)


class SettlementReportError(Exception):
    """The day's report could not be read whole: unreachable, not a 200, malformed, truncated,
    or for another date. ``str(exc)`` says why, for a person."""


@runtime_checkable
class Channel(Protocol):
    """One configured route to a provider. Implementations never raise for provider
    or network failures: every failure is mapped to an outcome (``UNKNOWN`` when the
    request may have been processed, ``NOT_PROCESSED`` when it surely was not)."""

    name: str
    kind: str

    async def authorize(self, request: PaymentRequest) -> ChannelResult: ...

    async def inquire(self, reference: str) -> ChannelResult: ...

    async def void(self, reference: str) -> ChannelResult: ...

    async def refund(self, reference: str) -> ChannelResult:
        """Give back the whole payment: for a capture nobody keeps (a late one)."""
        ...

    async def issue_refund(self, request: RefundRequest) -> RefundResult:
        """Give back part of a kept payment, idempotent by ``refund_reference``."""
        ...

    def settlements(self, date: str) -> AsyncIterator[list[SettlementItem]]:
        """What the provider settled on ``date`` (YYYY-MM-DD, UTC), in batches of at most
        a few thousand items, so a day of millions is never held whole. An async generator:
        it raises ``SettlementReportError`` at any point, after some batches too, and then
        the whole run failed."""
        ...

    async def ping(self) -> ChannelResult: ...

    async def close(self) -> None: ...
