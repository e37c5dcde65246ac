"""The recharge state machine (SPEC sections 4 and 7), pure: no I/O, no clock, no randomness.

Each function maps a recharge and one input (a provider's answer, a webhook, the driver
giving up or parking) to a ``Step``, the unit the journal makes durable, or to None when
the input changes nothing. ``reduce`` is the one way a Step changes a Recharge: the
driver mirrors its writes with it and the in-memory journal stores with it; the SQL
stores do the same in SQL (the journal conformance suite holds them to it).
``next_move`` tells the driver what to do next. The rules:

- an attempt is journaled ``started`` before the provider hears of it;
- nothing else is tried while an attempt may hold money (``OPEN_ATTEMPT_STATES``): an
  unknown outcome is inquired, then voided; only a confirmed void, a decline or a
  refusal before processing lets the recharge fail over (a 404 proves nothing: the
  charge may still be in flight at the provider);
- a capture is credited only when its stated amount and currency are the attempt's,
  the recharge is not terminal and holds no other capture, in the same step that
  marks it succeeded; every other capture is refunded, whoever learns of it and when;
- an attempt closed without a capture after an unknown outcome is inquired once more
  ``late_capture_check_s`` later, and a capture found then is handled as above;
- instant credit (SPEC 20): a ``pending`` answer for a recharge allowed it credits at
  once (``settlement`` pending); that payment is then never voided, only inquired every
  reconcile interval, and its capture settles it while its failure claws the coins back;
- step-up (SPEC 22): a ``requires_action`` answer makes the recharge wait for its payer
  (inquired every reconcile interval, webhooks count) until ``action_ttl_s``, then the
  attempt is voided and the recharge fails ``action_expired``; a payer who abandons
  fails it ``action_abandoned``. Neither fails over: the payer is gone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from channels import ACTION_ABANDONED, ACTION_EXPIRED, AttemptOutcome, ChannelResult
from config import exponent
from orchestrator.model import (
    KEEP,
    OPEN_ATTEMPT_STATES,
    TERMINAL,
    Attempt,
    AttemptState,
    Credit,
    Recharge,
    RechargeStatus,
    Settlement,
    Step,
    TrailEntry,
)

__all__ = [
    "AMOUNT_MISMATCH",
    "NONTERMINAL",
    "Move",
    "Next",
    "RunSettings",
    "Source",
    "admits",
    "after_inquiry",
    "begin_attempt",
    "follow_up_of",
    "give_up",
    "next_move",
    "on_answer",
    "on_event",
    "park",
    "recheck",
    "reduce",
    "request_void",
]

NONTERMINAL = frozenset(s for s in RechargeStatus if s not in TERMINAL)
AMOUNT_MISMATCH = "amount_mismatch"

_STATE_OF = {
    AttemptOutcome.CAPTURED: AttemptState.CAPTURED,
    AttemptOutcome.PENDING: AttemptState.PENDING,
    AttemptOutcome.REQUIRES_ACTION: AttemptState.REQUIRES_ACTION,
    AttemptOutcome.DECLINED: AttemptState.DECLINED,
    AttemptOutcome.NOT_PROCESSED: AttemptState.NOT_PROCESSED,
    AttemptOutcome.UNKNOWN: AttemptState.UNKNOWN,
    AttemptOutcome.VOIDED: AttemptState.VOIDED,
    AttemptOutcome.REFUNDED: AttemptState.REFUNDED,
}
# Attempts that hold no money and never will (unless a provider breaks its word: the
# late-capture check is for that).
_CLOSED = frozenset({AttemptState.DECLINED, AttemptState.NOT_PROCESSED, AttemptState.VOIDED, AttemptState.REFUNDED})
# Money was taken: kept, being given back, or given back.
_TAKEN = frozenset({AttemptState.CAPTURED, AttemptState.REFUND_REQUESTED, AttemptState.REFUNDED})
# States from which a close without capture leaves a doubt worth a late check.
_DOUBTFUL = frozenset({AttemptState.UNKNOWN, AttemptState.VOID_REQUESTED})


@dataclass(frozen=True, slots=True)
class RunSettings:
    """The part of the config one recharge runs on, fixed when its driver starts: a
    reload mid-flight does not change the rules under a running recharge."""

    version: str
    max_attempts: int
    deadline_s: float
    soft_decline_codes: frozenset[str]
    inquiry_attempts: int
    inquiry_initial_backoff_s: float
    inquiry_max_backoff_s: float
    reconcile_interval_s: float
    late_capture_check_s: float = 120.0
    log_success_sample: float = 1.0
    # How far two instances' clocks may disagree: a late check another instance runs
    # must still come late_capture_check_s after the close, whatever its clock says.
    clock_skew_s: float = 0.0
    # (country, pool): the pool each country's credits draw on (SPEC 20); none: any pool.
    pools: tuple[tuple[str, str], ...] = ()
    # Instant credit (SPEC 20): the largest amount, in base-currency units, and how many
    # succeeded recharges make a user established; None: off.
    instant_max_base: Decimal | None = None
    instant_min_recharges: int = 1
    action_ttl_s: float = 600.0  # how long a payer has to finish a step-up

    def instant_allows(self, base_amount: Decimal, succeeded_before: int) -> bool:
        """Whether a recharge of ``base_amount`` by a user with ``succeeded_before``
        succeeded recharges may be credited while its payment is still pending."""
        return (self.instant_max_base is not None and base_amount <= self.instant_max_base
                and succeeded_before >= self.instant_min_recharges)

    def pool_for(self, country: str) -> str | None:
        for c, pool in self.pools:
            if c == country:
                return pool
        return None

    @classmethod
    def from_config(cls, cfg: Any, version: str) -> RunSettings:
        r = cfg.routing
        instant = cfg.pool_instant_credit
        return cls(
            version=version,
            max_attempts=r.max_attempts,
            deadline_s=r.deadline_s,
            soft_decline_codes=frozenset(r.soft_decline_codes),
            inquiry_attempts=r.inquiry.attempts,
            inquiry_initial_backoff_s=r.inquiry.initial_backoff_ms / 1000,
            inquiry_max_backoff_s=r.inquiry.max_backoff_ms / 1000,
            reconcile_interval_s=r.inquiry.reconcile_interval_s,
            late_capture_check_s=r.inquiry.late_capture_check_s,
            log_success_sample=cfg.logging.success_sample,
            clock_skew_s=cfg.storage.max_clock_skew_s,
            pools=tuple((c, p.name) for p in cfg.pools for c in p.countries),
            instant_max_base=None if instant is None else Decimal(instant.max_amount_minor_base).scaleb(
                -exponent(cfg.pricing.base_currency)),
            instant_min_recharges=1 if instant is None else instant.min_succeeded_recharges,
            action_ttl_s=r.action_ttl_s,
        )


class Source(enum.StrEnum):
    """Where news about an attempt came from (it names the trail entries)."""

    ATTEMPT = "attempt"  # the answer to the charge itself
    INQUIRY = "inquiry"
    VOID = "void"
    REFUND = "refund"
    LATE_CHECK = "late_check"
    WEBHOOK = "webhook"


class Move(enum.StrEnum):
    INQUIRE = "inquire"  # chase an open attempt (then ``after_inquiry``)
    VOID = "void"  # cancel an attempt journaled void_requested (then ``on_answer``)
    REFUND = "refund"  # give back a capture nobody keeps (then ``on_answer``)
    LATE_CHECK = "late_check"  # inquire a closed attempt once more (then ``on_answer``)
    ATTEMPT = "attempt"  # try the next channel (``begin_attempt``), or ``give_up``
    WRITE = "write"  # journal ``step`` (nothing to ask anyone)
    STOP = "stop"  # nothing to do until something happens


@dataclass(frozen=True, slots=True)
class Next:
    move: Move
    attempt: Attempt | None = None
    step: Step | None = None


_STOP = Next(Move.STOP)
_ATTEMPT = Next(Move.ATTEMPT)


# -- what next ------------------------------------------------------------------------------


def next_move(rec: Recharge, now: float, s: RunSettings) -> Next:
    """The driver's next move on ``rec``. Money first: a refund owed, an attempt that
    may hold money (even on a finished recharge), a late-capture check due; then, for a
    recharge still running, the next attempt or the end."""
    refund = open_ = due = captured = None
    for a in rec.attempts:
        st = a.state
        if st is AttemptState.REFUND_REQUESTED:
            refund = refund or a
        elif st in OPEN_ATTEMPT_STATES:
            open_ = open_ or a
        elif st is AttemptState.CAPTURED:
            captured = a
        if a.late_check_at is not None and a.late_check_at <= now and due is None:
            due = a
    if refund is not None:
        return Next(Move.REFUND, refund)
    if open_ is not None:
        if open_.state is AttemptState.VOID_REQUESTED:
            return Next(Move.VOID, open_)
        if open_.state is AttemptState.REQUIRES_ACTION:
            # The payer's turn: asked after once per reconcile interval, voided once it lapses.
            expires = open_.action_expires_at
            if rec.terminal or (expires is not None and now >= expires):
                return Next(Move.WRITE, open_, request_void(rec, open_, now, None, "action_expiring"))
            due = now >= open_.updated_at + s.reconcile_interval_s
            return Next(Move.INQUIRE, open_) if due else _STOP
        if _settling(rec, open_):
            # Credited already: wait for the channel, asking once per reconcile interval.
            due = now >= open_.updated_at + s.reconcile_interval_s
            return Next(Move.INQUIRE, open_) if due else _STOP
        if open_.state is AttemptState.PENDING and (rec.terminal or now >= rec.deadline()):
            return Next(Move.WRITE, open_, request_void(rec, open_, now, None))
        return Next(Move.INQUIRE, open_)
    if rec.terminal or captured is not None:
        # Finished, or a capture parked for a person (its amount was wrong): only the
        # late-capture checks remain (a running recharge gets them once it ends).
        if due is not None:
            return Next(Move.LATE_CHECK, due)
        if rec.terminal or captured is None:
            return _STOP
        step = park(rec, captured, AMOUNT_MISMATCH, now)
        return _STOP if step is None else Next(Move.WRITE, captured, step)
    if len(rec.attempts) >= s.max_attempts:
        return Next(Move.WRITE, None, give_up(rec, "max_attempts_reached", now))
    if now >= rec.deadline():
        return Next(Move.WRITE, None, give_up(rec, "deadline_exceeded", now))
    return _ATTEMPT


# -- steps ----------------------------------------------------------------------------------


def begin_attempt(rec: Recharge, channel: str, now: float) -> Step:
    """The next attempt, journaled ``started`` before the provider hears of it."""
    seq = len(rec.attempts) + 1
    att = Attempt(f"{rec.id}.{seq}", rec.id, seq, channel, AttemptState.STARTED, now, now)
    return Step(rec.id, now, expect_status=NONTERMINAL, attempt=att, attempt_is_new=True,
                trail=(TrailEntry(rec.id, now, "attempt_started", rec.status.value, att.reference, channel),))


def give_up(rec: Recharge, reason: str, now: float) -> Step:
    """End a recharge that may try nothing more: declined if its last attempt was
    (softly) declined, failed otherwise."""
    last = rec.attempts[-1] if rec.attempts else None
    soft = last is not None and last.state is AttemptState.DECLINED
    status = RechargeStatus.DECLINED if soft else RechargeStatus.FAILED
    return Step(rec.id, now, status=status, expect_status=NONTERMINAL, reason=reason,
                decline_code=last.decline_code if soft and last else None,
                trail=(TrailEntry(rec.id, now, status.value, status.value, detail={"reason": reason}),))


def park(rec: Recharge, att: Attempt | None, reason: str, now: float) -> Step | None:
    """Leave the recharge ``pending`` with ``reason`` until inquiry, webhook or the
    reconciler resolves it; None when it already waits for that."""
    if rec.terminal or (rec.status is RechargeStatus.PENDING and rec.reason == reason):
        return None
    if rec.status is RechargeStatus.REQUIRES_ACTION and reason == "awaiting_provider":
        return None  # its status says what it waits for: the payer
    return Step(rec.id, now, status=RechargeStatus.PENDING, expect_status=NONTERMINAL, reason=reason,
                trail=(TrailEntry(rec.id, now, "pending", RechargeStatus.PENDING.value,
                                  att.reference if att else None, att.channel if att else None, {"reason": reason}),))


def request_void(rec: Recharge, att: Attempt, now: float, result: ChannelResult | None,
                 event_name: str = "void_requested") -> Step:
    """Journal that ``att`` is to be cancelled by reference, before the void is sent:
    only the provider's confirmation lets the recharge move on."""
    return _attempt_step(rec, att, AttemptState.VOID_REQUESTED, event_name, now, result)


