"""A worker's admin API when the supervisor cannot carry out a change: the spec's 503
with Retry-After (never a 500, never a minute's wait), and a refused rollback still
409. The supervisor here is a script on the other end of the control link."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from test_api import SRE_KEY, assert_error, make_config

from channels.memory import MemoryChannel
from orchestrator.api.app import build_app
from orchestrator.cluster import WorkerLink
from orchestrator.service import Service

ADMIN = {"Authorization": f"Bearer {SRE_KEY}"}
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


@contextlib.asynccontextmanager
async def worker(tmp_path, supervisor: Script) -> AsyncIterator[TestClient]:
    """Worker 0 of 2, its link's far end played by ``supervisor(reader, writer, request)``
    for the first request after the hello."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, writer = await asyncio.open_unix_connection(sock=theirs)

    async def play() -> None:
        hello = orjson.loads(await reader.readline())
        writer.write(orjson.dumps({"id": hello["id"], "op": "init", "history": [], "drained": []}) + b"\n")
        line = await reader.readline()
        if line:
            await supervisor(reader, writer, orjson.loads(line))

    played = asyncio.create_task(play())
    link = WorkerLink(0, 2, mine)
    await link.connect()
    service = Service(make_config(tmp_path), channel_factory=lambda cfg: MemoryChannel(cfg.name),
                      router=lambda svc, rec: [c.name for c in svc.config.channels], reconcile=False, cluster=link)
    client = TestClient(TestServer(build_app(service), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await link.close()
        writer.close()
        played.cancel()
        await asyncio.gather(played, return_exceptions=True)


async def _gone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
    writer.close()  # the supervisor dies with the request unanswered


async def test_a_supervisor_gone_mid_change_is_503_and_so_is_every_change_after(tmp_path):
    async with worker(tmp_path, _gone) as client:
        current = await (await client.get("/v1/admin/config", headers=ADMIN)).json()
        assert current["config"]["routing"]["max_attempts"] == 3
        doc = make_config(tmp_path).config.model_dump(mode="json")
        doc["routing"]["max_attempts"] = 2
        resp = await client.put("/v1/admin/config", data=orjson.dumps(doc),
                                headers={**ADMIN, "Content-Type": "application/json"})
        assert_error(resp, await resp.json(), 503, "unavailable")
        assert resp.headers["Retry-After"]
        # The link is closed now: later asks fail at once, not after the request timeout.
        for method, path in (("POST", "/v1/admin/config/rollback"), ("POST", "/v1/admin/channels/a/drain"),
                             ("GET", "/metrics")):
            async with asyncio.timeout(5):
                resp = await client.request(method, path, headers=ADMIN)
            assert_error(resp, await resp.json(), 503, "unavailable")


async def _refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
    writer.write(orjson.dumps({"id": request["id"], "op": "result",
                               "error": "no previous config to roll back to"}) + b"\n")
    await reader.readline()  # stays up


async def test_a_rollback_the_supervisor_refuses_is_409(tmp_path):
    async with worker(tmp_path, _refuse) as client:
        resp = await client.post("/v1/admin/config/rollback", headers=ADMIN)
        assert_error(resp, await resp.json(), 409, "nothing_to_roll_back")
