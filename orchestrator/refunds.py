"""Refunds of succeeded recharges (SPEC 19): the front service's request, the provider's
answer, and the worker that settles the refunds still pending.

A refund is journaled with its coins taken from the wallet, in one transaction, before
the provider hears of it; the provider refunds by ``refund_reference`` (the refund's id),
so asking again after a timeout or a crash never refunds twice. Only the provider's
word ends a refund: ``refunded`` (succeeded) or ``failed`` (the coins come back).
Anything else (pending, no answer) is asked again every ``refunds.retry_interval_s``,
by whichever instance claims it, or settled by the provider's webhook.

The rules a refund is decided on are read, then re-checked by the store in the
transaction that journals it (``RefundGuard``): two refunds of one recharge at once,
on one instance or two, never take more than its amount or its coins.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
import structlog

from channels import Channel, RefundOutcome, RefundRequest, RefundResult
from config import RefundsConfig
from orchestrator.clock import Clock
from orchestrator.errors import IdempotencyConflict, NotFound, RefundRefused
from orchestrator.journal import Journal, RefundGuard
from orchestrator.metrics import Metrics
from orchestrator.model import (
    AttemptState,
    DisputeStatus,
    RechargeStatus,
    Refund,
    RefundStatus,
    TrailEntry,
    refund_coins,
)
from orchestrator.notifications import Notifier
from orchestrator.recharges import Viewer
from orchestrator.views import refund_view

__all__ = ["NewRefund", "RefundDeps", "RefundWorker", "get", "new_refund_id", "on_event", "request", "settle"]

log = structlog.get_logger(__name__)

# Refunds of one recharge racing one another are decided again on fresh reads; this many
# tries is far more than two clients hammering one recharge ever need.
_DECIDE_TRIES = 8


def new_refund_id() -> str:
    return "rf_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class NewRefund:
    """A refund request. ``amount_minor`` None: all that is left. ``document`` is the
    body as sent: its fingerprint tells a retry from another request under the key."""

    viewer: Viewer
    idempotency_key: str
    recharge_id: str
    amount_minor: int | None
    reason: str | None
    document: Mapping[str, Any]

    def fingerprint(self) -> str:
        doc = {"recharge_id": self.recharge_id, **self.document}
        return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(slots=True)
class RefundDeps:
    journal: Journal
    channels: Callable[[str, float], Awaitable[Channel | None]]  # live or retired: the payment's channel
    clock: Clock
    metrics: Metrics
    notifier: Notifier
    settings: Callable[[], RefundsConfig]
    new_id: Callable[[], str] = new_refund_id


async def request(cmd: NewRefund, deps: RefundDeps) -> tuple[Refund, bool]:
    """Journal the refund (coins out), then ask the provider once. Answers the refund
    as it stands, and whether it is a replay of one made before under the same key."""
    fingerprint = cmd.fingerprint()
    held = await deps.journal.find_refund(cmd.viewer.client, cmd.idempotency_key)
    if held is not None:
        return _replayed(held, fingerprint)
    rec = cmd.viewer.sees(await deps.journal.get(cmd.recharge_id))
    if rec.status is not RechargeStatus.SUCCEEDED:
        raise RefundRefused("not_refundable", f"only a succeeded recharge can be refunded; this one is "
                            f"{rec.status.value}", "recharge_id")
    kept = next((a for a in rec.attempts if a.state is AttemptState.CAPTURED and a.channel == rec.channel), None)
    if kept is None:  # an instant credit whose payment has not settled (or failed: clawed back)
        raise RefundRefused("not_refundable", f"this recharge holds no capture to refund (its payment's settlement "
                            f"is {rec.settlement.value if rec.settlement else 'unknown'})", "recharge_id")
    allow_negative = deps.settings().allow_negative_balance
    for _ in range(_DECIDE_TRIES):
        refunds, dispute = await asyncio.gather(deps.journal.refunds_of(rec.id), deps.journal.dispute_of(rec.id))
        if dispute is not None and dispute.status in (DisputeStatus.OPEN, DisputeStatus.LOST):
            raise RefundRefused("recharge_disputed", f"this recharge's dispute is {dispute.status.value}: its coins "
                                "are held by the dispute", "recharge_id")
        live = [r for r in refunds if r.status is not RefundStatus.FAILED]
        refunded_minor, refunded_coins = sum(r.amount_minor for r in live), sum(r.coins for r in live)
        rest = rec.amount_minor - refunded_minor
        amount = rest if cmd.amount_minor is None else cmd.amount_minor
        if amount > rest or amount <= 0:
            raise RefundRefused("refund_exceeds_amount", f"{amount} is more than is left to refund: {rest} of "
                                f"{rec.amount_minor} {rec.currency}", "amount_minor")
        now = deps.clock.now()
        coins = refund_coins(rec.coins + rec.bonus_coins, amount, rec.amount_minor, refunded_minor, refunded_coins)
        refund = Refund(deps.new_id(), rec.id, cmd.viewer.client, cmd.idempotency_key, fingerprint, rec.user_id,
                        kept.channel, kept.reference, amount, rec.currency, coins, RefundStatus.PENDING, cmd.reason,
                        now, now, next_at=now + deps.settings().retry_interval_s)
        entry = TrailEntry(rec.id, now, "refund_requested", rec.status.value, kept.reference, kept.channel,
                           {"refund_id": refund.id, "amount_minor": amount, "coins": coins, "reason": cmd.reason})
        guard = RefundGuard(refunded_minor, refunded_coins, None if dispute is None else dispute.status,
                            allow_negative)
        answer = await deps.journal.create_refund(refund, entry, guard)
        if answer is None:
            break
        if isinstance(answer, Refund):
            return _replayed(answer, fingerprint)
        if answer == "insufficient_coins":
            raise RefundRefused("insufficient_coins", f"the wallet no longer holds the {coins} coins this refund "
                                "takes back", "amount_minor")
    else:
        raise RefundRefused("request_in_progress", "other refunds of this recharge keep changing it; retry")
    deps.metrics.refunds.labels("requested").inc()
    log.info("refund_requested", recharge_id=rec.id, refund_id=refund.id, amount_minor=amount, coins=coins)
    return await ask(refund, deps), False


async def get(refund_id: str, viewer: Viewer, deps: RefundDeps) -> Refund:
    """A refund, for the client that asked for it, the recharge's owner, or an admin."""
    refund = await deps.journal.get_refund(refund_id)
    if refund is not None and (refund.client == viewer.client or viewer.admin):
        return refund
    rec = await deps.journal.get(refund.recharge_id) if refund is not None else None
    if refund is None or rec is None or rec.client != viewer.client:
        raise NotFound("no such refund")
    return refund


