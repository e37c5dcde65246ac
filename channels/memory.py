"""An in-process provider: a Channel whose behaviour is a function the caller hands in.

It keeps a ledger like a real provider (payments by reference, idempotent by reference,
void and refund rules of protocol v1, tombstones for voids of references it has not
seen, 404 on an inquiry of one it has not), so tests of the state machine can check what was
really charged. The script decides, per call, what the "network" does:

    def script(op: str, reference: str, attempt_no: int) -> Action

``Action`` names what happens: capture, pend, decline (with a code), refuse before
processing, lose the answer before or after capturing, or fail an inquiry/void.

A partial refund (``issue_refund``, scripted as op ``"issue_refund"`` with its
refund_reference) keeps the simulator's rules (channels/simulator/_ledger.py): idempotent by
refund_reference, refunded plus pending never above the captured amount, a refusal FAILED
with its code and nothing changed. Its actions: OK refunds, PEND holds it pending until
``settle_refund``, DECLINE_* fails it (status failed), LOST_AFTER applies it and loses the
answer, FAIL and LOST_BEFORE lose the call before it lands.

Its settlement report (``settlements(date)``) lists every payment now captured or refunded
whose capture (``captured_at``, read from ``clock`` when it became captured) fell on that
UTC date, as captured, with no fee, in order of capture.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from channels._protocol import (
    AttemptOutcome,
    ChannelResult,
    PaymentRequest,
    RefundOutcome,
    RefundRequest,
    RefundResult,
    SettlementItem,
    SettlementReportError,
)

__all__ = ["Action", "MemoryChannel", "Payment", "Refund", "Script"]


class Action(enum.StrEnum):
    CAPTURE = "capture"
    PEND = "pend"
    DECLINE_HARD = "decline_hard"
    DECLINE_SOFT = "decline_soft"
    NOT_PROCESSED = "not_processed"
    LOST_BEFORE = "lost_before"  # the request never reached the provider; answer unknown
    LOST_AFTER = "lost_after"  # the provider captured; the answer was lost: unknown
    LOST_AFTER_PEND = "lost_after_pend"  # the provider took it as pending; answer lost
    FAIL = "fail"  # for inquire/void/refund: the call itself fails (unknown)
    OK = "ok"  # for inquire/void/refund: behave like a healthy provider


Script = Callable[[str, str, int], Action]

HARD_CODE = "insufficient_funds"
SOFT_CODE = "issuer_unavailable"
SETTLEMENT_BATCH = 2000


@dataclass
class Payment:
    reference: str
    amount_minor: int
    currency: str
    status: str
    provider_ref: str
    decline_code: str | None = None
    history: list[str] = field(default_factory=list)
    refunded_minor: int = 0
    refunds: list[str] = field(default_factory=list)  # refund_references, in order
    disputed: bool = False
    captured_at: float | None = None  # unix seconds (the channel's clock) when it became captured


@dataclass
class Refund:
    refund_reference: str
    reference: str  # the payment's
    amount_minor: int
    status: str  # pending, refunded or failed

    def result(self) -> RefundResult:
        return RefundResult(RefundOutcome(self.status), amount_minor=self.amount_minor)


def _healthy(op: str, reference: str, n: int) -> Action:
    return Action.CAPTURE if op == "authorize" else Action.OK


class MemoryChannel:
    def __init__(self, name: str, script: Script = _healthy, *, kind: str = "direct_api", latency_s: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.kind = kind
        self.script = script
        self.latency_s = latency_s
        self.clock = clock  # wall-clock unix seconds: when a payment was captured, for its settlement day
        self.ledger: dict[str, Payment] = {}
        self.refunds: dict[str, Refund] = {}  # by refund_reference, across the channel like a provider
        self.calls: list[tuple[str, str]] = []
        self._counts: dict[tuple[str, str], int] = {}
        self.closed = False

    def _next(self, op: str, reference: str) -> Action:
        n = self._counts.get((op, reference), 0) + 1
        self._counts[(op, reference)] = n
        self.calls.append((op, reference))
        return self.script(op, reference, n)

    def _result(self, p: Payment) -> ChannelResult:
        return ChannelResult(AttemptOutcome(p.status), provider_ref=p.provider_ref, decline_code=p.decline_code,
                             amount_minor=p.amount_minor or None, currency=p.currency or None)

    def _set(self, p: Payment, status: str) -> None:
        p.status = status
        p.history.append(status)
        if status == "captured" and p.captured_at is None:
            p.captured_at = self.clock()

    async def authorize(self, request: PaymentRequest) -> ChannelResult:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        action = self._next("authorize", request.reference)
        existing = self.ledger.get(request.reference)
        if existing is not None:
            return self._result(existing)  # idempotent by reference, like protocol v1
        if action in (Action.NOT_PROCESSED,):
            return ChannelResult(AttemptOutcome.NOT_PROCESSED, error="503 from provider")
        if action is Action.LOST_BEFORE:
            return ChannelResult(AttemptOutcome.UNKNOWN, error="timeout")
        status, code = {
            Action.CAPTURE: ("captured", None),
            Action.LOST_AFTER: ("captured", None),
            Action.PEND: ("pending", None),
            Action.LOST_AFTER_PEND: ("pending", None),
            Action.DECLINE_HARD: ("declined", HARD_CODE),
            Action.DECLINE_SOFT: ("declined", SOFT_CODE),
        }[action]
        p = Payment(request.reference, request.amount_minor, request.currency, status, f"pr_{request.reference}", code)
        self._set(p, status)
        self.ledger[request.reference] = p
        if action in (Action.LOST_AFTER, Action.LOST_AFTER_PEND):
            return ChannelResult(AttemptOutcome.UNKNOWN, error="connection reset after send")
        return self._result(p)

    async def inquire(self, reference: str) -> ChannelResult:
        if self._next("inquire", reference) is Action.FAIL:
            return ChannelResult(AttemptOutcome.UNKNOWN, error="inquiry failed")
        p = self.ledger.get(reference)
        if p is None:
            return ChannelResult(AttemptOutcome.UNKNOWN, error="404 no such payment (yet)")
        return self._result(p)

    async def void(self, reference: str) -> ChannelResult:
        if self._next("void", reference) is Action.FAIL:
            return ChannelResult(AttemptOutcome.UNKNOWN, error="void failed")
        p = self.ledger.get(reference)
        if p is None:  # a tombstone: the charge, should it still arrive, is refused
            p = self.ledger[reference] = Payment(reference, 0, "", "voided", f"pr_{reference}", history=["voided"])
        if p.status == "pending":
            self._set(p, "voided")
        return self._result(p)  # 409 with the current state when not voidable

    async def refund(self, reference: str) -> ChannelResult:
        if self._next("refund", reference) is Action.FAIL:
            return ChannelResult(AttemptOutcome.UNKNOWN, error="refund failed")
        p = self.ledger.get(reference)
        if p is None:
            return ChannelResult(AttemptOutcome.UNKNOWN, error="404 no such payment")
        if p.status == "captured" and not p.disputed:
            # All that is left, as the simulator does: pending partial refunds keep their
            # share, so the payment is refunded only once they land.
            p.refunded_minor = p.amount_minor - self._held(p)
            if p.refunded_minor == p.amount_minor:
                self._set(p, "refunded")
        return self._result(p)

    async def issue_refund(self, request: RefundRequest) -> RefundResult:
        action = self._next("issue_refund", request.refund_reference)
        if action in (Action.FAIL, Action.LOST_BEFORE):
            return RefundResult(RefundOutcome.UNKNOWN, error="refund call failed")
        known = self.refunds.get(request.refund_reference)
        if known is not None:
            if (known.reference, known.amount_minor) != (request.reference, request.amount_minor):
                return _refused("refund_reference_reused", "the refund_reference names another refund")
            result = known.result()
        else:
            p = self.ledger.get(request.reference)
            if p is None:
                return RefundResult(RefundOutcome.UNKNOWN, error="404 no such payment")
            if refusal := _refusal(p, self._held(p), request.amount_minor):
                return refusal
            status = {Action.PEND: "pending", Action.DECLINE_HARD: "failed", Action.DECLINE_SOFT: "failed"}.get(
                action, "refunded")
            self.refunds[request.refund_reference] = Refund(request.refund_reference, p.reference,
                                                            request.amount_minor, "pending")
            p.refunds.append(request.refund_reference)
            if status != "pending":
                self.settle_refund(request.refund_reference, status)
            result = self.refunds[request.refund_reference].result()
        if action is Action.LOST_AFTER:
            return RefundResult(RefundOutcome.UNKNOWN, error="connection reset after send")
        return result

    def _held(self, p: Payment) -> int:
        return sum(self.refunds[r].amount_minor for r in p.refunds if self.refunds[r].status == "pending")

    async def settlements(self, date: str) -> AsyncIterator[list[SettlementItem]]:
        """The payments captured on ``date`` (UTC) and still captured or refunded, in
        order of capture, fee 0, in batches of ``SETTLEMENT_BATCH``."""
        start = _day_start(date)
        settled = sorted((p for p in self.ledger.values() if p.status in ("captured", "refunded")
                          and p.captured_at is not None and start <= p.captured_at < start + 86_400),
                         key=lambda p: (p.captured_at, p.reference))
        for i in range(0, len(settled), SETTLEMENT_BATCH):
            yield [_settlement_item(p) for p in settled[i:i + SETTLEMENT_BATCH]]

    async def ping(self) -> ChannelResult:
        return ChannelResult(AttemptOutcome.CAPTURED)

    async def close(self) -> None:
        self.closed = True

    # -- provider-side controls for tests --------------------------------------------

    def settle(self, reference: str, status: str, decline_code: str | None = None) -> None:
        """Move a pending payment on, as the provider would before a webhook."""
        p = self.ledger[reference]
        if p.status == "pending":
            p.decline_code = decline_code
            self._set(p, status)

    def settle_refund(self, refund_reference: str, status: str = "refunded") -> None:
        """Move a pending refund on (refunded or failed), as the provider would later."""
        refund = self.refunds[refund_reference]
        if refund.status != "pending":
            return
        refund.status = status
        if status == "refunded":
            p = self.ledger[refund.reference]
            p.refunded_minor += refund.amount_minor
            if p.refunded_minor == p.amount_minor:
                self._set(p, "refunded")

    def dispute(self, reference: str) -> None:
        """Open a dispute on a payment: no refund is taken while it is open."""
        self.ledger[reference].disputed = True

    def captured(self) -> list[Payment]:
        """Payments holding money now: captured and not refunded."""
        return [p for p in self.ledger.values() if p.status == "captured"]


def _day_start(date: str) -> float:
    """Unix seconds at 00:00 UTC of ``date`` (YYYY-MM-DD), or SettlementReportError."""
    try:
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date):
            raise ValueError(date)
        day = dt.date.fromisoformat(date)
    except ValueError:
        raise SettlementReportError(f"not a date (YYYY-MM-DD): {date[:40]!r}") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def _settlement_item(p: Payment) -> SettlementItem:
    at = dt.datetime.fromtimestamp(p.captured_at or 0.0, dt.UTC)
    return SettlementItem(p.reference, p.provider_ref, p.status, p.amount_minor, p.currency, 0,
                          at.isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def _refused(code: str, message: str) -> RefundResult:
    return RefundResult(RefundOutcome.FAILED, code=code, error=f"refused ({code}): {message}")


def _refusal(p: Payment, held: int, amount_minor: int) -> RefundResult | None:
    """Why a new refund of ``amount_minor`` from ``p`` is refused (``held`` is pending in
    other refunds), in the simulator's order, or None."""
    if p.status == "refunded":
        return _refused("already_refunded", "the payment is already refunded in full")
    if p.status != "captured":
        return _refused("not_captured", f"the payment is {p.status}")
    if p.disputed:
        return _refused("disputed", "the payment's dispute is open")
    left = p.amount_minor - p.refunded_minor - held
    if not 0 < amount_minor <= left:
        return _refused("refund_exceeds_amount", f"{left} is left to refund")
    return None
