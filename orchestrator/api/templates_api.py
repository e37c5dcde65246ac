"""Recharge templates (SPEC 22): ``/v1/users/{user_id}/templates``. Each handler parses,
calls a use case of ``orchestrator.templates`` and renders; a recharge naming a template
is parsed here too (``from_template``) and made by ``POST /v1/recharges``."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from orchestrator import templates
from orchestrator.api.body import check_limit, idempotency_key, read_json
from orchestrator.api.errors import ApiError
from orchestrator.api.query import only as only_query
from orchestrator.api.schemas import TemplateIn, TemplateRechargeIn, validate
from orchestrator.api.state import AUTH, SERVICE
from orchestrator.clock import iso
from orchestrator.model import Template
from orchestrator.recharges import Instrument

__all__ = ["from_template", "register", "template_view"]

_USER_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
_TEMPLATE_ID = re.compile(r"^tpl_[0-9a-f]{1,64}$")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def template_view(t: Template) -> dict[str, Any]:
    """A template as the API answers it: the instrument as stored (a token, or masked)."""
    return {"id": t.id, "user_id": t.user_id, "name": t.name, "amount_minor": t.amount_minor, "currency": t.currency,
            "country": t.country, "method": t.method, "instrument": t.instrument, "created_at": iso(t.created_at)}


def _owner(request: web.Request) -> templates.Owner:
    client = request.app[AUTH].require(request, "recharge")
    user_id = request.match_info["user_id"]
    if not _USER_ID.match(user_id):
        raise ApiError("invalid_field", "user_id must be 1 to 64 of A-Z a-z 0-9 _ . : @ -", field="user_id")
    return templates.Owner(client.name, user_id)


def _template_id(request: web.Request) -> str:
    tid = request.match_info["id"]
    if not _TEMPLATE_ID.match(tid):
        raise ApiError("template_not_found", "no such template", field="template_id")
    return tid


async def create_template(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    owner = _owner(request)
    only_query(request)
    check_limit(svc.client_limits, owner.client, "client")
    req: TemplateIn = validate(TemplateIn, await read_json(request, svc.config.server.max_body_bytes))
    cmd = templates.NewTemplate(owner, req.name, req.amount_minor, req.currency, req.country, req.method,
                                Instrument(req.instrument.token, req.instrument.account_number, req.instrument.issuer))
    return _json(template_view(await templates.create(cmd, svc.templates)), 201)


async def list_templates(request: web.Request) -> web.Response:
    owner = _owner(request)
    only_query(request)
    found = await templates.list_of(owner, request.app[SERVICE].templates)
    return _json({"templates": [template_view(t) for t in found]})


async def get_template(request: web.Request) -> web.Response:
    owner = _owner(request)
    only_query(request)
    return _json(template_view(await templates.get(owner, _template_id(request), request.app[SERVICE].templates)))


async def delete_template(request: web.Request) -> web.Response:
    owner = _owner(request)
    only_query(request)
    await templates.delete(owner, _template_id(request), request.app[SERVICE].templates)
    return web.Response(status=204)


def from_template(request: web.Request, client: str, body: dict[str, Any]) -> templates.TemplateRecharge:
    """A ``POST /v1/recharges`` body naming ``template_id``, parsed."""
    req: TemplateRechargeIn = validate(TemplateRechargeIn, body)
    check_limit(request.app[SERVICE].user_limits, req.user_id, "user")
    given = req.instrument
    return templates.TemplateRecharge(
        client=client, idempotency_key=idempotency_key(request), user_id=req.user_id, template_id=req.template_id,
        document=body, amount_minor=req.amount_minor, currency=req.currency, country=req.country, method=req.method,
        instrument=None if given is None else Instrument(given.token, given.account_number, given.issuer),
        metadata=req.metadata, quote_id=req.quote_id, device_id=req.device_id, ip_country=req.ip_country)


def register(app: web.Application) -> None:
    app.router.add_post("/v1/users/{user_id}/templates", create_template)
    app.router.add_get("/v1/users/{user_id}/templates", list_templates)
    app.router.add_get("/v1/users/{user_id}/templates/{id}", get_template)
    app.router.add_delete("/v1/users/{user_id}/templates/{id}", delete_template)
