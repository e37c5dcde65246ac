"""The fleet view (issue 26): instances on one PostgreSQL share channel statistics.

Two instances serve one simulator; the cheaper channel ``cheap`` is everyone's first
choice. It goes down while only instance A carries traffic: two probe intervals later,
B's first recharges already avoid it (B has not sent it anything: what it knows is A's).
Then a third instance starts while the outage lasts, and its first 200 recharges go
elsewhere too. SPEC 18's invariants are checked at the end against the simulator's ledger.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from procs import FRONT_KEY, SRE_KEY, behave, ledger, orchestrator, orchestrator_doc, settle, simulator

from orchestrator.invariants import check
from orchestrator.journal.postgres import PostgresJournal

pytestmark = pytest.mark.slow

PROBE_S = 1.0
CHANNELS = [
    {"name": "cheap", "kind": "direct_api", "webhook_secret": "whsec_cheap_e2e",
     "behaviour": {"latency_ms": 5, "latency_jitter_ms": 1, "ping_latency_ms": 1}},
    {"name": "dear", "kind": "direct_api", "webhook_secret": "whsec_dear_e2e",
     "behaviour": {"latency_ms": 8, "latency_jitter_ms": 1, "ping_latency_ms": 1}},
]


async def recharges(session: aiohttp.ClientSession, url: str, prefix: str, n: int) -> list[dict]:
    """``n`` recharges at once; each answer."""
    async def one(i: int) -> dict:
        body = {"user_id": f"{prefix}{i % 50}", "amount_minor": 8500, "currency": "CNY", "country": "CN",
                "method": "ewallet", "instrument": {"token": "tok_fleet"}}
        headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"{prefix}-{i}"}
        async with session.post(url + "/v1/recharges", json=body, headers=headers) as r:
            rec = await r.json()
            assert r.status in (201, 202), rec
            return rec
    out = []
    for start in range(0, n, 20):  # twenty at a time, as a front service's pool would
        out += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 20))))
    return out


def first_on(recs: list[dict], channel: str) -> int:
    return sum(1 for r in recs if r["attempts"] and r["attempts"][0]["channel"] == channel)


async def test_an_outage_one_instance_saw_is_avoided_by_the_others(tmp_path, pg_server):
    url = pg_server.create_schema()
    sim = simulator(tmp_path, {"seed": 11, "channels": CHANNELS}).start()
    procs = []
    try:
        await sim.wait_ready()
        doc = orchestrator_doc(sim.url, tmp_path / "unused.db", CHANNELS,
                               health={"probe_interval_s": PROBE_S, "probe_timeout_ms": 300,
                                       "fleet": {"interval_s": 0.25, "max_age_s": 10}})
        doc["storage"] = {"url": url}
        doc["channels"][0]["fee"] = {"percent": 0.3}
        doc["channels"][1]["fee"] = {"percent": 1.2}

        def start(name: str):
            proc = orchestrator(tmp_path, dict(doc, server=dict(doc["server"])), name=name).start()
            procs.append(proc)
            return proc

        a, b = start("a"), start("b")
        await a.wait_ready()
        await b.wait_ready()
        async with aiohttp.ClientSession() as session:
            warm = await recharges(session, a.url, "warm", 100)
            assert first_on(warm, "cheap") >= 80, "the cheaper channel is the first choice"

            await behave(sim, "cheap", outage=True, outage_mode="refuse")
            down = time.monotonic()
            seen = await recharges(session, a.url, "seen", 60)  # only A meets the outage
            assert all(r["status"] == "succeeded" for r in seen), "A failed over"
            await asyncio.sleep(max(0.0, down + 2 * PROBE_S - time.monotonic()))
            at_b = await recharges(session, b.url, "at-b", 100)
            async with session.get(b.url + "/v1/health/channels", headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
                report = await r.json()
            fleet = next(ch for ch in report["channels"] if ch["channel"] == "cheap")["fleet"] \
                if isinstance(report.get("channels"), list) else report["channels"]["cheap"]["fleet"]

            c = start("c")  # a new instance, while the outage lasts
            await c.wait_ready()
            fresh = await recharges(session, c.url, "fresh", 200)
            await behave(sim, "cheap", outage=False)

        print(f"\nfirst attempts on cheap: warm-up {first_on(warm, 'cheap')}/100, "
              f"B two probe intervals in {first_on(at_b, 'cheap')}/100, "
              f"new instance C {first_on(fresh, 'cheap')}/200; B's explain of cheap: fleet {fleet}")
        assert first_on(at_b, "cheap") < 5, "B avoided what A saw, within two probe intervals"
        assert first_on(fresh, "cheap") < 10, "a new instance routed from the fleet's view (< 5 % of 200)"
        assert fleet is not None and fleet["instances"] >= 1 and fleet["failures"] > 0, "B's report names the fleet's numbers"

        store = PostgresJournal(url)
        await store.open()
        try:
            await settle(store, timeout_s=30)
            report = await check(store, await ledger(sim), settled=True)
            assert report.ok, report.violations[:10]
            assert report.recharges == 100 + 60 + 100 + 200
        finally:
            await store.close()
    finally:
        for proc in procs:
            proc.stop()
        sim.stop()
