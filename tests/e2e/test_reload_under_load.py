"""50 config reloads (by API and by SIGHUP, alternating channel sets, weights and
timeouts) while a steady load of recharges runs against the simulator: no request fails
because of a reload, the money invariants hold, and routing ends on the last config."""

from __future__ import annotations

import asyncio
import copy
import signal
import time

import aiohttp
import pytest
import yaml
from procs import FRONT_KEY, SRE_KEY, SqliteReader, ledger, orchestrator, orchestrator_doc, simulator

from orchestrator.invariants import check

pytestmark = pytest.mark.slow

CHANNELS = [
    {"name": n, "kind": "direct_api", "webhook_secret": f"whsec_{n}_e2e",
     "behaviour": {"latency_ms": 4 + i * 3, "latency_jitter_ms": 1, "ping_latency_ms": 1}}
    for i, n in enumerate(("ra", "rb", "rc"))
]
SETS = [("ra", "rb", "rc"), ("ra", "rb"), ("rb", "rc"), ("rc", "ra")]


def variant(base: dict, i: int) -> dict:
    doc = copy.deepcopy(base)
    keep = SETS[i % len(SETS)]
    doc["channels"] = [c for c in doc["channels"] if c["name"] in keep]
    for j, ch in enumerate(doc["channels"]):
        ch["weight"] = 1.0 + ((i + j) % 3)
        ch["timeout_ms"] = 500 + 100 * ((i + j) % 4)
    doc["routing"]["strategy"] = "weighted" if i % 2 else "smart"
    return doc


async def test_fifty_reloads_under_load_drop_nothing(tmp_path):
    sim = simulator(tmp_path, {"seed": 9, "channels": CHANNELS}).start()
    orch = None
    try:
        await sim.wait_ready()
        base = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS)
        orch = orchestrator(tmp_path, copy.deepcopy(base)).start()
        await orch.wait_ready()
        base["server"]["port"] = int(orch.url.rsplit(":", 1)[1])
        cfg_file = tmp_path / "orchestrator.yaml"
        statuses: list[tuple[int, str]] = []
        stop = asyncio.Event()
        applied: list[str] = []

        async def traffic(session: aiohttp.ClientSession, lane: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                body = {"user_id": f"u{n % 50}", "amount_minor": 8500, "currency": "CNY", "country": "CN",
                        "method": "ewallet", "instrument": {"token": "tok"}}
                async with session.post(orch.url + "/v1/recharges", json=body, headers={
                        "Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"rl-{lane}-{n}"}) as r:
                    rec = await r.json()
                    statuses.append((r.status, rec.get("status") if isinstance(rec, dict) else "?"))
                await asyncio.sleep(0.01)

        async def reloads(session: aiohttp.ClientSession) -> None:
            for i in range(50):
                doc = variant(base, i + 1)
                if i % 10 == 9:  # every tenth by SIGHUP from the file
                    cfg_file.write_text(yaml.safe_dump(doc))
                    orch.signal(signal.SIGHUP)
                    await asyncio.sleep(0.3)
                else:
                    async with session.put(orch.url + "/v1/admin/config", data=yaml.safe_dump(doc), headers={
                            "Authorization": f"Bearer {SRE_KEY}", "Content-Type": "application/yaml"}) as r:
                        body = await r.json()
                        assert r.status == 200, body
                        applied.append(body["version"])
                    await asyncio.sleep(0.12)
            stop.set()

        async with aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            await asyncio.gather(reloads(session), *(traffic(session, lane) for lane in range(8)))
            elapsed = time.monotonic() - t0
            last = variant(base, 50)
            async with session.get(orch.url + "/v1/admin/config", headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
                current = await r.json()
            assert [c["name"] for c in current["config"]["channels"]] == [c["name"] for c in last["channels"]]
            async with session.get(orch.url + "/v1/admin/config/history",
                                   headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
                sources = {h["source"] for h in (await r.json())["history"]}
            assert {"api", "file"} <= sources, sources
            q = "/v1/admin/routing/explain?currency=CNY&country=CN&method=ewallet&amount_minor=8500"
            async with session.get(orch.url + q, headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
                explain = await r.json()
            assert set(explain["candidates"]) == {c["name"] for c in last["channels"]}
            assert explain["strategy"] == last["routing"]["strategy"]

        bad = [s for s in statuses if s != (201, "succeeded")]
        assert not bad, f"{len(bad)} of {len(statuses)} requests did not succeed: {bad[:10]}"
        assert len(statuses) > 200, "the load ran throughout the reloads"
        report = await check(SqliteReader(tmp_path / "orch.db"), await ledger(sim), settled=False)
        assert report.ok, report.violations[:10]
        assert report.recharges == len(statuses)
        print(f"\n50 reloads in {elapsed:.1f}s under {len(statuses)} recharges: all succeeded; {report}")
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()
