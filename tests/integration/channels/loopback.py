"""Loopback helpers for the channel tests: the real simulator and a webhook receiver on
free ports, and the control-API calls the tests make."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from channels import PaymentRequest

FAST = {"latency_ms": 1, "latency_jitter_ms": 0, "latency_distribution": "fixed", "ping_latency_ms": 0,
        "hang_ms": 2000, "webhook_delay_ms": 30, "webhook_retry_ms": 20, "pending_rate": 0}


def secret_of(name: str) -> str:
    return f"whsec_test_{name}"


def channel_doc(name: str, kind: str = "direct_api", **extra: Any) -> dict[str, Any]:
    behaviour = {**FAST, **extra.pop("behaviour", {})}
    return {"name": name, "kind": kind, "webhook_secret": secret_of(name), "behaviour": behaviour, **extra}


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    # A short shutdown timeout: a handler still stalling must not hold a test for 60 s.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def req(reference: str, *, amount: int = 8500, currency: str = "CNY", callback_url: str | None = None
        ) -> PaymentRequest:
    return PaymentRequest(reference, amount, currency, "ewallet", {"token": "tok_1"}, callback_url)


class Sim:
    """The running simulator and its control API."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def behave(self, channel: str, **changes: Any) -> dict[str, Any]:
        async with self.session.put(f"{self.url}/_sim/{channel}/behaviour", json=changes) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return body["behaviour"]

    async def ledger(self, channel: str | None = None) -> list[dict[str, Any]]:
        params = {"channel": channel} if channel else {}
        async with self.session.get(f"{self.url}/_sim/ledger", params=params) as resp:
            assert resp.status == 200
            return (await resp.json())["payments"]

    async def payment(self, reference: str) -> dict[str, Any] | None:
        return next((p for p in await self.ledger() if p["reference"] == reference), None)

    async def stats(self, channel: str) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_sim/stats") as resp:
            return (await resp.json())[channel]

    async def raw(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        """One request to the simulator, answered as (status, JSON body or None)."""
        async with self.session.request(method, self.url + path, **kw) as resp:
            body = await resp.read()
            return resp.status, (await resp.json() if body else None)


@dataclass
class Delivery:
    signature: str | None
    body: bytes


@dataclass
class Receiver:
    """Stands in for the orchestrator's webhook endpoint: records every delivery and
    answers with the next scripted status (200 once the script runs out)."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.arrived:
            self.deliveries.append(Delivery(request.headers.get("X-Provider-Signature"), body))
            self.arrived.notify_all()
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    async def wait_for(self, count: int, timeout: float = 3.0) -> list[Delivery]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.deliveries) >= count), timeout)
        return list(self.deliveries)
