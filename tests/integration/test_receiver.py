"""The demo's front-service receiver (``orchestrator.receiver``), over loopback HTTP: it
records a correctly signed notification and nothing else, answers 503 or late when told,
and a receiver restarted on its file still reports everything it ever got."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from simharness import start

from channels.notify import NotifySender
from channels.webhooks import NOTIFY_SIGNATURE_HEADER, sign
from orchestrator.receiver import build_receiver_app

ROOT = Path(__file__).resolve().parents[2]
SECRET = "nsec_demo_front"


def notice(n: int = 1, **over: Any) -> bytes:
    doc = {"id": f"evt_{n}", "type": "recharge.succeeded", "created_at": "2027-01-15T08:00:00Z",
           "data": {"id": f"rc_{n}", "status": "succeeded", "amount_minor": 8500}, **over}
    return orjson.dumps(doc)


class Client:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def post(self, body: bytes, t: float | None = None, *, secret: str = SECRET, signed: bytes | None = None,
                   path: str = "/hooks/orchestrator", header: str | None = None) -> tuple[int, Any]:
        """``body`` POSTed, signed at ``t`` (now by default) over ``signed`` (the body by
        default), or with ``header`` as given."""
        value = header if header is not None else sign(secret, body if signed is None else signed,
                                                       int(time.time() if t is None else t))
        headers = {"Content-Type": "application/json", **({NOTIFY_SIGNATURE_HEADER: value} if value else {})}
        async with self.session.post(self.url + path, data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def received(self) -> dict[str, Any]:
        async with self.session.get(self.url + "/_received") as resp:
            assert resp.status == 200
            return await resp.json()

    async def mode(self, **mode: Any) -> tuple[int, Any]:
        async with self.session.put(self.url + "/_receiver/mode", json=mode) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[[], Awaitable[Client]]]:
    """``await receiver()``: a receiver on a free port, stopped after the test."""
    runners = []

    async def make() -> Client:
        runner, url = await start(build_receiver_app(SECRET))
        runners.append(runner)
        return Client(url, session)

    async with aiohttp.ClientSession() as session:
        yield make
        for runner in runners:
            await runner.cleanup()


async def test_a_signed_delivery_is_recorded_with_when_it_arrived(receiver):
    rec = await receiver()
    before = time.time()
    assert await rec.post(notice(1)) == (200, {"received": "evt_1"})
    got = await rec.received()
    assert got["deliveries"] == 1
    (event,) = got["events"]
    assert {k: event[k] for k in ("id", "type", "created_at", "data")} == orjson.loads(notice(1))
    assert before <= event["received_at"] <= time.time()


async def test_every_delivery_is_recorded_in_order_repeats_included(receiver):
    rec = await receiver()
    for n in (1, 2, 1, 3):
        assert (await rec.post(notice(n), path=f"/any/path/{n}"))[0] == 200
    got = await rec.received()
    assert (got["deliveries"], [e["id"] for e in got["events"]]) == (4, ["evt_1", "evt_2", "evt_1", "evt_3"])


async def test_a_tampered_body_is_refused_and_nothing_is_recorded(receiver):
    rec = await receiver()
    status, body = await rec.post(notice(1, data={"amount_minor": 1}), signed=notice(1))
    assert status == 401 and body["error"]["code"] == "bad_signature"
    assert body["error"]["message"] == "signature does not match"
    assert (await rec.post(notice(1), secret="another secret"))[0] == 401
    assert await rec.received() == {"deliveries": 0, "events": []}


async def test_a_stale_signature_is_refused(receiver):
    rec = await receiver()
    status, body = await rec.post(notice(1), t=time.time() - 301)
    assert status == 401 and body["error"]["code"] == "bad_signature" and "away from now" in body["error"]["message"]
    assert (await rec.post(notice(2), t=time.time() - 290))[0] == 200
    assert [e["id"] for e in (await rec.received())["events"]] == ["evt_2"]


@pytest.mark.parametrize("header", ["", "t=1,v1", "garbage"])
async def test_a_missing_or_malformed_signature_is_refused(receiver, header):
    rec = await receiver()
    status, body = await rec.post(notice(1), header=header)
    assert status == 401 and body["error"]["code"] == "bad_signature"
    if not header:
        assert body["error"]["message"] == "missing X-Orchestrator-Signature"
    assert (await rec.received())["deliveries"] == 0


@pytest.mark.parametrize("body", [
    b"not json",
    b"[1, 2]",
    orjson.dumps({"type": "recharge.succeeded", "created_at": "x", "data": {}}),
    orjson.dumps({"id": "", "type": "recharge.succeeded", "created_at": "x", "data": {}}),
    orjson.dumps({"id": "evt_1", "created_at": "x", "data": {}}),
    orjson.dumps({"id": "evt_1", "type": "recharge.succeeded", "data": {}}),
    orjson.dumps({"id": "evt_1", "type": "recharge.succeeded", "created_at": True, "data": {}}),
    orjson.dumps({"id": "evt_1", "type": "recharge.succeeded", "created_at": "x", "data": [1]}),
])
async def test_a_signed_body_that_is_not_a_notification_is_422(receiver, body):
    rec = await receiver()
    status, answer = await rec.post(body)
    assert status == 422 and answer["error"]["code"] == "invalid_event", answer
    assert (await rec.received())["deliveries"] == 0


async def test_503_mode_refuses_deliveries_until_set_back(receiver):
    rec = await receiver()
    assert await rec.mode(status=503) == (200, {"status": 503, "delay_ms": 0})
    status, body = await rec.post(notice(1))
    assert status == 503 and body["error"]["code"] == "unavailable"
    assert (await rec.received())["deliveries"] == 0
    assert (await rec.mode(status=200))[0] == 200
    assert (await rec.post(notice(1)))[0] == 200
    assert (await rec.received())["deliveries"] == 1


async def test_a_slow_mode_answers_late(receiver):
    rec = await receiver()
    assert await rec.mode(delay_ms=200) == (200, {"status": 200, "delay_ms": 200})
    started = time.perf_counter()
    assert (await rec.post(notice(1)))[0] == 200
    assert time.perf_counter() - started >= 0.2


@pytest.mark.parametrize("mode", [{"status": 500}, {"status": "503"}, {"delay_ms": -1}, {"delay_ms": True},
                                  {"delay_ms": 10**9}, {"colour": "red"}])
async def test_a_bad_mode_is_422_and_changes_nothing(receiver, mode):
    rec = await receiver()
    status, body = await rec.mode(**mode)
    assert status == 422 and body["error"]["code"] == "invalid_field"
    assert await rec.mode() == (200, {"status": 200, "delay_ms": 0})


async def test_the_sender_and_the_receiver_agree(receiver):
    rec = await receiver()
    sender = NotifySender(timeout_s=1)
    try:
        delivery = await sender.send(rec.url + "/hooks", SECRET, notice(7), time.time())
        assert (delivery.ok, delivery.status) == (True, 200)
        await rec.mode(status=503)
        assert (await sender.send(rec.url + "/hooks", SECRET, notice(8), time.time())).status == 503
        assert not (await sender.send(rec.url + "/hooks", "wrong", notice(9), time.time())).ok
    finally:
        await sender.close()
    assert [e["id"] for e in (await rec.received())["events"]] == ["evt_7"]


async def test_a_restarted_receiver_reports_everything_it_ever_got(tmp_path):
    out = tmp_path / "received.jsonl"
    async with aiohttp.ClientSession() as session:
        runner, url = await start(build_receiver_app(SECRET, out))
        first = Client(url, session)
        for n in (1, 2):
            await first.post(notice(n))
        await first.post(notice(3), header="")  # refused: not recorded, not written
        before = (await first.received())["events"]
        await runner.cleanup()
        assert len(out.read_bytes().splitlines()) == 2
        out.write_bytes(out.read_bytes() + b'{"id": "evt_torn", "ty')  # a crash mid-write
        runner, url = await start(build_receiver_app(SECRET, out))
        try:
            again = Client(url, session)
            assert (await again.received())["events"] == before
            await again.post(notice(4))
            got = await again.received()
        finally:
            await runner.cleanup()
    assert (got["deliveries"], [e["id"] for e in got["events"]]) == (3, ["evt_1", "evt_2", "evt_4"])
    assert orjson.loads(out.read_bytes().splitlines()[-1])["id"] == "evt_4"  # not glued to the torn line


# -- as its own process --------------------------------------------------------------------


async def _spawn(out: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.receiver", "--secret", SECRET, "--port", "0",
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:  # the ready line: it is listening
        line = (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)).decode()
    except TimeoutError:
        line = ""
    if not line.startswith("receiver listening on http://127.0.0.1:"):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the receiver did not start: {line!r} {err.decode()}")
    return proc, line.split()[-1]


@pytest.mark.slow
async def test_the_module_serves_until_killed_and_a_restart_keeps_the_records(tmp_path):
    out = tmp_path / "received.jsonl"
    proc, url = await _spawn(out)
    try:
        async with aiohttp.ClientSession() as session:
            assert (await Client(url, session).post(notice(1)))[0] == 200
            proc.kill()  # down hard: only what was flushed survives
            proc.wait(timeout=10)
            proc, url = await _spawn(out)
            client = Client(url, session)
            assert (await client.post(notice(2)))[0] == 200
            assert [e["id"] for e in (await client.received())["events"]] == ["evt_1", "evt_2"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