def _replayed(held: Refund, fingerprint: str) -> tuple[Refund, bool]:
    if held.fingerprint != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was already used for another refund request")
    return held, True


async def ask(refund: Refund, deps: RefundDeps) -> Refund:
    """Ask the provider to refund (again: it deduplicates on the refund's id) and record
    what it said; answers the refund as it now stands."""
    channel = await deps.channels(refund.channel, deps.clock.now())
    if channel is None:
        result = RefundResult(RefundOutcome.UNKNOWN, error=f"channel {refund.channel} is not available")
    else:
        try:
            result = await channel.issue_refund(RefundRequest(refund.reference, refund.id, refund.amount_minor))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a channel bug is an unanswered call: asked again later
            result = RefundResult(RefundOutcome.UNKNOWN, error=f"channel error: {type(exc).__name__}")
    await settle(refund, result, deps)
    return await deps.journal.get_refund(refund.id) or refund


async def settle(refund: Refund, result: RefundResult, deps: RefundDeps,
                 event: tuple[str, str] | None = None) -> str:
    """Record a provider's word on a refund, from its answer or its webhook."""
    now = deps.clock.now()
    if result.code == "refund_reference_reused":
        # Our ids are unique: the provider confuses this refund with another. Money may
        # have moved, so the coins stay out and a person looks; it is asked again later.
        log.error("refund_reference_confused", refund_id=refund.id, recharge_id=refund.recharge_id)
        result = RefundResult(RefundOutcome.UNKNOWN, error="the provider says this refund_reference names another")
    if (result.outcome is RefundOutcome.REFUNDED and result.amount_minor is not None
            and result.amount_minor != refund.amount_minor):
        # The provider gave back another amount than asked: not this refund as journaled.
        # It stays pending, the reason on it, for a person (as a capture of the wrong amount).
        log.error("refund_amount_mismatch", refund_id=refund.id, recharge_id=refund.recharge_id,
                  asked=refund.amount_minor, refunded=result.amount_minor)
        result = RefundResult(RefundOutcome.UNKNOWN, error=f"amount_mismatch: the provider refunded "
                              f"{result.amount_minor}, the refund asked {refund.amount_minor}")
        if event is not None:
            await deps.journal.record_event(event, refund.recharge_id, (_ignored(refund, result, now, event),))
            return "amount_mismatch"
    if result.outcome in (RefundOutcome.REFUNDED, RefundOutcome.FAILED):
        status = RefundStatus.SUCCEEDED if result.outcome is RefundOutcome.REFUNDED else RefundStatus.FAILED
        error = None if status is RefundStatus.SUCCEEDED else (result.code or result.error or "failed")
        rec = await deps.journal.get(refund.recharge_id)
        owner = rec.client if rec is not None else refund.client  # the recharge's client hears of it
        settled = replace(refund, status=status, updated_at=now, error=error, next_at=None)
        entry = TrailEntry(refund.recharge_id, now, f"refund_{status.value}", rec.status.value if rec else None,
                           refund.reference, refund.channel,
                           {"refund_id": refund.id, "amount_minor": refund.amount_minor, "coins": refund.coins,
                            **({"error": error} if error else {}), **({"event_id": event[1]} if event else {})})
        kind = f"refund.{status.value}"
        notices = (deps.notifier.notice(owner, refund.recharge_id, kind, now, refund_view(settled)),) \
            if deps.notifier.wants(owner, kind) else ()
        if await deps.journal.settle_refund(refund.id, status, now, error=error, event=event, trail=(entry,),
                                            notices=notices):
            if notices:
                deps.notifier.written()
            deps.metrics.refunds.labels(status.value).inc()
            log.info("refund_settled", recharge_id=refund.recharge_id, refund_id=refund.id, status=status.value,
                     error=error)
            return f"refund_{status.value}"
        if event is not None:
            await deps.journal.record_event(event, refund.recharge_id, (_ignored(refund, result, now, event),))
        return "ignored"
    if event is not None:  # pending: nothing to change, but the event is recorded once
        await deps.journal.record_event(event, refund.recharge_id, (_ignored(refund, result, now, event),))
        return "ignored"
    await deps.journal.retry_refund(refund.id, now + deps.settings().retry_interval_s,
                                    result.error or result.outcome.value)
    deps.metrics.refunds.labels("retried").inc()
    return "retry"


