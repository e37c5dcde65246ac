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

A step-up (SPEC 6 and 22, ``_behaviour.py``) records the payment ``requires_action`` with its
``Challenge`` (the payer's ``action_url`` and when it expires) and charges nothing until it
ends: ``captured`` (completed), ``declined`` ``action_abandoned``, ``expired`` or ``voided``
(``end_challenge``). Only a captured or refunded payment was charged, as before.

The settlement report of a day (``report``, SPEC 6 and 21) lists each payment whose capture
(its first ``captured`` in its history, wall-clock unix seconds) fell on that UTC day and
that is captured or refunded now, in order of capture, with its captured amount and the
behaviour's fee. Discrepancies injected for a day (``inject_discrepancies``) stay until
``reset``; each one picks payments of the day no other one picked:

    drop           left out of the report
    amount         reported with 1 to 100 minor units more than was captured (the fee stays
                   that of the captured amount)
    fee            reported with a fee 1 to 100 minor units above the configured one
    unknown        an item no payment has (``unknown-<hex>``), captured, in the first currency
    settle_voided  a voided or declined payment of the day (created that day) that was really
                   charged: now captured (the provider took the money after all), reported on
                   that day with its creation as ``settled_at``
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from channels.simulator._behaviour import Behaviour
from channels.simulator._config import ChannelSpec

__all__ = ["ABANDONED", "COUNTERS", "DISCREPANCIES", "UNSUPPORTED", "Challenge", "Dispute", "Payment", "Refund",
           "Refusal", "ReportChanges", "SimChannel"]

COUNTERS = (
    "requests", "pings", "authorizations", "replays", "captures", "declines", "pendings", "voids", "refunds",
    "not_processed", "answers_lost", "errors_500", "rejected", "unauthorized", "outage_answers",
    "webhooks_sent", "webhooks_delivered", "webhook_failures", "webhooks_given_up", "webhooks_duplicated",
    "webhooks_out_of_order", "webhooks_dropped", "late_processing", "tombstones", "refused_by_tombstone",
    "refund_requests", "refund_replays", "refunds_refused", "refunds_pending", "refunds_failed", "disputes",
    "disputes_won", "disputes_lost", "settlement_reports", "step_ups", "step_ups_completed", "step_ups_abandoned",
    "step_ups_expired", "step_ups_voided", "step_ups_unsupported",
)
"""Every counter ``GET /_sim/stats`` shows, zero included, so a reader can rely on the keys."""

DISCREPANCIES = ("drop", "amount", "fee", "unknown", "settle_voided")
"""The kinds of discrepancy a day's report can be given, in the order they are picked."""

_SETTLED = ("captured", "refunded")
_DAY_S = 86_400

_COUNTER_OF_STATUS = {"captured": "captures", "declined": "declines", "pending": "pendings", "voided": "voids",
                      "refunded": "refunds", "requires_action": "step_ups", "expired": "step_ups_expired"}
_COUNTER_OF_CHALLENGE_END = {"captured": "step_ups_completed", "declined": "step_ups_abandoned",
                             "voided": "step_ups_voided"}  # expired: counted by its status
ABANDONED = "action_abandoned"
UNSUPPORTED = "three_ds_not_supported"


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


@dataclass(slots=True)
class Challenge:
    """A step-up: where the payer completes it, when it expires (unix seconds), and the
    drop, duplicate and out-of-order draws of the webhook that will tell how it ended."""

    action_url: str
    expires_at: float
    webhook_draws: tuple[bool, bool, bool] = (False, False, False)

    def ledger(self) -> dict[str, Any]:
        return {"action_url": self.action_url, "expires_at": self.expires_at}


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
    challenge: Challenge | None = None  # a step-up's, kept once it ended

    def wire(self) -> dict[str, Any]:
        """The protocol-v1 payment object; ``action_url`` only while it requires action."""
        doc = {"reference": self.reference, "provider_ref": self.provider_ref, "status": self.status,
               "decline_code": self.decline_code, "amount_minor": self.amount_minor or None,
               "currency": self.currency or None,  # a tombstone charged nothing
               "refunded_minor": self.refunded_minor}
        if self.status == "requires_action" and self.challenge is not None:
            doc["action_url"] = self.challenge.action_url
        return doc

    def ledger(self) -> dict[str, Any]:
        """The control API's view: the wire object plus where and when, its refunds and
        its dispute; and its ``challenge`` if it had one."""
        doc = {**self.wire(), "channel": self.channel, "created_at": self.created_at,
               "history": [{"at": at, "status": status} for at, status in self.history],
               "refunds": [r.ledger() for r in self.refunds],
               "dispute": self.dispute.ledger() if self.dispute is not None else None}
        if self.challenge is not None:
            doc["challenge"] = self.challenge.ledger()
        return doc

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

    @property
    def captured_at(self) -> float | None:
        """When it was first captured (unix seconds, from its history), or None."""
        for at, status in self.history:
            if status == "captured":
                return at
        return None

    def dispute_refusal(self) -> Refusal | None:
        if self.status != "captured":
            return Refusal("not_captured", f"only a captured payment can be disputed; this one is {self.status}")
        if self.dispute is not None:
            return Refusal("already_disputed", f"the payment already has a dispute ({self.dispute.status})")
        return None


@dataclass(slots=True)
class MadeUp:
    """A report item no payment has (an ``unknown`` discrepancy)."""

    reference: str
    provider_ref: str
    amount_minor: int
    currency: str
    settled_at: float


@dataclass(slots=True)
class ReportChanges:
    """The discrepancies injected into one day's report (module doc)."""

    dropped: set[str] = field(default_factory=set)
    amount_minor: dict[str, int] = field(default_factory=dict)  # by reference: what is added
    fee_minor: dict[str, int] = field(default_factory=dict)  # by reference: what is added
    made_up: list[MadeUp] = field(default_factory=list)
    picked: set[str] = field(default_factory=set)  # every reference a discrepancy took


def day_start(day: str) -> float:
    """Unix seconds at 00:00 UTC of ``day`` (YYYY-MM-DD, already checked)."""
    d = dt.date.fromisoformat(day)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp()


def iso_utc(at: float) -> str:
    """Unix seconds as ISO 8601 UTC with a ``Z``, to the millisecond."""
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SimChannel:
    """One simulated provider's live state. ``rng`` draws behaviour (latency, fate,
    codes); ``ids`` draws identifiers, so naming a payment never shifts the fate sequence;
    ``picks`` draws the settlement report's discrepancies, which shift neither."""

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self.behaviour: Behaviour = spec.behaviour
        self.rng = random.Random(spec.seed)
        self.ids = random.Random(f"{spec.seed}:ids")
        self.payments: dict[str, Payment] = {}
        self.refunds: dict[str, Refund] = {}  # by refund_reference: idempotent across the channel
        self.counters: Counter[str] = Counter()
        # Timers by what they settle: ("payment" | "refund" | "dispute", its reference), and a
        # step-up's: ("challenge", reference) expires it, ("payer", reference) is the automatic payer.
        self.settlements: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.challenges: dict[str, Payment] = {}  # the payments in requires_action, by reference
        self.picks = random.Random(f"{spec.seed}:settlements")
        self.report_changes: dict[str, ReportChanges] = {}  # by day
        # Payments settle_voided captured late, by reference: the day they are reported on
        # and their settled_at (their first capture is later, and must not count).
        self.late_settled: dict[str, tuple[str, float]] = {}

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

    def require_action(self, payment: Payment, challenge: Challenge) -> None:
        """Put a new payment in ``requires_action`` until ``end_challenge``: nothing charged."""
        payment.challenge = challenge
        self.challenges[payment.reference] = payment
        self.move(payment, "requires_action")

    def end_challenge(self, payment: Payment, status: str, decline_code: str | None = None) -> None:
        """End ``payment``'s challenge (it requires action, checked): ``captured``, ``declined``
        (``ABANDONED``), ``expired`` or ``voided``; its timers are cancelled."""
        if payment.status != "requires_action":
            raise ValueError(f"payment {payment.reference} is {payment.status}, not requires_action")
        del self.challenges[payment.reference]
        self._cancel(("challenge", payment.reference))
        self._cancel(("payer", payment.reference))
        self.move(payment, status, decline_code)
        if (counter := _COUNTER_OF_CHALLENGE_END.get(status)) is not None:
            self.counters[counter] += 1

    def due_challenges(self, now: float) -> list[Payment]:
        """The payments whose challenge expired by ``now`` but still require action."""
        return [p for p in self.challenges.values() if p.challenge is not None and p.challenge.expires_at <= now]

    def cancel_settlement(self, reference: str) -> None:
        """Stop a pending payment's settlement (a void)."""
        self._cancel(("payment", reference))

    def _cancel(self, key: tuple[str, str]) -> None:
        handle = self.settlements.pop(key, None)
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
        self.challenges.clear()
        self.refunds.clear()
        self.counters.clear()
        self.behaviour = self.spec.behaviour
        self.rng = random.Random(self.spec.seed)
        self.ids = random.Random(f"{self.spec.seed}:ids")
        self.picks = random.Random(f"{self.spec.seed}:settlements")
        self.report_changes.clear()
        self.late_settled.clear()

    # -- settlement reports ----------------------------------------------------------------

    def settled_on(self, day: str) -> list[tuple[float, Payment]]:
        """The payments settled on ``day`` with their settlement time, in that order: captured
        or refunded now and first captured that day, or captured late onto it (settle_voided)."""
        start = day_start(day)
        end = start + _DAY_S
        late = self.late_settled
        rows: list[tuple[float, Payment]] = []
        for p in self.payments.values():
            if p.status not in _SETTLED:
                continue
            if (moved := late.get(p.reference)) is not None:
                if moved[0] == day:
                    rows.append((moved[1], p))
            elif (at := p.captured_at) is not None and start <= at < end:
                rows.append((at, p))
        rows.sort(key=lambda row: (row[0], row[1].reference))
        return rows

    def report(self, day: str) -> Iterator[dict[str, Any]]:
        """``day``'s report items (wire objects), made one by one as they are read; which
        payments, and the fees, are fixed when this is called."""
        changes = self.report_changes.get(day) or ReportChanges()
        rows: list[tuple[float, str, Payment | MadeUp]] = [
            (at, p.reference, p) for at, p in self.settled_on(day) if p.reference not in changes.dropped]
        if changes.made_up:
            rows += [(m.settled_at, m.reference, m) for m in changes.made_up]
            rows.sort(key=lambda row: (row[0], row[1]))
        return _report_items(rows, changes, self.behaviour.settlement_fee)

    def inject_discrepancies(self, day: str, counts: Mapping[str, int]) -> dict[str, list[str]] | Refusal:
        """Give ``day``'s report ``counts`` more discrepancies of each kind (``DISCREPANCIES``,
        module doc), each from payments no discrepancy picked yet; the references picked, by
        kind. Refused (``not_enough_payments``), changing nothing, when a kind lacks them."""
        changes = self.report_changes.get(day) or ReportChanges()
        n = {kind: counts.get(kind, 0) for kind in DISCREPANCIES}
        settled = [p for _, p in self.settled_on(day) if p.reference not in changes.picked]
        start = day_start(day)
        charged = sorted((p for p in self.payments.values() if p.status in ("voided", "declined")
                          and p.amount_minor > 0 and start <= p.created_at < start + _DAY_S
                          and p.reference not in changes.picked), key=lambda p: (p.created_at, p.reference))
        wanted = n["drop"] + n["amount"] + n["fee"]
        if wanted > len(settled):
            return Refusal("not_enough_payments", f"drop, amount and fee need {wanted} payments settled on {day} "
                           f"that no discrepancy took; there are {len(settled)}")
        if n["settle_voided"] > len(charged):
            return Refusal("not_enough_payments", f"settle_voided needs {n['settle_voided']} charged payments of "
                           f"{day} now voided or declined that no discrepancy took; there are {len(charged)}")
        chosen = self.picks.sample(settled, wanted)
        dropped, amount = chosen[:n["drop"]], chosen[n["drop"]:n["drop"] + n["amount"]]
        fee = chosen[n["drop"] + n["amount"]:]
        voided = self.picks.sample(charged, n["settle_voided"])
        changes.dropped.update(p.reference for p in dropped)
        changes.amount_minor.update((p.reference, self.picks.randint(1, 100)) for p in amount)
        changes.fee_minor.update((p.reference, self.picks.randint(1, 100)) for p in fee)
        made_up = [self._made_up(start) for _ in range(n["unknown"])]
        changes.made_up += made_up
        for p in voided:  # the provider took the money after all
            p.decline_code = None
            self.move(p, "captured")
            self.late_settled[p.reference] = (day, p.created_at)
        picked = {"drop": dropped, "amount": amount, "fee": fee, "settle_voided": voided}
        answer = {kind: [p.reference for p in ps] for kind, ps in picked.items()}
        changes.picked.update(ref for refs in answer.values() for ref in refs)
        self.report_changes[day] = changes
        return {**answer, "unknown": [m.reference for m in made_up]}

    def _made_up(self, start: float) -> MadeUp:
        """A captured item no payment has, at some time of the day starting at ``start``, in
        the channel's first currency (alphabetically; USD when it takes any)."""
        picks = self.picks
        currency = min(self.spec.currencies) if self.spec.currencies else "USD"
        return MadeUp(f"unknown-{picks.getrandbits(64):016x}", f"pr_{picks.getrandbits(64):016x}",
                      picks.randint(100, 100_000), currency, start + picks.randrange(_DAY_S * 1000) / 1000)

    def stats(self) -> dict[str, Any]:
        return {"kind": self.spec.kind, "payments": len(self.payments),
                **{name: self.counters[name] for name in COUNTERS}}


def _report_items(rows: list[tuple[float, str, Payment | MadeUp]], changes: ReportChanges,
                  fee_of: Callable[[int], int]) -> Iterator[dict[str, Any]]:
    """The wire items of a report's rows (``SimChannel.report``): a payment with its captured
    amount, status now and fee, as the day's discrepancies change them."""
    for at, reference, row in rows:
        if isinstance(row, MadeUp):
            yield {"reference": reference, "provider_ref": row.provider_ref, "status": "captured",
                   "amount_minor": row.amount_minor, "currency": row.currency,
                   "fee_minor": fee_of(row.amount_minor), "settled_at": iso_utc(at)}
            continue
        yield {"reference": reference, "provider_ref": row.provider_ref, "status": row.status,
               "amount_minor": row.amount_minor + changes.amount_minor.get(reference, 0), "currency": row.currency,
               "fee_minor": fee_of(row.amount_minor) + changes.fee_minor.get(reference, 0), "settled_at": iso_utc(at)}
