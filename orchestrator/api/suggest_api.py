"""Amount suggestions (SPEC 22): ``GET /v1/users/{user_id}/suggestions?currency=XXX``.
Parse, call ``SuggestionService.suggest``, render."""

from __future__ import annotations

import math
import re

import orjson
from aiohttp import web

from orchestrator.api.body import check_limit
from orchestrator.api.errors import ApiError
from orchestrator.api.query import only as only_query
from orchestrator.api.state import AUTH, SERVICE

__all__ = ["register", "suggestions"]

_USER_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
_PATTERNS = {"currency": (re.compile(r"^[A-Z]{3}$"), "an ISO 4217 code (3 capital letters)"),
             "country": (re.compile(r"^[A-Z]{2}$"), "an ISO 3166 code (2 capital letters)")}


def _param(request: web.Request, name: str, *, required: bool) -> str | None:
    values = request.query.getall(name, [])
    if not values:
        if required:
            raise ApiError("missing_field", f"query parameter {name} is required", field=name)
        return None
    pattern, what = _PATTERNS[name]
    if len(values) > 1 or not pattern.match(values[0]):
        raise ApiError("invalid_field", f"{name} must be one {what}", field=name)
    return values[0]


async def suggestions(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    client = request.app[AUTH].require(request, "recharge")
    only_query(request, "currency", "country")
    check_limit(svc.client_limits, client.name, "client")
    user_id = request.match_info["user_id"]
    if not _USER_ID.match(user_id):
        raise ApiError("invalid_field", "user_id must be 1 to 64 of A-Z a-z 0-9 _ . : @ -", field="user_id")
    currency = _param(request, "currency", required=True)
    assert currency is not None
    got = await svc.suggestions.suggest(user_id, currency, _param(request, "country", required=False))
    body = {"amounts": [{"amount_minor": s.amount_minor, "score": math.floor(s.score * 10_000) / 10_000}
                        for s in got.amounts],
            "basis": got.basis}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def register(app: web.Application) -> None:
    app.router.add_get("/v1/users/{user_id}/suggestions", suggestions)
