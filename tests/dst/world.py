"""A simulated world for the real recharge driver: providers worse than real ones, a store,
crashes, paused and skewed instances, webhooks, reloads, on virtual time.

What runs is production code: ``orchestrator.driver.Driver`` with the pure
``orchestrator.transitions``, ``orchestrator.channel_set.ChannelSet``, the in-memory
journal (the same contract as the SQL stores) and ``channels.http.outcome_of``, the one
map from what a provider answered on the wire to an attempt outcome. Only the outside is
simulated: the providers (each keeps its own ledger, the ground truth of what was
charged), the network between them, the clock, process deaths.

Everything random comes from one ``random.Random(seed)``; each seed also draws its own
mix of faults (swarm testing), so some seeds have many late charges and no webhooks,
others the reverse. After the run every fault heals, time passes every deadline,
late-capture check and reconcile interval, and the oracle checks SPEC 18 against the
providers' ledgers, then liveness: every recharge ended (or waits for a person with a
stated reason), no refund owed, no payment left pending.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson

from channels import ACTION_ABANDONED, AttemptOutcome, ChannelResult, PaymentRequest, RefundRequest, RefundResult, \
    payment_outcome
from channels.http import Op, WireAnswer, outcome_of, refund_outcome_of
from config import ChannelConfig, RefundsConfig
from orchestrator.channel_set import ChannelSet
from orchestrator.driver import Driver, HeldElsewhere, IdempotencyConflict, RoutePlan
from orchestrator.invariants import LedgerPayment, check_facts
from orchestrator.journal import MemoryJournal
from orchestrator.model import OPEN_ATTEMPT_STATES, AttemptState, Recharge, RechargeStatus, Settlement, TrailEntry
from orchestrator.errors import RefundRefused
from orchestrator.metrics import Metrics
from orchestrator.notifications import Notifier
from orchestrator.recharges import Viewer
from orchestrator.refunds import NewRefund, RefundDeps, RefundWorker
from orchestrator.refunds import request as request_refund
from orchestrator.transitions import AMOUNT_MISMATCH, RunSettings

T = TypeVar("T")

EPOCH = 1_800_000_000.0
HARD, SOFT = "insufficient_funds", "issuer_unavailable"
# How far an instance's clock may be off the true time (two may disagree by twice it).
MAX_SKEW_S = 20.0


# Trail events worth counting over many seeds: evidence of what the runs went through.
_SEEN = ("late_capture_refund_requested", "late_capture_refunded", "amount_mismatch", "void_voided",
         "void_requested", "late_capture_check_clear", "webhook_captured", "webhook_ignored", "inquiry_captured",
         "void_captured", "late_check_captured", "refund_requested", "refund_succeeded", "refund_failed",
         "settled", "clawed_back", "attempt_requires_action", "webhook_requires_action", "action_expiring")


# -- the seed's draw of faults --------------------------------------------------------------


@dataclass
class ProviderFaults:
    latency_s: float  # a charge's
    light_s: float  # an inquiry's, a void's, a refund's
    timeout_s: float
    late: float  # the charge is processed after the client gave up, late_s after it arrived
    late_s: float
    lost_before: float  # nothing processed, no answer
    lost_after: float  # processed, the answer is lost
    error_500_after: float
    not_processed: float  # 429/503
    decline_hard: float
    decline_soft: float
    pending: float
    pending_declines: float
    settle_s: float
    inquiry_fails: float
    void_fails: float
    refund_fails: float
    refund_pending: float
    webhooks: float  # a final state is also told by webhook
    webhook_drop: float
    webhook_dup: float
    webhook_stale: float  # a stale 'pending' event after the final one
    webhook_delay_s: float
    lag: float  # reads (inquiry, refund) from a replica that lags: a new payment is 404 there
    lag_s: float
    ignores_tombstone: float  # a broken provider: charges a reference it confirmed voided
    wrong_amount: float  # a broken provider: captures another amount
    outages: list[tuple[float, float, str]]  # (from, to, refuse|hang|reset)


def draw_faults(rng: random.Random, horizon: float) -> ProviderFaults:
    def p(hi: float) -> float:
        return rng.choice((0.0, 0.0, rng.uniform(0, hi)))

    timeout = rng.choice((0.3, 1.0, 2.0, 4.0))
    outages = []
    for _ in range(rng.choice((0, 0, 1, 2))):
        start = rng.uniform(0, horizon)
        outages.append((start, start + rng.uniform(1, 20), rng.choice(("refuse", "hang", "reset"))))
    return ProviderFaults(
        latency_s=rng.choice((0.03, 0.2, 1.2, 4.8)) * rng.uniform(0.5, 1.5), light_s=rng.choice((0.005, 0.05, 0.5)),
        timeout_s=timeout,
        late=p(0.5), late_s=rng.uniform(0.5, 8), lost_before=p(0.2), lost_after=p(0.2), error_500_after=p(0.15),
        not_processed=p(0.3), decline_hard=p(0.15), decline_soft=p(0.3), pending=p(0.5),
        pending_declines=rng.uniform(0, 0.5), settle_s=rng.uniform(0.1, 20), inquiry_fails=p(0.6),
        void_fails=p(0.5), refund_fails=p(0.5), refund_pending=p(0.5), webhooks=rng.uniform(0, 1),
        webhook_drop=p(0.5), webhook_dup=p(0.5), webhook_stale=p(0.5), webhook_delay_s=rng.uniform(0, 10),
        lag=p(0.8), lag_s=rng.uniform(1, 60), ignores_tombstone=p(0.3), wrong_amount=rng.choice((0.0,) * 5 + (rng.uniform(0, 0.2),)), outages=outages,
    )


# -- a provider ---------------------------------------------------------------------------


class StepUp:
    """A world's step-up draw: how many recharges risk challenges, how often a provider
    demands a step-up on its own, what payers do, and our action_ttl_s."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.on = rng.random() < 0.5
        self.challenged = rng.choice((0.2, 0.5, 1.0))
        self.own = rng.choice((0.0, 0.1, 0.5))
        self.complete = rng.uniform(0, 1)
        self.abandon = rng.uniform(0, 1 - self.complete)
        self.action_ttl_s = rng.choice((3.0, 10.0, 30.0))

    def demands(self, req: PaymentRequest) -> bool:
        return req.three_ds == "required" or self.rng.random() < self.own



