"""The HTTP API (SPEC section 5): an aiohttp app composed around a ``Service``."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from typing import Any

import orjson
import structlog
from aiohttp import web

import routing
from channels import AttemptOutcome, webhooks
from config import ClientConfig
from orchestrator.api import admin, pricing_api
from orchestrator.api.body import check_limit, read_body, read_json
from orchestrator.api.errors import ApiError, error_response
from orchestrator.api.keys import SERVICE
from orchestrator.api.openapi import OPENAPI
from orchestrator.api.query import only as only_query
from orchestrator.api.schemas import RechargeIn, validate
from orchestrator.api.status import STATUS_HTML, status_view
from orchestrator.clock import iso
from orchestrator.cluster import ClusterError, merge_metrics
from orchestrator.driver import HeldElsewhere, IdempotencyConflict, new_recharge_id
from orchestrator.model import Recharge, RechargeStatus, TrailEntry
from orchestrator.journal import FirstRecharge, JournalError
from orchestrator.pricing import PricingError
from orchestrator.risk import RiskInput
from orchestrator.service import Service

__all__ = ["SERVICE", "build_app", "recharge_json"]

log = structlog.get_logger("orchestrator.api")


_IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
_RECHARGE_ID = re.compile(r"^rc_[0-9a-f]{1,64}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


# -- middleware ---------------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bind the request id, and make sure every error leaves in the spec's shape."""
    rid = request.headers.get("X-Request-ID", "")
    if not _REQUEST_ID.match(rid):
        rid = secrets.token_hex(8)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    try:
        response = await handler(request)
    except ApiError as err:
        response = error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "bad_request")
        response = error_response(ApiError(code, exc.reason or code.replace("_", " ")))
    except asyncio.CancelledError:
        raise
    except JournalError as exc:
        # The store cannot take writes right now: nothing half-done was answered, and a
        # retry with the same Idempotency-Key is safe.
        log.error("journal_unavailable", path=request.path, error=str(exc))
        response = error_response(ApiError("unavailable", "storage is unavailable; retry shortly", retry_after=1))
    except ClusterError as exc:
        # A worker whose supervisor is gone (it is stopping) or did not answer in time.
        log.error("cluster_unavailable", path=request.path, error=str(exc))
        response = error_response(ApiError("unavailable", "the other workers cannot be reached; retry shortly",
                                           retry_after=1))
    except Exception:
        log.exception("unhandled_error", path=request.path)
        response = error_response(ApiError("internal_error", "internal error; the request id identifies it in logs"))
    response.headers["X-Request-ID"] = rid
    cluster = request.app[SERVICE].cluster
    if cluster is not None:
        response.headers["X-Worker"] = str(cluster.index)
    return response


# -- helpers ------------------------------------------------------------------------------


def recharge_json(rec: Recharge, promotions: list[Any] | None = None,
                  risk: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": rec.id,
        "status": rec.status.value,
        "user_id": rec.user_id,
        "amount_minor": rec.amount_minor,
        "currency": rec.currency,
        "country": rec.country,
        "method": rec.method,
        "coins": rec.coins,
        "bonus_coins": rec.bonus_coins,
        "promotions": promotions or [],
        "risk": risk or {"action": "allow", "reasons": []},
        "channel": rec.channel,
        "attempts": [a.to_api() for a in rec.attempts],
        "decline_code": rec.decline_code,
        "reason": rec.reason,
        "metadata": rec.metadata,
        "config_version": rec.config_version,
        "created_at": iso(rec.created_at),
        "updated_at": iso(rec.updated_at),
    }


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise ApiError("missing_idempotency_key", "the Idempotency-Key header is required", field="Idempotency-Key")
    if not _IDEMPOTENCY_KEY.match(key):
        raise ApiError("invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters",
                       field="Idempotency-Key")
    return key


def _visible(rec: Recharge | None, client: ClientConfig) -> Recharge:
    """A client sees its own recharges; admin sees all. Others' are simply not found."""
    if rec is None or (rec.client != client.name and "admin" not in client.scopes):
        raise ApiError("not_found", "no such recharge")
    return rec


def _require_any(svc: Service, request: web.Request) -> ClientConfig:
    client = svc.auth.identify(request)
    if client is None:
        raise ApiError("unauthorized", "a valid API key is required (Authorization: Bearer <key>)")
    if not ({"recharge", "admin"} & set(client.scopes)):
        raise ApiError("forbidden", "this API key has no scope for this resource")
    return client


async def _current(svc: Service, recharge_id: str) -> Recharge | None:
    live = svc.driver.live(recharge_id)
    return live[1] if live is not None else await svc.journal.get(recharge_id)


