"""The HTTP API (SPEC section 5): an aiohttp app composed around a ``Service``."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Any

import orjson
import structlog
from aiohttp import web

import routing
from channels import payment_outcome, webhooks
from orchestrator import disputes, recharges, refunds, templates
from orchestrator.api import (admin, aftersale, ledger_api, pricing_api, reconciliation_api, suggest_api,
                              templates_api)
from orchestrator.api.auth import Authenticator
from orchestrator.api.body import check_limit, idempotency_key, read_body, read_json
from orchestrator.api.errors import ApiError, api_error_of, error_response
from orchestrator.api.openapi import OPENAPI
from orchestrator.api.query import RECHARGE_ID, only as only_query
from orchestrator.api.schemas import RechargeIn, validate
from orchestrator.api.state import AUTH, SERVICE
from orchestrator.api.status import STATUS_HTML, status_view
from orchestrator.clock import iso
from orchestrator.cluster import merge_metrics
from orchestrator.errors import OrchestratorError, Overloaded, Unavailable
from orchestrator.service import Service

__all__ = ["SERVICE", "build_app"]

log = structlog.get_logger("orchestrator.api")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


# -- middleware ---------------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bind the request id, make sure every error leaves in the spec's shape, and count
    every answer by route and status (the API's error rate is alerted on)."""
    rid = request.headers.get("X-Request-ID", "")
    if not _REQUEST_ID.match(rid):
        rid = secrets.token_hex(8)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=rid)
    try:
        response = await handler(request)
    except ApiError as err:
        response = error_response(err)
    except OrchestratorError as exc:
        if isinstance(exc, Unavailable):  # nothing half-done was answered; a retry is safe
            log.error("dependency_unavailable", path=request.path, error=str(exc), kind=type(exc).__name__)
        response = error_response(api_error_of(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "bad_request")
        response = error_response(ApiError(code, exc.reason or code.replace("_", " ")))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path)
        response = error_response(ApiError("internal_error", "internal error; the request id identifies it in logs"))
    response.headers["X-Request-ID"] = rid
    svc = request.app[SERVICE]
    if svc.cluster is not None:
        response.headers["X-Worker"] = str(svc.cluster.index)
    resource = request.match_info.route.resource
    svc.metrics.answered(resource.canonical if resource is not None else "unmatched", response.status)
    return response


# -- helpers ------------------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _viewer(request: web.Request) -> tuple[recharges.Viewer, str]:
    """Who asks for which recharge (an id of the wrong shape is simply not found)."""
    client = request.app[AUTH].require_any(request)
    rid = request.match_info["id"]
    if not RECHARGE_ID.match(rid):
        raise ApiError("not_found", "no such recharge")
    return recharges.Viewer(client.name, "admin" in client.scopes), rid


def _new_recharge(request: web.Request, client: str, body: Any) -> recharges.NewRecharge:
    req: RechargeIn = validate(RechargeIn, body)
    check_limit(request.app[SERVICE].user_limits, req.user_id, "user")
    return recharges.NewRecharge(
        client=client, idempotency_key=idempotency_key(request), user_id=req.user_id,
        amount_minor=req.amount_minor, currency=req.currency, country=req.country, method=req.method,
        instrument=recharges.Instrument(req.instrument.token, req.instrument.account_number, req.instrument.issuer),
        document=body, metadata=req.metadata, quote_id=req.quote_id, device_id=req.device_id,
        ip_country=req.ip_country)


def _created_json(done: recharges.Created) -> web.Response:
    headers = {"Idempotent-Replayed": "true"} if done.replayed else None
    return _json(done.view(), 201 if done.recharge.terminal else 202,
                 headers)


# -- handlers -----------------------------------------------------------------------------