def recheck(rec: Recharge, att: Attempt, now: float) -> Step | None:
    """A provider's settlement report says it took money for ``att`` while we hold that it
    took none, or have not heard (SPEC 21): inquire it again now, so what it says is
    credited or refunded by the rules above. A closed attempt gets its late check now; an
    open one is inquired by its next move anyway: the trail says why (None: nothing to ask)."""
    entry = TrailEntry(rec.id, now, "reconciliation_recheck", rec.status.value, att.reference, att.channel,
                       {"attempt_state": att.state.value})
    if att.state in _CLOSED and att.state is not AttemptState.REFUNDED:
        return replace(_attempt_step(rec, att, att.state, "reconciliation_recheck", now, None, late_check_at=now),
                       trail=(entry,))
    if att.state in OPEN_ATTEMPT_STATES:
        return Step(rec.id, now, trail=(entry,))
    return None


def after_inquiry(rec: Recharge, att: Attempt, result: ChannelResult, now: float, s: RunSettings,
                  exhausted: bool) -> Step | None:
    """What an inquiry about an open attempt means. Still unknown once the tries are
    spent (a 404 included), or still pending past the deadline: void it."""
    outcome = result.outcome
    if att.state is AttemptState.REQUIRES_ACTION and outcome in (AttemptOutcome.UNKNOWN,
                                                                  AttemptOutcome.NOT_PROCESSED):
        return None  # the payer may be finishing it now: only its lapse voids it
    if _settling(rec, att):  # never voided: the coins are out, only the channel ends it
        return None if outcome in (AttemptOutcome.UNKNOWN, AttemptOutcome.NOT_PROCESSED) else on_answer(
            rec, att, result, now, s, Source.INQUIRY)
    if outcome in (AttemptOutcome.UNKNOWN, AttemptOutcome.NOT_PROCESSED):
        return request_void(rec, att, now, result) if exhausted else None
    if outcome is AttemptOutcome.PENDING and att.state is AttemptState.PENDING and (
            rec.terminal or now >= rec.deadline()):
        return request_void(rec, att, now, result)
    return on_answer(rec, att, result, now, s, Source.INQUIRY)