@dataclass
class Payment:
    reference: str
    status: str
    amount_minor: int
    currency: str
    provider_ref: str
    decline_code: str | None = None
    tombstone: bool = False
    history: list[str] = field(default_factory=list)
    at: float = 0.0
    refunded_minor: int = 0  # by partial refunds; the status turns refunded when it reaches the amount
    refunds: list[Refund] = field(default_factory=list)
    action_url: str | None = None  # while it waits for the payer's step-up

    def wire(self) -> bytes:
        doc = {"reference": self.reference, "provider_ref": self.provider_ref, "status": self.status,
               "decline_code": self.decline_code, "amount_minor": None if self.tombstone else self.amount_minor,
               "currency": None if self.tombstone else self.currency}
        if self.status == "requires_action":
            doc["action_url"] = self.action_url
        return orjson.dumps(doc)

    def refund_refusal(self, amount_minor: int) -> str | None:
        """The simulator's refusal code for a new partial refund (SPEC 6), or None."""
        if self.status == "refunded":
            return "already_refunded"
        if self.status != "captured":
            return "not_captured"
        held = sum(r.amount_minor for r in self.refunds if r.status == "pending")
        if not 0 < amount_minor <= self.amount_minor - self.refunded_minor - held:
            return "refund_exceeds_amount"
        return None


@dataclass
class Refund:
    """A partial refund, as the provider holds it: idempotent by ``refund_reference``."""

    refund_reference: str
    reference: str
    amount_minor: int
    status: str  # pending, refunded or failed

    def wire(self) -> bytes:
        return orjson.dumps({"refund_reference": self.refund_reference, "status": self.status,
                             "amount_minor": self.amount_minor})