def _ignored(refund: Refund, result: RefundResult, now: float, event: tuple[str, str]) -> TrailEntry:
    return TrailEntry(refund.recharge_id, now, "refund_webhook_ignored", None, refund.reference, refund.channel,
                      {"refund_id": refund.id, "status": result.outcome.value, "event_id": event[1]})


async def on_event(channel: str, event_id: str, reference: str, refund_reference: str, status: str,
                   deps: RefundDeps, amount_minor: int | None = None) -> str | None:
    """A provider's webhook about one of our refunds; None when it is a ``refunded`` event
    naming none of ours on that payment (the caller treats it as a payment event)."""
    refund = await deps.journal.get_refund(refund_reference)
    if refund is None or refund.channel != channel or refund.reference != reference:
        if status == "refunded":
            return None  # the whole payment given back: the driver's (a late capture's refund)
        # Not one of ours, and not news of the payment: recorded once, so it is not resent forever.
        if await deps.journal.event_seen(channel, event_id):
            return "duplicate"
        att = await deps.journal.attempt(reference)
        if att is None or att.channel != channel:
            return "unknown_payment"
        log.warning("event_for_unknown_refund", channel=channel, reference=reference,
                    refund_reference=refund_reference, status=status)
        await deps.journal.record_event((channel, event_id), att.recharge_id, (TrailEntry(
            att.recharge_id, deps.clock.now(), "refund_webhook_ignored", None, reference, channel,
            {"refund_reference": refund_reference, "status": status, "event_id": event_id}),))
        return "unknown_refund"
    if await deps.journal.event_seen(channel, event_id):
        return "duplicate"
    outcome = {"refunded": RefundOutcome.REFUNDED, "failed": RefundOutcome.FAILED}.get(status, RefundOutcome.PENDING)
    return await settle(refund, RefundResult(outcome, amount_minor=amount_minor), deps, (channel, event_id))


class RefundWorker:
    """Asks the providers again about the refunds still pending, on every instance: the
    store hands each due refund to one claimer until ``claim_for_s`` has passed."""

    def __init__(self, deps: RefundDeps, *, poll_s: float = 1.0, claim_for_s: float = 60.0,
                 max_in_flight: int = 16) -> None:
        self._deps = deps
        self._poll_s = poll_s
        self._claim_for_s = claim_for_s
        self._max_in_flight = max_in_flight

    async def run_forever(self) -> None:
        while True:
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: next pass
                log.warning("refund_pass_failed", error=str(exc))
            await self._deps.clock.sleep(self._poll_s)

    async def pass_once(self) -> int:
        now = self._deps.clock.now()
        due = await self._deps.journal.claim_refunds(now, now + self._claim_for_s, self._max_in_flight)
        await asyncio.gather(*(ask(r, self._deps) for r in due))
        return len(due)