async def create_recharge(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    if svc.requests_in_flight >= svc.config.server.max_concurrent_requests:
        svc.metrics.shed.inc()
        raise Overloaded("overloaded: too many recharges in progress, retry shortly")
    svc.requests_in_flight += 1
    try:
        client = request.app[AUTH].require(request, "recharge")
        check_limit(svc.client_limits, client.name, "client")
        idempotency_key(request)
        body = await read_json(request, svc.config.server.max_body_bytes)
        if isinstance(body, dict) and "template_id" in body:  # the template fills the payment fields (SPEC 22)
            req = templates_api.from_template(request, client.name, body)
            return _created_json(await templates.recharge(req, svc.templates, svc.recharges))
        cmd = _new_recharge(request, client.name, body)
        return _created_json(await recharges.create(cmd, svc.recharges))
    finally:
        svc.requests_in_flight -= 1


async def get_recharge(request: web.Request) -> web.Response:
    viewer, rid = _viewer(request)
    found = await recharges.get(rid, viewer, request.app[SERVICE].recharges)
    return _json(found.view())


async def get_trail(request: web.Request) -> web.Response:
    viewer, rid = _viewer(request)
    entries = await recharges.trail(rid, viewer, request.app[SERVICE].recharges)
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
    request.app[AUTH].require_any(request)
    user_id = request.match_info["user_id"]
    only_query(request, "limit")
    if not re.match(r"^[A-Za-z0-9_.:@-]{1,64}$", user_id):
        raise ApiError("not_found", "no such user")
    limit_raw = request.query.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", limit_raw) or not 1 <= int(limit_raw) <= 1000:
        raise ApiError("invalid_field", "limit must be an integer from 1 to 1000", field="limit")
    view = await svc.journal.wallet(user_id, int(limit_raw))
    return _json({
        "user_id": view.user_id,
        "coins": view.coins,
        "frozen_coins": view.frozen_coins,
        "spendable_coins": view.coins - view.frozen_coins,
        "entries": [
            {"recharge_id": e.recharge_id, "kind": e.kind, "refund_id": e.ref, "coins": e.coins,
             "balance_after": e.balance_after, "created_at": iso(e.created_at)}
            for e in view.entries
        ],
    })


async def provider_webhook(request: web.Request) -> web.Response:
    """A provider's callback (SPEC section 6): authenticated by its signature, applied
    durably and at most once before the 2xx."""
    svc = request.app[SERVICE]
    name = request.match_info["channel"]
    channel = await svc.channel_config(name)
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
    if event.status in disputes.DISPUTE_EVENTS:
        effect = await disputes.on_event(name, event.event_id, event.reference, event.status, svc.disputes)
        return _json({"received": True, "effect": effect})
    if event.refund_reference is not None:
        effect = await refunds.on_event(name, event.event_id, event.reference, event.refund_reference, event.status,
                                        svc.refunds, event.amount_minor)
        if effect is not None:
            return _json({"received": True, "effect": effect})
    try:
        status, implied_code = payment_outcome(event.status)
    except ValueError:
        raise ApiError("invalid_field", f"status {event.status!r} needs the refund_reference of one of our refunds",
                       field="refund_reference") from None
    effect = await svc.driver.on_event(name, event.event_id, event.reference, status, event.provider_ref,
                                       event.decline_code or implied_code, event.amount_minor, event.currency)
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
        client = request.app[AUTH].identify(request)
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
    request.app[AUTH].require(request, "admin")
    only_query(request, "currency", "country", "method", "amount_minor", "segment", "step_up", "issuer")
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
    if q.get("step_up", "false") not in ("true", "false"):
        raise ApiError("invalid_field", "step_up must be true or false", field="step_up")
    issuer = q.get("issuer") or None
    if issuer is not None and not re.fullmatch(r"(bin:[0-9]{6})|([a-z0-9][a-z0-9_.-]{0,31})", issuer):
        raise ApiError("invalid_field", "issuer must be an issuer code (a-z 0-9 _ . -) or bin: and 6 digits",
                       field="issuer")
    txn = routing.Transaction(currency=q["currency"], country=q["country"], method=q["method"],
                              amount_minor=int(q["amount_minor"]), segment=segment, step_up=q.get("step_up") == "true",
                              issuer=issuer)
    return _json(svc.planner.explain(txn))


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
    snapshot = svc.routing.current
    for name, state in snapshot.states.items():
        svc.metrics.breaker_state.labels(name).set({"closed": 0, "half_open": 1, "open": 2}[state.breaker])
    svc.metrics.routable(snapshot.channels, snapshot.states)
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
    app[AUTH] = Authenticator(lambda: service.config.clients)
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
    aftersale.register(app)
    ledger_api.register(app)
    reconciliation_api.register(app)
    templates_api.register(app)
    suggest_api.register(app)
    pricing_api.register(app, service.pricing)
    app.router.add_get("/v1/health/channels", channel_health)
    app.router.add_get("/status", status_page)
    app.router.add_get("/v1/status", status_json)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/v1/admin/routing/explain", explain_route)
    return app
