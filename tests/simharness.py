"""The provider simulator in-process on a free loopback port, and its control API: the one
helper every suite uses to run the real simulator without a process of its own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from channels.simulator import SimConfig, build_app

FAST = {"latency_ms": 1, "latency_jitter_ms": 0, "latency_distribution": "fixed", "ping_latency_ms": 0,
        "hang_ms": 2000, "webhook_delay_ms": 30, "webhook_retry_ms": 20, "pending_rate": 0}


def secret_of(name: str) -> str:
    return f"whsec_test_{name}"


def channel_doc(name: str, kind: str = "direct_api", **extra: Any) -> dict[str, Any]:
    """A simulator channel that answers at once (``FAST``); ``behaviour=`` overrides parts
    of it, any other keyword is a key of the channel itself (``api_key``, ``currencies``)."""
    behaviour = {**FAST, **extra.pop("behaviour", {})}
    return {"name": name, "kind": kind, "webhook_secret": secret_of(name), "behaviour": behaviour, **extra}


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` served on a free loopback port: its runner (to clean up) and its URL."""
    # A short shutdown timeout: a handler still stalling must not hold a test for 60 s.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


class Sim:
    """The running simulator and its control API."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def behave(self, channel: str, **changes: Any) -> dict[str, Any]:
        """Change a channel's behaviour; answers the whole behaviour now in force."""
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

    async def refund(self, channel: str, reference: str, refund_reference: str | None = None,
                     amount_minor: int | None = None) -> tuple[int, Any]:
        """``POST /{channel}/payments/{reference}/refund``: with a body when a
        ``refund_reference`` is given, else none (the whole rest)."""
        body = None if refund_reference is None else {"refund_reference": refund_reference,
                                                      "amount_minor": amount_minor}
        return await self.raw("POST", f"/{channel}/payments/{reference}/refund", json=body)

    async def dispute(self, channel: str, reference: str, **body: Any) -> tuple[int, Any]:
        """``POST /_sim/{channel}/payments/{reference}/dispute`` with ``body`` (``outcome=``)."""
        return await self.raw("POST", f"/_sim/{channel}/payments/{reference}/dispute", json=body)

    async def raw(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        """One request to the simulator, answered as (status, JSON body or None)."""
        async with self.session.request(method, self.url + path, **kw) as resp:
            body = await resp.read()
            return resp.status, (await resp.json() if body else None)


@contextlib.asynccontextmanager
async def running_sim(config: SimConfig | Mapping[str, Any]) -> AsyncIterator[Sim]:
    """The simulator for ``config`` (a ``SimConfig``, or a document: ``{"seed": 1,
    "channels": [channel_doc("t1")]}``), stopped on the way out."""
    runner, url = await start(build_app(config))
    try:
        async with aiohttp.ClientSession() as session:
            yield Sim(url, session)
    finally:
        await runner.cleanup()
