"""Recharges parked ``pending`` with reason ``void_unconfirmed`` while a channel hangs
(simulator ``outage=true, outage_mode=hang``: every call stalls until the client gives
up) are retried by the reconciler every ``reconcile_interval_s`` (SPEC 7). Once the
channel answers again, each must leave ``pending`` within two reconcile intervals,
without any admin action (no config reload, no drain, no restart).

Real processes: the simulator and ``orchestrator serve`` alone and with two workers
(leases), with and without a config reload that replaced the channel object before the
outage (the reported runs used the admin config API)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import yaml
from procs import FRONT_KEY, SRE_KEY, SqliteReader, behave, ledger, orchestrator, orchestrator_doc, simulator

from orchestrator.invariants import check

pytestmark = pytest.mark.slow

RECONCILE_S = 2.0
PARKED = 8
CHANNELS = [
    {"name": "ph", "kind": "direct_api", "webhook_secret": "whsec_ph_e2e", "timeout_ms": 500,
     "behaviour": {"latency_ms": 2, "latency_jitter_ms": 0, "ping_latency_ms": 0, "hang_ms": 10_000}},
]


def sim_channels() -> list[dict]:
    return [{k: v for k, v in ch.items() if k != "timeout_ms"} for ch in CHANNELS]


async def statuses(reader: SqliteReader) -> dict[tuple[str, str | None], int]:
    rows = await reader.query("SELECT status, reason, count(*) FROM recharges GROUP BY 1, 2")
    return {(s, r): n for s, r, n in rows}


async def wait_for(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


@pytest.mark.parametrize("workers,reload_first", [(1, True), (2, True)])
async def test_parked_recharges_are_retried_soon_after_a_hung_channel_recovers(tmp_path, workers, reload_first):
    sim = simulator(tmp_path, {"seed": 5, "channels": sim_channels()}).start()
    orch = None
    try:
        await sim.wait_ready()
        doc = orchestrator_doc(
            sim.url, tmp_path / "orch.db", CHANNELS, server={"workers": workers, "sync_wait_s": 1},
            routing={"deadline_s": 6, "inquiry": {"attempts": 2, "initial_backoff_ms": 50, "max_backoff_ms": 200,
                                                  "reconcile_interval_s": RECONCILE_S}},
            health={"probe_interval_s": 0.5, "probe_timeout_ms": 300})
        orch = orchestrator(tmp_path, doc).start()
        await orch.wait_ready()
        reader = SqliteReader(tmp_path / "orch.db")
        async with aiohttp.ClientSession() as s:
            if reload_first:  # a new timeout: the channel object (and its session) is replaced
                current = yaml.safe_load((tmp_path / "orchestrator.yaml").read_text())
                current["channels"][0]["timeout_ms"] = 501
                async with s.put(orch.url + "/v1/admin/config", json=current,
                                 headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
                    assert r.status == 200 and (await r.json())["applied"]
            await behave(sim, "ph", outage=True, outage_mode="hang")
            for i in range(PARKED):
                body = {"user_id": f"u{i}", "amount_minor": 8500, "currency": "CNY", "country": "CN",
                        "method": "ewallet", "instrument": {"token": "tok"}}
                async with s.post(orch.url + "/v1/recharges", json=body, headers={
                        "Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"park-{i}"}) as r:
                    assert r.status in (201, 202), await r.text()

            async def all_parked() -> bool:
                return (await statuses(reader)).get(("pending", "void_unconfirmed"), 0) == PARKED

            await wait_for(all_parked, 20, f"{PARKED} recharges parked void_unconfirmed")
            # Parked through two more reconcile passes while the channel still hangs.
            await asyncio.sleep(2 * RECONCILE_S + 0.5)
            assert (await statuses(reader)).get(("pending", "void_unconfirmed"), 0) == PARKED

            await behave(sim, "ph", outage=False)
            recovered = time.monotonic()

            async def none_pending() -> bool:
                return not any(status == "pending" for status, _ in await statuses(reader))

            limit = 2 * RECONCILE_S + 1.5
            try:
                await wait_for(none_pending, limit, "")
            except AssertionError:
                raise AssertionError(
                    f"{(await statuses(reader))} still {limit:.1f} s after the channel recovered "
                    f"(reconcile_interval_s={RECONCILE_S})") from None
            print(f"\nworkers={workers} reload_first={reload_first}: parked recharges left pending "
                  f"{time.monotonic() - recovered:.1f} s after recovery")
        report = await check(reader, await ledger(sim), settled=True)
        assert report.ok, report.violations[:10]
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()
