"""The notification dispatcher (SPEC 19) over real loopback HTTP, on every store: two
instances share one outbox and never deliver one notice at the same time; each recharge's
notices arrive in order; a failing endpoint is retried with backoff, then the notice is
dead, and an admin's redeliver sends it again."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import orjson
import pytest
from aiohttp import web

from channels.notify import NotifySender
from channels.webhooks import NOTIFY_SIGNATURE_HEADER, SignatureError, check_signature
from config import ClientConfig, NotificationsConfig, NotifyConfig
from orchestrator.clock import SystemClock
from orchestrator.metrics import Metrics
from orchestrator.notifications import Dispatcher, Notifier

SECRET = "whsec_dispatcher_test_0123456789"


class Endpoint:
    """A front service's endpoint that notices when one notice is delivered twice at once."""

    def __init__(self, fail_rate: float = 0.0, delay_s: float = 0.0) -> None:
        self.fail_rate = fail_rate
        self.delay_s = delay_s
        self.rng = random.Random(3)
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []
        self.accepted: list[str] = []  # ids in the order of their 2xx
        self.refused = 0
        self.down = False

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            check_signature(SECRET, request.headers.get(NOTIFY_SIGNATURE_HEADER), raw, time.time(),
                            header_name=NOTIFY_SIGNATURE_HEADER)
        except SignatureError:
            return web.Response(status=401)
        nid = orjson.loads(raw)["id"]
        if nid in self.in_flight:
            self.overlaps.append(nid)
        self.in_flight.add(nid)
        try:
            await asyncio.sleep(self.delay_s * self.rng.random())
            if self.down or self.rng.random() < self.fail_rate:
                self.refused += 1
                return web.Response(status=503)
            self.accepted.append(nid)
            return web.Response(status=204)
        finally:
            self.in_flight.discard(nid)