async def _priced_with(svc: Service, rec: Recharge) -> tuple[list[Any], dict[str, Any]]:
    """The promotions a stored recharge was priced with and its risk verdict: both are on
    its 'created' trail entry."""
    entries = await svc.journal.trail(rec.id)
    detail = (entries[0].detail if entries and entries[0].event == "created" else None) or {}
    return list(detail.get("promotions", [])), {"action": detail.get("risk", "allow"),
                                                "reasons": list(detail.get("risk_reasons", []))}


async def _answer_after_wait(svc: Service, rec: Recharge, *, replayed: bool,
                             priced: tuple[list[Any], dict[str, Any]] | None = None) -> web.Response:
    """Wait up to ``sync_wait_s`` for the recharge to end, then answer its durable state:
    201 when terminal, 202 while it is still moving."""
    live = svc.driver.live(rec.id)
    if live is not None:
        task, rec = live
        await _until_done(task, svc.config.server.sync_wait_s)
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    promotions, risk = priced if priced is not None else await _priced_with(svc, rec)
    return _json(recharge_json(rec, promotions, risk), 201 if rec.terminal else 202, headers)


async def _until_done(task: asyncio.Task[None], timeout_s: float) -> None:
    """Wait for ``task`` to end, at most ``timeout_s``; on timeout it goes on running.
    (``asyncio.wait`` does the same with sets and a waiter per call; this is on every
    recharge's path.)"""
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


# -- handlers -----------------------------------------------------------------------------


