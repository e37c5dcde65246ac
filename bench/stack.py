"""The processes under test: the simulator and the orchestrator (or the bare proxy), fresh
in a work dir, with the configs they are started on."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml

from orchestrator.launch import Child, free_port

WORKERS = 2  # orchestrator worker processes (--workers)
RISK_MODEL = True  # the example config's risk model, observing (--risk-model off: none)
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-front-key"
CHANNEL_MS = 28.0

# name, kind, currencies, countries, simulated latency ms, orchestrator timeout ms
CHANNELS = (
    ("alipay_direct", "direct_api", ["CNY", "HKD", "USD"], ["CN", "HK", "US"], CHANNEL_MS, 2000),
    ("wechat_direct", "direct_api", ["CNY", "HKD"], ["CN", "HK"], CHANNEL_MS + 4, 2000),
    ("gcash_direct", "direct_api", ["PHP", "USD"], ["PH", "US"], CHANNEL_MS, 2000),
    ("usdt_settle", "digital_currency", ["CNY", "HKD", "USD", "PHP"], ["CN", "HK", "US", "PH"], 1200, 4000),
    ("unionpay_bank", "bank", ["CNY"], ["CN"], 4800, 8000),
    ("bdo_bank", "bank", ["PHP"], ["PH"], 4800, 8000),
)
BUSIEST = "alipay_direct"


def sim_doc() -> dict[str, Any]:
    channels = []
    for name, kind, _cur, _cty, latency, _timeout in CHANNELS:
        behaviour: dict[str, Any] = {"latency_ms": latency, "latency_jitter_ms": 2 if kind == "direct_api" else 100,
                                     "ping_latency_ms": 1 if kind == "direct_api" else 5}
        if kind != "direct_api":
            behaviour["pending_rate"] = 0
        channels.append({"name": name, "kind": kind, "webhook_secret": f"whsec_bench_{name}", "behaviour": behaviour})
    return {"seed": 11, "channels": channels}


def _risk() -> dict[str, Any]:
    """The example config's risk model on every recharge, observing: the load's users recharge
    several times a minute with no step-up channel to send a challenge to, so acting would
    change the path measured, not the cost. ``--risk-model off``: no model, to price it."""
    if not RISK_MODEL:
        return {}
    model = yaml.safe_load((ROOT / "config" / "orchestrator.example.yaml").read_text())["risk"]["model"]
    return {"model": {**model, "enforce": False}}


def orch_doc(sim_url: str, db: Path, port: int) -> dict[str, Any]:
    channels = [
        {"name": name, "kind": kind, "base_url": f"{sim_url}/{name}", "webhook_secret": f"whsec_bench_{name}",
         "currencies": currencies, "countries": countries, "methods": ["ewallet"], "timeout_ms": timeout}
        for name, kind, currencies, countries, _latency, timeout in CHANNELS
    ]
    return {
        "server": {"host": "127.0.0.1", "port": port, "sync_wait_s": 10, "workers": WORKERS},
        "storage": {"url": f"sqlite:///{db}"},
        "clients": [{"name": "bench", "key_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "scopes": ["recharge"]}],
        "channels": channels,
        "routing": {"deadline_s": 15},
        "health": {"probe_interval_s": 2},
        "pricing": {"base_currency": "USD", "coins_per_unit": 70,
                    "rates": {"CNY": 0.1404, "HKD": 0.128, "USD": 1, "PHP": 0.0171}},
        "risk": _risk(),
    }


class Stack:
    """Simulator + orchestrator (or the baseline proxy), fresh, in a work dir; the
    orchestrator on SQLite, or on PostgreSQL when ``db_url`` is given."""

    def __init__(self, work: Path, target: str, db_url: str | None = None) -> None:
        self.work = work
        self.target = target
        self.db_url = db_url
        self.sim: Child | None = None
        self.server: Child | None = None

    async def __aenter__(self) -> Self:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        sim_port = free_port()
        (self.work / "sim.yaml").write_text(yaml.safe_dump(sim_doc()))
        self.sim = Child("simulator", ["orchestrator", "simulate", "--config", str(self.work / "sim.yaml"),
                                       "--port", str(sim_port)], self.work / "sim.log",
                         f"http://127.0.0.1:{sim_port}", "/_sim/stats").start()
        await self.sim.wait_ready()
        port = free_port()
        if self.target == "proxy":
            self.server = Child("proxy", ["bench.proxy", "--upstream", f"{self.sim.url}/alipay_direct",
                                          "--port", str(port)], self.work / "proxy.log",
                                f"http://127.0.0.1:{port}", "/healthz").start()
        else:
            cfg = self.work / "orch.yaml"
            doc = orch_doc(self.sim.url, self.work / "orch.db", port)
            if self.db_url:
                doc["storage"]["url"] = self.db_url
            cfg.write_text(yaml.safe_dump(doc))
            self.server = Child("orchestrator", ["orchestrator", "serve", "--config", str(cfg), "--log-level",
                                                 "warning"], self.work / "orch.log",
                                f"http://127.0.0.1:{port}", "/readyz").start()
        await self.server.wait_ready()
        await asyncio.sleep(2.5)  # a probe round, so routing starts from measured channels
        return self

    async def __aexit__(self, *exc: object) -> None:
        for child in (self.server, self.sim):
            if child is not None:
                child.stop()

    async def behave(self, channel: str, **changes: Any) -> None:
        assert self.sim is not None
        async with aiohttp.ClientSession() as s, s.put(f"{self.sim.url}/_sim/{channel}/behaviour", json=changes) as r:
            r.raise_for_status()