@pytest.fixture
async def endpoint():
    ep = Endpoint()
    app = web.Application()
    app.router.add_post("/hook", ep.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ep.url = f"http://127.0.0.1:{port}/hook"  # type: ignore[attr-defined]
    yield ep
    await runner.cleanup()


def _clients(url: str, retry_for_s: float = 3600) -> list[ClientConfig]:
    return [ClientConfig(name="front", key_sha256="0" * 64, scopes=["recharge"],
                         notify=NotifyConfig(url=url, secret=SECRET, events=["refund.succeeded"],
                                             retry_for_s=retry_for_s))]


def _dispatcher(journal, clients, owner: str) -> tuple[Dispatcher, NotifySender, Metrics]:
    settings = NotificationsConfig(initial_backoff_s=0.02, max_backoff_s=0.1, poll_interval_s=0.02, timeout_ms=2000,
                                   max_per_destination=4)
    sender = NotifySender(timeout_s=2, max_per_destination=4)
    metrics = Metrics()
    return Dispatcher(journal, sender, lambda: clients, lambda: settings, SystemClock(), metrics, owner=owner,
                      rng=random.Random(owner)), sender, metrics


async def _until(pred, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("never happened")


async def test_two_instances_deliver_every_notice_once_at_a_time_and_in_order(two, endpoint):
    a, b = two
    endpoint.fail_rate, endpoint.delay_s = 0.3, 0.03
    clients = _clients(endpoint.url)
    notifier = Notifier(lambda: clients)
    now = SystemClock().now()
    notices = tuple(notifier.notice("front", f"rc_{k}", "refund.succeeded", now, {"n": n})
                    for n in range(60) for k in [n % 10])
    await a.add_notices(notices)
    (da, sa, ma), (db, sb, mb) = _dispatcher(a, clients, "A"), _dispatcher(b, clients, "B")
    runs = [asyncio.create_task(d.run_forever()) for d in (da, db)]
    try:
        await _until(lambda: _none_pending(a))
    finally:
        for t in runs:
            t.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await da.stop(), await db.stop()
        await sa.close(), await sb.close()
    assert endpoint.overlaps == [], "a notice was delivered by two instances at once"
    assert set(endpoint.accepted) == {n.id for n in notices}
    assert endpoint.refused > 0, "some deliveries failed and were retried"
    first: dict[str, int] = {}
    for i, nid in enumerate(endpoint.accepted):
        first.setdefault(nid, i)
    by_key = defaultdict(list)
    for n in notices:
        by_key[n.key].append(first[n.id])
    assert all(order == sorted(order) for order in by_key.values()), "a recharge's notices arrived out of order"
    delivered = sum(m.notifications.labels("delivered")._value.get() for m in (ma, mb))
    assert delivered == len(notices)


async def _none_pending(journal) -> bool:
    return (await journal.outbox_stats()).pending == 0


async def test_an_endpoint_that_stays_down_makes_the_notice_dead_until_redelivered(store, endpoint):
    journal = store.journal()
    await journal.open()
    endpoint.down = True
    clients = _clients(endpoint.url, retry_for_s=0.5)
    notifier = Notifier(lambda: clients)
    now = SystemClock().now()
    first, second = (notifier.notice("front", "rc_1", "refund.succeeded", now, {"n": n}) for n in (1, 2))
    await journal.add_notices((first, second))
    d, sender, metrics = _dispatcher(journal, clients, "A")
    run = asyncio.create_task(d.run_forever())
    try:
        await _until(lambda: _dead(journal, 2))
        assert endpoint.refused >= 4, "retried before giving up"
        rows = await journal.notices("dead")
        assert [r.notice.id for r in rows] == [first.id, second.id] and rows[0].last_error == "answered 503"
        endpoint.down = False
        assert (await journal.redeliver(second.id, SystemClock().now())).state == "pending"
        d.nudge()
        await _until(lambda: _none_pending(journal))
        assert endpoint.accepted == [second.id]
        assert [r.notice.id for r in await journal.notices("dead")] == [first.id]
        assert metrics.notifications.labels("dead")._value.get() == 2
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await d.stop()
        await sender.close()
        await journal.close()


async def _dead(journal, n: int) -> bool:
    return len(await journal.notices("dead")) == n


async def test_a_client_whose_notify_config_is_gone_for_now_is_retried_not_given_up(store, endpoint):
    journal = store.journal()
    await journal.open()
    clients = _clients(endpoint.url)
    notice = Notifier(lambda: clients).notice("front", "rc_1", "refund.succeeded", SystemClock().now(), {})
    await journal.add_notices((notice,))
    current: list[ClientConfig] = []  # a reload dropped the client's notify config
    d, sender, _ = _dispatcher(journal, current, "A")
    try:
        assert await d.pass_once() == 1
        await d.drain()
        assert await journal.notices("dead") == []
        row = await journal.notice(notice.id)
        assert (row.state, row.attempts, row.last_error) == ("pending", 1, "the client has no notify config")
        current.extend(clients)  # and the next reload brings it back
        await _until(lambda: _delivered_after_pass(d, journal, notice.id))
        assert endpoint.accepted == [notice.id]
    finally:
        await sender.close()
        await journal.close()


async def _delivered_after_pass(d: Dispatcher, journal, nid: str) -> bool:
    await d.pass_once()
    await d.drain()
    return (await journal.notice(nid)).state == "delivered"


async def test_an_endpoint_that_hangs_never_holds_a_recharge(tmp_path):
    """Every delivery hangs at the endpoint, yet every recharge is answered, credited and
    its notice written: delivery runs beside the recharges, never in their way."""
    import contextlib

    from test_api import BODY, config_doc, running_api_with

    from config import parse

    release = asyncio.Event()
    waiting: list[str] = []

    async def hang(request: web.Request) -> web.Response:
        waiting.append(orjson.loads(await request.read())["id"])
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    doc = config_doc(tmp_path)
    doc["clients"][0]["notify"] = {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET,
                                   "events": ["recharge.succeeded"]}
    try:
        async with running_api_with(parse(doc)) as api:
            run = asyncio.create_task(api.service.dispatcher.run_forever())
            try:
                for i in range(20):
                    resp, body = await api.post({**BODY, "user_id": f"u{i}"}, key=f"k{i}")
                    assert resp.status == 201 and body["status"] == "succeeded", body
                await _until(lambda: _some(waiting))
                stats = await api.service.journal.outbox_stats()
                assert stats.pending == 20, "each success wrote its notice"
                assert len(waiting) <= 4, "max_per_destination holds the rest back"
                await api.invariants()
            finally:
                release.set()
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
    finally:
        await runner.cleanup()


async def _some(items: list[str]) -> bool:
    return bool(items)
