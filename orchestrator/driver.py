"""The driver: runs each recharge's state machine against the providers and the journal.

It owns what is not pure: tasks, provider calls with their deadlines, leases, the
reconciler. What each answer *means* is ``orchestrator.transitions``' to say: the driver
asks ``next_move``, makes the call, hands the answer to a transition and journals the
Step it returns, then mirrors it in memory with the same reducer. It never builds a
Step, a credit or a decline itself.

One loop per recharge, resumable from the journal alone: after a crash the same loop
runs over what was journaled and carries on. With an ``owner`` (several instances on
one store) a recharge is driven only under its lease: renewed every ``renew_s``,
checked before every provider call, and carried by every decision the driver writes
(the store refuses a step whose lease moved on). A step that records a capture goes
unfenced: whoever learns of money taken writes it down, to be credited or refunded.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple, Protocol

import structlog

from channels import AttemptOutcome, Channel, ChannelResult, PaymentRequest
from orchestrator import transitions as tr
from orchestrator.activity import Activity
from orchestrator.clock import Clock
from orchestrator.errors import HeldElsewhere, IdempotencyConflict
from orchestrator.journal import Journal
from orchestrator.model import (TERMINAL, Attempt, AttemptState, Fence, FirstRecharge, Recharge, RechargeStatus, Step,
                                 TrailEntry)
from orchestrator.transitions import Move, RunSettings, Source

if TYPE_CHECKING:
    from orchestrator.notifications import Notifier

__all__ = ["Driver", "Gate", "HeldElsewhere", "IdempotencyConflict", "RoutePlan", "RunSettings", "Running", "new_recharge_id"]

log = structlog.get_logger("orchestrator.driver")

# A drive makes at most this many moves before it yields to the reconciler: a loop that
# stops making progress (a bug, a store refusing every write) cannot spin.
MAX_MOVES = 64
# A lease is trusted locally for this share of its length from when it was asked for,
# on this process's monotonic clock: margin for the store's clock running faster.
LEASE_TRUST = 0.75


def new_recharge_id() -> str:
    """``rc_`` + 12 hex digits of milliseconds since the epoch + 16 random hex digits.

    Time first, so ids made close together sort together: every index keyed by the
    recharge grows at its right-hand end. 64 random bits per millisecond keep ids
    unguessable and unique across instances."""
    return f"rc_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


class _LeaseLost(Exception):
    """This instance no longer holds the recharge's lease: stop driving it."""


class Running:
    """What a reload changes that the driver reads: the settings new recharges start on,
    and the base URL providers call back. The composition root replaces both; the driver
    reads them here and never calls up into it."""

    __slots__ = ("base_url", "settings")

    def __init__(self, settings: RunSettings, base_url: str | None = None) -> None:
        self.settings = settings
        self.base_url = base_url

    def __call__(self) -> RunSettings:
        return self.settings

    def callback_url(self, channel: str) -> str | None:
        return None if self.base_url is None else f"{self.base_url.rstrip('/')}/v1/webhooks/{channel}"


def _finder(channels: ChannelLookup) -> ChannelFinder:
    async def find(name: str, now: float) -> Channel | None:
        return channels(name)

    return find


class RoutePlan(NamedTuple):
    """A routing decision as the driver uses it: the failover order, and whether every
    channel in it is ejected (panic: try them anyway, bypassing their breakers)."""

    candidates: tuple[str, ...]
    panic: bool = False


@dataclass(slots=True)
class _Pick:
    """An attempt chosen and admitted by the gate, not yet answered by the provider."""

    channel: Channel
    ticket: object
    instrument: Mapping[str, object]
    step: Step
    released: bool = False


@dataclass(slots=True)
class _Held:
    token: int
    trusted_until: float  # this process's monotonic clock


class Gate(Protocol):
    """Admission and accounting of provider attempts: health statistics, breakers,
    in-flight caps and metrics live behind it. ``admit`` may refuse (an open breaker,
    a full channel): the driver then moves on to the next candidate."""

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


