"""What a simulated provider holds: its payments by reference (the ledger tests compare
against) and its counters. No I/O here; the app and the notifier drive it."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from channels.simulator._behaviour import Behaviour
from channels.simulator._config import ChannelSpec

__all__ = ["COUNTERS", "Payment", "SimChannel"]

COUNTERS = (
    "requests", "pings", "authorizations", "replays", "captures", "declines", "pendings", "voids", "refunds",
    "not_processed", "answers_lost", "errors_500", "rejected", "unauthorized", "outage_answers",
    "webhooks_sent", "webhooks_delivered", "webhook_failures", "webhooks_given_up", "webhooks_duplicated",
    "webhooks_out_of_order", "webhooks_dropped", "late_processing", "tombstones", "refused_by_tombstone",
)
"""Every counter ``GET /_sim/stats`` shows, zero included, so a reader can rely on the keys."""

_COUNTER_OF_STATUS = {"captured": "captures", "declined": "declines", "pending": "pendings", "voided": "voids",
                      "refunded": "refunds"}


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

    def wire(self) -> dict[str, Any]:
        """The protocol-v1 payment object."""
        return {"reference": self.reference, "provider_ref": self.provider_ref, "status": self.status,
                "decline_code": self.decline_code, "amount_minor": self.amount_minor or None,
                "currency": self.currency or None}  # a tombstone charged nothing

    def ledger(self) -> dict[str, Any]:
        """The control API's view: the wire object plus where and when."""
        return {**self.wire(), "channel": self.channel, "created_at": self.created_at,
                "history": [{"at": at, "status": status} for at, status in self.history]}


class SimChannel:
    """One simulated provider's live state. ``rng`` draws behaviour (latency, fate,
    codes); ``ids`` draws identifiers, so naming a payment never shifts the fate sequence."""

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self.behaviour: Behaviour = spec.behaviour
        self.rng = random.Random(spec.seed)
        self.ids = random.Random(f"{spec.seed}:ids")
        self.payments: dict[str, Payment] = {}
        self.counters: Counter[str] = Counter()
        self.settlements: dict[str, asyncio.TimerHandle] = {}

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

    def cancel_settlement(self, reference: str) -> None:
        handle = self.settlements.pop(reference, None)
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
        self.counters.clear()
        self.behaviour = self.spec.behaviour
        self.rng = random.Random(self.spec.seed)
        self.ids = random.Random(f"{self.spec.seed}:ids")

    def stats(self) -> dict[str, Any]:
        return {"kind": self.spec.kind, "payments": len(self.payments),
                **{name: self.counters[name] for name in COUNTERS}}
