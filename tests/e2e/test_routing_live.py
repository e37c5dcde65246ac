"""Smart routing (objective ``score``) against the live simulator (real processes): an outage of the best
channel is routed around within two probe intervals and traffic comes back when it
recovers; a 20x brownout moves traffic off it. Money invariants checked at the end."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest
from procs import FRONT_KEY, SqliteReader, behave, ledger, orchestrator, orchestrator_doc, simulator

from orchestrator.invariants import check

pytestmark = pytest.mark.slow

PROBE_S = 0.5
CHANNELS = [
    {"name": "best", "kind": "direct_api", "webhook_secret": "whsec_best_e2e",
     "behaviour": {"latency_ms": 5, "latency_jitter_ms": 1, "ping_latency_ms": 1, "hang_ms": 2000}},
    {"name": "second", "kind": "direct_api", "webhook_secret": "whsec_second_e2e",
     "behaviour": {"latency_ms": 20, "latency_jitter_ms": 2, "ping_latency_ms": 1}},
    {"name": "settle", "kind": "digital_currency", "webhook_secret": "whsec_settle_e2e",
     "behaviour": {"latency_ms": 80, "latency_jitter_ms": 5, "ping_latency_ms": 2, "pending_rate": 0}},
]


class Load:
    """Recharges at a fixed rate; records when each was sent and where its first attempt went."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[float, str | None, str]] = []  # (sent_at, first channel, status)
        self._n = 0

    async def run(self, session: aiohttp.ClientSession, seconds: float, rate: float) -> None:
        tasks = []
        start = time.monotonic()
        i = 0
        while (now := time.monotonic()) - start < seconds:
            tasks.append(asyncio.create_task(self._one(session, now)))
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await asyncio.gather(*tasks)

    async def _one(self, session: aiohttp.ClientSession, sent: float) -> None:
        self._n += 1
        body = {"user_id": f"u{self._n % 97}", "amount_minor": 8500, "currency": "CNY", "country": "CN",
                "method": "ewallet", "instrument": {"token": "tok_1"}}
        headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"live-{self._n}"}
        async with session.post(self.url + "/v1/recharges", json=body, headers=headers) as r:
            rec = await r.json()
            assert r.status in (201, 202), rec
        first = rec["attempts"][0]["channel"] if rec["attempts"] else None
        self.results.append((sent, first, rec["status"]))

    def share(self, channel: str, since: float, until: float) -> float:
        window = [c for t, c, _ in self.results if since <= t < until]
        return Counter(window)[channel] / max(1, len(window))

    def success(self, since: float, until: float) -> float:
        window = [s for t, _, s in self.results if since <= t < until]
        return Counter(window)["succeeded"] / max(1, len(window))


async def test_outage_recovery_and_brownout_move_traffic(tmp_path):
    sim = simulator(tmp_path, {"seed": 5, "channels": CHANNELS}).start()
    orch = None
    try:
        await sim.wait_ready()
        doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS,
                               health={"probe_interval_s": PROBE_S, "probe_timeout_ms": 300,
                                       "breaker": {"base_ejection_s": 2.0, "max_ejection_s": 4.0}},
                               # The first version's objective, which SREs may still choose: latency
                               # counts at every scale, so a recovered channel takes its traffic back
                               # at once. (`value`, the default, is in test_routing_segments.py and
                               # test_fleet_view.py: there equal channels are a tie.)
                               routing={"objective": "score"})
        orch = orchestrator(tmp_path, doc).start()
        await orch.wait_ready()
        load = Load(orch.url)
        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            await load.run(session, 3.0, 60)
            assert load.share("best", t0 + 1, t0 + 3) > 0.8, "the fastest healthy channel takes the traffic"

            outage = time.monotonic()
            await behave(sim, "best", outage=True, outage_mode="refuse")
            await load.run(session, 4.0, 60)
            after = outage + 2 * PROBE_S
            assert load.share("best", after, outage + 4) < 0.05, "traffic left within two probe intervals"
            assert load.success(outage, outage + 4) > 0.99, "recharges kept succeeding elsewhere"

            back = time.monotonic()
            await behave(sim, "best", outage=False)
            await load.run(session, 8.0, 60)
            assert load.share("best", back + 6, back + 8) > 0.8, "traffic returned after recovery"

            brown = time.monotonic()
            await behave(sim, "best", latency_multiplier=20)
            await load.run(session, 5.0, 60)
            assert load.share("best", brown + 2, brown + 5) < 0.2, "a 20x brownout moved traffic off it"
            assert load.success(brown, brown + 5) > 0.99

        print(f"\nshare of best: steady {load.share('best', t0 + 1, t0 + 3):.2f}, "
              f"outage+2 probes {load.share('best', after, outage + 4):.3f}, "
              f"recovered {load.share('best', back + 6, back + 8):.2f}, brownout {load.share('best', brown + 2, brown + 5):.3f}")
        reader = SqliteReader(tmp_path / "orch.db")
        report = await check(reader, await ledger(sim), settled=False)
        assert report.ok, report.violations[:10]
        assert report.recharges == len(load.results)
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()
