"""The status page's screenshot for people (docs/status-hour.png), made the honest way: the
real provider simulator and orchestrator as child processes, steady traffic for the page's
whole history (60 buckets of ``--bucket-s``), the busiest channel down from 40 % to 60 %
of the run (``PUT /_sim/{channel}/behaviour {"outage": true}``, then false), and then
``/status`` in headless Chromium.

    .venv/bin/python -m bench.status_screenshot                 # a real hour: buckets of 60 s
    .venv/bin/python -m bench.status_screenshot --bucket-s 3    # the same shape in 3 minutes

The page states its bucket size, so a shot made with accelerated buckets says so.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from orchestrator.activity import HISTORY_BUCKETS
from orchestrator.launch import ROOT, Child, free_port

__all__ = ["main"]

TOKEN = "status-shot-front-key"
# name, kind, simulated latency ms, jitter ms, decline rate: two e-wallet APIs and a bank.
CHANNELS = (
    ("alipay_direct", "direct_api", 28.0, 3.0, 0.03),
    ("wechat_direct", "direct_api", 45.0, 5.0, 0.04),
    ("unionpay_bank", "bank", 900.0, 120.0, 0.02),
)
DOWN = "alipay_direct"  # the busiest: routing prefers the fastest
OUTAGE = (0.40, 0.60)  # of the run
WINDOW = (1280, 1200)


def sim_doc() -> dict[str, Any]:
    return {"seed": 28, "channels": [
        {"name": name, "kind": kind, "webhook_secret": f"whsec_shot_{name}",
         "behaviour": {"latency_ms": ms, "latency_jitter_ms": jitter, "ping_latency_ms": 2, "decline_rate": declines,
                       "pending_rate": 0}}
        for name, kind, ms, jitter, declines in CHANNELS]}


def orch_doc(sim_url: str, db: Path, port: int, bucket_s: float) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "sync_wait_s": 10, "status_bucket_s": bucket_s},
        "storage": {"url": f"sqlite:///{db}"},
        "clients": [{"name": "shop", "key_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "scopes": ["recharge"]}],
        "channels": [{"name": name, "kind": kind, "base_url": f"{sim_url}/{name}", "webhook_secret": f"whsec_shot_{name}",
                      "currencies": ["CNY"], "countries": ["CN"], "methods": ["ewallet"],
                      "timeout_ms": 3000 if kind == "bank" else 1500}
                     for name, kind, *_ in CHANNELS],
        "routing": {"deadline_s": 15},
        "health": {"probe_interval_s": 2},
        "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404}},
        "limits": {"per_user": {"rate_per_s": 1000, "burst": 1000}},
    }


async def load(url: str, rate: float, stop: asyncio.Event, tally: dict[str, int]) -> None:
    """Open loop at ``rate`` per second (at most 200 waiting), many users, a few amounts."""
    amounts = (600, 3000, 6800, 12800)
    gate = asyncio.Semaphore(200)

    async def one(s: aiohttp.ClientSession, n: int) -> None:
        try:
            body = {"user_id": f"u{n % 5000}", "amount_minor": amounts[n % len(amounts)], "currency": "CNY",
                    "country": "CN", "method": "ewallet", "instrument": {"token": f"tok_{n % 5000}"}}
            async with s.post(url + "/v1/recharges", json=body, headers={
                    "Authorization": f"Bearer {TOKEN}", "Idempotency-Key": f"shot-{n}"}) as r:
                status = (await r.json()).get("status", str(r.status)) if r.status < 500 else str(r.status)
        except aiohttp.ClientError as exc:
            status = type(exc).__name__
        finally:
            gate.release()
        tally[status] = tally.get(status, 0) + 1

    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    async with aiohttp.ClientSession() as s:
        for n in itertools.count():
            if stop.is_set():
                break
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            await gate.acquire()
            task = asyncio.create_task(one(s, n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)


async def behave(sim_url: str, channel: str, **changes: Any) -> None:
    async with aiohttp.ClientSession() as s, s.put(f"{sim_url}/_sim/{channel}/behaviour", json=changes) as r:
        r.raise_for_status()


def shoot(url: str, out: Path) -> None:
    """``url`` in headless Chromium, as a PNG at ``out`` (the page fetches its data once)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=4000", f"--window-size={WINDOW[0]},{WINDOW[1]}",
             f"--screenshot={out}", url],
            capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed: {proc.stderr[-2000:]}")


async def run(workdir: Path, out: Path, bucket_s: float, rate: float) -> int:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    sim_port, port = free_port(), free_port()
    (workdir / "simulator.yaml").write_text(yaml.safe_dump(sim_doc()))
    sim = Child("simulator", ["orchestrator", "simulate", "--config", str(workdir / "simulator.yaml"),
                              "--port", str(sim_port)], workdir / "simulator.log", f"http://127.0.0.1:{sim_port}",
                "/_sim/stats")
    (workdir / "orchestrator.yaml").write_text(yaml.safe_dump(orch_doc(sim.url, workdir / "orch.db", port, bucket_s)))
    orch = Child("orchestrator", ["orchestrator", "serve", "--config", str(workdir / "orchestrator.yaml"),
                                  "--log-level", "warning"],
                 workdir / "orchestrator.log", f"http://127.0.0.1:{port}", "/healthz")
    run_s = HISTORY_BUCKETS * bucket_s
    tally: dict[str, int] = {}
    try:
        await sim.start().wait_ready()
        await orch.start().wait_ready()
        stop = asyncio.Event()
        traffic = asyncio.create_task(load(orch.url, rate, stop, tally))
        began = time.monotonic()
        for at, outage in ((OUTAGE[0], True), (OUTAGE[1], False)):
            await asyncio.sleep(max(0.0, began + at * run_s - time.monotonic()))
            await behave(sim.url, DOWN, outage=outage)
            print(f"{time.monotonic() - began:7.1f}s  {DOWN} {'down' if outage else 'back'}", flush=True)
        await asyncio.sleep(max(0.0, began + run_s - time.monotonic()))
        stop.set()
        await traffic
        out.parent.mkdir(parents=True, exist_ok=True)
        shoot(orch.url + "/status", out)
    finally:
        orch.stop()
        sim.stop()
    print(f"{sum(tally.values())} recharges over {run_s:.0f} s: {dict(sorted(tally.items()))}")
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.status_screenshot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bucket-s", type=float, default=60.0, help="server.status_bucket_s (default 60: a real hour)")
    ap.add_argument("--rate", type=float, default=20.0, help="recharges per second (default 20)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "status-hour.png")
    ap.add_argument("--workdir", type=Path, default=ROOT / "data" / "status-screenshot")
    args = ap.parse_args(argv)
    return asyncio.run(run(args.workdir, args.out, args.bucket_s, args.rate))


if __name__ == "__main__":
    sys.exit(main())
