"""Settlement reconciliation for admins (SPEC 21): start a run, list runs, read one with
its day's discrepancies. Parse, call, render."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from orchestrator import settlements
from orchestrator.api.body import read_json
from orchestrator.api.errors import ApiError
from orchestrator.api.query import only as only_query
from orchestrator.api.schemas import ReconciliationIn, validate
from orchestrator.api.state import AUTH, SERVICE

__all__ = ["register"]

_RUN = re.compile(r"^rn_[0-9a-f]{1,32}$")
_CHANNEL = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _int(request: web.Request, name: str, default: str, low: int, high: int) -> int:
    value = request.query.get(name, default)
    if not re.fullmatch(r"[0-9]{1,18}", value) or not low <= int(value) <= high:
        raise ApiError("invalid_field", f"{name} must be an integer from {low} to {high}", field=name)
    return int(value)


async def start(request: web.Request) -> web.Response:
    """202 with the run, which goes on in the background (a big day takes minutes)."""
    svc = request.app[SERVICE]
    request.app[AUTH].require(request, "admin")
    only_query(request)
    req: ReconciliationIn = validate(ReconciliationIn, await read_json(request, svc.config.server.max_body_bytes))
    run = await settlements.begin(req.channel, req.date, svc.settlements)
    assert run is not None  # a run by hand is always recorded
    svc.reconciler.start(run)
    return _json(settlements.run_view(run), 202)


async def list_runs(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    request.app[AUTH].require(request, "admin")
    only_query(request, "channel", "limit")
    channel = request.query.get("channel")
    if channel is not None and not _CHANNEL.match(channel):
        raise ApiError("invalid_field", "channel must be a channel's name", field="channel")
    runs = await svc.journal.recon_runs(channel, _int(request, "limit", "50", 1, 500))
    return _json({"reconciliations": [settlements.run_view(r) for r in runs]})


async def get_run(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    request.app[AUTH].require(request, "admin")
    only_query(request, "status", "after", "limit")
    run_id = request.match_info["id"]
    run = await svc.journal.recon_run(run_id) if _RUN.match(run_id) else None
    if run is None:
        raise ApiError("not_found", "no such reconciliation")
    status = request.query.get("status")
    if status is not None and status not in ("open", "resolving", "resolved"):
        raise ApiError("invalid_field", "status must be open, resolving or resolved", field="status")
    limit = _int(request, "limit", "100", 1, 1000)
    items = await svc.journal.discrepancies(run.channel, run.date, status, _int(request, "after", "0", 0, 10**18),
                                            limit)
    return _json(settlements.run_view(run, items, items[-1].seq if len(items) == limit else None))


def register(app: web.Application) -> None:
    app.router.add_post("/v1/admin/reconciliations", start)
    app.router.add_get("/v1/admin/reconciliations", list_runs)
    app.router.add_get("/v1/admin/reconciliations/{id}", get_run)