def on_answer(rec: Recharge, att: Attempt, result: ChannelResult, now: float, s: RunSettings,
              source: Source, event: tuple[str, str] | None = None) -> Step | None:
    """What a provider said about ``att``, from any source, as a Step; None when it
    changes nothing (old news, or no news)."""
    outcome = result.outcome
    st = att.state
    if st is AttemptState.REFUND_REQUESTED:
        return _on_refund(rec, att, result, now, source, event)
    if outcome is AttemptOutcome.CAPTURED:
        return None if st in _TAKEN else _on_capture(rec, att, result, now, s, source, event)
    if st in _TAKEN:
        return None
    if st in _CLOSED:
        if source is Source.LATE_CHECK and outcome is not AttemptOutcome.UNKNOWN and att.late_check_at is not None:
            return _attempt_step(rec, att, st, "late_capture_check_clear", now, result, event=event,
                                 late_check_at=None)
        return None
    # The attempt is open.
    if outcome is AttemptOutcome.NOT_PROCESSED and not (source is Source.ATTEMPT and st is AttemptState.STARTED):
        outcome = AttemptOutcome.UNKNOWN  # only the charge's own refusal proves nothing was taken
    if outcome is AttemptOutcome.UNKNOWN:
        if st is not AttemptState.STARTED:
            return None
        return _attempt_step(rec, att, AttemptState.UNKNOWN, f"{source}_unknown", now, result, event=event)
    if outcome is AttemptOutcome.REQUIRES_ACTION:
        if st not in (AttemptState.STARTED, AttemptState.UNKNOWN):
            return None  # old news, or a stale event after the payment moved on
        status = None if rec.terminal or rec.status is RechargeStatus.REQUIRES_ACTION else \
            RechargeStatus.REQUIRES_ACTION
        return _attempt_step(rec, att, AttemptState.REQUIRES_ACTION, f"{source}_requires_action", now, result,
                             status=status, event=event, action_url=result.action_url or att.action_url,
                             action_expires_at=att.action_expires_at or now + s.action_ttl_s)
    if outcome is AttemptOutcome.PENDING:
        if st in (AttemptState.PENDING, AttemptState.VOID_REQUESTED, AttemptState.REQUIRES_ACTION):
            return None  # a step-up ends captured, declined or expired (SPEC 6): never pending
        if rec.instant and not rec.terminal and now < rec.deadline() and _mismatch(rec, result) is None:
            return _credit(rec, att, result, now, s, source, event, AttemptState.PENDING, Settlement.PENDING)
        status = None if rec.terminal or rec.status is RechargeStatus.PENDING else RechargeStatus.PENDING
        return _attempt_step(rec, att, AttemptState.PENDING, f"{source}_pending", now, result, status=status,
                             reason="awaiting_provider", event=event)
    # Declined, voided or refunded: the attempt holds nothing.
    state = _STATE_OF[outcome]
    if _settling(rec, att):
        return _settlement_failed(rec, att, state, now, result, source, event)
    late_check = now + s.late_capture_check_s + s.clock_skew_s if st in _DOUBTFUL else None
    if att.action_url is not None and not rec.terminal:
        # A step-up that ended without a payment: abandoned, lapsed, or declined after it.
        lapsed = outcome is AttemptOutcome.VOIDED
        if lapsed or result.decline_code == ACTION_ABANDONED:
            reason = ACTION_EXPIRED if lapsed else ACTION_ABANDONED
            return _attempt_step(rec, att, state, f"{source}_{outcome.value}", now, result,
                                 status=RechargeStatus.FAILED, reason=reason, event=event, late_check_at=late_check)
    if (outcome is AttemptOutcome.DECLINED and not rec.terminal
            and (result.decline_code or "") not in s.soft_decline_codes):
        return _attempt_step(rec, att, state, f"{source}_declined", now, result, status=RechargeStatus.DECLINED,
                             reason="hard_decline", decline_code=result.decline_code or "declined",
                             channel=att.channel, event=event, late_check_at=late_check)
    return _attempt_step(rec, att, state, f"{source}_{outcome.value}", now, result, event=event,
                         late_check_at=late_check)