class Provider:
    """One provider: its ledger, and what it does with each request (and when)."""

    def __init__(self, world: World, name: str, faults: ProviderFaults) -> None:
        self.world = world
        self.name = name
        self.f = faults
        self.payments: dict[str, Payment] = {}
        self.callbacks: dict[str, str] = {}
        self.refused: set[str] = set()
        self.refunds: dict[str, Refund] = {}  # by refund_reference, across the provider
        self._settling: dict[str, asyncio.TimerHandle] = {}

    def one_way(self, op: Op) -> float:
        """How long a request (or its answer) travels and waits. Once healed, the
        provider answers well inside the client's timeout."""
        s = self.f.latency_s / 2 if op is Op.AUTHORIZE else self.f.light_s
        return min(s, self.f.timeout_s / 8) if self.world.healed else s

    def _outage(self) -> str | None:
        if self.world.healed:
            return None
        now = self.world.loop.time()
        return next((mode for start, end, mode in self.f.outages if start <= now < end), None)

    def _chance(self, rate: float) -> bool:
        return not self.world.healed and self.world.rng.random() < rate

    def _move(self, p: Payment, status: str, code: str | None = None) -> None:
        p.status = status
        if code is not None:
            p.decline_code = code
        p.history.append(status)

    async def exchange(self, op: Op, reference: str, request: PaymentRequest | RefundRequest | None) -> WireAnswer:
        """One request, from its arrival to its answer leaving: a world task, so it goes
        on whatever happens to the client that sent it."""
        rng = self.world.rng
        await asyncio.sleep(self.one_way(op) * rng.uniform(0.5, 1.5))
        outage = self._outage()
        if outage == "refuse":
            return WireAnswer(op, 503)
        if outage is not None:
            if outage == "hang":
                await asyncio.sleep(3600)
            return WireAnswer(op, None, sent=True, error="connection lost")
        if op is Op.AUTHORIZE:
            assert isinstance(request, PaymentRequest)
            return await self._authorize(request)
        p = self.payments.get(reference)
        if op is not Op.VOID and p is not None and self.world.loop.time() - p.at < self.f.lag_s \
                and self._chance(self.f.lag):
            return WireAnswer(op, 404)  # a replica that has not seen it yet
        if op is Op.INQUIRE:
            if self._chance(self.f.inquiry_fails):
                return WireAnswer(op, 503)
            return WireAnswer(op, 404) if p is None else WireAnswer(op, 200, p.wire(), reference=reference)
        if op is Op.VOID:
            if self._chance(self.f.void_fails):
                return WireAnswer(op, rng.choice((500, 503)))
            if p is None:  # a tombstone: the charge, still on its way, will be refused
                p = self.payments[reference] = Payment(reference, "voided", 0, "", self._ref(), tombstone=True,
                                                       history=["voided"])
                return WireAnswer(op, 200, p.wire(), reference=reference)
            if p.status in ("pending", "requires_action"):  # a challenge voided: the payer can no longer pay
                self._cancel_settle(reference)
                self._move(p, "voided")
            return WireAnswer(op, 200 if p.status == "voided" else 409, p.wire(), reference=reference)
        if op is Op.ISSUE_REFUND:
            assert isinstance(request, RefundRequest)
            return self._issue_refund(request, p)
        # refund
        if self._chance(self.f.refund_fails):
            return WireAnswer(op, 500)
        if p is None:
            return WireAnswer(op, 404)
        if p.status == "captured":
            if self._chance(self.f.refund_pending):
                # Accepted, given back later: the answer says pending, a webhook may follow.
                self.world.later(rng.uniform(0.1, 30), self._refund_now, reference)
                return WireAnswer(op, 200, orjson.dumps({"reference": reference, "status": "pending"}),
                                  reference=reference)
            self._move(p, "refunded")
        return WireAnswer(op, 200 if p.status == "refunded" else 409, p.wire(), reference=reference)

    def _issue_refund(self, req: RefundRequest, p: Payment | None) -> WireAnswer:
        """A partial refund, by the simulator's rules (channels/simulator/_ledger.py). A
        failing call is a 500 that came before or after the refund landed: a coin decides.
        No webhook tells a partial refund here: events may never arrive (SPEC 6), and
        asking again under the same refund_reference finds its state."""
        op, rng = Op.ISSUE_REFUND, self.world.rng
        lost = self._chance(self.f.refund_fails)
        if lost and rng.random() < 0.5:
            return WireAnswer(op, 500)
        answer = self._refund_answer(req, p)
        return WireAnswer(op, 500) if lost else answer

    def _refund_answer(self, req: RefundRequest, p: Payment | None) -> WireAnswer:
        op, rr = Op.ISSUE_REFUND, req.refund_reference
        known = self.refunds.get(rr)
        if known is not None:
            if (known.reference, known.amount_minor) != (req.reference, req.amount_minor):
                return _refused(409, "refund_reference_reused")
            return WireAnswer(op, 200, known.wire(), reference=req.reference, refund_reference=rr)
        if p is None:
            return WireAnswer(op, 404)
        code = p.refund_refusal(req.amount_minor)
        if code == "refund_exceeds_amount" and self.world.lax_refunds:
            self.world.stats["over-refunds a broken provider took"] += 1
        elif code:
            return _refused(422 if code == "refund_exceeds_amount" else 409, code)
        refund = self.refunds[rr] = Refund(rr, p.reference, req.amount_minor, "pending")
        p.refunds.append(refund)
        if self._chance(self.f.refund_pending):
            self.world.later(self.world.rng.uniform(0.1, 30), self._settle_refund, p, refund)
        else:
            self._settle_refund(p, refund)
        return WireAnswer(op, 200, refund.wire(), reference=req.reference, refund_reference=rr)

    def _settle_refund(self, p: Payment, refund: Refund) -> None:
        """A pending refund's end: failed as often as a pending payment declines."""
        if self._chance(self.f.pending_declines):
            refund.status = "failed"
            return
        refund.status = "refunded"
        p.refunded_minor += refund.amount_minor
        if p.refunded_minor >= p.amount_minor and p.status == "captured":
            self._move(p, "refunded")

    def _ref(self) -> str:
        return f"pr_{self.world.rng.getrandbits(48):012x}"

    def _refund_now(self, reference: str) -> None:
        p = self.payments[reference]
        if p.status == "captured":
            self._move(p, "refunded")
            self._tell(p)

    async def _authorize(self, req: PaymentRequest) -> WireAnswer:
        op, rng, f = Op.AUTHORIZE, self.world.rng, self.f
        if req.callback_url:
            self.callbacks[req.reference] = req.callback_url
        if self._chance(f.not_processed):
            return WireAnswer(op, rng.choice((429, 503)))
        if self._chance(f.lost_before):
            await asyncio.sleep(rng.uniform(0, 2 * f.timeout_s))
            return WireAnswer(op, None, sent=True, error="connection reset")
        if self._chance(f.late):
            await asyncio.sleep(f.late_s)
        p = self.payments.get(req.reference)
        if p is not None and not (p.tombstone and p.status == "voided" and self._chance(f.ignores_tombstone)):
            if p.tombstone:
                self.refused.add(req.reference)
            return WireAnswer(op, 200, p.wire(), reference=req.reference)
        if p is not None:
            self.world.stats["charges made despite a tombstone (broken provider)"] += 1
        amount = req.amount_minor + (rng.choice((-1, 1)) * rng.randint(1, 100) if self._chance(f.wrong_amount) else 0)
        p = self.payments[req.reference] = Payment(req.reference, "new", max(amount, 1), req.currency, self._ref(),
                                                   at=self.world.loop.time())
        roll = rng.random() if not self.world.healed else 1.0
        if roll < f.decline_hard:
            self._move(p, "declined", HARD)
        elif roll < f.decline_hard + f.decline_soft:
            self._move(p, "declined", SOFT)
        elif self.world.step_up and self.world.stepup.demands(req):
            self._challenge(p, "pending" if roll < f.decline_hard + f.decline_soft + f.pending else "captured")
        elif roll < f.decline_hard + f.decline_soft + f.pending:
            self._move(p, "pending")
            self._settle_later(p)
        else:
            self._move(p, "captured")
        if p.status != "pending" and rng.random() < f.webhooks:
            self._tell(p)
        if self._chance(f.lost_after):
            await asyncio.sleep(rng.uniform(0, 2 * f.timeout_s))
            return WireAnswer(op, None, sent=True, error="connection reset")
        if self._chance(f.error_500_after):
            return WireAnswer(op, 500)
        return WireAnswer(op, 200, p.wire(), reference=req.reference)

    def _challenge(self, p: Payment, then: str) -> None:
        """A step-up (SPEC 22): the payer completes it (then ``then``), abandons it, or does
        nothing and it expires after the provider's own ttl (which may differ from ours)."""
        su = self.world.stepup
        self._move(p, "requires_action")
        p.action_url = f"sim://{self.name}/challenge/{p.reference}"
        act = su.rng.random()
        delay = su.rng.uniform(0, 1.5 * su.action_ttl_s)
        if act < su.complete:
            self.world.later(delay, self._payer, p.reference, then)
        elif act < su.complete + su.abandon:
            self.world.later(delay, self._payer, p.reference, "declined")
        self.world.later(su.action_ttl_s * su.rng.uniform(0.5, 2.0), self._payer, p.reference, "expired")

    def _payer(self, reference: str, then: str) -> None:
        p = self.payments[reference]
        if p.status != "requires_action":
            return  # voided, expired or done already
        self.world.stats[f"step-ups {then}"] += 1
        if then == "pending":
            self._move(p, "pending")
            self._settle_later(p)
            return
        self._move(p, then, ACTION_ABANDONED if then == "declined" else None)
        self._tell(p)

    def _settle_later(self, p: Payment) -> None:
        declines = self.world.rng.random() < self.f.pending_declines
        self._settling[p.reference] = self.world.loop.call_later(
            self.f.settle_s * self.world.rng.uniform(0.5, 1.5), self._settle, p.reference, declines)

    def _cancel_settle(self, reference: str) -> None:
        handle = self._settling.pop(reference, None)
        if handle is not None:
            handle.cancel()

    def _settle(self, reference: str, declines: bool) -> None:
        self._settling.pop(reference, None)
        p = self.payments[reference]
        if p.status != "pending":
            return
        self._move(p, "declined" if declines else "captured", HARD if declines else None)
        self._tell(p)

    def _tell(self, p: Payment) -> None:
        """A webhook about ``p`` (as it is now): maybe dropped, doubled, or followed by a
        stale 'pending' one."""
        w, rng, f = self.world, self.world.rng, self.f
        if p.reference not in self.callbacks or self._chance(f.webhook_drop):
            return
        event = (f"evt_{rng.getrandbits(48):012x}", p.reference, p.provider_ref, p.status, p.decline_code,
                 p.amount_minor, p.currency)
        w.later(rng.uniform(0, f.webhook_delay_s), w.deliver, self.name, event)
        if self._chance(f.webhook_dup):
            w.later(rng.uniform(0, 2 * f.webhook_delay_s), w.deliver, self.name, event)
        if self._chance(f.webhook_stale):
            stale = (f"evt_{rng.getrandbits(48):012x}", p.reference, p.provider_ref, "pending", None,
                     p.amount_minor, p.currency)
            w.later(f.webhook_delay_s + rng.uniform(0, 5), w.deliver, self.name, stale)

    def ledger(self) -> list[LedgerPayment]:
        return [LedgerPayment(self.name, p.reference, p.status, None if p.tombstone else p.amount_minor,
                              None if p.tombstone else p.currency, p.refunded_minor) for p in self.payments.values()]


