"""A config reload that replaces a channel (a changed ``timeout_ms``, ``base_url``,
``api_key``, ...) swaps in a new channel object with its own HTTP session. The old one
must be closed by the orchestrator (SPEC 10: retired channels stay reachable for the
attempts they hold, and are then closed), never left for the garbage collector: aiohttp
then prints "Unclosed client session" / "Unclosed connector" on stderr for every
replaced channel. The orchestrator runs as a real process (alone, and with two workers)
against the simulator; its stderr is its log file."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
import yaml
from procs import FRONT_KEY, SRE_KEY, SqliteReader, ledger, orchestrator, orchestrator_doc, simulator

from orchestrator.invariants import check

pytestmark = pytest.mark.slow

FAST = {"latency_ms": 2, "latency_jitter_ms": 0, "ping_latency_ms": 0}
CHANNELS = [
    {"name": "sa", "kind": "direct_api", "webhook_secret": "whsec_sa_e2e", "behaviour": FAST},
    {"name": "sb", "kind": "direct_api", "webhook_secret": "whsec_sb_e2e", "behaviour": FAST},
]
BODY = {"user_id": "u1", "amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet",
        "instrument": {"token": "tok"}}


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_reload_that_replaces_a_channel_closes_the_old_session(tmp_path, workers):
    sim = simulator(tmp_path, {"seed": 1, "channels": CHANNELS}).start()
    orch = None
    try:
        await sim.wait_ready()
        doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS, server={"workers": workers})
        orch = orchestrator(tmp_path, doc).start()
        await orch.wait_ready()
        cfg_file = tmp_path / "orchestrator.yaml"
        admin = {"Authorization": f"Bearer {SRE_KEY}"}
        async with aiohttp.ClientSession() as s:
            # Every channel's session is in use (probes every 0.5 s, and a few charges).
            for i in range(4):
                async with s.post(orch.url + "/v1/recharges", json=BODY, headers={
                        "Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"rs-{i}"}) as r:
                    assert r.status in (201, 202), await r.text()
            await asyncio.sleep(1.0)
            # Three reloads, each replacing channel "sa" (a new timeout makes a new
            # channel object): two by PUT /v1/admin/config, one by SIGHUP.
            for n, how in enumerate(("api", "api", "sighup")):
                current = yaml.safe_load(cfg_file.read_text())
                current["channels"][0]["timeout_ms"] = 600 + n
                if how == "api":
                    async with s.put(orch.url + "/v1/admin/config", json=current, headers=admin) as r:
                        body = await r.json()
                        assert r.status == 200 and body["applied"], body
                        assert body["diff"] == [f"~ channels[sa].timeout_ms: {599 + n if n else 500} -> {600 + n}"]
                else:
                    cfg_file.write_text(yaml.safe_dump(current))
                    orch.signal(signal.SIGHUP)
                await asyncio.sleep(1.5)
            async with s.get(orch.url + "/v1/admin/config", headers=admin) as r:
                assert (await r.json())["config"]["channels"][0]["timeout_ms"] == 602
            # The replaced channels still exist for nobody; traffic goes on.
            async with s.post(orch.url + "/v1/recharges", json=BODY, headers={
                    "Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": "rs-after"}) as r:
                assert r.status in (201, 202), await r.text()
        orch.stop()
        report = await check(SqliteReader(tmp_path / "orch.db"), await ledger(sim), settled=True)
        assert report.ok and report.recharges == 5, (report.recharges, report.violations[:10])
        log = orch.log_path.read_text(errors="replace")
        unclosed = log.count("Unclosed client session")
        assert unclosed == 0, (
            f"{unclosed} 'Unclosed client session' warning(s) (and {log.count('Unclosed connector')} "
            f"'Unclosed connector') on the orchestrator's stderr after 3 reloads that replaced a channel")
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()