def on_event(rec: Recharge, att: Attempt, result: ChannelResult, now: float, s: RunSettings,
             event: tuple[str, str]) -> Step:
    """A provider's webhook about ``att``: like any answer, and always a Step, so the
    event is recorded (and never applied twice) even when it changes nothing."""
    step = on_answer(rec, att, result, now, s, Source.WEBHOOK, event)
    if step is not None:
        return step
    return Step(rec.id, now, event=event, trail=(TrailEntry(
        rec.id, now, "webhook_ignored", rec.status.value, att.reference, att.channel,
        {"status": result.outcome.value, "attempt_state": att.state.value}),))


def _on_capture(rec: Recharge, att: Attempt, result: ChannelResult, now: float, s: RunSettings, source: Source,
                event: tuple[str, str] | None) -> Step:
    if _settling(rec, att):
        if _mismatch(rec, result) is not None:  # not the payment credited: give it back, take the coins back
            return _settlement_failed(rec, att, AttemptState.REFUND_REQUESTED, now, result, source, event)
        done = replace(att, state=AttemptState.CAPTURED, updated_at=now, error=None, late_check_at=None,
                       provider_ref=result.provider_ref or att.provider_ref)
        trail = (TrailEntry(rec.id, now, f"{source}_captured", rec.status.value, att.reference, att.channel,
                            {"provider_ref": result.provider_ref}),
                 TrailEntry(rec.id, now, "settled", rec.status.value, att.reference, att.channel))
        return Step(rec.id, now, attempt=done, expect_attempt=frozenset({att.state}), settlement=Settlement.SETTLED,
                    event=event, trail=trail, follow_up=_follow_up_change(rec, done, True, now))
    others = any(a.state is AttemptState.CAPTURED and a.reference != att.reference for a in rec.attempts)
    if rec.terminal or others:
        # Money nobody keeps: a capture after a confirmed failover, on a finished
        # recharge, or a second one. Refunded, and the reconciler retries until it is.
        return _attempt_step(rec, att, AttemptState.REFUND_REQUESTED, "late_capture_refund_requested", now, result,
                             event=event, late_check_at=None, detail={"was": att.state.value, "source": source.value})
    mismatch = _mismatch(rec, result)
    if mismatch is not None:
        return _attempt_step(rec, att, AttemptState.CAPTURED, AMOUNT_MISMATCH, now, result,
                             status=RechargeStatus.PENDING, reason=AMOUNT_MISMATCH, event=event, late_check_at=None,
                             detail=mismatch, error=f"{AMOUNT_MISMATCH}: the provider captured "
                             f"{mismatch['captured']}, the attempt asked {mismatch['expected']}")
    return _credit(rec, att, result, now, s, source, event, AttemptState.CAPTURED, None)