class ProviderClient:
    """The channel as one process sees it: the Channel protocol over the simulated
    network, with the channel's timeout, and the real wire-to-outcome map."""

    def __init__(self, proc: Process, cfg: ChannelConfig) -> None:
        self.name = cfg.name
        self.kind = cfg.kind
        self.timeout_s = cfg.timeout_ms / 1000
        self._proc = proc
        self.closed = False

    async def _call(self, op: Op, reference: str, request: PaymentRequest | None = None) -> ChannelResult:
        answer, latency_ms = await self._exchange(op, reference, request)
        return outcome_of(answer, latency_ms)

    async def _exchange(self, op: Op, reference: str, request: PaymentRequest | RefundRequest | None
                        ) -> tuple[WireAnswer, float]:
        proc, world = self._proc, self._proc.world
        await proc.stalled()
        started = world.loop.time()
        provider = world.providers[self.name]
        answer_task = world.spawn(provider.exchange(op, reference, request))
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await asyncio.shield(answer_task)
                await asyncio.sleep(provider.one_way(op) * world.rng.uniform(0.5, 1.5))  # the way back
        except TimeoutError:
            answer = WireAnswer(op, None, sent=True, error="timeout")
        await proc.stalled()
        return answer, (world.loop.time() - started) * 1000

    async def authorize(self, request: PaymentRequest) -> ChannelResult:
        return await self._call(Op.AUTHORIZE, request.reference, request)

    async def inquire(self, reference: str) -> ChannelResult:
        return await self._call(Op.INQUIRE, reference)

    async def void(self, reference: str) -> ChannelResult:
        return await self._call(Op.VOID, reference)

    async def refund(self, reference: str) -> ChannelResult:
        return await self._call(Op.REFUND, reference)

    async def issue_refund(self, request: RefundRequest) -> RefundResult:
        answer, latency_ms = await self._exchange(Op.ISSUE_REFUND, request.reference, request)
        return refund_outcome_of(answer, latency_ms)

    async def ping(self) -> ChannelResult:
        return ChannelResult(AttemptOutcome.CAPTURED)

    async def close(self) -> None:
        self.closed = True


