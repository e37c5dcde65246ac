"""Routing learns approval per segment, live (issue 26): two channels where one approves
97 % of one issuer's payers and the other 85 % (and the reverse for a second issuer).
After warm-up each issuer's recharges go to the channel that approves it better; when
that channel's approval for one issuer falls to 60 %, the share moves within 30 s. The
declines are soft (``do_not_honor``), so each is retried on the other channel: that is
how the orchestrator learns which channel declined for its own reasons. SPEC 18's
invariants are checked at the end against the simulator's ledger."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest
from procs import FRONT_KEY, SqliteReader, behave, ledger, orchestrator, orchestrator_doc, simulator

from orchestrator.invariants import check

pytestmark = pytest.mark.slow

SOFT = {"do_not_honor": 1}


def segments(icbc: float, ccb: float) -> list[dict]:
    """Decline rates per issuer, as the simulator takes them."""
    return [{"match": {"issuer": "icbc"}, "decline_rate": icbc, "decline_codes": SOFT},
            {"match": {"issuer": "ccb"}, "decline_rate": ccb, "decline_codes": SOFT}]


CHANNELS = [
    {"name": "ca", "kind": "direct_api", "webhook_secret": "whsec_ca_e2e",
     "behaviour": {"latency_ms": 4, "latency_jitter_ms": 1, "ping_latency_ms": 1, "segments": segments(0.03, 0.15)}},
    {"name": "cb", "kind": "direct_api", "webhook_secret": "whsec_cb_e2e",
     "behaviour": {"latency_ms": 4, "latency_jitter_ms": 1, "ping_latency_ms": 1, "segments": segments(0.15, 0.03)}},
]
RATE = 40  # recharges/s, half of each issuer


class Load:
    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[float, str, str | None, str]] = []  # (sent, issuer, first channel, status)
        self.n = 0

    async def run(self, session: aiohttp.ClientSession, seconds: float) -> None:
        tasks, start, i = [], time.monotonic(), 0
        while time.monotonic() - start < seconds:
            tasks.append(asyncio.create_task(self._one(session, time.monotonic())))
            i += 1
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
        await asyncio.gather(*tasks)

    async def _one(self, session: aiohttp.ClientSession, sent: float) -> None:
        self.n += 1
        issuer = ("icbc", "ccb")[self.n % 2]
        body = {"user_id": f"u{self.n % 89}", "amount_minor": 8500, "currency": "CNY", "country": "CN",
                "method": "ewallet", "instrument": {"token": f"tok_{self.n % 89}", "issuer": issuer}}
        headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"seg-{self.n}"}
        async with session.post(self.url + "/v1/recharges", json=body, headers=headers) as r:
            rec = await r.json()
            assert r.status in (201, 202), rec
        self.results.append((sent, issuer, rec["attempts"][0]["channel"] if rec["attempts"] else None, rec["status"]))

    def share(self, issuer: str, channel: str, since: float, until: float) -> float:
        firsts = [c for t, i, c, _ in self.results if i == issuer and since <= t < until]
        return Counter(firsts)[channel] / max(1, len(firsts))


async def test_each_issuer_goes_to_its_better_channel_and_moves_when_it_breaks(tmp_path):
    sim = simulator(tmp_path, {"seed": 8, "channels": CHANNELS}).start()
    orch = None
    try:
        await sim.wait_ready()
        doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS,
                               routing={"soft_decline_codes": ["do_not_honor"]})
        orch = orchestrator(tmp_path, doc).start()
        await orch.wait_ready()
        load = Load(orch.url)
        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            await load.run(session, 25.0)
            warm = {"icbc": load.share("icbc", "ca", t0 + 15, t0 + 25), "ccb": load.share("ccb", "cb", t0 + 15, t0 + 25)}

            drop = time.monotonic()
            await behave(sim, "ca", segments=segments(0.40, 0.15))  # ca now approves icbc 60 %
            await load.run(session, 40.0)
        # When did icbc's traffic move? The first 5 s window after the drop with most of it on cb.
        moved_after = next((s for s in range(0, 36) if load.share("icbc", "cb", drop + s, drop + s + 5) > 0.5), None)
        late = load.share("icbc", "cb", drop + 30, drop + 40)
        print(f"\nwarm-up shares on the better channel: icbc->ca {warm['icbc']:.3f}, ccb->cb {warm['ccb']:.3f}; "
              f"after ca's icbc approval fell to 60 %: most icbc on cb from {moved_after} s, "
              f"share 30-40 s after {late:.3f}; ccb->cb then {load.share('ccb', 'cb', drop + 30, drop + 40):.3f}")
        assert warm["icbc"] >= 0.9 and warm["ccb"] >= 0.9, warm
        assert moved_after is not None and moved_after <= 30, moved_after
        assert late >= 0.8
        assert load.share("ccb", "cb", drop + 30, drop + 40) >= 0.9, "the other issuer's routing did not move"
        report = await check(SqliteReader(tmp_path / "orch.db"), await ledger(sim), settled=False)
        assert report.ok, report.violations[:10]
        assert report.recharges == len(load.results)
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()
