"""What a simulated provider holds: its payments by reference (the ledger tests compare
against), their refunds and disputes, and its counters. No I/O here; the app and the
notifier drive it.

A refund or a dispute names its payment by reference and never points back at it, so the
ledger still holds no reference cycle (``_freeze_survivors`` relies on that), and a
payment with neither costs no tracked object more than before (docs/performance.md#simulator-gc).

The refund rules a careful provider keeps (SPEC 6):

    refund_reference       idempotent per channel: the same one again answers that refund as
                           it is now; with another payment or amount it is refused, never
                           reinterpreted (``refund_reference_reused``)
    a failed refund        stays failed under its refund_reference: to try again, name a new one
    in total               refunded plus still pending at most the captured amount
                           (``refund_exceeds_amount``); a failed refund gives its share back
    refunded               the payment's status once ``refunded_minor`` reaches its amount
    a dispute              open or lost: no refund (the payer has the money back, or may);
                           won: refunds as before. The payment stays captured either way: a lost
                           dispute shows in its ``dispute``, not in ``refunded_minor``
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from channels.simulator._behaviour import Behaviour
from channels.simulator._config import ChannelSpec

__all__ = ["COUNTERS", "Dispute", "Payment", "Refund", "Refusal", "SimChannel"]

COUNTERS = (
    "requests", "pings", "authorizations", "replays", "captures", "declines", "pendings", "voids", "refunds",
    "not_processed", "answers_lost", "errors_500", "rejected", "unauthorized", "outage_answers",
    "webhooks_sent", "webhooks_delivered", "webhook_failures", "webhooks_given_up", "webhooks_duplicated",
    "webhooks_out_of_order", "webhooks_dropped", "late_processing", "tombstones", "refused_by_tombstone",
    "refund_requests", "refund_replays", "refunds_refused", "refunds_pending", "refunds_failed", "disputes",
    "disputes_won", "disputes_lost",
)
"""Every counter ``GET /_sim/stats`` shows, zero included, so a reader can rely on the keys."""

_COUNTER_OF_STATUS = {"captured": "captures", "declined": "declines", "pending": "pendings", "voided": "voids",
                      "refunded": "refunds"}


class Refusal(NamedTuple):
    """Why a refund or a dispute is refused: ``code`` (the app maps it to an HTTP status)
    and a message for the caller."""

    code: str
    message: str


@dataclass(slots=True)
class Refund:
    refund_reference: str
    reference: str  # the payment's
    amount_minor: int
    status: str  # pending, refunded or failed
    created_at: float
    updated_at: float

    def wire(self) -> dict[str, Any]:
        """The protocol-v1 refund object."""
        return {"refund_reference": self.refund_reference, "status": self.status, "amount_minor": self.amount_minor}

    def ledger(self) -> dict[str, Any]:
        return {**self.wire(), "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass(slots=True)
class Dispute:
    status: str  # open, won or lost
    opened_at: float
    decided_at: float | None = None

    def ledger(self) -> dict[str, Any]:
        return {"status": self.status, "opened_at": self.opened_at, "decided_at": self.decided_at}


@dataclass(slots=True)  # a long run holds hundreds of thousands of them
class Payment:
    channel: str
    reference: str
    provider_ref: str
    amount_minor: int
    currency: str
    callback_url: str | None
    created_at: float
    status: str = "new"
    decline_code: str | None = None
    history: list[tuple[float, str]] = field(default_factory=list)
    refunded_minor: int = 0
    refunds: tuple[Refund, ...] = ()  # a tuple: the empty one is shared, and refunds are few
    dispute: Dispute | None = None

    def wire(self) -> dict[str, Any]:
        """The protocol-v1 payment object."""
        return {"reference": self.reference, "provider_ref": self.provider_ref, "status": self.status,
                "decline_code": self.decline_code, "amount_minor": self.amount_minor or None,
                "currency": self.currency or None,  # a tombstone charged nothing
                "refunded_minor": self.refunded_minor}

    def ledger(self) -> dict[str, Any]:
        """The control API's view: the wire object plus where and when, its refunds and
        its dispute."""
        return {**self.wire(), "channel": self.channel, "created_at": self.created_at,
                "history": [{"at": at, "status": status} for at, status in self.history],
                "refunds": [r.ledger() for r in self.refunds],
                "dispute": self.dispute.ledger() if self.dispute is not None else None}

    @property
    def refundable_minor(self) -> int:
        """What a new refund may still take: pending refunds hold their share."""
        held = sum(r.amount_minor for r in self.refunds if r.status == "pending")
        return self.amount_minor - self.refunded_minor - held

    def refund_refusal(self, amount_minor: int | None) -> Refusal | None:
        """Why a new refund of ``amount_minor`` (None: all that is left) is refused, or None."""
        if self.status == "refunded":
            return Refusal("already_refunded", "the payment is already refunded in full")
        if self.status != "captured":
            return Refusal("not_captured", f"only a captured payment can be refunded; this one is {self.status}")
        if self.dispute is not None and self.dispute.status != "won":
            return Refusal("disputed", f"the payment's dispute is {self.dispute.status}")
        left = self.refundable_minor
        if not 0 < (left if amount_minor is None else amount_minor) <= left:
            return Refusal("refund_exceeds_amount", f"refunds may total at most {self.amount_minor}: "
                           f"{self.amount_minor - left} is refunded or pending, {left} is left")
        return None

    def dispute_refusal(self) -> Refusal | None:
        if self.status != "captured":
            return Refusal("not_captured", f"only a captured payment can be disputed; this one is {self.status}")
        if self.dispute is not None:
            return Refusal("already_disputed", f"the payment already has a dispute ({self.dispute.status})")
        return None


class SimChannel:
    """One simulated provider's live state. ``rng`` draws behaviour (latency, fate,
    codes); ``ids`` draws identifiers, so naming a payment never shifts the fate sequence."""

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self.behaviour: Behaviour = spec.behaviour
        self.rng = random.Random(spec.seed)
        self.ids = random.Random(f"{spec.seed}:ids")
        self.payments: dict[str, Payment] = {}
        self.refunds: dict[str, Refund] = {}  # by refund_reference: idempotent across the channel
        self.counters: Counter[str] = Counter()
        # Timers by what they settle: ("payment" | "refund" | "dispute", its reference).
        self.settlements: dict[tuple[str, str], asyncio.TimerHandle] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{self.ids.getrandbits(64):016x}"

    def record(self, reference: str, amount_minor: int, currency: str, callback_url: str | None) -> Payment:
        payment = Payment(self.name, reference, self.new_id("pr"), amount_minor, currency, callback_url, time.time())
        self.payments[reference] = payment
        return payment

    def tombstone(self, reference: str) -> Payment:
        """A void of a reference never seen: recorded voided, so the charge, if it is
        still on its way, is refused when it arrives (SPEC 6)."""
        payment = Payment(self.name, reference, self.new_id("pr"), 0, "", None, time.time())
        self.payments[reference] = payment
        self.counters["tombstones"] += 1
        self.move(payment, "voided")
        return payment

    def move(self, payment: Payment, status: str, decline_code: str | None = None) -> None:
        """Change a payment's status, with its history and counters."""
        payment.status = status
        if decline_code is not None:
            payment.decline_code = decline_code
        payment.history.append((time.time(), status))
        self.counters[_COUNTER_OF_STATUS[status]] += 1

    def refund(self, payment: Payment, refund_reference: str, amount_minor: int, status: str) -> Refund:
        """Record a new refund of ``payment``, already checked (``Payment.refund_refusal``),
        in ``status``: refunded, failed, or pending until ``settle_refund``."""
        now = time.time()
        refund = Refund(refund_reference, payment.reference, amount_minor, status, now, now)
        self.refunds[refund_reference] = refund
        payment.refunds = (*payment.refunds, refund)
        self.counters["refund_requests"] += 1
        if status == "pending":
            self.counters["refunds_pending"] += 1
        else:
            self.settle_refund(payment, refund, status)
        return refund

    def settle_refund(self, payment: Payment, refund: Refund, status: str) -> None:
        """A refund's final state: refunded (the payment too once nothing is left) or failed."""
        refund.status = status
        refund.updated_at = time.time()
        if status == "failed":
            self.counters["refunds_failed"] += 1
            return
        payment.refunded_minor += refund.amount_minor
        if payment.refunded_minor == payment.amount_minor:
            self.move(payment, "refunded")

    def open_dispute(self, payment: Payment) -> None:
        payment.dispute = Dispute("open", time.time())
        self.counters["disputes"] += 1

    def decide_dispute(self, payment: Payment, outcome: str) -> None:
        """``outcome``: won or lost."""
        if payment.dispute is None:
            raise ValueError(f"payment {payment.reference} has no dispute to decide")
        payment.dispute.status = outcome
        payment.dispute.decided_at = time.time()
        self.counters[f"disputes_{outcome}"] += 1

    def cancel_settlement(self, reference: str) -> None:
        """Stop a pending payment's settlement (a void)."""
        handle = self.settlements.pop(("payment", reference), None)
        if handle is not None:
            handle.cancel()

    def cancel_settlements(self) -> None:
        for handle in self.settlements.values():
            handle.cancel()
        self.settlements.clear()

    def reset(self) -> None:
        """Back to the configured state: no payments, zero counters, the configured
        behaviour and freshly seeded RNGs."""
        self.cancel_settlements()
        self.payments.clear()
        self.refunds.clear()
        self.counters.clear()
        self.behaviour = self.spec.behaviour
        self.rng = random.Random(self.spec.seed)
        self.ids = random.Random(f"{self.spec.seed}:ids")

    def stats(self) -> dict[str, Any]:
        return {"kind": self.spec.kind, "payments": len(self.payments),
                **{name: self.counters[name] for name in COUNTERS}}