def _refused(status: int, code: str) -> WireAnswer:
    """A provider's refusal of a partial refund, as the simulator words it."""
    return WireAnswer(Op.ISSUE_REFUND, status, orjson.dumps({"error": {"code": code, "message": code}}))


# -- the store, as each process reaches it ---------------------------------------------------


class Crashed(Exception):
    """The process this call belongs to is dead (never seen by code under test: a dead
    process's tasks are cancelled)."""


class JournalHandle:
    """The shared in-memory store as one process reaches it: each call takes a moment,
    a paused process waits, and a write in flight when its process dies lands or not
    (the world decides, as a kill -9 between send and commit does)."""

    _WRITES = frozenset({"create", "apply", "record", "claim", "lease", "renew", "release", "claim_follow_ups",
                         "retire_channel", "unretire_channel", "put_quote", "create_refund", "settle_refund",
                         "retry_refund", "claim_refunds", "apply_dispute", "record_event", "add_notices",
                         "claim_notices", "notice_delivered", "notice_failed", "redeliver", "put_fleet_stats",
                         "purge_fleet_stats"})

    def __init__(self, proc: Process, store: MemoryJournal) -> None:
        self._proc = proc
        self._store = store
        self.inflight: list[tuple[asyncio.Future[Any], list[bool]]] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if name in ("open", "close"):
            return target
        if not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kw: Any) -> Any:
            proc, world = self._proc, self._proc.world
            if not proc.alive:
                raise asyncio.CancelledError
            await proc.stalled()
            if name not in self._WRITES:
                await asyncio.sleep(world.store_latency * world.rng.random())
                if not proc.alive:
                    raise asyncio.CancelledError
                return await target(*args, **kw)
            return await self._write(target, args, kw)

        return call

    async def _write(self, target: Callable[..., Awaitable[T]], args: tuple[Any, ...], kw: dict[str, Any]) -> T:
        world = self._proc.world
        fate = [True]  # False once its process died and the write is lost with it
        fut: asyncio.Future[Any] = world.loop.create_future()

        async def land() -> None:
            await asyncio.sleep(world.store_latency * world.rng.random())
            if not fate[0]:
                return
            result = await target(*args, **kw)
            if not fut.done():
                fut.set_result(result)

        world.spawn(land())
        entry = (fut, fate)
        self.inflight.append(entry)
        try:
            return await fut
        finally:
            self.inflight.remove(entry)

    def die(self, rng: random.Random) -> None:
        """Each write in flight lands or not; whoever waited for it never hears."""
        for fut, fate in self.inflight:
            fate[0] = rng.random() < 0.5
            fut.cancel()


# -- a process (one orchestrator instance) ---------------------------------------------------


