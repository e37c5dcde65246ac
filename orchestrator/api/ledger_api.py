"""Coin pools and the ledger for admins (SPEC 20): parse, call, render."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from orchestrator import pools
from orchestrator.api.body import read_json
from orchestrator.api.errors import ApiError
from orchestrator.api.query import only as only_query
from orchestrator.api.schemas import DepositIn, validate
from orchestrator.api.state import AUTH, SERVICE
from orchestrator.clock import iso
from orchestrator.model import Transfer

__all__ = ["register", "transfer_json"]

_ACCOUNT = re.compile(r"^(issuance|pool:[a-z][a-z0-9_]{0,63}|wallet:[A-Za-z0-9_.:@-]{1,64})$")
_POOL = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def transfer_json(t: Transfer) -> dict[str, Any]:
    return {"id": t.id, "seq": t.seq, "debit": t.debit, "credit": t.credit, "coins": t.coins, "kind": t.kind,
            "recharge_id": t.recharge_id, "ref": t.ref, "note": t.note, "at": iso(t.at)}


async def list_pools(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    request.app[AUTH].require(request, "admin")
    only_query(request)
    return _json({"pools": await pools.pools_view(svc.pools),
                  "rebalance_interval_s": svc.config.pool_rebalance_interval_s})


async def deposit(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    request.app[AUTH].require(request, "admin")
    name = request.match_info["name"]
    if not _POOL.match(name):
        raise ApiError("not_found", "no such pool")
    req: DepositIn = validate(DepositIn, await read_json(request, svc.config.server.max_body_bytes))
    made, fresh = await pools.deposit(pools.Deposit(name, req.coins, req.reference), svc.pools)
    return _json(transfer_json(made), 201 if fresh else 200)


async def transfers(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    request.app[AUTH].require(request, "admin")
    only_query(request, "account", "after", "limit")
    account = request.query.get("account")
    if account is not None and not _ACCOUNT.match(account):
        raise ApiError("invalid_field", "account must be issuance, pool:<name> or wallet:<user_id>", field="account")
    after, limit = request.query.get("after", "0"), request.query.get("limit", "100")
    if not re.fullmatch(r"[0-9]{1,18}", after):
        raise ApiError("invalid_field", "after must be a transfer's seq (an integer >= 0)", field="after")
    if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= 1000:
        raise ApiError("invalid_field", "limit must be an integer from 1 to 1000", field="limit")
    rows = await svc.journal.transfers(account, int(after), int(limit))
    return _json({"transfers": [transfer_json(t) for t in rows],
                  "next_after": rows[-1].seq if rows else int(after)})


def register(app: web.Application) -> None:
    app.router.add_get("/v1/admin/pools", list_pools)
    app.router.add_post("/v1/admin/pools/{name}/deposits", deposit)
    app.router.add_get("/v1/admin/ledger/transfers", transfers)
