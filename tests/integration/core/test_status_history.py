"""The status page's last hour through the real paths: recharges over loopback HTTP, the
driver, the health gate and ``GET /v1/status``, on a clock the test moves a minute at a
time. An outage of the first channel shows as its approval dropping to zero, the traffic
moving to the second, failovers, and its recovery."""

from __future__ import annotations

import hashlib
import time

from aiohttp.test_utils import TestClient, TestServer

from channels.memory import Action, MemoryChannel
from config import parse
from orchestrator.api.app import build_app
from orchestrator.clock import SystemClock
from orchestrator.service import Service

KEY = "front-key-123"


class SteppedClock(SystemClock):
    """Real time, plus whatever the test adds: a minute passes in a line."""

    def __init__(self) -> None:
        # A second into a minute bucket, so each of the test's minutes stays inside one.
        self.offset = 61.0 - time.monotonic() % 60

    def now(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


def _doc(tmp_path) -> dict:
    def channel(name: str) -> dict:
        return {"name": name, "kind": "direct_api", "base_url": f"http://127.0.0.1:1/{name}",
                "webhook_secret": "whsec_secret_" + name, "currencies": ["CNY"], "countries": ["CN"],
                "methods": ["ewallet"]}

    return {
        "storage": {"url": f"sqlite:///{tmp_path}/j.db"},
        "clients": [{"name": "front", "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "scopes": ["recharge"]}],
        "channels": [channel("a"), channel("b")],
        "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404}},
        "limits": {"per_user": {"rate_per_s": 10000, "burst": 10000}},
    }


def _refuse(op: str, ref: str, n: int) -> Action:
    return Action.NOT_PROCESSED if op == "authorize" else Action.OK


async def test_an_outage_in_the_last_hour_shows_per_minute(tmp_path):
    clock = SteppedClock()
    channels: dict[str, MemoryChannel] = {}

    def factory(cfg):
        channels[cfg.name] = MemoryChannel(cfg.name)
        return channels[cfg.name]

    service = Service(parse(_doc(tmp_path)), channel_factory=factory, clock=clock, reconcile=False, probe=False,
                      router=lambda svc, rec: ["a", "b"])
    client = TestClient(TestServer(build_app(service), host="127.0.0.1"))
    await client.start_server()
    n = 0
    try:
        async def minute(recharges: int) -> None:
            nonlocal n
            for _ in range(recharges):
                n += 1
                r = await client.post("/v1/recharges", json={
                    "user_id": f"u{n}", "amount_minor": 8500, "currency": "CNY", "country": "CN",
                    "method": "ewallet", "instrument": {"token": "tok"}},
                    headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": f"k{n}"})
                assert r.status == 201, await r.text()
                assert (await r.json())["status"] == "succeeded"
            clock.offset += 60

        await minute(10)
        channels["a"].script = _refuse
        await minute(10)
        await minute(10)
        channels["a"].script = lambda op, ref, k: Action.CAPTURE if op == "authorize" else Action.OK
        clock.offset += 120  # the breaker's cool-down: a trial goes to a, and it works again
        await minute(10)
        r = await client.get("/v1/status")
        body = await r.json()
    finally:
        await client.close()

    h = body["history"]
    assert (h["bucket_s"], h["buckets"], len(h["points"])) == (60.0, 60, 60)
    assert body["worker"] is None
    busy = [p for p in h["points"] if p["channels"]]
    assert len(busy) == 4
    before, first, second, after = busy
    assert before["channels"]["a"] == {**before["channels"]["a"], "approval": 1.0, "share": 1.0}
    assert first["channels"]["a"]["approval"] == 0.0, "the outage's dip"
    assert first["failovers"] >= 5 and first["channels"]["b"]["share"] > 0.5, "the traffic moved to b"
    assert second["channels"].get("a", {}).get("attempts", 0) <= 1 and second["channels"]["b"]["share"] >= 0.9, \
        "a's breaker kept the traffic on b"
    assert after["channels"]["a"]["approval"] == 1.0 and after["failovers"] == 0
    assert all(p["outcomes"] == {"succeeded": 10} for p in busy)
    ages = [p["age_s"] for p in busy]
    assert [round(older - newer) for older, newer in zip(ages, ages[1:])] == [60, 60, 180], "a bucket a minute"