class SimClock:
    def __init__(self, proc: Process, skew_s: float) -> None:
        self._proc = proc
        self._skew = skew_s

    def now(self) -> float:
        return EPOCH + self._proc.world.loop.time() + self._skew

    def monotonic(self) -> float:
        return self._proc.world.loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Process:
    def __init__(self, world: World, name: str, owner: str | None, skew_s: float) -> None:
        self.world = world
        self.name = name
        self.alive = True
        self._paused_until = 0.0
        self.journal = JournalHandle(self, world.store)
        self.clock = SimClock(self, skew_s)
        self.channels = ChannelSet(lambda cfg: world.wrap_client(ProviderClient(self, cfg)), self.journal)  # type: ignore[arg-type]
        self.driver = Driver(
            self.journal,  # type: ignore[arg-type]
            self.channels.get, self._route, self.clock, lambda: world.settings,
            settle_channels=self.channels.find, owner=owner, lease_s=world.lease_s,
            rng=random.Random(world.rng.getrandbits(64)),
            callback_url=lambda channel: f"sim://{channel}",
        )
        self.refunds = RefundDeps(self.journal, self.channels.find, self.clock, Metrics(),  # type: ignore[arg-type]
                                  Notifier(lambda: ()), lambda: world.refunds_config,
                                  new_id=lambda: f"rf_{world.refund_rng.getrandbits(64):016x}")
        self._refund_worker: asyncio.Task[None] | None = None

    def _route(self, rec: Recharge) -> RoutePlan:
        names = sorted(self.channels.live)
        self.world.rng.shuffle(names)
        return RoutePlan(tuple(names))

    async def start(self) -> None:
        await self.channels.open(self.world.configs, self.clock.now())
        await self.driver.recover()
        self.driver.start_background(on_pass=self._pass)
        if self.world.refunding:
            self._refund_worker = self.world.spawn(RefundWorker(self.refunds, poll_s=1.0, claim_for_s=20.0)
                                                   .run_forever())

    async def _pass(self) -> None:
        await self.channels.close_idle(self.clock.now(), self.world.settings.deadline_s)

    async def stalled(self) -> None:
        """A paused process (a long GC, a frozen VM) does nothing until it resumes."""
        while True:
            if not self.alive:
                raise asyncio.CancelledError
            wait = self._paused_until - self.world.loop.time()
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self.world.loop.time() + seconds)

    def crash(self) -> None:
        """kill -9: every task stops where it is, writes in flight land or not."""
        self.world.stats["crashes"] += 1
        self.alive = False
        self.journal.die(self.world.rng)
        for task, _ in self.driver.running():
            task.cancel()
        for task in self.driver._background:
            task.cancel()
        if self._refund_worker is not None:
            self._refund_worker.cancel()

    async def reload(self, configs: list[ChannelConfig]) -> None:
        now = self.clock.now()
        fresh = self.channels.prepare(configs)
        await self.channels.record(configs, now)
        self.channels.swap(configs, fresh, now)


# -- the world ----------------------------------------------------------------------------


@dataclass
class Outcome:
    seed: int
    violations: list[str]
    digest: str
    recharges: int
    by_status: dict[str, int]
    events: int
    stats: dict[str, int] = field(default_factory=dict)  # what happened, to see what was tried


