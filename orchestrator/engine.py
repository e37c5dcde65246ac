"""The recharge state machine (SPEC sections 4 and 7).

One ``drive`` loop per recharge, resumable from the journal alone: after a crash the
same loop runs over what was journaled and carries on. The rules it keeps:

- every step is durable before the outside call it guards (an attempt is journaled as
  ``started`` before the provider hears of it; a void as ``void_requested``);
- nothing else is tried while an attempt may hold money (``OPEN_ATTEMPT_STATES``): an
  unknown outcome is inquired, then voided, and only a confirmed "not charged" lets the
  recharge fail over; otherwise it waits ``pending`` for inquiry, webhook or the
  reconciler;
- the credit commits in the same transaction that marks the recharge ``succeeded``,
  and the store refuses a second one;
- a capture that arrives for a recharge already finished elsewhere is refunded.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import structlog

from channels import AttemptOutcome, Channel, ChannelResult, PaymentRequest
from config import Config
from orchestrator.activity import Activity
from orchestrator.clock import Clock
from orchestrator.journal import FirstRecharge, Journal
from orchestrator.model import (
    OPEN_ATTEMPT_STATES,
    TERMINAL,
    Attempt,
    AttemptState,
    Credit,
    Recharge,
    RechargeStatus,
    Step,
    TrailEntry,
)

__all__ = ["Engine", "Gate", "HeldElsewhere", "IdempotencyConflict", "RoutePlan", "RunSettings", "new_recharge_id", "NONTERMINAL"]

log = structlog.get_logger("orchestrator.engine")

NONTERMINAL = frozenset(s for s in RechargeStatus if s not in TERMINAL)

_OUTCOME_STATE = {
    AttemptOutcome.CAPTURED: AttemptState.CAPTURED,
    AttemptOutcome.PENDING: AttemptState.PENDING,
    AttemptOutcome.DECLINED: AttemptState.DECLINED,
    AttemptOutcome.NOT_PROCESSED: AttemptState.NOT_PROCESSED,
    AttemptOutcome.UNKNOWN: AttemptState.UNKNOWN,
    AttemptOutcome.VOIDED: AttemptState.VOIDED,
    AttemptOutcome.REFUNDED: AttemptState.REFUNDED,
}


def new_recharge_id() -> str:
    """``rc_`` + 12 hex digits of milliseconds since the epoch + 16 random hex digits.

    Time first, so ids made close together sort together: every index keyed by the
    recharge (its row, its attempts' references, its trail, its credit, its lease) grows
    at its right-hand end, and one commit of many recharges rewrites a few shared pages
    instead of a random page per recharge per index. 64 random bits per millisecond keep
    ids unguessable and unique across instances."""
    return f"rc_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


class IdempotencyConflict(Exception):
    """The idempotency key is already held by a recharge with a different request."""


class HeldElsewhere(Exception):
    """Another instance holds the lease of this (non-terminal) recharge and drives it."""

    def __init__(self, rec: Recharge) -> None:
        super().__init__(rec.id)
        self.recharge = rec


class RoutePlan(NamedTuple):
    """A routing decision as the engine uses it: the failover order, and whether every
    channel in it is ejected (panic: try them anyway, bypassing their breakers)."""

    candidates: tuple[str, ...]
    panic: bool = False


@dataclass(slots=True)
class _Pick:
    """An attempt chosen and admitted by the gate, not yet answered by the provider."""

    channel: Channel
    ticket: object
    instrument: Mapping[str, object]
    attempt: Attempt
    trail: TrailEntry
    released: bool = False


class Gate(Protocol):
    """Admission and accounting of provider attempts: health statistics, breakers,
    in-flight caps and metrics live behind it. ``admit`` may refuse (an open breaker,
    a full channel): the engine then moves on to the next candidate."""

    def admit(self, channel: str, *, panic: bool = False) -> object | None: ...

    def finished(self, ticket: object, outcome: AttemptOutcome, latency_ms: float) -> None: ...

    def abandoned(self, ticket: object) -> None: ...


class _OpenGate:
    def admit(self, channel: str, *, panic: bool = False) -> object | None:
        return channel

    def finished(self, ticket: object, outcome: AttemptOutcome, latency_ms: float) -> None:
        return None

    def abandoned(self, ticket: object) -> None:
        return None


@dataclass(frozen=True, slots=True)
class RunSettings:
    """The part of the config one recharge runs on, fixed when it starts: a reload
    mid-flight does not change the rules under a running recharge."""

    version: str
    max_attempts: int
    deadline_s: float
    soft_decline_codes: frozenset[str]
    inquiry_attempts: int
    inquiry_initial_backoff_s: float
    inquiry_max_backoff_s: float
    reconcile_interval_s: float
    log_success_sample: float = 1.0

    @classmethod
    def from_config(cls, cfg: Config, version: str) -> RunSettings:
        r = cfg.routing
        return cls(
            version=version,
            max_attempts=r.max_attempts,
            deadline_s=r.deadline_s,
            soft_decline_codes=frozenset(r.soft_decline_codes),
            inquiry_attempts=r.inquiry.attempts,
            inquiry_initial_backoff_s=r.inquiry.initial_backoff_ms / 1000,
            inquiry_max_backoff_s=r.inquiry.max_backoff_ms / 1000,
            reconcile_interval_s=r.inquiry.reconcile_interval_s,
            log_success_sample=cfg.logging.success_sample,
        )


Router = Callable[[Recharge], "RoutePlan | Sequence[str]"]
"""Ordered failover candidates for a recharge (channel names, best first)."""

ChannelLookup = Callable[[str], Channel | None]
InstrumentLookup = Callable[[Recharge], Mapping[str, object] | None]


class Engine:
    def __init__(
        self,
        journal: Journal,
        channels: ChannelLookup,
        router: Router,
        clock: Clock,
        settings: Callable[[], RunSettings],
        *,
        gate: Gate | None = None,
        callback_url: Callable[[str], str | None] = lambda channel: None,
        instrument: InstrumentLookup = lambda rec: rec.instrument,
        activity: Activity | None = None,
        settle_channels: ChannelLookup | None = None,
        on_terminal: Callable[[Recharge], None] | None = None,
        owner: str | None = None,
        lease_s: float = 30.0,
    ) -> None:
        self._journal = journal
        self._channels = channels
        # Resolving what an attempt already started (inquire, void, refund) may use a
        # channel that a reload retired; starting new attempts may not.
        self._settle_channels = settle_channels or channels
        self._on_terminal = on_terminal
        # With an owner, every recharge this instance drives is leased in the store, so
        # several instances on one database never drive one recharge at once; a dead
        # instance's leases expire and a live one claims its work.
        self._owner = owner
        self._lease_s = lease_s
        self._router = router
        self._clock = clock
        self._settings = settings
        self._gate = gate or _OpenGate()
        self._callback_url = callback_url
        self._instrument = instrument
        self._activity = activity
        self._running: dict[str, tuple[asyncio.Task[None], Recharge]] = {}
        self._refunding: dict[str, asyncio.Task[None]] = {}
        self._refund_channels: dict[str, str] = {}
        self._wakers: dict[str, asyncio.Event] = {}

    # -- running recharges --------------------------------------------------------------

    async def submit(self, rec: Recharge, created: TrailEntry, settings: RunSettings | None = None,
                     first: FirstRecharge | None = None) -> tuple[Recharge, bool]:
        """Journal a new recharge (durably, with its idempotency key) and drive it.
        When its key is already taken, answer the recharge that holds it (and make
        sure something drives it) instead: ``(recharge, False)``.

        The routing decision is pure, so it is taken before the insert: the first
        attempt is journaled ``started`` in the recharge's own transaction, one durable
        write fewer on every recharge's path."""
        s = settings or self._settings()
        lease = None if self._owner is None else (self._owner, self._clock.now() + self._lease_s)
        plan: RoutePlan | None = None
        pick: _Pick | None = None
        if not rec.terminal:
            plan = self._plan(rec)
            chosen = self._pick(rec, s, plan, self._clock.now())
            pick = chosen if isinstance(chosen, _Pick) else None
        try:
            existing = await self._journal.create(rec, created, lease=lease, first=first,
                                                  started=None if pick is None else (pick.attempt, pick.trail))
        except BaseException:
            if pick is not None:
                self._release(pick)
            raise
        if existing is None:
            if pick is not None:
                rec.attempts.append(pick.attempt)
            self.start(rec, s, plan, pick)
            return rec, True
        if pick is not None:
            self._release(pick)
        if existing.fingerprint != rec.fingerprint:
            raise IdempotencyConflict(existing.id)
        live = self._running.get(existing.id)
        if live is not None:
            return live[1], False
        if not existing.terminal:
            if not await self._take(existing):
                raise HeldElsewhere(existing)
            self.start(existing)
        return existing, False

    async def _take(self, rec: Recharge) -> bool:
        """Lease ``rec`` for this instance (always granted without an owner)."""
        if self._owner is None:
            return True
        return await self._journal.lease(self._owner, rec.id, self._lease_s, self._clock.now())

    def start(self, rec: Recharge, settings: RunSettings | None = None, plan: RoutePlan | None = None,
              pick: _Pick | None = None) -> asyncio.Task[None]:
        """Drive ``rec`` in the background unless this process already does; ``pick``
        is its first attempt, journaled with it and not yet sent."""
        running = self._running.get(rec.id)
        if running is not None:
            if pick is not None:
                self._release(pick)
            return running[0]
        task = asyncio.get_running_loop().create_task(self._guarded(rec, settings or self._settings(), plan, pick))
        self._running[rec.id] = (task, rec)

        def done(_t: asyncio.Task[None], rid: str = rec.id) -> None:
            self._forget(rid)
            if pick is not None:
                self._release(pick)  # cancelled before the provider answered

        task.add_done_callback(done)
        return task

    def _forget(self, recharge_id: str) -> None:
        self._running.pop(recharge_id, None)
        self._wakers.pop(recharge_id, None)

    def live(self, recharge_id: str) -> tuple[asyncio.Task[None], Recharge] | None:
        """The task and in-memory state of a recharge this process is driving."""
        return self._running.get(recharge_id)

    def running(self) -> list[tuple[asyncio.Task[None], Recharge]]:
        return list(self._running.values())

    def refunding_channels(self) -> set[str]:
        return set(self._refund_channels.values())

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def recover(self) -> int:
        """Resume every non-terminal recharge from the journal (start-up and the
        periodic reconciler). Returns how many were (re)started."""
        started = 0
        if self._owner is None:
            unfinished = await self._journal.nonterminal()
        else:
            now = self._clock.now()
            await self._journal.renew(self._owner, list(self._running), self._lease_s, now)
            unfinished = await self._journal.claim(self._owner, self._lease_s, now)
        for rec in unfinished:
            if rec.id not in self._running:
                self.start(rec)
                started += 1
        for rec in await self._journal.refunds_due():
            for att in rec.attempts:
                if att.state is AttemptState.REFUND_REQUESTED:
                    self._spawn_refund(rec, att.reference)
        return started

    async def stop(self) -> None:
        """Cancel running drivers. Safe at any point: every step is journaled first, so
        the next start resumes where these stopped."""
        tasks = [t for t, _ in self._running.values()] + list(self._refunding.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _guarded(self, rec: Recharge, settings: RunSettings, plan: RoutePlan | None,
                       pick: _Pick | None) -> None:
        with structlog.contextvars.bound_contextvars(recharge_id=rec.id, config_version=settings.version):
            try:
                if pick is not None:
                    await self._send(rec, settings, pick)
                await self._drive(rec, settings, plan)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug or a store failure: the recharge stays as journaled, and the
                # reconciler picks it up again.
                log.exception("recharge_drive_failed")
            finally:
                if rec.terminal and self._on_terminal is not None:
                    self._on_terminal(rec)

    # -- the state machine --------------------------------------------------------------

    async def _drive(self, rec: Recharge, s: RunSettings, plan: RoutePlan | None = None) -> None:
        # The routing decision is taken once per drive and its ordered candidates are the
        # failover order: a recharge finishes on the ranking it started with.
        while not rec.terminal:
            att = rec.open_attempt()
            if att is not None:
                if not await self._settle(rec, att, s):
                    return  # still unresolved: pending, the reconciler comes back
                continue
            if plan is None:
                plan = self._plan(rec)
            if not await self._next_attempt(rec, s, plan):
                return

    def _plan(self, rec: Recharge) -> RoutePlan:
        routed = self._router(rec)
        return routed if isinstance(routed, RoutePlan) else RoutePlan(tuple(routed))

    def _pick(self, rec: Recharge, s: RunSettings, plan: RoutePlan, now: float) -> _Pick | str:
        """The next attempt to make (its channel admitted by the gate), or why none may
        be made."""
        if len(rec.attempts) >= s.max_attempts:
            return "max_attempts_reached"
        if now >= rec.deadline_at:
            return "deadline_exceeded"
        tried = {a.channel for a in rec.attempts}
        for name in plan.candidates:
            if name in tried:
                continue
            channel = self._channels(name)
            if channel is None:
                continue
            ticket = self._gate.admit(name, panic=plan.panic)
            if ticket is None:
                continue
            instrument = self._instrument(rec)
            if instrument is None:
                self._gate.abandoned(ticket)
                return "instrument_unavailable"
            seq = len(rec.attempts) + 1
            att = Attempt(f"{rec.id}.{seq}", rec.id, seq, name, AttemptState.STARTED, now, now)
            entry = TrailEntry(rec.id, now, "attempt_started", rec.status.value, att.reference, name)
            return _Pick(channel, ticket, instrument, att, entry)
        return "no_channel_available" if rec.attempts else "no_route"

    def _release(self, pick: _Pick, result: ChannelResult | None = None) -> None:
        """Account for the gate's admission of ``pick`` once: answered, or abandoned."""
        if pick.released:
            return
        pick.released = True
        if result is None:
            self._gate.abandoned(pick.ticket)
        else:
            self._gate.finished(pick.ticket, result.outcome, result.latency_ms)

    async def _next_attempt(self, rec: Recharge, s: RunSettings, plan: RoutePlan) -> bool:
        """Start the next attempt, or finish the recharge when none may be made."""
        pick = self._pick(rec, s, plan, self._clock.now())
        if isinstance(pick, str):
            return await self._give_up(rec, pick)
        step = Step(rec.id, pick.attempt.created_at, expect_status=NONTERMINAL, attempt=pick.attempt,
                    attempt_is_new=True, trail=(pick.trail,))
        try:
            if not await self._commit(rec, step):
                return False
            await self._send(rec, s, pick)
        finally:
            self._release(pick)  # refused, cancelled or crashed before the provider answered
        return True

    async def _send(self, rec: Recharge, s: RunSettings, pick: _Pick) -> None:
        """Ask the provider to authorize an attempt already journaled ``started``, and
        journal its answer."""
        att = pick.attempt
        name = att.channel
        try:
            if self._activity is not None:
                self._activity.attempt(name)
                if att.seq > 1:
                    prev = rec.attempts[-2]
                    self._activity.failover(rec.id, prev.channel, name, prev.state.value)
            request = PaymentRequest(
                att.reference, rec.amount_minor, rec.currency, rec.method,
                dict(pick.instrument), self._callback_url(name),
            )
            # No contextvars binding here (it costs on every recharge): the few lines
            # logged on this path name the attempt themselves.
            result = await self._call(pick.channel, "authorize", request, rec.deadline_at - self._clock.now())
            self._release(pick, result)
            log.debug("attempt_answered", attempt=att.reference, channel=name, outcome=result.outcome.value,
                      latency_ms=result.latency_ms)
            await self._record(rec, att, result, s, event="attempt")
        finally:
            self._release(pick)

    async def _settle(self, rec: Recharge, att: Attempt, s: RunSettings) -> bool:
        """Resolve an attempt that may hold money. True when it was resolved (and
        recorded); False when it is still unknown and the recharge must wait."""
        channel = self._settle_channels(att.channel)
        if channel is None:
            return await self._wait(rec, att, f"channel {att.channel} is not configured; cannot resolve")
        with structlog.contextvars.bound_contextvars(attempt=att.reference, channel=att.channel):
            if att.state is AttemptState.VOID_REQUESTED:
                result = await self._call(channel, "void", att.reference, None)
                if result.outcome in (AttemptOutcome.UNKNOWN, AttemptOutcome.PENDING):
                    return await self._wait(rec, att, "void_unconfirmed")
                await self._record(rec, att, result, s, event="void")
                return True
            result = await self._inquire(rec, att, channel, s)
            if result.outcome is AttemptOutcome.UNKNOWN or (
                result.outcome is AttemptOutcome.PENDING and self._clock.now() >= rec.deadline_at
            ):
                # Still unknown, or still pending past the deadline: cancel it, and only
                # a confirmed void lets the recharge move on.
                await self._transition(rec, att, AttemptState.VOID_REQUESTED, "void_requested", result)
                return True
            await self._record(rec, att, result, s, event="inquiry")
            return True

    async def _inquire(self, rec: Recharge, att: Attempt, channel: Channel, s: RunSettings) -> ChannelResult:
        """Inquire with backoff. An unknown outcome gets ``inquiry_attempts`` tries; a
        pending one is polled until it resolves or the deadline passes."""
        delay = s.inquiry_initial_backoff_s
        tries = 0
        while True:
            result = await self._call(channel, "inquire", att.reference, None)
            tries += 1
            if result.outcome is AttemptOutcome.PENDING:
                if att.state is not AttemptState.PENDING:
                    return result  # record it as pending first; polling follows
                remaining = rec.deadline_at - self._clock.now()
                if remaining <= 0:
                    return result
                await self._pause(rec.id, min(delay, remaining))
                delay = min(delay * 2, s.inquiry_max_backoff_s)
                continue
            if result.outcome is not AttemptOutcome.UNKNOWN or tries >= s.inquiry_attempts:
                return result
            await self._clock.sleep(delay)
            delay = min(delay * 2, s.inquiry_max_backoff_s)

    async def _record(self, rec: Recharge, att: Attempt, result: ChannelResult, s: RunSettings, *, event: str) -> None:
        """Journal what a provider answered about ``att`` and what it means for ``rec``."""
        outcome = result.outcome
        if outcome is AttemptOutcome.CAPTURED:
            await self._succeed(rec, att, result)
        elif outcome is AttemptOutcome.DECLINED and (result.decline_code or "") not in s.soft_decline_codes:
            await self._transition(
                rec, att, AttemptState.DECLINED, f"{event}_declined", result,
                status=RechargeStatus.DECLINED, reason="hard_decline", decline_code=result.decline_code or "declined",
            )
        elif outcome is AttemptOutcome.PENDING:
            await self._transition(
                rec, att, AttemptState.PENDING, f"{event}_pending", result,
                status=None if rec.status is RechargeStatus.PENDING else RechargeStatus.PENDING,
                reason="awaiting_provider",
            )
        else:
            await self._transition(rec, att, _OUTCOME_STATE[outcome], f"{event}_{outcome.value}", result)

    async def _succeed(self, rec: Recharge, att: Attempt, result: ChannelResult) -> None:
        now = self._clock.now()
        done = replace(att, state=AttemptState.CAPTURED, provider_ref=result.provider_ref,
                       latency_ms=result.latency_ms or att.latency_ms, updated_at=now, error=None)
        total = rec.coins + rec.bonus_coins
        step = Step(
            rec.id, now, status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL, channel=att.channel,
            attempt=done, expect_attempt=frozenset({att.state}), credit=Credit(rec.id, rec.user_id, total, now),
            trail=(
                TrailEntry(rec.id, now, "attempt_captured", RechargeStatus.SUCCEEDED.value, att.reference, att.channel,
                           {"provider_ref": result.provider_ref}),
                TrailEntry(rec.id, now, "credited", RechargeStatus.SUCCEEDED.value, att.reference, att.channel,
                           {"coins": total}),
            ),
        )
        if await self._commit(rec, step):
            if random.random() < self._settings().log_success_sample:
                log.info("recharge_succeeded", attempt=att.reference, channel=att.channel, coins=total, sampled=True)
            return
        # Someone else moved first (a webhook, another instance). If the recharge ended
        # by other means, this capture is extra money: give it back. Otherwise the loop
        # goes on from the fresh state.
        if rec.terminal and not (rec.status is RechargeStatus.SUCCEEDED and rec.channel == att.channel):
            fresh = next((a for a in rec.attempts if a.reference == att.reference), att)
            await self._late_capture(rec, fresh, result.provider_ref)

    async def _late_capture(self, rec: Recharge, att: Attempt, provider_ref: str | None,
                            event: tuple[str, str] | None = None) -> bool:
        """Journal that ``att`` captured money no succeeded recharge keeps, then refund
        it. The refund is retried by the reconciler until the provider confirms it."""
        now = self._clock.now()
        step = Step(
            rec.id, now, event=event, expect_attempt=frozenset({att.state}),
            attempt=replace(att, state=AttemptState.REFUND_REQUESTED, updated_at=now,
                            provider_ref=provider_ref or att.provider_ref),
            trail=(TrailEntry(rec.id, now, "late_capture_refund_requested", rec.status.value, att.reference,
                              att.channel, {"was": att.state.value}),),
        )
        if not await self._commit(rec, step):
            return False
        log.warning("late_capture", attempt=att.reference, channel=att.channel)
        self._spawn_refund(rec, att.reference)
        return True

    def _spawn_refund(self, rec: Recharge, reference: str) -> None:
        if reference in self._refunding:
            return
        task = asyncio.get_running_loop().create_task(self._refund(rec, reference))
        self._refunding[reference] = task
        self._refund_channels[reference] = next((a.channel for a in rec.attempts if a.reference == reference), "")

        def done(_t: asyncio.Task[None]) -> None:
            self._refunding.pop(reference, None)
            self._refund_channels.pop(reference, None)

        task.add_done_callback(done)

    async def _refund(self, rec: Recharge, reference: str) -> None:
        att = next((a for a in rec.attempts if a.reference == reference), None)
        channel = self._settle_channels(att.channel) if att else None
        if att is None or channel is None or att.state is not AttemptState.REFUND_REQUESTED:
            return
        with structlog.contextvars.bound_contextvars(recharge_id=rec.id, attempt=reference, channel=att.channel):
            result = await self._call(channel, "refund", reference, None)
            if result.outcome in (AttemptOutcome.REFUNDED, AttemptOutcome.VOIDED, AttemptOutcome.NOT_PROCESSED):
                await self._transition(rec, att, AttemptState.REFUNDED, "late_capture_refunded", result)
            else:
                log.warning("refund_unconfirmed", outcome=result.outcome.value, error=result.error)

    async def _transition(
        self, rec: Recharge, att: Attempt, state: AttemptState, event: str, result: ChannelResult | None,
        *, status: RechargeStatus | None = None, reason: str | None = None, decline_code: str | None = None,
    ) -> bool:
        now = self._clock.now()
        updated = replace(
            att, state=state, updated_at=now,
            provider_ref=(result.provider_ref if result else None) or att.provider_ref,
            decline_code=(result.decline_code if result else None) or att.decline_code,
            error=(result.error if result else None),
            latency_ms=att.latency_ms if att.latency_ms is not None or result is None else result.latency_ms,
        )
        trail = [TrailEntry(rec.id, now, event, (status or rec.status).value, att.reference, att.channel,
                            _detail(result))]
        step = Step(
            rec.id, now, status=status, expect_status=NONTERMINAL if status else None, reason=reason,
            decline_code=decline_code, channel=att.channel if status is RechargeStatus.DECLINED else None,
            attempt=updated, expect_attempt=frozenset({att.state}), trail=tuple(trail),
        )
        return await self._commit(rec, step)

    async def _give_up(self, rec: Recharge, reason: str) -> bool:
        last = rec.attempts[-1] if rec.attempts else None
        soft = last is not None and last.state is AttemptState.DECLINED
        status = RechargeStatus.DECLINED if soft else RechargeStatus.FAILED
        now = self._clock.now()
        step = Step(
            rec.id, now, status=status, expect_status=NONTERMINAL, reason=reason,
            decline_code=last.decline_code if soft and last else None,
            trail=(TrailEntry(rec.id, now, status.value, status.value, detail={"reason": reason}),),
        )
        await self._commit(rec, step)
        log.info("recharge_finished", status=status.value, reason=reason)
        return False

    async def _wait(self, rec: Recharge, att: Attempt, reason: str) -> bool:
        """Leave the recharge ``pending`` with a reason; the reconciler retries later."""
        if rec.status is not RechargeStatus.PENDING or rec.reason != reason:
            now = self._clock.now()
            await self._commit(rec, Step(
                rec.id, now, status=RechargeStatus.PENDING, expect_status=NONTERMINAL, reason=reason,
                trail=(TrailEntry(rec.id, now, "pending", RechargeStatus.PENDING.value, att.reference, att.channel,
                                  {"reason": reason}),),
            ))
        return False

    async def _pause(self, recharge_id: str, seconds: float) -> None:
        """Sleep between polls, or less if a provider event for this recharge arrives
        (now, or since the last pause: the nudge is kept until a pause consumes it)."""
        waker = self._wakers.setdefault(recharge_id, asyncio.Event())
        if not waker.is_set():
            sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
            woken = asyncio.ensure_future(waker.wait())
            try:
                await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                woken.cancel()
        waker.clear()

    # -- provider events (webhooks) -----------------------------------------------------

    async def on_event(self, channel: str, event_id: str, reference: str, status: AttemptOutcome,
                       provider_ref: str | None = None, decline_code: str | None = None) -> str:
        """Apply one provider event, at most once (by ``(channel, event_id)``), durably,
        and never backwards: an event about an attempt already resolved changes nothing,
        except a capture nobody keeps, which is refunded. Returns what it did."""
        if await self._journal.event_seen(channel, event_id):
            return "duplicate"
        stored = await self._journal.attempt(reference)
        if stored is None or stored.channel != channel:
            log.warning("event_for_unknown_payment", channel=channel, reference=reference)
            return "unknown_payment"
        live = self._running.get(stored.recharge_id)
        rec = live[1] if live is not None else await self._journal.get(stored.recharge_id)
        if rec is None:
            return "unknown_payment"
        result = ChannelResult(status, provider_ref=provider_ref, decline_code=decline_code)
        with structlog.contextvars.bound_contextvars(recharge_id=rec.id, attempt=reference, channel=channel):
            for _ in range(5):
                att = next(a for a in rec.attempts if a.reference == reference)
                applied, what = await self._apply_event(rec, att, result, (channel, event_id))
                if applied:
                    break
                if await self._journal.event_seen(channel, event_id):
                    return "duplicate"
                await self._refresh(rec)
            else:
                raise RuntimeError(f"event {event_id} kept losing races on {reference}")
            log.info("provider_event", event_id=event_id, status=status.value, effect=what)
        if rec.id in self._running:
            # Wake the driver: it re-inquires now, and stops if the event ended it.
            self._wakers.setdefault(rec.id, asyncio.Event()).set()
        elif not rec.terminal and await self._take(rec):
            self.start(rec)
        return what

    async def _apply_event(self, rec: Recharge, att: Attempt, result: ChannelResult,
                           event: tuple[str, str]) -> tuple[bool, str]:
        status = result.outcome
        now = self._clock.now()
        s = self._settings()
        if att.state in OPEN_ATTEMPT_STATES and status is AttemptOutcome.CAPTURED:
            total = rec.coins + rec.bonus_coins
            step = Step(
                rec.id, now, status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL, channel=att.channel,
                attempt=replace(att, state=AttemptState.CAPTURED, updated_at=now,
                                provider_ref=result.provider_ref or att.provider_ref),
                expect_attempt=frozenset({att.state}), credit=Credit(rec.id, rec.user_id, total, now), event=event,
                trail=(TrailEntry(rec.id, now, "webhook_captured", "succeeded", att.reference, att.channel),
                       TrailEntry(rec.id, now, "credited", "succeeded", att.reference, att.channel, {"coins": total})),
            )
            return await self._commit(rec, step), "succeeded"
        if att.state in OPEN_ATTEMPT_STATES and status is not AttemptOutcome.PENDING:
            new_status = None
            if status is AttemptOutcome.DECLINED and (result.decline_code or "") not in s.soft_decline_codes:
                new_status = RechargeStatus.DECLINED
            state = _OUTCOME_STATE.get(status, AttemptState.UNKNOWN)
            step = Step(
                rec.id, now, status=new_status, expect_status=NONTERMINAL if new_status else None,
                reason="hard_decline" if new_status else None,
                decline_code=(result.decline_code or "declined") if new_status else None,
                channel=att.channel if new_status else None,
                attempt=replace(att, state=state, updated_at=now, decline_code=result.decline_code),
                expect_attempt=frozenset({att.state}), event=event,
                trail=(TrailEntry(rec.id, now, f"webhook_{status.value}", (new_status or rec.status).value,
                                  att.reference, att.channel, _detail(result)),),
            )
            return await self._commit(rec, step), f"attempt_{state.value}"
        if status is AttemptOutcome.CAPTURED and att.state not in (
            AttemptState.CAPTURED, AttemptState.REFUND_REQUESTED, AttemptState.REFUNDED
        ):
            return await self._late_capture(rec, att, result.provider_ref, event), "late_capture_refunding"
        if att.state in (AttemptState.STARTED, AttemptState.UNKNOWN) and status is AttemptOutcome.PENDING:
            step = Step(
                rec.id, now, status=None if rec.status is RechargeStatus.PENDING else RechargeStatus.PENDING,
                expect_status=NONTERMINAL, reason="awaiting_provider",
                attempt=replace(att, state=AttemptState.PENDING, updated_at=now), expect_attempt=frozenset({att.state}),
                event=event,
                trail=(TrailEntry(rec.id, now, "webhook_pending", "pending", att.reference, att.channel),),
            )
            return await self._commit(rec, step), "attempt_pending"
        # Old news, or out of order: record it, change nothing.
        step = Step(rec.id, now, event=event, trail=(TrailEntry(
            rec.id, now, "webhook_ignored", rec.status.value, att.reference, att.channel,
            {"status": status.value, "attempt_state": att.state.value}),))
        return await self._commit(rec, step), "ignored"

    # -- helpers ------------------------------------------------------------------------

    async def _call(self, channel: Channel, op: str, arg: object, budget_s: float | None) -> ChannelResult:
        """One provider call. Channels map their own failures to outcomes; anything that
        still escapes (a bug, our own deadline) is an unknown outcome, never a crash."""
        started = self._clock.monotonic()
        # A channel that answers within its own timeout needs no deadline of ours armed
        # when the budget is longer (the common case: 15 s left, a 2 s provider timeout).
        own = getattr(channel, "timeout_s", None)
        if budget_s is not None and own is not None and own < budget_s:
            budget_s = None
        try:
            coro = getattr(channel, op)(arg)
            if budget_s is not None:
                async with asyncio.timeout(max(budget_s, 0.001)):
                    result: ChannelResult = await coro
            else:
                result = await coro
        except TimeoutError:
            result = ChannelResult(AttemptOutcome.UNKNOWN, error="deadline reached while waiting for the provider")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("channel_call_raised", op=op, channel=getattr(channel, "name", None), arg=str(arg)[:80],
                        error=repr(exc))
            result = ChannelResult(AttemptOutcome.UNKNOWN, error=f"channel error: {type(exc).__name__}")
        if not result.latency_ms:
            result = replace(result, latency_ms=(self._clock.monotonic() - started) * 1000)
        return result

    async def _commit(self, rec: Recharge, step: Step) -> bool:
        """Make ``step`` durable, then (and only then) mirror it in memory."""
        if not await self._journal.apply(step):
            await self._refresh(rec)
            return False
        if step.status is not None:
            if self._activity is not None and step.status in TERMINAL:
                self._activity.outcome(step.status.value)
            rec.status = step.status
            rec.reason = step.reason
            if step.channel is not None:
                rec.channel = step.channel
            if step.decline_code is not None:
                rec.decline_code = step.decline_code
        if step.attempt is not None:
            if step.attempt_is_new:
                rec.attempts.append(step.attempt)
            else:
                rec.attempts = [step.attempt if a.reference == step.attempt.reference else a for a in rec.attempts]
        rec.updated_at = step.at
        return True

    async def _refresh(self, rec: Recharge) -> None:
        fresh = await self._journal.get(rec.id)
        if fresh is None:
            return
        for field in ("status", "channel", "decline_code", "reason", "updated_at", "attempts"):
            setattr(rec, field, getattr(fresh, field))


def _detail(result: ChannelResult | None) -> dict[str, object] | None:
    if result is None:
        return None
    detail: dict[str, object] = {"outcome": result.outcome.value, "latency_ms": round(result.latency_ms, 1)}
    if result.decline_code:
        detail["decline_code"] = result.decline_code
    if result.error:
        detail["error"] = result.error
    if result.provider_ref:
        detail["provider_ref"] = result.provider_ref
    return detail
