"""Notifications on the wire (SPEC 19), over loopback HTTP: a signed POST the client can
check, ``ok`` only on a 2xx, every failure a Delivery and never an exception, and a slow
destination holding only its own slots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from loopback import closed_port
from simharness import start

from channels.notify import Delivery, NotifySender
from channels.webhooks import NOTIFY_SIGNATURE_HEADER, check_signature

SECRET = "nsec_front"
BODY = b'{"id":"evt_1","type":"recharge.succeeded","created_at":1800000000.0,"data":{"id":"rc_1"}}'


@dataclass
class Front:
    """A front service's endpoint: records what arrives, answers as told, and can hold
    requests until released to show how many are in flight at once."""

    url: str = ""
    answer: int = 200
    arrived: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hold: asyncio.Event | None = None
    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append((dict(request.headers), await request.read()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await self.hold.wait()
        finally:
            self.in_flight -= 1
        return web.json_response({"ok": True}, status=self.answer)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Serves handlers on loopback: ``await serve({"/path": handler, ...})`` -> the base URL."""
    runners: list[web.AppRunner] = []

    async def make(routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        runner, url = await start(app)
        runners.append(runner)
        return url

    yield make
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def front(serve) -> Front:
    f = Front()
    f.url = await serve({"/hooks/orchestrator": f.handle}) + "/hooks/orchestrator"
    return f


@pytest.fixture
async def sender() -> AsyncIterator[NotifySender]:
    s = NotifySender(timeout_s=1.0)
    yield s
    await s.close()


async def test_a_delivery_is_a_signed_json_post_the_client_can_check(front, sender):
    now = time.time()
    delivery = await sender.send(front.url, SECRET, BODY, now)
    assert (delivery.ok, delivery.status, delivery.error) == (True, 200, None)
    assert delivery.latency_ms > 0
    ((headers, body),) = front.arrived
    assert body == BODY and headers["Content-Type"] == "application/json"
    signature = headers[NOTIFY_SIGNATURE_HEADER]
    assert signature.startswith(f"t={int(now)},v1=")
    check_signature(SECRET, signature, body, time.time(), header_name=NOTIFY_SIGNATURE_HEADER)


@pytest.mark.parametrize("status", [201, 202, 204, 299])
async def test_every_2xx_ends_the_event(front, sender, status):
    front.answer = status
    assert (await sender.send(front.url, SECRET, BODY, time.time())).ok


@pytest.mark.parametrize("status", [400, 401, 404, 410, 500, 503])
async def test_any_other_answer_is_not_ok_with_its_status(front, sender, status):
    front.answer = status
    assert await _shape(sender.send(front.url, SECRET, BODY, time.time())) == (False, status, f"answered {status}")


async def test_a_redirect_is_not_followed(serve, front, sender):
    async def moved(_request: web.Request) -> web.Response:
        raise web.HTTPFound(front.url)

    url = await serve({"/old": moved})
    assert await _shape(sender.send(url + "/old", SECRET, BODY, time.time())) == (False, 302, "answered 302")
    assert front.arrived == []


async def test_nothing_listening_is_a_failed_delivery(sender):
    delivery = await sender.send(f"http://127.0.0.1:{closed_port()}/x", SECRET, BODY, time.time())
    assert (delivery.ok, delivery.status) == (False, None) and delivery.error.startswith("connect failed")


async def test_a_slow_client_is_a_timeout_within_the_budget(serve):
    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    url = await serve({"/slow": slow})
    sender = NotifySender(timeout_s=0.2)
    try:
        delivery = await sender.send(url + "/slow", SECRET, BODY, time.time())
    finally:
        await sender.close()
    assert (delivery.ok, delivery.status, delivery.error) == (False, None, "timeout")
    assert 150 < delivery.latency_ms < 1000


async def test_a_reset_connection_is_a_failed_delivery(serve, sender):
    async def reset(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    url = await serve({"/reset": reset})
    delivery = await sender.send(url + "/reset", SECRET, BODY, time.time())
    assert (delivery.ok, delivery.status) == (False, None) and delivery.error.startswith("connection lost")


@pytest.mark.parametrize("url", ["not a url", "/relative/path", "ftp://example.com/x", "http://"])
async def test_a_url_that_cannot_be_posted_to_is_a_failed_delivery(sender, url):
    assert await _shape(sender.send(url, SECRET, BODY, time.time())) == (False, None, "not an absolute http(s) URL")


async def test_one_destination_gets_at_most_its_cap_and_others_are_not_held_up(serve):
    slow, quick = Front(hold=asyncio.Event()), Front()
    slow_url = await serve({"/a": slow.handle, "/b": slow.handle}) + "/a"
    same_origin = slow_url[:-2] + "/b"
    quick_url = await serve({"/q": quick.handle}) + "/q"
    sender = NotifySender(timeout_s=5, max_per_destination=2)
    try:
        held = [asyncio.create_task(sender.send(u, SECRET, BODY, time.time())) for u in [slow_url, same_origin] * 3]
        while len(slow.arrived) < 2:
            await asyncio.sleep(0.01)
        # Another destination goes through while the slow one holds both of its slots.
        assert (await sender.send(quick_url, SECRET, BODY, time.time())).ok
        await asyncio.sleep(0.1)
        assert (len(slow.arrived), slow.most_in_flight) == (2, 2)  # paths share their origin's slots
        slow.hold.set()
        assert all(d.ok for d in await asyncio.gather(*held))
        assert (len(slow.arrived), slow.most_in_flight) == (6, 2)
    finally:
        await sender.close()


async def test_waiting_for_a_slot_counts_against_the_timeout(serve):
    slow = Front(hold=asyncio.Event())
    url = await serve({"/a": slow.handle}) + "/a"
    sender = NotifySender(timeout_s=5, max_per_destination=1)
    try:
        first = asyncio.create_task(sender.send(url, SECRET, BODY, time.time(), timeout_s=0.6))
        while not slow.arrived:
            await asyncio.sleep(0.01)
        second = await sender.send(url, SECRET, BODY, time.time(), timeout_s=0.2)
        assert (second.ok, second.error) == (False, "timeout waiting for a slot to this destination")
        assert 150 < second.latency_ms < 500
        assert (await first).error == "timeout"
        assert len(slow.arrived) == 1
    finally:
        slow.hold.set()
        await sender.close()


async def test_a_session_handed_in_is_used_and_left_open(front):
    async with aiohttp.ClientSession() as session:
        sender = NotifySender(session, timeout_s=1)
        assert (await sender.send(front.url, SECRET, BODY, time.time())).ok
        await sender.close()
        assert not session.closed
        assert (await sender.send(front.url, SECRET, BODY, time.time())).ok


async def test_its_own_session_is_closed_and_made_again_on_use(front):
    sender = NotifySender(timeout_s=1)
    assert (await sender.send(front.url, SECRET, BODY, time.time())).ok
    await sender.close()
    await sender.close()  # twice is harmless
    assert (await sender.send(front.url, SECRET, BODY, time.time())).ok
    await sender.close()


@pytest.mark.parametrize("kw", [{"timeout_s": 0}, {"max_per_destination": 0}])
def test_bad_limits_are_refused(kw):
    with pytest.raises(ValueError):
        NotifySender(**kw)


async def _shape(delivery: Awaitable[Delivery]) -> tuple[bool, int | None, str | None]:
    d = await delivery
    return d.ok, d.status, d.error