class World:
    def __init__(self, seed: int, loop: asyncio.AbstractEventLoop) -> None:
        self.seed = seed
        self.loop = loop
        self.rng = rng = random.Random(seed)
        self.healed = False
        self.errors: list[str] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.store = MemoryJournal(clock=lambda: EPOCH + loop.time())
        self.store_latency = rng.choice((0.0, 0.001, 0.01, 0.2))
        self.horizon = rng.uniform(20, 90)
        names = [f"ch{i}" for i in range(rng.randint(2, 4))]
        self.providers = {n: Provider(self, n, draw_faults(rng, self.horizon)) for n in names}
        self.lease_s = rng.choice((5.0, 15.0, 30.0))
        self.all_configs = [self._config(n) for n in names]
        self.configs = list(self.all_configs)
        self.settings = RunSettings(
            version="sim", max_attempts=rng.randint(1, 4), deadline_s=rng.choice((5.0, 15.0, 30.0)),
            soft_decline_codes=frozenset({SOFT}), inquiry_attempts=rng.randint(1, 4),
            inquiry_initial_backoff_s=rng.choice((0.05, 0.2, 1.0)), inquiry_max_backoff_s=2.0,
            reconcile_interval_s=rng.choice((1.0, 5.0)), late_capture_check_s=rng.choice((30.0, 120.0)),
            clock_skew_s=2 * MAX_SKEW_S,
        )
        self.leased = rng.random() < 0.5  # several instances with leases, or one alone
        self.processes: list[Process] = []
        self.serial = 0
        self.delivered = 0
        self.wrap_client: Callable[[Any], Any] = lambda client: client
        self.stats: Counter[str] = Counter()
        # Refunds of succeeded recharges in half the worlds, decided by a stream of their own:
        # a world without them draws exactly what it drew before they existed.
        self.refund_rng = random.Random(seed ^ 0x5EED_F00D)
        self.refunding = self.refund_rng.random() < 0.5
        self.refunds_config = RefundsConfig(retry_interval_s=self.refund_rng.choice((1.0, 5.0, 30.0)))
        # Some providers take a refund past what is left (broken): the orchestrator must not lean on their check.
        self.lax_refunds = self.refunding and self.refund_rng.random() < 0.3
        # Instant credit (SPEC 20) in half the worlds, for most recharges there, by a stream of its own too.
        self.instant_rng = random.Random(seed ^ 0x1257_AC7)
        self.instant = self.instant_rng.random() < 0.5
        # Step-up (SPEC 22) in half the worlds, by a stream of its own as well.
        self.stepup = StepUp(random.Random(seed ^ 0x3D5_3D5))
        self.step_up = self.stepup.on
        if self.step_up:
            self.settings = replace(self.settings, action_ttl_s=self.stepup.action_ttl_s)

    def _config(self, name: str) -> ChannelConfig:
        f = self.providers[name].f
        return ChannelConfig(name=name, kind="direct_api", base_url=f"http://127.0.0.1:1/{name}",
                             webhook_secret="whsec_simulated", currencies=["CNY"], countries=["CN"],
                             methods=["ewallet"], timeout_ms=int(f.timeout_s * 1000))

    # -- plumbing -----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(f"a task of the world raised {task.exception()!r}")

    def later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            result = fn(*args)
            if asyncio.iscoroutine(result):
                await result

        self.spawn(run())

    def alive(self) -> list[Process]:
        return [p for p in self.processes if p.alive]

    async def boot(self) -> Process:
        self.serial += 1
        owner = None
        if self.leased:
            owner = f"p{self.serial}" if self.rng.random() < 0.5 else f"w{self.serial % 2}"
        skew = self.rng.choice((0.0, 0.0, self.rng.uniform(-MAX_SKEW_S, MAX_SKEW_S))) if self.leased else 0.0
        proc = Process(self, f"proc{self.serial}", owner, skew)
        self.processes.append(proc)
        try:
            await proc.start()
        except asyncio.CancelledError:
            pass  # crashed while starting
        return proc

    # -- what happens -------------------------------------------------------------------

    async def deliver(self, channel: str, event: tuple[Any, ...], tries: int = 0) -> None:
        """A webhook to one live instance; retried with backoff while none takes it."""
        live = self.alive()
        if live:
            proc = self.rng.choice(live)
            event_id, reference, provider_ref, status, code, amount, currency = event
            outcome, implied = payment_outcome(status)  # as the webhook endpoint reads it
            try:
                await proc.stalled()
                await proc.driver.on_event(channel, event_id, reference, outcome, provider_ref, code or implied,
                                           amount, currency)
                self.delivered += 1
                return
            except asyncio.CancelledError:
                if proc.alive:
                    raise
            except RuntimeError:
                pass  # a 500: the provider retries
        if tries < 12:
            self.later(min(0.2 * 2 ** tries, 60), self.deliver, channel, event, tries + 1)

    async def client(self, i: int) -> None:
        """A front service: sends recharge ``i`` and retries with the same key until it
        hears back; sometimes sends it again afterwards."""
        rng = self.rng
        await asyncio.sleep(rng.uniform(0, self.horizon))
        user = f"u{rng.randint(0, 3)}"
        amount = rng.choice((500, 8500, 20000))
        for round_ in range(rng.choice((1, 1, 2, 3))):
            for _ in range(200):
                live = self.alive()
                if live:
                    proc = rng.choice(live)
                    rec = self._recharge(proc, i, user, amount)
                    try:
                        await proc.stalled()
                        await proc.driver.submit(rec, TrailEntry(rec.id, rec.created_at, "created", "processing"),
                                                 self.settings)
                        break
                    except (HeldElsewhere, IdempotencyConflict):
                        pass
                    except asyncio.CancelledError:
                        if proc.alive:
                            raise
                await asyncio.sleep(rng.uniform(0.1, 3))
            await asyncio.sleep(rng.uniform(0, 20))

    def _recharge(self, proc: Process, i: int, user: str, amount: int) -> Recharge:
        now = proc.clock.now()
        rid = f"rc_{i:04d}{self.rng.getrandbits(40):010x}"
        return Recharge(
            id=rid, client="front", idempotency_key=f"key-{i}", fingerprint=f"fp-{i}", user_id=user,
            amount_minor=amount, currency="CNY", country="CN", method="ewallet", instrument={"token": "tok"},
            metadata=None, coins=amount // 10, bonus_coins=0, status=RechargeStatus.PROCESSING, created_at=now,
            updated_at=now, deadline_at=now + self.settings.deadline_s, config_version="sim",
            instant=self.instant and self.instant_rng.random() < 0.8,
            step_up=self.step_up and self.stepup.rng.random() < self.stepup.challenged)

    async def refunder(self) -> None:
        """A support desk: refunds succeeded recharges, in part or whole, now and then the
        same one several times at once, retrying each request under its key until an
        instance answers it."""
        rng = self.refund_rng
        for k in range(rng.randint(1, 8)):
            await asyncio.sleep(rng.uniform(0, self.horizon))
            sold = [r for r in self.store._recharges.values() if r.status is RechargeStatus.SUCCEEDED]
            if not sold:
                continue
            rec = rng.choice(sold)
            amount = rng.choice((None, rec.amount_minor // 2, rec.amount_minor // 3, 1, rec.amount_minor + 1))
            await asyncio.gather(*(self._refund(f"rf-{k}-{j}", rec.id, amount) for j in range(rng.choice((1, 1, 2, 3)))))

    async def _refund(self, key: str, recharge_id: str, amount: int | None) -> None:
        rng = self.refund_rng
        cmd = NewRefund(Viewer("front"), key, recharge_id, amount, None, {"amount_minor": amount})
        for _ in range(200):
            live = self.alive()
            if live:
                proc = rng.choice(live)
                try:
                    await proc.stalled()
                    await request_refund(cmd, proc.refunds)
                    self.stats["refunds answered"] += 1
                    return
                except RefundRefused as exc:
                    if exc.code != "request_in_progress":
                        self.stats[f"refunds refused: {exc.code}"] += 1
                        return
                except asyncio.CancelledError:
                    if proc.alive:
                        raise
            await asyncio.sleep(rng.uniform(0.1, 3))

    async def chaos(self) -> None:
        """Crashes and restarts, pauses, reloads that remove and re-add channels."""
        rng = self.rng
        crash_rate = rng.choice((0.0, 0.05, 0.2))
        pause_rate = rng.choice((0.0, 0.0, 0.05)) if self.leased else 0.0
        reload_rate = rng.choice((0.0, 0.0, 0.03))
        while self.loop.time() < self.horizon:
            await asyncio.sleep(rng.uniform(0.2, 2))
            roll = rng.random()
            live = self.alive()
            if roll < crash_rate and live:
                rng.choice(live).crash()
                if not self.alive() or self.leased:
                    self.later(rng.uniform(0, 10), self._restart)
            elif roll < crash_rate + pause_rate and live:
                self.stats["pauses"] += 1
                rng.choice(live).pause(rng.uniform(0.5, 3 * self.lease_s))
            elif roll < crash_rate + pause_rate + reload_rate:
                self.stats["reloads"] += 1
                await self._reload()

    async def _restart(self) -> None:
        wanted = 2 if self.leased else 1
        if len(self.alive()) < wanted:
            await self.boot()

    async def _reload(self) -> None:
        rng = self.rng
        keep = [c for c in self.all_configs if rng.random() < 0.7] or [rng.choice(self.all_configs)]
        self.configs = keep
        for proc in self.alive():
            try:
                await proc.reload(keep)
            except asyncio.CancelledError:
                if proc.alive:
                    raise

    async def run(self) -> None:
        for _ in range(2 if self.leased else 1):
            await self.boot()
        clients = [self.spawn(self.client(i)) for i in range(self.rng.randint(2, 10))]
        if self.refunding:
            clients.append(self.spawn(self.refunder()))
        await self.chaos()
        await asyncio.gather(*clients, return_exceptions=True)
        # Heal: every provider behaves, every instance runs, the config holds every channel.
        self.healed = True
        for proc in self.processes:
            proc._paused_until = 0.0
        if self.rng.random() < 0.5:  # else what a reload removed stays removed
            self.configs = list(self.all_configs)
        for proc in self.alive():
            await proc.reload(self.configs)
        while len(self.alive()) < (2 if self.leased else 1):
            await self.boot()
        s = self.settings
        waits = 3 * s.action_ttl_s if self.step_up else 0.0  # a payer's window, ours and the provider's
        await asyncio.sleep(2 * s.deadline_s + s.late_capture_check_s + s.clock_skew_s + 10 * s.reconcile_interval_s
                            + 120 + waits)

    # -- the oracle ----------------------------------------------------------------------

    def verdict(self) -> Outcome:
        ledger = [p for prov in self.providers.values() for p in prov.ledger()]
        report = check_facts(self.store.facts(), ledger, settled=True)
        v = list(report.violations) + self.errors
        now = EPOCH + self.loop.time()
        for rec in self.store._recharges.values():
            if rec.status is RechargeStatus.PENDING and rec.reason != AMOUNT_MISMATCH:
                v.append(f"{rec.id} still pending ({rec.reason}) after every fault healed")
            if rec.status is RechargeStatus.REQUIRES_ACTION:
                v.append(f"{rec.id} still waits for its payer after every step-up window passed")
            if rec.settlement is Settlement.PENDING:
                v.append(f"{rec.id}'s instant credit still waits for its payment after every fault healed")
            for a in rec.attempts:
                if a.state in OPEN_ATTEMPT_STATES or a.state is AttemptState.REFUND_REQUESTED:
                    v.append(f"{a.reference} left {a.state.value} after every fault healed")
                if a.late_check_at is not None and a.late_check_at < now - self.settings.reconcile_interval_s * 3:
                    v.append(f"{a.reference}: its late-capture check, due at {a.late_check_at - EPOCH:.1f}, never ran")
        for prov in self.providers.values():
            for p in prov.payments.values():
                if p.status in ("pending", "requires_action"):
                    v.append(f"{prov.name} still holds {p.reference} {p.status}")
        for refund in self.store._refunds.values():
            if refund.status.value == "pending":
                v.append(f"refund {refund.id} of {refund.recharge_id} left pending after every fault healed")
        digest = hashlib.sha256(orjson.dumps([
            [row[1:8] for row in self.store._trail],
            sorted((p.channel, p.reference, p.status) for p in ledger),
        ])).hexdigest()[:16]
        seen = Counter(row[3] for row in self.store._trail)
        stats = Counter({k: seen[k] for k in _SEEN if seen[k]})
        stats.update(self.stats)
        stats["late charges refused by a tombstone"] = sum(
            1 for prov in self.providers.values() for p in prov.payments.values() if p.tombstone and
            p.status == "voided" and len(p.history) == 1 and p.reference in prov.refused)
        stats["leased runs"] = int(self.leased)
        stats["instant credit runs"] = int(self.instant)
        stats["step-up runs"] = int(self.step_up)
        return Outcome(self.seed, v, digest, report.recharges, report.by_status, len(self.store._trail),
                       {k: n for k, n in stats.items() if n})
