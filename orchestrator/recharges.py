"""The recharge use cases: create one, read it, its trail. Plain async functions over
explicit dependencies (``RechargeDeps``), returning domain objects or raising the
errors of ``orchestrator.errors``; the HTTP API is one caller, tests are another.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from orchestrator.clock import Clock
from orchestrator.driver import Driver, new_recharge_id
from orchestrator.errors import IdempotencyConflict, NotFound, PricingError
from orchestrator.journal import Journal
from orchestrator.metrics import Metrics
from orchestrator.model import Dispute, Recharge, RechargeStatus, Refund, TrailEntry
from orchestrator.quotes import PricingService
from orchestrator.risk import RiskEngine, RiskInput
from orchestrator.transitions import RunSettings
from orchestrator.views import recharge_view

__all__ = ["Created", "Instrument", "InstrumentVault", "NewRecharge", "RechargeDeps", "Viewer", "create", "get",
           "mask", "replay", "trail"]


def mask(number: str) -> str:
    """First 6 and last 4 digits at most (PCI DSS), the rest as '*'."""
    keep_head, keep_tail = (6, 4) if len(number) >= 16 else (min(6, len(number) - 8), 4)
    return number[:keep_head] + "*" * (len(number) - keep_head - keep_tail) + number[-keep_tail:]


@dataclass(frozen=True, slots=True)
class Instrument:
    """A token, or a card/account number that only the provider ever sees whole; and the
    issuer (the card's bank or the wallet), when the front service names it."""

    token: str | None = None
    account_number: str | None = None
    issuer: str | None = None

    def stored(self) -> dict[str, str]:
        """What the journal keeps: the token, or the masked number; and the issuer."""
        kept = {"token": self.token} if self.token is not None else {
            "account_number_masked": mask(self.account_number or "")}
        return kept if self.issuer is None else {**kept, "issuer": self.issuer}

    def whole(self) -> dict[str, str]:
        """What the provider is sent: the token or the whole number, and the issuer."""
        sent = {"token": self.token} if self.token is not None else {"account_number": self.account_number or ""}
        return sent if self.issuer is None else {**sent, "issuer": self.issuer}


@dataclass(frozen=True, slots=True)
class NewRecharge:
    """A request to create a recharge. ``document`` is the request as the client sent
    it: its fingerprint tells a replay from another request under the same key."""

    client: str
    idempotency_key: str
    user_id: str
    amount_minor: int
    currency: str
    country: str
    method: str
    instrument: Instrument
    document: Mapping[str, Any]
    metadata: dict[str, Any] | None = None
    quote_id: str | None = None
    template_id: str | None = None  # the template it was filled from (SPEC 22)
    device_id: str | None = None  # risk signals the front service may send (SPEC 5)
    ip_country: str | None = None

    def fingerprint(self) -> str:
        # Never a hash of a whole card number (guessable): the instrument as stored.
        return hashlib.sha256(orjson.dumps({**self.document, "instrument": self.instrument.stored()},
                                           option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks: a client sees its own recharges, an admin every one."""

    client: str
    admin: bool = False

    def sees(self, rec: Recharge | None) -> Recharge:
        if rec is None or (rec.client != self.client and not self.admin):
            raise NotFound("no such recharge")
        return rec


@dataclass(frozen=True, slots=True)
class Created:
    """A recharge as created (or found, for a replay), after waiting up to
    ``sync_wait_s`` for it to finish, with the promotions and risk verdict it got."""

    recharge: Recharge
    promotions: list[Any]
    risk: dict[str, Any]
    replayed: bool
    refunds: tuple[Refund, ...] = ()
    dispute: Dispute | None = None

    def view(self) -> dict[str, Any]:
        return recharge_view(self.recharge, self.promotions, self.risk, self.refunds, self.dispute)


class InstrumentVault:
    """Whole card/account numbers, in memory only, while their recharge runs. A masked
    number (after a restart) cannot be charged: no instrument, and no new attempt."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, str]] = {}

    def hold(self, recharge_id: str, instrument: dict[str, str]) -> None:
        self._held[recharge_id] = instrument

    def of(self, rec: Recharge) -> dict[str, str] | None:
        """What the provider gets: the token, or the whole number held here (each with
        the issuer, if any)."""
        return rec.instrument if "token" in rec.instrument else self._held.get(rec.id)

    def forget(self, rec: Recharge) -> None:
        self._held.pop(rec.id, None)


@dataclass(frozen=True, slots=True)
class RechargeDeps:
    """What the recharge use cases need; built once by the composition root."""

    journal: Journal
    driver: Driver
    pricing: PricingService
    risk: RiskEngine
    clock: Clock
    metrics: Metrics
    vault: InstrumentVault
    settings: Callable[[], RunSettings]  # the running config's, at the time of the call
    sync_wait_s: Callable[[], float]


async def create(cmd: NewRecharge, deps: RechargeDeps) -> Created:
    """Price, assess and journal a new recharge, then drive it; a retry of one already
    made (same client, key and request) answers that one."""
    fingerprint = cmd.fingerprint()
    history = await deps.pricing.history(cmd.user_id)
    try:
        p = await deps.pricing.price_recharge(cmd.user_id, cmd.amount_minor, cmd.currency, cmd.quote_id, history)
    except PricingError:
        # A retry answers the recharge already made, even if its quote expired since.
        existing = await deps.journal.find(cmd.client, cmd.idempotency_key)
        if existing is None:
            raise
        if existing.fingerprint != fingerprint:
            raise IdempotencyConflict() from None
        return await _settled(deps, _current(deps, existing), replayed=True)
    stored = cmd.instrument.stored()
    risk_input = RiskInput(cmd.user_id, p.base_amount, cmd.country, instrument_id=next(iter(stored.values())),
                           account_number=cmd.instrument.account_number, history=history,
                           device_id=cmd.device_id, ip_country=cmd.ip_country)
    decision = deps.risk.assess(risk_input)
    settings = deps.settings()
    # Instant credit (SPEC 20): not for a user with one still settling or one clawed back.
    instant = (not decision.blocked and settings.instant_allows(p.base_amount, history.count)
               and not await deps.journal.has_unsettled_credit(cmd.user_id))
    now = deps.clock.now()
    rec = Recharge(
        id=new_recharge_id(), client=cmd.client, idempotency_key=cmd.idempotency_key, fingerprint=fingerprint,
        user_id=cmd.user_id, amount_minor=cmd.amount_minor, currency=cmd.currency, country=cmd.country,
        method=cmd.method, instrument=stored, metadata=cmd.metadata, coins=p.coins, bonus_coins=p.bonus_coins,
        status=RechargeStatus.BLOCKED if decision.blocked else RechargeStatus.PROCESSING,
        reason="risk: " + ",".join(decision.reasons) if decision.blocked else None,
        created_at=now, updated_at=now, deadline_at=now + settings.deadline_s, config_version=settings.version,
        instant=instant, step_up=decision.challenged,
    )
    detail: dict[str, Any] = {"config_version": settings.version, "coins": p.coins, "bonus_coins": p.bonus_coins,
                              "rate": str(p.rate), "promotions": [pr.to_api() for pr in p.promotions],
                              "risk": decision.action, "risk_reasons": list(decision.reasons),
                              "risk_score": decision.score}
    if decision.model_version is not None:  # what GET /v1/admin/risk/explain answers from
        detail["risk_model"] = decision.model_version
        detail["risk_features"] = [c.to_api() for c in decision.explain]
    if cmd.quote_id:
        detail["quote_id"] = cmd.quote_id
    if cmd.template_id:
        detail["template_id"] = cmd.template_id
    if decision.action != "allow":
        deps.metrics.risk_decisions.labels(decision.action).inc()
    if cmd.instrument.account_number is not None:
        deps.vault.hold(rec.id, cmd.instrument.whole())
    first = None if decision.blocked else p.first_recharge_claim()
    rec, fresh = await deps.driver.submit(rec, TrailEntry(rec.id, now, "created", rec.status.value, detail=detail),
                                          settings, first)
    if not fresh:
        return await _settled(deps, rec, replayed=True)
    structlog.contextvars.bind_contextvars(recharge_id=rec.id)
    if decision.blocked:
        deps.risk.refused(risk_input)
    else:
        deps.risk.record(risk_input, rec.id)
    return await _settled(deps, rec, replayed=False, promotions=p.promotions_given(rec.bonus_coins),
                          risk=_risk_view(decision.action, decision.reasons, decision.score, decision.model_version))


async def replay(cmd: NewRecharge, deps: RechargeDeps) -> Created | None:
    """The recharge already made under ``cmd``'s key answered again, without pricing or
    creating anything (None: the key holds none); IdempotencyConflict when it was made of
    another request. For a request that can no longer be built whole (its template is gone)."""
    existing = await deps.journal.find(cmd.client, cmd.idempotency_key)
    if existing is None:
        return None
    if existing.fingerprint != cmd.fingerprint():
        raise IdempotencyConflict()
    return await _settled(deps, _current(deps, existing), replayed=True)


async def get(recharge_id: str, viewer: Viewer, deps: RechargeDeps) -> Created:
    """A recharge as it is now (the running one's latest state), with how it was priced."""
    rec = viewer.sees(_current(deps, await deps.journal.get(recharge_id)))
    promotions, risk = await _priced_with(deps, rec)
    if rec.status is not RechargeStatus.SUCCEEDED:
        return Created(rec, promotions, risk, replayed=False)
    refunds, dispute = await asyncio.gather(deps.journal.refunds_of(rec.id), deps.journal.dispute_of(rec.id))
    return Created(rec, promotions, risk, False, tuple(refunds), dispute)


async def trail(recharge_id: str, viewer: Viewer, deps: RechargeDeps) -> list[TrailEntry]:
    viewer.sees(await deps.journal.get(recharge_id))
    return await deps.journal.trail(recharge_id)


async def explain_risk(recharge_id: str, deps: RechargeDeps) -> dict[str, Any]:
    """How risk judged a recharge, from its 'created' trail entry: the action, the score,
    the model that gave it and the features that moved that score most (none when the
    rules alone judged it)."""
    rec = await deps.journal.get(recharge_id)
    if rec is None:
        raise NotFound("no such recharge")
    entries = await deps.journal.trail(rec.id)
    detail = (entries[0].detail if entries and entries[0].event == "created" else None) or {}
    return {"recharge_id": rec.id, "status": rec.status.value, "action": detail.get("risk", "allow"),
            "reasons": list(detail.get("risk_reasons", [])), "score": detail.get("risk_score", 0.0),
            "model": detail.get("risk_model"), "features": list(detail.get("risk_features", []))}


def _current(deps: RechargeDeps, rec: Recharge | None) -> Recharge | None:
    """The running recharge's in-memory state (ahead of nothing the journal has), else
    the stored one."""
    live = deps.driver.live(rec.id) if rec is not None else None
    return live[1] if live is not None else rec


async def _priced_with(deps: RechargeDeps, rec: Recharge) -> tuple[list[Any], dict[str, Any]]:
    """The promotions and risk verdict of a stored recharge: its 'created' trail entry's."""
    entries = await deps.journal.trail(rec.id)
    detail = (entries[0].detail if entries and entries[0].event == "created" else None) or {}
    return list(detail.get("promotions", [])), _risk_view(detail.get("risk", "allow"), detail.get("risk_reasons", []),
                                                          detail.get("risk_score", 0.0), detail.get("risk_model"))


def _risk_view(action: str, reasons: Any, score: float, model: str | None) -> dict[str, Any]:
    view = {"action": action, "reasons": list(reasons), "score": score}
    if model is not None:
        view["model"] = model
    return view


async def _settled(deps: RechargeDeps, rec: Recharge, *, replayed: bool, promotions: list[Any] | None = None,
                   risk: dict[str, Any] | None = None) -> Created:
    """Wait up to ``sync_wait_s`` for the recharge to finish, then its latest state."""
    live = deps.driver.live(rec.id)
    if live is not None:
        task, rec = live
        await _until_done(task, deps.sync_wait_s())
    if promotions is None or risk is None:
        promotions, risk = await _priced_with(deps, rec)
    return Created(rec, promotions, risk, replayed)


async def _until_done(task: asyncio.Task[None], timeout_s: float) -> None:
    """Wait for ``task`` to end, at most ``timeout_s``; on timeout it goes on running.
    (``asyncio.wait`` does the same with sets and a waiter per call, on every recharge.)"""
    if task.done():
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(timeout_s, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