def _credit(rec: Recharge, att: Attempt, result: ChannelResult, now: float, s: RunSettings, source: Source,
            event: tuple[str, str] | None, state: AttemptState, settlement: Settlement | None) -> Step:
    """Succeeded and credited: on a capture, or (instant credit) on a pending payment."""
    total = rec.coins + rec.bonus_coins
    done = replace(att, state=state, updated_at=now, error=None, late_check_at=None,
                   provider_ref=result.provider_ref or att.provider_ref,
                   latency_ms=att.latency_ms if att.latency_ms is not None else result.latency_ms or None)
    first = ("attempt_captured" if source is Source.ATTEMPT else f"{source}_captured") if settlement is None \
        else f"{source}_pending"
    credited: dict[str, Any] = {"coins": total}
    if settlement is not None:
        credited["settlement"] = settlement.value
    trail = (TrailEntry(rec.id, now, first, RechargeStatus.SUCCEEDED.value, att.reference, att.channel,
                        {"provider_ref": result.provider_ref}),
             TrailEntry(rec.id, now, "credited", RechargeStatus.SUCCEEDED.value, att.reference, att.channel, credited))
    return Step(rec.id, now, status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL, channel=att.channel,
                attempt=done, expect_attempt=frozenset({att.state}),
                credit=Credit(rec.id, rec.user_id, total, now, s.pool_for(rec.country)), settlement=settlement,
                event=event, trail=trail, follow_up=_follow_up_change(rec, done, True, now))