PlanRoute = Callable[[Recharge], "RoutePlan | Sequence[str]"]
"""Ordered failover candidates for a recharge (channel names, best first)."""

ChannelLookup = Callable[[str], Channel | None]
# A channel that settles an attempt already made, live or retired (at the given time).
ChannelFinder = Callable[[str, float], Awaitable[Channel | None]]
InstrumentLookup = Callable[[Recharge], Mapping[str, object] | None]


class Driver:
    def __init__(
        self,
        journal: Journal,
        channels: ChannelLookup,
        router: PlanRoute,
        clock: Clock,
        settings: Callable[[], RunSettings],
        *,
        gate: Gate | None = None,
        callback_url: Callable[[str], str | None] = lambda channel: None,
        instrument: InstrumentLookup = lambda rec: rec.instrument,
        activity: Activity | None = None,
        settle_channels: ChannelFinder | None = None,
        on_terminal: Callable[[Recharge], None] | None = None,
        on_succeeded: Callable[[Recharge], None] = lambda rec: None,
        on_outcome: Callable[[Recharge, RechargeStatus], None] = lambda rec, status: None,
        owner: str | None = None,
        lease_s: float = 30.0,
        renew_s: float | None = None,
        rng: random.Random | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._journal = journal
        # Each status change a client subscribed to is written with its notice (SPEC 19).
        self._notifier = notifier
        self._channels = channels
        # Resolving what an attempt already started (inquire, void, refund) may use a
        # channel that a reload retired; starting new attempts may not.
        self._settle_channels = settle_channels or _finder(channels)
        self._on_terminal = on_terminal
        self._on_succeeded = on_succeeded  # amount suggestions learn each success (SPEC 22)
        self._on_outcome = on_outcome  # each recharge's final status, once, as it is journaled (metrics)
        # With an owner, every recharge this instance drives is leased in the store.
        self._owner = owner
        self._lease_s = lease_s
        self._renew_s = renew_s if renew_s is not None else lease_s / 3
        self._router = router
        self._clock = clock
        self._settings = settings
        self._gate = gate or _OpenGate()
        self._callback_url = callback_url
        self._instrument = instrument
        self._activity = activity
        self._rng = rng or random.Random()
        self._running: dict[str, tuple[asyncio.Task[None], Recharge]] = {}
        self._held: dict[str, _Held] = {}
        self._wakers: dict[str, asyncio.Event] = {}
        self._background: list[asyncio.Task[None]] = []

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
        lease = None if self._owner is None else (self._owner, self._lease_s)
        plan: RoutePlan | None = None
        pick: _Pick | None = None
        now = self._clock.now()
        if tr.next_move(rec, now, s).move is Move.ATTEMPT:
            plan = self._plan(rec)
            chosen = self._pick(rec, plan, now)
            pick = chosen if isinstance(chosen, _Pick) else None
        asked = self._clock.monotonic()
        try:
            att = None if pick is None else pick.step.attempt
            notices = () if self._notifier is None else self._notifier.of_created(rec)
            existing = await self._journal.create(rec, created, lease=lease, first=first,
                                                  started=None if pick is None or att is None
                                                  else (att, pick.step.trail[0]), notices=notices)
        except BaseException:
            if pick is not None:
                self._release(pick)
            raise
        if existing is None:
            if rec.terminal:  # blocked by risk: final as it is created
                self._on_outcome(rec, rec.status)
            if lease is not None:
                self._held[rec.id] = _Held(1, asked + self._lease_s * LEASE_TRUST)
            if pick is not None:
                tr.reduce(rec, pick.step)
            self.start(rec, s, plan, pick)
            return rec, True
        if pick is not None:
            self._release(pick)
        if existing.fingerprint != rec.fingerprint:
            raise IdempotencyConflict()
        live = self._running.get(existing.id)
        if live is not None:
            return live[1], False
        if not existing.terminal:
            if not await self._take(existing.id):
                raise HeldElsewhere(existing)
            self.start(existing)
        return existing, False

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
            self._running.pop(rid, None)
            self._wakers.pop(rid, None)
            self._held.pop(rid, None)
            if pick is not None:
                self._release(pick)  # cancelled before the provider answered

        task.add_done_callback(done)
        return task

    def live(self, recharge_id: str) -> tuple[asyncio.Task[None], Recharge] | None:
        """The task and in-memory state of a recharge this process is driving."""
        return self._running.get(recharge_id)

    def running(self) -> list[tuple[asyncio.Task[None], Recharge]]:
        return list(self._running.values())

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def recover(self) -> int:
        """Resume every recharge with work left (start-up and each reconcile pass):
        the unfinished ones (under lease, with an owner), then the finished ones with a
        follow-up due. Returns how many were (re)started."""
        started = 0
        if self._owner is None:
            unfinished = [(rec, 0) for rec in await self._journal.nonterminal()]
        else:
            await self._renew()
            asked = self._clock.monotonic()
            unfinished = await self._journal.claim(self._owner, self._lease_s)
        for rec, token in unfinished:
            if rec.id in self._running:
                continue
            if self._owner is not None:
                self._held[rec.id] = _Held(token, asked + self._lease_s * LEASE_TRUST)
            self.start(rec)
            started += 1
        now = self._clock.now()
        for rec in await self._journal.claim_follow_ups(now, now + self._settings().reconcile_interval_s):
            # A running recharge's follow-ups are its lease holder's (``next_move``).
            if rec.terminal and rec.id not in self._running:
                self.start(rec)
                started += 1
        return started

    def start_background(self, on_pass: Callable[[], Awaitable[None]] | None = None) -> None:
        """The reconciler (``recover`` every reconcile interval, then ``on_pass``) and,
        with an owner, the lease renewal."""
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._reconcile_forever(on_pass)))
        if self._owner is not None:
            self._background.append(loop.create_task(self._renew_forever()))

    async def _reconcile_forever(self, on_pass: Callable[[], Awaitable[None]] | None) -> None:
        while True:
            await self._clock.sleep(self._settings().reconcile_interval_s)
            try:
                await self.recover()
                if on_pass is not None:
                    await on_pass()
            except Exception:
                log.exception("reconcile_failed")

    async def _renew_forever(self) -> None:
        while True:
            await self._clock.sleep(self._renew_s)
            try:
                await self._renew()
            except Exception:
                log.exception("lease_renewal_failed")

    async def _renew(self, only: str | None = None) -> None:
        """Renew the leases this instance holds; forget those it lost."""
        if self._owner is None or not self._held:
            return
        held = {only: self._held[only].token} if only in self._held else (
            {} if only is not None else {rid: h.token for rid, h in self._held.items()})
        if not held:
            return
        asked = self._clock.monotonic()
        kept = await self._journal.renew(self._owner, held, self._lease_s)
        for rid, token in held.items():
            h = self._held.get(rid)
            if h is None or h.token != token:
                continue
            if rid in kept:
                h.trusted_until = asked + self._lease_s * LEASE_TRUST
            else:
                del self._held[rid]
                log.warning("lease_lost", recharge_id=rid)

    async def _take(self, recharge_id: str) -> bool:
        """Lease ``recharge_id`` for this instance (always granted without an owner)."""
        if self._owner is None:
            return True
        asked = self._clock.monotonic()
        token = await self._journal.lease(self._owner, recharge_id, self._lease_s)
        if token is None:
            return False
        self._held[recharge_id] = _Held(token, asked + self._lease_s * LEASE_TRUST)
        return True

    async def _check_lease(self, rec: Recharge) -> None:
        """Before a provider call about a running recharge: still ours, or _LeaseLost. A
        lease not trusted any more on this process's clock is renewed first. A finished
        recharge's follow-up work (refunds, late checks) needs no lease: its steps are
        guarded by the states they expect."""
        if self._owner is None:
            return
        h = self._held.get(rec.id)
        if h is not None and self._clock.monotonic() >= h.trusted_until:
            await self._renew(rec.id)
            h = self._held.get(rec.id)
        if h is None and not rec.terminal:
            raise _LeaseLost(rec.id)

    def _fence(self, recharge_id: str) -> Fence | None:
        h = self._held.get(recharge_id) if self._owner is not None else None
        return None if h is None else (self._owner, h.token)  # type: ignore[return-value]

    async def stop(self) -> None:
        """Cancel running drivers and the background work. Safe at any point: every
        step is journaled first, so the next start resumes where these stopped."""
        tasks = [*self._background, *(t for t, _ in self._running.values())]
        self._background.clear()
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
            except _LeaseLost:
                log.info("recharge_lease_lost")
            except Exception:
                # A bug or a store failure: the recharge stays as journaled, and the
                # reconciler picks it up again.
                log.exception("recharge_drive_failed")
            finally:
                if rec.terminal and self._on_terminal is not None:
                    self._on_terminal(rec)

    # -- the loop -----------------------------------------------------------------------

    async def _drive(self, rec: Recharge, s: RunSettings, plan: RoutePlan | None = None) -> None:
        # The routing decision is taken once per drive and its ordered candidates are the
        # failover order: a recharge finishes on the ranking it started with.
        for _ in range(MAX_MOVES):
            nxt = tr.next_move(rec, self._clock.now(), s)
            move, att = nxt.move, nxt.attempt
            if move is Move.STOP:
                return
            if move is Move.WRITE:
                assert nxt.step is not None
                await self._commit(rec, nxt.step)
                continue
            if move is Move.ATTEMPT:
                if plan is None:
                    plan = self._plan(rec)
                if not await self._next_attempt(rec, s, plan):
                    return
                continue
            assert att is not None
            channel = await self._settle_channels(att.channel, self._clock.now())
            if channel is None:
                if move in (Move.INQUIRE, Move.VOID):  # money may be held: say why it waits
                    await self._park(rec, att, f"channel {att.channel} is not configured; cannot resolve")
                return
            await self._check_lease(rec)
            with structlog.contextvars.bound_contextvars(attempt=att.reference, channel=att.channel):
                if not await self._settle(rec, att, channel, move, s):
                    return
        log.warning("recharge_drive_yielded", moves=MAX_MOVES)

    async def _settle(self, rec: Recharge, att: Attempt, channel: Channel, move: Move, s: RunSettings) -> bool:
        """One call about an attempt that may hold money, and what it means. False when
        the answer settles nothing for now: the reconciler comes back."""
        if move is Move.INQUIRE:
            result, exhausted = await self._inquire(rec, att, channel, s)
            step = tr.after_inquiry(rec, att, result, self._clock.now(), s, exhausted)
            if step is None:
                await self._park(rec, att, "awaiting_provider")
                return False
            if await self._commit(rec, step):  # if refused, the next move looks again
                self._after(rec, step)
            return True
        op, source = _CALLS[move]
        result = await self._call(channel, op, att.reference, None)
        if await self._record(rec, att.reference, result, source, s):
            return True
        if move is Move.VOID:
            await self._park(rec, att, "void_unconfirmed")
        elif move is Move.REFUND:
            log.warning("refund_unconfirmed", outcome=result.outcome.value, error=result.error)
        return False

    def _plan(self, rec: Recharge) -> RoutePlan:
        routed = self._router(rec)
        return routed if isinstance(routed, RoutePlan) else RoutePlan(tuple(routed))

    def _pick(self, rec: Recharge, plan: RoutePlan, now: float) -> _Pick | str:
        """The next attempt to make (its channel admitted by the gate), or why none may
        be made."""
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
            return _Pick(channel, ticket, instrument, tr.begin_attempt(rec, name, now))
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
        pick = self._pick(rec, plan, self._clock.now())
        if isinstance(pick, str):
            await self._commit(rec, tr.give_up(rec, pick, self._clock.now()))
            log.info("recharge_finished", status=rec.status.value, reason=pick)
            return False
        try:
            if not await self._commit(rec, pick.step):
                return True  # someone else moved first: look again
            await self._check_lease(rec)
            await self._send(rec, s, pick)
        finally:
            self._release(pick)  # refused, cancelled or crashed before the provider answered
        return True

    async def _send(self, rec: Recharge, s: RunSettings, pick: _Pick) -> None:
        """Ask the provider to authorize an attempt already journaled ``started``, and
        journal its answer."""
        att = pick.step.attempt
        assert att is not None
        name = att.channel
        try:
            if self._activity is not None:
                self._activity.attempt(name)
                if att.seq > 1:
                    prev = rec.attempts[att.seq - 2]
                    self._activity.failover(rec.id, prev.channel, name, prev.state.value)
            request = PaymentRequest(att.reference, rec.amount_minor, rec.currency, rec.method,
                                     dict(pick.instrument), self._callback_url(name),
                                     "required" if rec.step_up else None)
            # No contextvars binding here (it costs on every recharge): the few lines
            # logged on this path name the attempt themselves.
            result = await self._call(pick.channel, "authorize", request, rec.deadline() - self._clock.now())
            self._release(pick, result)
            log.debug("attempt_answered", attempt=att.reference, channel=name, outcome=result.outcome.value,
                      latency_ms=result.latency_ms)
            await self._record(rec, att.reference, result, Source.ATTEMPT, s)
        finally:
            self._release(pick)

    async def _inquire(self, rec: Recharge, a: Attempt, channel: Channel,
                       s: RunSettings) -> tuple[ChannelResult, bool]:
        """Inquire with backoff: an unknown outcome (a 404 included) gets
        ``inquiry_attempts`` tries; a pending one is polled until it resolves or the
        deadline passes. Answers the last result and whether the tries were spent."""
        delay = s.inquiry_initial_backoff_s
        tries = 0
        while True:
            result = await self._call(channel, "inquire", a.reference, None)
            tries += 1
            if result.outcome is AttemptOutcome.PENDING:
                if a.state is not AttemptState.PENDING:
                    return result, False  # record it as pending first; polling follows
                remaining = rec.deadline() - self._clock.now()
                if remaining <= 0 or rec.terminal:
                    return result, False
                await self._pause(rec.id, min(delay, remaining))
                delay = min(delay * 2, s.inquiry_max_backoff_s)
                continue
            if result.outcome not in (AttemptOutcome.UNKNOWN, AttemptOutcome.NOT_PROCESSED):
                return result, False
            if tries >= s.inquiry_attempts:
                return result, True
            await self._pause(rec.id, delay)
            delay = min(delay * 2, s.inquiry_max_backoff_s)

    async def _record(self, rec: Recharge, reference: str, result: ChannelResult, source: Source,
                      s: RunSettings) -> bool:
        """Journal what a provider said about an attempt, as its transition has it.
        A step refused because the recharge moved meanwhile is worked out again on
        the fresh state: news of a capture is never dropped. False: it changed nothing."""
        for _ in range(5):
            att = rec.attempt(reference)
            if att is None:
                return False
            step = tr.on_answer(rec, att, result, self._clock.now(), s, source)
            if step is None:
                return False
            if await self._commit(rec, step):
                self._after(rec, step)
                return True
        raise RuntimeError(f"the answer about {reference} kept losing races")

    def _after(self, rec: Recharge, step: Step) -> None:
        """Logs and activity that follow a durable step."""
        if step.credit is not None:
            self._on_succeeded(rec)
            if self._rng.random() < self._settings().log_success_sample:
                log.info("recharge_succeeded", channel=step.channel, coins=step.credit.coins, sampled=True)
        elif step.attempt is not None and step.attempt.state is AttemptState.REFUND_REQUESTED:
            log.warning("late_capture", attempt=step.attempt.reference, channel=step.attempt.channel)
        elif step.reason == tr.AMOUNT_MISMATCH:
            log.error("amount_mismatch", attempt=step.attempt.reference if step.attempt else None,
                      detail=step.trail[0].detail if step.trail else None)

    async def _park(self, rec: Recharge, att: Attempt, reason: str) -> None:
        """Leave the recharge ``pending`` with a reason; the reconciler retries later."""
        step = tr.park(rec, att, reason, self._clock.now())
        if step is not None:
            await self._commit(rec, step)

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
                       provider_ref: str | None = None, decline_code: str | None = None,
                       amount_minor: int | None = None, currency: str | None = None) -> str:
        """Apply one provider event, at most once (by ``(channel, event_id)``), durably,
        through the same transitions as any answer. Returns what it did."""
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
        result = ChannelResult(status, provider_ref=provider_ref, decline_code=decline_code,
                               amount_minor=amount_minor, currency=currency)
        s = self._settings()
        with structlog.contextvars.bound_contextvars(recharge_id=rec.id, attempt=reference, channel=channel):
            for _ in range(5):
                att = rec.attempt(reference)
                if att is None:  # this process's view of a recharge another drives lags
                    await self._refresh(rec)
                    att = rec.attempt(reference)
                    if att is None:
                        return "unknown_payment"
                step = tr.on_event(rec, att, result, self._clock.now(), s, (channel, event_id))
                if await self._commit(rec, step, fenced=False):
                    self._after(rec, step)
                    break
                if await self._journal.event_seen(channel, event_id):
                    return "duplicate"
            else:
                raise RuntimeError(f"event {event_id} kept losing races on {reference}")
            what = _effect(step)
            log.info("provider_event", event_id=event_id, status=status.value, effect=what)
        if rec.id in self._running:
            # Wake the driver: it re-inquires now, and stops if the event ended it.
            self._wakers.setdefault(rec.id, asyncio.Event()).set()
        elif not rec.terminal:
            if await self._take(rec.id):
                self.start(rec)
        elif tr.next_move(rec, self._clock.now(), s).move is not Move.STOP:
            self.start(rec)  # a refund owed, an attempt left open: no need to wait for the reconciler
        return what

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

    async def _commit(self, rec: Recharge, step: Step, *, fenced: bool = True) -> bool:
        """Make ``step`` durable, then (and only then) mirror it in memory. A decision
        carries this instance's lease; if the store refused it because the lease moved
        on, _LeaseLost. False: refused by a guard (``rec`` is refreshed)."""
        fence = self._fence(rec.id) if fenced and not step.keeps_money else None
        if fence is not None:
            step = replace(step, lease=fence)
        elif fenced and self._owner is not None and not step.keeps_money and not rec.terminal:
            raise _LeaseLost(rec.id)  # a running recharge's decisions need its lease
        notify = self._notifier is not None and (
            (step.status is not None and step.status is not rec.status)
            or (step.settlement is not None and step.settlement is not rec.settlement))
        if notify:
            assert self._notifier is not None
            step = replace(step, notices=self._notifier.of_step(rec, step))
        if not await self._journal.apply(step):
            await self._refresh(rec)
            if fence is not None and await self._journal.lease_of(rec.id) != fence:
                self._held.pop(rec.id, None)
                raise _LeaseLost(rec.id)
            return False
        if step.status is not None and step.status in TERMINAL:
            if self._activity is not None:
                self._activity.outcome(step.status.value)
            if step.status is not rec.status:  # not yet reduced: rec is as it was
                self._on_outcome(rec, step.status)
        if step.notices:
            assert self._notifier is not None
            self._notifier.written()
        tr.reduce(rec, step)
        return True

    async def _refresh(self, rec: Recharge) -> None:
        fresh = await self._journal.get(rec.id)
        if fresh is None:
            return
        for field in ("status", "channel", "decline_code", "reason", "updated_at", "attempts", "settlement"):
            setattr(rec, field, getattr(fresh, field))


def _effect(step: Step) -> str:
    """What a provider event did, as the webhook endpoint answers it."""
    if step.credit is not None:
        return "succeeded"
    a = step.attempt
    if a is None:
        return "ignored"
    if a.state is AttemptState.REFUND_REQUESTED:
        return "late_capture_refunding"
    if step.reason == tr.AMOUNT_MISMATCH:
        return tr.AMOUNT_MISMATCH
    return f"attempt_{a.state.value}"


_CALLS = {Move.VOID: ("void", Source.VOID), Move.REFUND: ("refund", Source.REFUND),
          Move.LATE_CHECK: ("inquire", Source.LATE_CHECK)}
