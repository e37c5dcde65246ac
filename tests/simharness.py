"""The provider simulator in-process on a loopback port, for integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from channels.simulator import build_app


class Sim:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def behave(self, channel: str, **changes: Any) -> dict[str, Any]:
        async with self.session.put(f"{self.url}/_sim/{channel}/behaviour", json=changes) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return body

    async def ledger(self, channel: str | None = None) -> list[dict[str, Any]]:
        q = f"?channel={channel}" if channel else ""
        async with self.session.get(f"{self.url}/_sim/ledger{q}") as resp:
            return (await resp.json())["payments"]

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/_sim/stats") as resp:
            return await resp.json()


def fast_channel(name: str, kind: str = "direct_api", *, api_key: str | None = None, **behaviour: Any) -> dict[str, Any]:
    base = {"latency_ms": 1, "latency_jitter_ms": 0, "ping_latency_ms": 0, "hang_ms": 1500,
            "webhook_delay_ms": 50, "pending_rate": 0}
    doc = {"name": name, "kind": kind, "webhook_secret": f"whsec_secret_{name}", "behaviour": {**base, **behaviour}}
    if api_key:
        doc["api_key"] = api_key
    return doc


@contextlib.asynccontextmanager
async def running_sim(channels: list[dict[str, Any]], seed: int = 1) -> AsyncIterator[Sim]:
    runner = web.AppRunner(build_app({"seed": seed, "channels": channels}), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        try:
            yield Sim(f"http://127.0.0.1:{port}", session)
        finally:
            await runner.cleanup()