def _settling(rec: Recharge, att: Attempt) -> bool:
    """Whether ``att`` is the payment of an instant credit the channel has not settled yet."""
    return rec.settlement is Settlement.PENDING and att.state is AttemptState.PENDING


def _settlement_failed(rec: Recharge, att: Attempt, state: AttemptState, now: float, result: ChannelResult,
                       source: Source, event: tuple[str, str] | None) -> Step:
    """The instantly credited payment failed: the coins go back to the pool (the wallet
    may go negative: a debt), and the recharge says so; a capture of the wrong amount is
    refunded besides."""
    total = rec.coins + rec.bonus_coins
    step = _attempt_step(rec, att, state, f"{source}_{result.outcome.value}", now, result, event=event,
                         late_check_at=None)
    trail = (*step.trail, TrailEntry(rec.id, now, "clawed_back", rec.status.value, att.reference, att.channel,
                                     {"coins": total, "settlement": Settlement.FAILED.value}))
    return replace(step, settlement=Settlement.FAILED, trail=trail,
                   clawback=Credit(rec.id, rec.user_id, total, now))


def _on_refund(rec: Recharge, att: Attempt, result: ChannelResult, now: float, source: Source,
               event: tuple[str, str] | None) -> Step | None:
    """News about a capture being given back. Only a confirmed refund (or a payment
    that turns out never to have held money) closes it; anything else is retried."""
    outcome = result.outcome
    if outcome is AttemptOutcome.REFUNDED:
        return _attempt_step(rec, att, AttemptState.REFUNDED, "late_capture_refunded", now, result, event=event)
    if outcome in (AttemptOutcome.VOIDED, AttemptOutcome.DECLINED) and source is not Source.WEBHOOK:
        return _attempt_step(rec, att, _STATE_OF[outcome], f"{source}_{outcome.value}", now, result, event=event)
    return None


