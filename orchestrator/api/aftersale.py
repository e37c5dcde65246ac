"""After the sale (SPEC 19): refunds, and the outbox of notifications for admins. Each
handler parses, calls a use case (``orchestrator.refunds``) or the journal, renders."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from orchestrator import refunds
from orchestrator.api.body import idempotency_key, read_json
from orchestrator.api.errors import ApiError
from orchestrator.api.query import RECHARGE_ID, only as only_query
from orchestrator.api.schemas import RefundIn, validate
from orchestrator.api.state import AUTH, SERVICE
from orchestrator.clock import iso
from orchestrator.journal import NoticeRow
from orchestrator.model import RefundStatus
from orchestrator.recharges import Viewer
from orchestrator.views import refund_view

__all__ = ["register"]

_REFUND_ID = re.compile(r"^rf_[0-9a-f]{1,64}$")
_NOTICE_ID = re.compile(r"^evt_[0-9a-f]{1,64}$")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _viewer(request: web.Request) -> Viewer:
    client = request.app[AUTH].require_any(request)
    return Viewer(client.name, "admin" in client.scopes)


async def create_refund(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    viewer, key = _viewer(request), idempotency_key(request)
    rid = request.match_info["id"]
    if not RECHARGE_ID.match(rid):
        raise ApiError("not_found", "no such recharge")
    body = {} if not request.can_read_body else await read_json(request, svc.config.server.max_body_bytes)
    req: RefundIn = validate(RefundIn, body)
    cmd = refunds.NewRefund(viewer, key, rid, req.amount_minor, req.reason, body)
    refund, replayed = await refunds.request(cmd, svc.refunds)
    return _json(refund_view(refund), 202 if refund.status is RefundStatus.PENDING else 201,
                 {"Idempotent-Replayed": "true"} if replayed else None)


async def get_refund(request: web.Request) -> web.Response:
    viewer = _viewer(request)
    rid = request.match_info["id"]
    if not _REFUND_ID.match(rid):
        raise ApiError("not_found", "no such refund")
    return _json(refund_view(await refunds.get(rid, viewer, request.app[SERVICE].refunds)))


def _notice_json(row: NoticeRow) -> dict[str, Any]:
    n = row.notice
    return {"id": n.id, "client": n.client, "recharge_id": n.key, "type": n.type, "created_at": iso(n.created_at),
            "state": row.state, "attempts": row.attempts, "next_at": iso(row.next_at) if row.state == "pending" else None,
            "last_error": row.last_error, "delivered_at": None if row.delivered_at is None else iso(row.delivered_at),
            "event": orjson.loads(n.body)}


async def list_notifications(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    request.app[AUTH].require(request, "admin")
    only_query(request, "state", "limit", "after")
    state = request.query.get("state", "dead")
    if state not in ("dead", "pending", "delivered"):
        raise ApiError("invalid_field", "state must be dead, pending or delivered", field="state")
    limit_raw = request.query.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,4}", limit_raw) or not 1 <= int(limit_raw) <= 1000:
        raise ApiError("invalid_field", "limit must be an integer from 1 to 1000", field="limit")
    after = request.query.get("after")
    if after is not None and not _NOTICE_ID.match(after):
        raise ApiError("invalid_field", "after must be a notification id", field="after")
    rows = await svc.journal.notices(state, int(limit_raw), after)
    return _json({"state": state, "notifications": [_notice_json(r) for r in rows]})


async def redeliver(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    request.app[AUTH].require(request, "admin")
    nid = request.match_info["id"]
    row = await svc.journal.redeliver(nid, svc.clock.now()) if _NOTICE_ID.match(nid) else None
    if row is None:
        raise ApiError("not_found", "no such notification")
    svc.dispatcher.nudge()
    return _json(_notice_json(row), 202)


def register(app: web.Application) -> None:
    app.router.add_post("/v1/recharges/{id}/refunds", create_refund)
    app.router.add_get("/v1/refunds/{id}", get_refund)
    app.router.add_get("/v1/admin/notifications", list_notifications)
    app.router.add_post("/v1/admin/notifications/{id}/redeliver", redeliver)
