"""The provider simulator (SPEC section 16): any number of channels on one port, each at
``/{channel}/...`` speaking protocol v1 with its own live-changeable behaviour, idempotent
by reference like a real provider, sending signed webhooks, and keeping a ledger of what
it really charged for tests to compare against.

Control API: ``PUT|GET /_sim/{channel}/behaviour``, ``GET /_sim/ledger[?channel=]``,
``GET /_sim/stats``.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
import yaml
from aiohttp import web

from channels.simulator._behaviour import KIND_DEFAULTS, Behaviour, BehaviourError
from channels.webhooks import sign

__all__ = ["Payment", "SimChannel", "SimConfigError", "Simulator", "build_app", "load_config"]

log = structlog.get_logger("simulator")


class SimConfigError(ValueError):
    pass


@dataclass
class Payment:
    channel: str
    reference: str
    provider_ref: str
    amount_minor: int
    currency: str
    status: str
    created_at: float
    callback_url: str | None
    decline_code: str | None = None
    history: list[tuple[float, str]] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        return {"reference": self.reference, "provider_ref": self.provider_ref, "status": self.status,
                "decline_code": self.decline_code, "amount_minor": self.amount_minor, "currency": self.currency}

    def ledger(self) -> dict[str, Any]:
        return {**self.wire(), "channel": self.channel, "created_at": self.created_at,
                "history": [{"at": t, "status": s} for t, s in self.history]}


@dataclass
class SimChannel:
    name: str
    kind: str
    webhook_secret: str
    behaviour: Behaviour
    rng: random.Random
    api_key: str | None = None
    payments: dict[str, Payment] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    finalizers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)

    def set(self, p: Payment, status: str, decline_code: str | None = None) -> None:
        p.status = status
        if decline_code is not None:
            p.decline_code = decline_code
        p.history.append((time.time(), status))
        self.stats[f"status_{status}"] += 1


def load_config(path: str | Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimConfigError(f"cannot read simulator config {path}: {exc}") from None
    return doc


def _channels_from(doc: Any) -> dict[str, SimChannel]:
    if not isinstance(doc, dict) or not isinstance(doc.get("channels"), list) or not doc["channels"]:
        raise SimConfigError("channels: a non-empty list is required")
    seed = doc.get("seed", 0)
    out: dict[str, SimChannel] = {}
    for i, ch in enumerate(doc["channels"]):
        if not isinstance(ch, dict):
            raise SimConfigError(f"channels[{i}]: must be a mapping")
        name, kind = ch.get("name"), ch.get("kind")
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise SimConfigError(f"channels[{i}].name: a name of letters, digits and _ is required")
        if name in out:
            raise SimConfigError(f"channels[{i}].name: duplicate {name!r}")
        if kind not in KIND_DEFAULTS:
            raise SimConfigError(f"channels[{i}].kind: must be one of {sorted(KIND_DEFAULTS)}")
        secret = ch.get("webhook_secret")
        if not isinstance(secret, str) or len(secret) < 8:
            raise SimConfigError(f"channels[{i}].webhook_secret: at least 8 characters")
        try:
            behaviour = KIND_DEFAULTS[kind].updated(ch.get("behaviour") or {})
        except BehaviourError as exc:
            raise SimConfigError(f"channels[{i}].behaviour.{exc.field}: {exc.message}") from None
        out[name] = SimChannel(name, kind, secret, behaviour, random.Random(f"{seed}:{name}"), ch.get("api_key"))
    return out


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str, field_name: str | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if field_name:
        err["field"] = field_name
    return _json({"error": err}, status)


class Simulator:
    """The simulator's state and handlers; ``build_app`` wires it to aiohttp."""

    def __init__(self, channels: dict[str, SimChannel]) -> None:
        self.channels = channels
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life -------------------------------------------------------------------------

    async def start(self, _app: web.Application) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def stop(self, _app: web.Application) -> None:
        for ch in self.channels.values():
            for handle in ch.finalizers.values():
                handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- protocol v1 --------------------------------------------------------------------

    def _channel(self, request: web.Request) -> SimChannel | web.Response:
        ch = self.channels.get(request.match_info["channel"])
        if ch is None:
            return _error(404, "not_found", "no such channel")
        if ch.api_key and request.headers.get("Authorization") != f"Bearer {ch.api_key}":
            return _error(401, "unauthorized", "bad api key")
        ch.stats["requests"] += 1
        return ch

    async def _outage(self, request: web.Request, ch: SimChannel) -> web.StreamResponse | None:
        """Answer as a channel in outage does, or None when it is up."""
        b = ch.behaviour
        if not b.outage:
            return None
        ch.stats["outage_answers"] += 1
        if b.outage_mode == "refuse":
            return _error(503, "unavailable", "channel in outage")
        if b.outage_mode == "hang":
            await asyncio.sleep(b.hang_ms / 1000)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)  # never reaches a client whose connection is gone

    async def _lost(self, request: web.Request, ch: SimChannel, hang: bool) -> web.StreamResponse:
        """The answer never arrives: a stall past the client's timeout, or a reset."""
        if hang:
            await asyncio.sleep(ch.behaviour.hang_ms / 1000)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)

    async def payments(self, request: web.Request) -> web.StreamResponse:
        ch = self._channel(request)
        if isinstance(ch, web.Response):
            return ch
        if (down := await self._outage(request, ch)) is not None:
            return down
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "malformed_json", "body is not JSON")
        problem = _payment_problem(body)
        if problem:
            return _error(422, "invalid_field", problem[1], problem[0])
        ref = body["reference"]
        if request.headers.get("Idempotency-Key", ref) != ref:
            return _error(422, "invalid_field", "Idempotency-Key must equal reference", "Idempotency-Key")
        b = ch.behaviour
        await asyncio.sleep(b.latency_s(ch.rng))
        existing = ch.payments.get(ref)
        if existing is not None:  # idempotent by reference: never charge twice
            ch.stats["replays"] += 1
            return _json(existing.wire())
        return await self._new_payment(request, ch, body)

    async def _new_payment(self, request: web.Request, ch: SimChannel, body: dict[str, Any]) -> web.StreamResponse:
        b = ch.behaviour
        u = ch.rng.random()
        edges = []
        acc = 0.0
        for name in ("not_processed", "timeout_before_capture", "timeout_after_capture", "reset",
                     "error_500_after_capture", "decline", "pending"):
            acc += getattr(b, f"{name}_rate")
            edges.append((acc, name))
        fate = next((name for edge, name in edges if u < edge), "capture")
        ch.stats[f"fate_{fate}"] += 1
        if fate == "not_processed":
            return _error(ch.rng.choice((429, 503)), "unavailable", "try elsewhere: not processed")
        if fate == "timeout_before_capture":
            return await self._lost(request, ch, hang=True)
        p = Payment(ch.name, body["reference"], "pr_" + secrets.token_hex(8), body["amount_minor"], body["currency"],
                    "new", time.time(), body.get("callback_url"))
        ch.payments[p.reference] = p
        if fate == "decline":
            ch.set(p, "declined", b.decline_code(ch.rng))
        elif fate == "pending":
            ch.set(p, "pending")
            self._schedule_final(ch, p)
        else:
            ch.set(p, "captured")
        if fate == "timeout_after_capture":
            return await self._lost(request, ch, hang=True)
        if fate == "reset":
            return await self._lost(request, ch, hang=False)
        if fate == "error_500_after_capture":
            return _error(500, "internal", "provider error after capture")
        return _json(p.wire())

    def _schedule_final(self, ch: SimChannel, p: Payment) -> None:
        b = ch.behaviour
        delay = max(0.0, ch.rng.gauss(b.webhook_delay_ms, b.webhook_delay_ms / 10)) / 1000
        final = "declined" if ch.rng.random() < b.pending_decline_rate else "captured"
        code = b.decline_code(ch.rng) if final == "declined" else None

        def settle() -> None:
            ch.finalizers.pop(p.reference, None)
            if p.status != "pending":
                return
            ch.set(p, final, code)
            self._spawn(self._notify(ch, p))

        ch.finalizers[p.reference] = asyncio.get_running_loop().call_later(delay, settle)

    async def _notify(self, ch: SimChannel, p: Payment) -> None:
        """Send the payment's final state as a signed webhook, with the channel's
        duplicate / out-of-order / drop behaviour, retrying on failure."""
        b = ch.behaviour
        if not p.callback_url or ch.rng.random() < b.webhook_drop_rate:
            ch.stats["webhooks_dropped"] += 1
            return
        event = {"event_id": "evt_" + secrets.token_hex(8), "reference": p.reference,
                 "provider_ref": p.provider_ref, "status": p.status, "decline_code": p.decline_code}
        await self._deliver(ch, p.callback_url, event)
        if ch.rng.random() < b.duplicate_webhook_rate:
            ch.stats["webhooks_duplicated"] += 1
            await self._deliver(ch, p.callback_url, event)
        if ch.rng.random() < b.out_of_order_webhook_rate:
            ch.stats["webhooks_out_of_order"] += 1
            stale = {**event, "event_id": "evt_" + secrets.token_hex(8), "status": "pending", "decline_code": None}
            await self._deliver(ch, p.callback_url, stale)

    async def _deliver(self, ch: SimChannel, url: str, event: dict[str, Any]) -> None:
        raw = orjson.dumps(event)
        delay = 0.2
        for _ in range(6):
            headers = {"Content-Type": "application/json",
                       "X-Provider-Signature": sign(ch.webhook_secret, raw, int(time.time()))}
            try:
                assert self._session is not None
                async with self._session.post(url, data=raw, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        ch.stats["webhooks_delivered"] += 1
                        return
                    ch.stats[f"webhook_answer_{resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError):
                ch.stats["webhook_errors"] += 1
            await asyncio.sleep(delay)
            delay *= 2

    async def get_payment(self, request: web.Request) -> web.StreamResponse:
        ch = self._channel(request)
        if isinstance(ch, web.Response):
            return ch
        if (down := await self._outage(request, ch)) is not None:
            return down
        p = ch.payments.get(request.match_info["reference"])
        if p is None:
            return _error(404, "not_found", "no such payment")
        return _json(p.wire())

    async def void(self, request: web.Request) -> web.StreamResponse:
        ch = self._channel(request)
        if isinstance(ch, web.Response):
            return ch
        if (down := await self._outage(request, ch)) is not None:
            return down
        p = ch.payments.get(request.match_info["reference"])
        if p is None:
            return _error(404, "not_found", "no such payment")
        if p.status == "pending":
            handle = ch.finalizers.pop(p.reference, None)
            if handle is not None:
                handle.cancel()
            ch.set(p, "voided")
        if p.status == "voided":
            return _json(p.wire())
        return _json(p.wire(), 409)

    async def refund(self, request: web.Request) -> web.StreamResponse:
        ch = self._channel(request)
        if isinstance(ch, web.Response):
            return ch
        if (down := await self._outage(request, ch)) is not None:
            return down
        p = ch.payments.get(request.match_info["reference"])
        if p is None:
            return _error(404, "not_found", "no such payment")
        if p.status == "captured":
            ch.set(p, "refunded")
        if p.status == "refunded":
            return _json(p.wire())
        return _json(p.wire(), 409)

    async def ping(self, request: web.Request) -> web.StreamResponse:
        ch = self._channel(request)
        if isinstance(ch, web.Response):
            return ch
        if (down := await self._outage(request, ch)) is not None:
            return down
        b = ch.behaviour
        await asyncio.sleep(b.ping_latency_ms * b.latency_multiplier / 1000)
        return _json({"status": "ok"})

    # -- control API --------------------------------------------------------------------

    async def get_behaviour(self, request: web.Request) -> web.Response:
        ch = self.channels.get(request.match_info["channel"])
        if ch is None:
            return _error(404, "not_found", "no such channel")
        return _json({"channel": ch.name, "kind": ch.kind, "behaviour": ch.behaviour.to_json()})

    async def put_behaviour(self, request: web.Request) -> web.Response:
        ch = self.channels.get(request.match_info["channel"])
        if ch is None:
            return _error(404, "not_found", "no such channel")
        try:
            changes = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "malformed_json", "body is not JSON")
        try:
            ch.behaviour = ch.behaviour.updated(changes)
        except BehaviourError as exc:
            return _error(422, "invalid_field", exc.message, exc.field)
        log.info("behaviour_changed", channel=ch.name, changes=changes)
        return _json({"channel": ch.name, "kind": ch.kind, "behaviour": ch.behaviour.to_json()})

    async def ledger(self, request: web.Request) -> web.Response:
        only = request.query.get("channel")
        if only is not None and only not in self.channels:
            return _error(404, "not_found", "no such channel")
        payments = [p.ledger() for ch in self.channels.values() if only in (None, ch.name) for p in ch.payments.values()]
        return _json({"payments": payments, "count": len(payments)})

    async def stats(self, request: web.Request) -> web.Response:
        return _json({name: {"kind": ch.kind, "payments": len(ch.payments), **ch.stats}
                      for name, ch in self.channels.items()})


SIMULATOR = web.AppKey("simulator", Simulator)

_LIMITS = {"reference": 255, "currency": 3, "method": 64}


def _payment_problem(body: Any) -> tuple[str, str] | None:
    if not isinstance(body, dict):
        return "body", "must be a JSON object"
    for key in ("reference", "currency", "method"):
        value = body.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= _LIMITS[key]:
            return key, f"{key} is required (a string of at most {_LIMITS[key]} characters)"
    amount = body.get("amount_minor")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return "amount_minor", "amount_minor must be a positive integer"
    cb = body.get("callback_url")
    if cb is not None and (not isinstance(cb, str) or not cb.startswith(("http://", "https://"))):
        return "callback_url", "callback_url must be an http(s) URL"
    return None


def build_app(doc: dict[str, Any]) -> web.Application:
    """The simulator app for a parsed config document (see config/simulator.example.yaml)."""
    sim = Simulator(_channels_from(doc))
    app = web.Application(client_max_size=64 * 1024)
    app[SIMULATOR] = sim
    app.on_startup.append(sim.start)
    app.on_cleanup.append(sim.stop)
    r = app.router
    r.add_post("/{channel}/payments", sim.payments)
    r.add_get("/{channel}/payments/{reference}", sim.get_payment)
    r.add_post("/{channel}/payments/{reference}/void", sim.void)
    r.add_post("/{channel}/payments/{reference}/refund", sim.refund)
    r.add_get("/{channel}/ping", sim.ping)
    r.add_get("/_sim/ledger", sim.ledger)
    r.add_get("/_sim/stats", sim.stats)
    r.add_get("/_sim/{channel}/behaviour", sim.get_behaviour)
    r.add_put("/_sim/{channel}/behaviour", sim.put_behaviour)
    return app