def _attempt_step(rec: Recharge, att: Attempt, state: AttemptState, event_name: str, now: float,
                  result: ChannelResult | None, *, status: RechargeStatus | None = None, reason: str | None = None,
                  decline_code: str | None = None, channel: str | None = None,
                  event: tuple[str, str] | None = None, late_check_at: Any = KEEP,
                  detail: dict[str, Any] | None = None, error: str | None = None,
                  action_url: str | None = None, action_expires_at: float | None = None) -> Step:
    updated = replace(
        att, state=state, updated_at=now,
        provider_ref=(result.provider_ref if result else None) or att.provider_ref,
        decline_code=(result.decline_code if result else None) or att.decline_code,
        error=error if error is not None else (result.error if result else None),
        latency_ms=att.latency_ms if att.latency_ms is not None or result is None else result.latency_ms or None,
        late_check_at=att.late_check_at if late_check_at is KEEP else late_check_at,
        action_url=action_url or att.action_url,
        action_expires_at=action_expires_at or att.action_expires_at,
    )
    entry_detail = _detail(result)
    if detail:
        entry_detail = {**(entry_detail or {}), **detail}
    trail = (TrailEntry(rec.id, now, event_name, (status or rec.status).value, att.reference, att.channel,
                        entry_detail),)
    return Step(rec.id, now, status=status, expect_status=NONTERMINAL if status else None, reason=reason,
                decline_code=decline_code, channel=channel, attempt=updated, expect_attempt=frozenset({att.state}),
                event=event, trail=trail,
                follow_up=_follow_up_change(rec, updated, (status or rec.status) in TERMINAL, now))


def _mismatch(rec: Recharge, result: ChannelResult) -> dict[str, Any] | None:
    if (result.amount_minor is None or result.amount_minor == rec.amount_minor) and (
            result.currency is None or result.currency == rec.currency):
        return None
    return {"expected": f"{rec.amount_minor} {rec.currency}",
            "captured": f"{result.amount_minor if result.amount_minor is not None else rec.amount_minor} "
                        f"{result.currency or rec.currency}"}


def _detail(result: ChannelResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    detail: dict[str, Any] = {"outcome": result.outcome.value, "latency_ms": round(result.latency_ms, 1)}
    if result.decline_code:
        detail["decline_code"] = result.decline_code
    if result.error:
        detail["error"] = result.error
    if result.provider_ref:
        detail["provider_ref"] = result.provider_ref
    if result.action_url:
        detail["action_url"] = result.action_url
    return detail


# -- follow-ups -----------------------------------------------------------------------------


def follow_up_of(attempts: Iterable[Attempt], terminal: bool, now: float) -> float | None:
    """When a recharge next needs background work: a refund owed or an attempt left
    open on a finished recharge (now), or the earliest late-capture check."""
    due: float | None = None
    for a in attempts:
        if a.state is AttemptState.REFUND_REQUESTED or (terminal and a.state in OPEN_ATTEMPT_STATES):
            t = now
        elif a.late_check_at is not None:
            t = a.late_check_at
        else:
            continue
        due = t if due is None else min(due, t)
    return due


def _follow_up_change(rec: Recharge, updated: Attempt, terminal_after: bool, now: float) -> Any:
    """The step's follow-up: KEEP when it does not change (every step of a plain
    recharge), else the new time or None."""
    before = follow_up_of(rec.attempts, rec.terminal, now)
    after = follow_up_of((updated if a.reference == updated.reference else a for a in rec.attempts),
                         terminal_after, now)
    return KEEP if before == after else after


# -- the reducer ----------------------------------------------------------------------------


def admits(rec: Recharge, step: Step) -> bool:
    """Whether ``step``'s guards hold on ``rec`` (the store checks the same in SQL)."""
    if step.expect_status is not None and rec.status not in step.expect_status:
        return False
    a = step.attempt
    if a is not None:
        current = rec.attempt(a.reference)
        if step.attempt_is_new:
            return current is None and all(x.seq != a.seq for x in rec.attempts)
        if current is None or (step.expect_attempt is not None and current.state not in step.expect_attempt):
            return False
    return True


def reduce(rec: Recharge, step: Step) -> None:
    """Apply a durable ``step`` to ``rec`` in place. ``updated_at`` moves with a change
    of the recharge or of one of its attempts, not with a note or an ignored event."""
    if step.status is not None:
        rec.status = step.status
        rec.reason = step.reason
        if step.channel is not None:
            rec.channel = step.channel
        if step.decline_code is not None:
            rec.decline_code = step.decline_code
    if step.settlement is not None:
        rec.settlement = step.settlement
    a = step.attempt
    if a is not None:
        if step.attempt_is_new:
            rec.attempts.append(a)
        else:
            rec.attempts = [a if x.reference == a.reference else x for x in rec.attempts]
    if step.status is not None or a is not None or step.settlement is not None:
        rec.updated_at = step.at
