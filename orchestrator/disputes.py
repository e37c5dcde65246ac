"""Disputes (chargebacks) of succeeded recharges (SPEC 19), from the provider's events.

    none --disputed--> open --dispute_won--> won     (the frozen coins are free again)
                            --dispute_lost-> lost    (clawed back: the balance may go negative)
    none --dispute_won--> won, none --dispute_lost--> lost   (the opening event came late, or never)

An event that does not move the dispute (a repeat, a ``disputed`` after the outcome, an
outcome after another, a dispute of a capture nobody kept) is recorded once and changes
nothing. One about a recharge still running is refused unrecorded (409 ``event_too_early``):
its capture has not reached the journal yet, and the provider sends it again. ``next_dispute`` decides,
purely; ``on_event`` reads, decides and writes with the store re-checking what the
decision was made on.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from orchestrator.clock import Clock
from orchestrator.errors import EventTooEarly
from orchestrator.journal import Journal
from orchestrator.metrics import Metrics
from orchestrator.model import AttemptState, Dispute, DisputeStatus, Recharge, RechargeStatus, RefundStatus, Settlement, \
    TrailEntry
from orchestrator.notifications import Notifier
from orchestrator.views import recharge_view

__all__ = ["DISPUTE_EVENTS", "DisputeDeps", "next_dispute", "on_event"]

log = structlog.get_logger(__name__)

DISPUTE_EVENTS = {"disputed": DisputeStatus.OPEN, "dispute_won": DisputeStatus.WON,
                  "dispute_lost": DisputeStatus.LOST}
_NOTICE = {DisputeStatus.OPEN: "dispute.opened", DisputeStatus.WON: "dispute.won", DisputeStatus.LOST: "dispute.lost"}
# Racing refunds change what a dispute freezes: decide again on fresh reads.
_TRIES = 8


@dataclass(slots=True)
class DisputeDeps:
    journal: Journal
    clock: Clock
    metrics: Metrics
    notifier: Notifier


def next_dispute(rec: Recharge, current: Dispute | None, to: DisputeStatus, unrefunded_coins: int,
                 now: float) -> Dispute | None:
    """The dispute after an event moving it ``to``; None when the event moves nothing.
    Opening (or losing without an opening) holds the coins not refunded yet."""
    if current is None:
        coins = 0 if to is DisputeStatus.WON else unrefunded_coins
        return Dispute(rec.id, rec.user_id, to, coins, now, now)
    if current.status is DisputeStatus.OPEN and to is not DisputeStatus.OPEN:
        return Dispute(rec.id, rec.user_id, to, current.coins, current.opened_at, now)
    return None


async def on_event(channel: str, event_id: str, reference: str, status: str, deps: DisputeDeps) -> str:
    """Apply a provider's dispute event about the payment ``reference``, at most once."""
    if await deps.journal.event_seen(channel, event_id):
        return "duplicate"
    att = await deps.journal.attempt(reference)
    if att is None or att.channel != channel:
        log.warning("dispute_for_unknown_payment", channel=channel, reference=reference)
        return "unknown_payment"
    to = DISPUTE_EVENTS[status]
    event = (channel, event_id)
    for _ in range(_TRIES):
        rec = await deps.journal.get(att.recharge_id)
        if rec is None:
            return "unknown_payment"
        now = deps.clock.now()
        mine = rec.attempt(reference)
        settling = not rec.terminal or rec.settlement is Settlement.PENDING
        if settling and (mine is None or mine.state is not AttemptState.CAPTURED):
            # The capture is not journaled yet (its answer or webhook is still on its way):
            # not applied, not recorded, so the provider sends the event again.
            raise EventTooEarly(f"the payment {reference} is not settled here yet; send the event again later")
        kept = rec.status is RechargeStatus.SUCCEEDED and rec.channel == channel and any(
            a.reference == reference and a.state is AttemptState.CAPTURED for a in rec.attempts)
        current = await deps.journal.dispute_of(rec.id)
        refunds = await deps.journal.refunds_of(rec.id)
        refunded = sum(r.coins for r in refunds if r.status is not RefundStatus.FAILED)
        after = next_dispute(rec, current, to, max(0, rec.coins + rec.bonus_coins - refunded), now) if kept else None
        if after is None:
            detail = {"status": status, "event_id": event_id,
                      "dispute": current.status.value if current else None, "kept_capture": kept}
            if kept is False:
                log.warning("dispute_on_a_payment_not_kept", recharge_id=rec.id, reference=reference, status=status)
            await deps.journal.record_event(event, rec.id, (TrailEntry(rec.id, now, "dispute_event_ignored",
                                                                       rec.status.value, reference, channel, detail),))
            return "ignored"
        entry = TrailEntry(rec.id, now, f"dispute_{after.status.value}", rec.status.value, reference, channel,
                           {"coins": after.coins, "event_id": event_id})
        kind = _NOTICE[after.status]
        notices = (deps.notifier.notice(rec.client, rec.id, kind, now, recharge_view(rec, refunds=refunds, dispute=after)),) \
            if deps.notifier.wants(rec.client, kind) else ()
        if await deps.journal.apply_dispute(after, None if current is None else current.status, refunded, event,
                                            (entry,), notices):
            if notices:
                deps.notifier.written()
            deps.metrics.disputes.labels(after.status.value).inc()
            log.info("dispute_applied", recharge_id=rec.id, status=after.status.value, coins=after.coins)
            return f"dispute_{after.status.value}"
        if await deps.journal.event_seen(channel, event_id):
            return "duplicate"
    raise RuntimeError(f"dispute event {event_id} kept losing races on {reference}")
