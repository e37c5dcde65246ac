"""/status in headless Chromium while traffic runs: every configured channel and its state
appear, the page updates itself, and a screenshot lands in data/status.png for people; the
last hour's charts (here an accelerated hour of 1 s buckets) show an injected outage.
The committed screenshot, docs/status-hour.png, is made by bench/status_screenshot.py.

Debian's chromium package is installed by this test's set-up when it is missing (apt-get,
as the CI machine's root); if it cannot be installed the test fails rather than skips."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile

import aiohttp
import pytest
from procs import FRONT_KEY, orchestrator, orchestrator_doc, simulator

from orchestrator.launch import ROOT

pytestmark = pytest.mark.slow

CHANNELS = [
    {"name": "page_direct", "kind": "direct_api", "webhook_secret": "whsec_page_direct",
     "behaviour": {"latency_ms": 5, "latency_jitter_ms": 1, "ping_latency_ms": 1}},
    {"name": "page_second", "kind": "direct_api", "webhook_secret": "whsec_page_second",
     "behaviour": {"latency_ms": 12, "latency_jitter_ms": 1, "ping_latency_ms": 1}},
    {"name": "page_bank", "kind": "bank", "webhook_secret": "whsec_page_bank",
     "behaviour": {"latency_ms": 200, "latency_jitter_ms": 10, "ping_latency_ms": 2, "pending_rate": 0}},
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"cannot install Debian's chromium ({' '.join(cmd)}): {proc.stderr[-2000:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.fail("chromium installed but not on PATH")
    return found


def browse(binary: str, url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=4000", "--window-size=1280,820", *args, url],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


async def traffic(url: str, stop: asyncio.Event) -> None:
    n = 0
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            n += 1
            body = {"user_id": f"u{n % 20}", "amount_minor": 8500, "currency": "CNY", "country": "CN",
                    "method": "ewallet", "instrument": {"token": "tok"}}
            async with s.post(url + "/v1/recharges", json=body, headers={
                    "Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"page-{n}"}) as r:
                await r.read()
            await asyncio.sleep(0.02)


async def test_the_status_page_shows_every_channel_and_updates_itself(tmp_path):
    binary = chromium()
    sim = simulator(tmp_path, {"seed": 2, "channels": CHANNELS}).start()
    orch = None
    try:
        await sim.wait_ready()
        orch = orchestrator(tmp_path, orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS)).start()
        await orch.wait_ready()
        stop = asyncio.Event()
        load = asyncio.create_task(traffic(orch.url, stop))
        await asyncio.sleep(2)
        first = await asyncio.to_thread(browse, binary, orch.url + "/status", "--dump-dom")
        await asyncio.sleep(2.5)
        second = await asyncio.to_thread(browse, binary, orch.url + "/status", "--dump-dom")
        # Into data/ (not committed), for a look; docs/status-hour.png is bench/status_screenshot.py's.
        shot = ROOT / "data" / "status.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(browse, binary, orch.url + "/status", f"--screenshot={shot}")
        stop.set()
        await load
        for dom in (first, second):
            for ch in CHANNELS:
                row = re.search(rf'<tr data-channel="{ch["name"]}">(.*?)</tr>', dom, re.S)
                assert row, f"{ch['name']} missing from the page"
                assert re.search(r'class="pill (closed|half_open|open)"', row.group(1)), "breaker state shown"
                assert re.search(r'class="pill (healthy|degraded|recovering|ejected|down|unknown)', row.group(1)), \
                    f"channel state shown: {row.group(1)[:300]}"
        assert "<span id=\"err\"></span>" in second, "the page refreshed without errors"
        succeeded = [re.search(r"<b>([0-9.]+)</b>succeeded/min", dom) for dom in (first, second)]
        assert all(succeeded), "outcome rates shown"
        assert float(succeeded[1].group(1)) > float(succeeded[0].group(1)), "the page updated with the traffic"
        assert shot.exists() and shot.stat().st_size > 10_000
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()


def chart(dom: str, kind: str, channel: str | None = None) -> tuple[int, list[float], str]:
    """An SVG chart of the page: its count of points, their values, its markup."""
    where = rf'data-chart="{kind}"' + (rf'\s+data-channel="{channel}"' if channel else "")
    found = re.search(rf'<svg class="chart" {where}\s+data-points="(\d+)"(.*?)</svg>', dom, re.S)
    assert found, f"no {kind} chart{' for ' + channel if channel else ''}"
    return int(found.group(1)), [float(v) for v in re.findall(r'data-v="([0-9.]+)"', found.group(2))], found.group(2)


async def test_the_last_hour_is_drawn_as_charts_and_shows_an_injected_outage(tmp_path):
    binary = chromium()
    sim = simulator(tmp_path, {"seed": 3, "channels": CHANNELS}).start()
    orch = None
    try:
        await sim.wait_ready()
        # 60 buckets of 1 s: the page's hour, accelerated. Priority routing (config order), so
        # where the traffic goes is known: page_direct, then page_second while it is down.
        doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS, server={"status_bucket_s": 1},
                               routing={"strategy": "priority"})
        orch = orchestrator(tmp_path, doc).start()
        await orch.wait_ready()
        stop = asyncio.Event()
        load = asyncio.create_task(traffic(orch.url, stop))
        async with aiohttp.ClientSession() as s:
            await asyncio.sleep(3)
            async with s.put(sim.url + "/_sim/page_direct/behaviour", json={"outage": True}) as r:
                assert r.status == 200, await r.text()
            await asyncio.sleep(4)
            async with s.put(sim.url + "/_sim/page_direct/behaviour", json={"outage": False}) as r:
                assert r.status == 200, await r.text()
            await asyncio.sleep(2)
        dom = await asyncio.to_thread(browse, binary, orch.url + "/status", "--dump-dom")
        stop.set()
        await load
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()
    assert "<span id=\"err\"></span>" in dom, "the page drew without errors"
    assert re.search(r'id="span">1 min<', dom) and "60 buckets of 1 s" in dom, "the page says what it spans"
    points, _, svg = chart(dom, "outcomes")
    assert points >= 8 and svg.count("<rect") >= points, "recharges by outcome, a bar per busy bucket"
    points, failovers, _ = chart(dom, "failovers")
    assert points >= 1 and sum(failovers) >= 1, "the outage's failovers"
    for ch in CHANNELS:
        for kind in ("approval", "p99", "share"):
            points, values, svg = chart(dom, kind, ch["name"])
            assert svg.count("<circle") == len(values) == points, (ch["name"], kind)
    points, approval, svg = chart(dom, "approval", "page_direct")
    assert points >= 3 and max(approval) == 1.0 and min(approval) < 1.0, f"the dip: {approval}"
    assert "<polyline" in svg
    _, share, _ = chart(dom, "share", "page_direct")
    assert max(share) == 1.0 and min(share) == 0.0, f"page_direct's traffic went: {share}"
    _, second, _ = chart(dom, "share", "page_second")
    assert max(second) == 1.0, f"the traffic moved to page_second: {second}"
    _, p99, _ = chart(dom, "p99", "page_second")
    assert p99 and min(p99) >= 10, f"p99 in ms, page_second's 12 ms at least: {p99}"