async def create_recharge(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    if svc.requests_in_flight >= svc.config.server.max_concurrent_requests:
        svc.metrics.shed.inc()
        raise ApiError("unavailable", "overloaded: too many recharges in progress, retry shortly", retry_after=1)
    svc.requests_in_flight += 1
    try:
        return await _create_recharge(request, svc)
    finally:
        svc.requests_in_flight -= 1


async def _create_recharge(request: web.Request, svc: Service) -> web.Response:
    client = svc.auth.require(request, "recharge")
    check_limit(svc.client_limits, client.name, "client")
    key = _idempotency_key(request)
    body = await read_json(request, svc.config.server.max_body_bytes)
    req: RechargeIn = validate(RechargeIn, body)
    check_limit(svc.user_limits, req.user_id, "user")
    # The fingerprint never hashes a whole card number (a hash of one is guessable):
    # the instrument enters it as stored, masked.
    fingerprint = hashlib.sha256(orjson.dumps({**body, "instrument": req.instrument.stored()},
                                              option=orjson.OPT_SORT_KEYS)).hexdigest()
    history = await svc.pricing.history(req.user_id)
    try:
        p = await svc.pricing.price_recharge(req.user_id, req.amount_minor, req.currency, req.quote_id, history)
    except PricingError as exc:
        # A retry of a recharge already made answers that recharge, even if its quote
        # has expired since.
        existing = await _held_by(svc, client.name, key)
        if existing is None:
            raise pricing_api.api_error(exc) from None
        if existing.fingerprint != fingerprint:
            raise ApiError("idempotency_key_reused", "this Idempotency-Key was already used with a different "
                           "request body", field="Idempotency-Key") from None
        return await _answer_after_wait(svc, existing, replayed=True)
    stored_instrument = req.instrument.stored()
    risk_input = RiskInput(req.user_id, p.base_amount, req.country,
                           instrument_id=next(iter(stored_instrument.values())),
                           account_number=req.instrument.account_number, history=history)
    decision = svc.risk.assess(risk_input)
    now = svc.clock.now()
    settings = svc.settings
    rec = Recharge(
        id=new_recharge_id(), client=client.name, idempotency_key=key, fingerprint=fingerprint,
        user_id=req.user_id, amount_minor=req.amount_minor, currency=req.currency, country=req.country,
        method=req.method, instrument=stored_instrument, metadata=req.metadata,
        coins=p.coins, bonus_coins=p.bonus_coins,
        status=RechargeStatus.BLOCKED if decision.blocked else RechargeStatus.PROCESSING,
        reason="risk: " + ",".join(decision.reasons) if decision.blocked else None,
        created_at=now, updated_at=now, deadline_at=now + settings.deadline_s, config_version=settings.version,
    )
    detail: dict[str, Any] = {"config_version": settings.version, "coins": p.coins, "bonus_coins": p.bonus_coins,
                              "rate": str(p.rate), "promotions": [pr.to_api() for pr in p.promotions],
                              "risk": decision.action, "risk_reasons": list(decision.reasons)}
    if req.quote_id:
        detail["quote_id"] = req.quote_id
    created = TrailEntry(rec.id, now, "created", rec.status.value, detail=detail)
    first = None
    if p.claims_first_recharge and not decision.blocked:
        without = p.without_first_recharge()
        first = FirstRecharge(without.bonus_coins, {"bonus_coins": without.bonus_coins,
                                                    "promotions": [pr.to_api() for pr in without.promotions]})
    if decision.action != "allow":
        svc.metrics.risk_decisions.labels(decision.action).inc()
    if req.instrument.account_number is not None:
        svc.hold_instrument(rec.id, {"account_number": req.instrument.account_number})
    try:
        rec, fresh = await svc.driver.submit(rec, created, settings, first)
    except IdempotencyConflict:
        raise ApiError("idempotency_key_reused", "this Idempotency-Key was already used with a different request body",
                       field="Idempotency-Key") from None
    except HeldElsewhere:
        raise ApiError("request_in_progress", "this recharge is being processed; retry to get its result",
                       retry_after=1) from None
    priced = None
    if fresh:
        structlog.contextvars.bind_contextvars(recharge_id=rec.id)
        if not decision.blocked:
            svc.risk.record(risk_input)
        denied = first is not None and rec.bonus_coins == first.bonus_without and p.bonus_coins != first.bonus_without
        promotions = first.detail_without["promotions"] if denied and first else [pr.to_api() for pr in p.promotions]
        priced = (promotions, {"action": decision.action, "reasons": list(decision.reasons)})
    return await _answer_after_wait(svc, rec, replayed=not fresh, priced=priced)


async def _held_by(svc: Service, client: str, key: str) -> Recharge | None:
    rows = await svc.journal.query(  # type: ignore[attr-defined]
        "SELECT id FROM recharges WHERE client = ? AND idempotency_key = ?", (client, key))
    return await _current(svc, rows[0][0]) if rows else None


async def get_recharge(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    client = _require_any(svc, request)
    rid = request.match_info["id"]
    if not _RECHARGE_ID.match(rid):
        raise ApiError("not_found", "no such recharge")
    rec = _visible(await _current(svc, rid), client)
    return _json(recharge_json(rec, *await _priced_with(svc, rec)))


async def get_trail(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    client = _require_any(svc, request)
    rid = request.match_info["id"]
    if not _RECHARGE_ID.match(rid):
        raise ApiError("not_found", "no such recharge")
    _visible(await svc.journal.get(rid), client)
    entries = await svc.journal.trail(rid)
    return _json({
        "recharge_id": rid,
        "entries": [
            {"at": iso(e.at), "event": e.event, "status": e.status, "reference": e.reference,
             "channel": e.channel, "detail": e.detail}
            for e in entries
        ],
    })


async def get_wallet(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    _require_any(svc, request)
    user_id = request.match_info["user_id"]
    only_query(request, "limit")
    if not re.match(r"^[A-Za-z0-9_.:@-]{1,64}$", user_id):
        raise ApiError("not_found", "no such user")
    limit_raw = request.query.get("limit", "100")
    if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= 1000:
        raise ApiError("invalid_field", "limit must be an integer from 1 to 1000", field="limit")
    view = await svc.journal.wallet(user_id, int(limit_raw))
    return _json({
        "user_id": view.user_id,
        "coins": view.coins,
        "entries": [
            {"recharge_id": e.recharge_id, "coins": e.coins, "balance_after": e.balance_after,
             "created_at": iso(e.created_at)}
            for e in view.entries
        ],
    })


async def provider_webhook(request: web.Request) -> web.Response:
    """A provider's callback (SPEC section 6): authenticated by its signature, applied
    durably and at most once before the 2xx."""
    svc = request.app[SERVICE]
    name = request.match_info["channel"]
    channel = svc.channel_config(name)
    if channel is None:
        raise ApiError("not_found", "no such channel")
    raw = await read_body(request)
    if len(raw) > svc.config.server.max_body_bytes:
        raise ApiError("payload_too_large", "webhook body too large")
    try:
        event = webhooks.verify(channel.webhook_secret, request.headers.get("X-Provider-Signature"), raw,
                                now=svc.clock.now())
    except webhooks.SignatureError as exc:
        raise ApiError("unauthorized", f"webhook signature rejected: {exc}") from None
    except webhooks.MalformedEvent as exc:
        raise ApiError("validation_failed", f"webhook body rejected: {exc}") from None
    try:
        status = AttemptOutcome(event.status)
    except ValueError:
        raise ApiError("invalid_field", f"unknown payment status {event.status!r}", field="status") from None
    effect = await svc.driver.on_event(name, event.event_id, event.reference, status,
                                       event.provider_ref, event.decline_code, event.amount_minor, event.currency)
    return _json({"received": True, "effect": effect})


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    checks: dict[str, str] = {"config": svc.loaded.version}
    ready = True
    try:
        await asyncio.wait_for(svc.journal.ping(), 2.0)
        checks["journal"] = "ok"
    except Exception as exc:
        checks["journal"] = f"failing: {exc}"
        ready = False
    routable = svc.routable()
    checks["channels"] = f"{len(routable)} of {len(svc.channels)} routable"
    if not routable:
        ready = False
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return _json(body, 200 if ready else 503, None if ready else {"Retry-After": "5"})


def _restricted(svc: Service, request: web.Request, what: str) -> None:
    """Channel health, metrics and the status page are open unless the config says
    otherwise (``server.restrict``); a valid key is always accepted."""
    if what in svc.config.server.restrict:
        client = svc.auth.identify(request)
        if client is None:
            raise ApiError("unauthorized", "a valid API key is required (Authorization: Bearer <key>)")


async def channel_health(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    _restricted(svc, request, "channel_health")
    report = svc.health.report()
    snapshot = svc.routing.current
    channels = []
    for cfg in svc.config.channels:
        entry = dict(report.get(cfg.name, {}))
        entry.update(channel=cfg.name, kind=cfg.kind)
        channels.append(entry)
    return _json({"config_version": svc.loaded.version, "snapshot_version": snapshot.version,
                  "channels": channels})


async def explain_route(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    svc.auth.require(request, "admin")
    only_query(request, "currency", "country", "method", "amount_minor", "segment")
    q = request.query
    missing = [k for k in ("currency", "country", "method", "amount_minor") if not q.get(k)]
    if missing:
        raise ApiError("missing_field", f"query parameter {missing[0]} is required", field=missing[0])
    if not re.fullmatch(r"[0-9]{1,13}", q["amount_minor"]) or int(q["amount_minor"]) <= 0:
        raise ApiError("invalid_field", "amount_minor must be a positive integer", field="amount_minor")
    for key, pattern in (("currency", r"[A-Z]{3}"), ("country", r"[A-Z]{2}"), ("method", r"[a-z][a-z0-9_]{0,31}")):
        if not re.fullmatch(pattern, q[key]):
            raise ApiError("invalid_field", f"{key} has an invalid format", field=key)
    segment = q.get("segment") or None
    txn = routing.Transaction(currency=q["currency"], country=q["country"], method=q["method"],
                              amount_minor=int(q["amount_minor"]), segment=segment)
    return _json(svc.explain(txn))


async def status_page(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    _restricted(svc, request, "status")
    return web.Response(text=STATUS_HTML, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def status_json(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    _restricted(svc, request, "status")
    return _json(status_view(svc))


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


def metrics_text(svc: Service) -> bytes:
    """This process's metrics, the gauges read from their sources first."""
    svc.metrics.in_flight_recharges.set(svc.driver.in_flight)
    for name, count in svc.health.in_flight().items():
        svc.metrics.in_flight_attempts.labels(name).set(count)
    for name, state in svc.routing.current.states.items():
        svc.metrics.breaker_state.labels(name).set({"closed": 0, "half_open": 1, "open": 2}[state.breaker])
    return svc.metrics.render()


async def metrics(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    _restricted(svc, request, "metrics")
    if svc.cluster is None:
        body = metrics_text(svc)
    else:  # every worker's samples, labelled with its index
        results = await svc.cluster.request({"kind": "metrics"})
        body = merge_metrics([(r["worker"], r["text"]) for r in results if "text" in r])
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


# -- the app ------------------------------------------------------------------------------


def build_app(service: Service, *, manage_service: bool = True) -> web.Application:
    """The aiohttp app. With ``manage_service`` the app starts and stops the service
    (aiohttp's cleanup_ctx: start, yield, stop)."""
    app = web.Application(middlewares=[_errors], client_max_size=service.config.server.max_body_bytes)
    app[SERVICE] = service
    if manage_service:
        async def _life(app: web.Application):  # type: ignore[no-untyped-def]
            await service.start()
            yield
            await service.stop()

        app.cleanup_ctx.append(_life)
    app.router.add_post("/v1/recharges", create_recharge)
    app.router.add_get("/v1/recharges/{id}", get_recharge)
    app.router.add_get("/v1/recharges/{id}/trail", get_trail)
    app.router.add_get("/v1/wallets/{user_id}", get_wallet)
    app.router.add_post("/v1/webhooks/{channel}", provider_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    admin.register(app)
    pricing_api.register(app, service.pricing)
    app.router.add_get("/v1/health/channels", channel_health)
    app.router.add_get("/status", status_page)
    app.router.add_get("/v1/status", status_json)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/admin/routing/explain", explain_route)
    return app
