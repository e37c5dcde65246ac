"""An in-process provider: a Channel whose behaviour is a function the caller hands in.

It keeps a ledger like a real provider (payments by reference, idempotent by reference,
void and refund rules of protocol v1, tombstones for voids of references it has not
seen, 404 on an inquiry of one it has not), so tests of the state machine can check what was
really charged. The script decides, per call, what the "network" does:

    def script(op: str, reference: str, attempt_no: int) -> Action

``Action`` names what happens: capture, pend, decline (with a code), refuse before
processing, lose the answer before or after capturing, or fail an inquiry/void.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from channels._protocol import AttemptOutcome, ChannelResult, PaymentRequest

__all__ = ["Action", "MemoryChannel", "Payment", "Script"]


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


@dataclass
class Payment:
    reference: str
    amount_minor: int
    currency: str
    status: str
    provider_ref: str
    decline_code: str | None = None
    history: list[str] = field(default_factory=list)


def _healthy(op: str, reference: str, n: int) -> Action:
    return Action.CAPTURE if op == "authorize" else Action.OK


class MemoryChannel:
    def __init__(self, name: str, script: Script = _healthy, *, kind: str = "direct_api", latency_s: float = 0.0) -> None:
        self.name = name
        self.kind = kind
        self.script = script
        self.latency_s = latency_s
        self.ledger: dict[str, Payment] = {}
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
        p.history.append(status)
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
        if p.status == "captured":
            self._set(p, "refunded")
        return self._result(p)

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

    def captured(self) -> list[Payment]:
        """Payments holding money now: captured and not refunded."""
        return [p for p in self.ledger.values() if p.status == "captured"]
