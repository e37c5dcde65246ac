"""Slow and hostile clients against the real orchestrator process, over raw loopback
sockets: a request head sent too slowly (or never) is cut off after
``server.header_timeout_s``; past ``server.max_connections`` a new connection is answered
503 and closed while the ones held are still served; oversized or malformed request
heads get the spec's JSON error shape (431 / 400), never aiohttp's plain text. (A body
that stalls mid-way: tests/integration/core/test_api.py.)"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from procs import checked_stack

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 4
CHANNELS = [{"name": "hostile_direct", "kind": "direct_api", "webhook_secret": "whsec_hostile_e2e",
             "behaviour": {"latency_ms": 1, "latency_jitter_ms": 0, "ping_latency_ms": 0}}]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    with checked_stack(tmp, CHANNELS, header_timeout_s=HEADER_TIMEOUT_S, max_connections=MAX_CONNECTIONS) as orch:
        yield orch


class Conn:
    """One raw client connection; reads whole HTTP/1.1 responses (Content-Length bodies)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Conn:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", 0))), timeout)
        return status, headers, body

    async def closed_by_server(self, timeout: float = 5) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


def assert_spec_error(status: int, headers: dict[str, str], body: bytes, want_status: int, code: str) -> None:
    assert status == want_status, body
    assert headers["content-type"].startswith("application/json"), headers
    doc = json.loads(body)
    assert set(doc) == {"error"} and doc["error"]["code"] == code, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["message"]


async def healthy(url: str) -> None:
    conn = await Conn.open(url)
    try:
        await conn.send(HEALTHZ)
        status, _, body = await conn.response()
        assert status == 200, body
    finally:
        conn.close()


async def test_a_head_sent_too_slowly_is_cut_off_and_others_are_served(server):
    conn = await Conn.open(server.url)
    head = b"POST /v1/recharges HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Slow: 1\r\n"

    async def drip() -> None:  # two bytes every 100 ms: the whole head would take 4 s
        for i in range(0, len(head), 2):
            try:
                await conn.send(head[i:i + 2])
            except ConnectionError:
                return
            await asyncio.sleep(0.1)

    started = time.monotonic()
    dripping = asyncio.create_task(drip())
    try:
        await healthy(server.url)  # a slow client holds only its own connection
        assert_spec_error(*await conn.response(), 400, "request_timeout")
        assert await conn.closed_by_server()
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 2.5
    finally:
        dripping.cancel()
        conn.close()


async def test_a_connection_that_never_sends_a_head_is_closed(server):
    conn = await Conn.open(server.url)
    started = time.monotonic()
    try:
        assert await conn.closed_by_server(timeout=HEADER_TIMEOUT_S + 3)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 2.5
    finally:
        conn.close()


async def test_oversized_and_malformed_heads_get_the_spec_error_shape(server):
    cases = [
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(200)) + b"\r\n",
         431, "headers_too_large"),
        (b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 431, "headers_too_large"),
        (b"GET /healthz HTTP/1.1\r\nHo\x01st: t\r\n\r\n", 400, "bad_request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n\r\n", 400, "bad_request"),
    ]
    for raw, status, code in cases:
        conn = await Conn.open(server.url)
        try:
            await conn.send(raw)
            assert_spec_error(*await conn.response(), status, code)
        finally:
            conn.close()
    await healthy(server.url)


async def test_past_max_connections_a_new_one_gets_503_and_the_held_ones_are_still_served(server):
    await asyncio.sleep(0.2)  # earlier tests' connections are gone
    held = [await Conn.open(server.url) for _ in range(MAX_CONNECTIONS)]
    try:
        for conn in held:  # each served once, then kept alive (idle, no head timer)
            await conn.send(HEALTHZ)
            assert (await conn.response())[0] == 200
        extra = await Conn.open(server.url)
        try:
            await extra.send(HEALTHZ)
            status, headers, body = await extra.response()
            assert_spec_error(status, headers, body, 503, "unavailable")
            assert headers["retry-after"] == "1"
            assert await extra.closed_by_server()
        finally:
            extra.close()
        await held[0].send(HEALTHZ)  # the held connections are still served
        assert (await held[0].response())[0] == 200
        held.pop().close()
        await asyncio.sleep(0.2)
        await healthy(server.url)  # a slot freed: a new connection is served again
    finally:
        for conn in held:
            conn.close()
