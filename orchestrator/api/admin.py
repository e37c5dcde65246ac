"""SRE controls (SPEC section 10): the config, its history and rollback, channel drains.
Every handler here needs the ``admin`` scope."""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from aiohttp import web

from config import ClientConfig, Config, ConfigError, LoadedConfig, load_text, parse, redacted, warnings
from config import diff as config_diff
from orchestrator.api.body import read_body
from orchestrator.api.errors import ApiError
from orchestrator.api.state import AUTH, SERVICE
from orchestrator.api.query import RECHARGE_ID
from orchestrator.api.query import only as only_query
from orchestrator import recharges
from orchestrator.clock import iso
from orchestrator.service import Service

__all__ = ["register"]


def _svc(request: web.Request) -> Service:
    request.app[AUTH].require(request, "admin")
    return request.app[SERVICE]


def _keeps_caller(caller: ClientConfig, new: Config) -> None:
    """Refuse a config that would take the admin scope from the key applying it: an SRE
    could otherwise lock every operator out with one PUT (``{}`` is a valid config, with
    no clients at all). Rotate an admin key in two steps: add the new one, then drop the
    old one with the new key."""
    if not any(c.key_sha256 == caller.key_sha256 and "admin" in c.scopes for c in new.clients):
        raise ApiError("validation_failed", "this config would lock out the API key applying it: keep a client "
                       "with this key's key_sha256 and the admin scope", field="clients")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _config_errors(exc: ConfigError) -> ApiError:
    details = [{"code": "invalid_field", "field": path, "message": msg} for path, msg in exc.errors]
    first = exc.errors[0]
    return ApiError("validation_failed", f"the config is invalid: {len(exc.errors)} error(s); first: "
                    f"{first[0]}: {first[1]}" if first[0] else f"the config is invalid: {first[1]}",
                    field=first[0] or None, details=details)


async def get_config(request: web.Request) -> web.Response:
    svc = _svc(request)
    current = svc.history[-1] if svc.history else None
    return _json({
        "version": svc.loaded.version,
        "applied_at": iso(current.applied_at) if current else None,
        "source": current.source if current else None,
        "config": redacted(svc.config),
        "warnings": warnings(svc.config),
    })


async def config_history(request: web.Request) -> web.Response:
    svc = _svc(request)
    return _json({"current": svc.loaded.version, "history": [
        {"version": a.loaded.version, "applied_at": iso(a.applied_at), "source": a.source}
        for a in reversed(svc.history)
    ]})


def _parse_config(raw: bytes, ctype: str) -> LoadedConfig:
    """A PUT body as a validated config (JSON or YAML); the config's errors, every one."""
    try:
        if ctype == "application/json":
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ApiError("malformed_json", f"the body is not valid JSON: {exc.msg}") from None
            return parse(doc, "api")
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            return load_text(raw, "api")
        raise ApiError("unsupported_media_type", "send the config as application/yaml or application/json")
    except ConfigError as exc:
        raise _config_errors(exc) from None
    except yaml.YAMLError as exc:  # load_text maps these; belt and braces for odd input
        raise ApiError("validation_failed", f"not valid YAML: {exc}") from None


async def put_config(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    caller = request.app[AUTH].require(request, "admin")
    only_query(request, "dry_run")
    raw = await read_body(request)
    if len(raw) > svc.config.server.max_body_bytes * 16:
        raise ApiError("payload_too_large", "config too large")
    loaded = _parse_config(raw, request.content_type)
    _keeps_caller(caller, loaded.config)
    if request.query.get("dry_run") in ("1", "true", "yes"):
        return _json({"dry_run": True, "version": loaded.version, "current": svc.loaded.version,
                      "diff": config_diff(svc.config, loaded.config), "warnings": warnings(loaded.config)})
    if loaded.version == svc.loaded.version:
        return _json({"applied": False, "version": loaded.version, "diff": [], "reason": "unchanged"})
    lines, workers = await svc.apply_config(loaded, "api")
    return _json({"applied": True, "version": loaded.version, "diff": lines, "warnings": warnings(loaded.config),
                  **_workers(workers)})


def _workers(results: list[dict[str, Any]]) -> dict[str, Any]:
    """With several workers, what each one answered (its version, or its error)."""
    if not results:
        return {}
    return {"workers": [{k: v for k, v in r.items() if k in ("worker", "version", "drained", "error")}
                        for r in results]}


async def rollback(request: web.Request) -> web.Response:
    svc = _svc(request)
    lines, workers = await svc.rollback_config()
    return _json({"applied": True, "version": svc.loaded.version, "diff": lines, **_workers(workers)})


async def _channel_switch(request: web.Request, drain: bool) -> web.Response:
    svc = _svc(request)
    name = request.match_info["name"]
    if svc.config.channel(name) is None:
        raise ApiError("not_found", f"no channel {name!r} in the running config")
    workers = await svc.set_drained(name, drain)
    return _json({"channel": name, "drained": drain, **_workers(workers)})


async def drain(request: web.Request) -> web.Response:
    return await _channel_switch(request, True)


async def enable(request: web.Request) -> web.Response:
    return await _channel_switch(request, False)


async def explain_risk(request: web.Request) -> web.Response:
    svc = _svc(request)
    only_query(request, "recharge_id")
    rid = request.query.get("recharge_id")
    if not rid:
        raise ApiError("validation_failed", "give recharge_id, the recharge to explain", field="recharge_id")
    if not RECHARGE_ID.match(rid):
        raise ApiError("not_found", "no such recharge")
    return _json(await recharges.explain_risk(rid, svc.recharges))


def register(app: web.Application) -> None:
    app.router.add_get("/v1/admin/risk/explain", explain_risk)
    app.router.add_get("/v1/admin/config", get_config)
    app.router.add_put("/v1/admin/config", put_config)
    app.router.add_get("/v1/admin/config/history", config_history)
    app.router.add_post("/v1/admin/config/rollback", rollback)
    app.router.add_post("/v1/admin/channels/{name}/drain", drain)
    app.router.add_post("/v1/admin/channels/{name}/enable", enable)
