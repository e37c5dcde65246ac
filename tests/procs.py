"""Real processes for end-to-end tests: the simulator and the orchestrator, started on
free loopback ports, waited for, and always stopped (kill -9 included)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from orchestrator.invariants import SqliteFile, check
from orchestrator.launch import Child, free_port


Proc = Child


def simulator(tmp: Path, doc: dict[str, Any]) -> Proc:
    port = free_port()
    cfg = tmp / "simulator.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return Proc("simulator", ["orchestrator", "simulate", "--config", str(cfg), "--port", str(port)],
                tmp / "simulator.log", f"http://127.0.0.1:{port}", "/_sim/stats")


def orchestrator(tmp: Path, doc: dict[str, Any], *, name: str = "orchestrator", db: str | None = None) -> Proc:
    port = doc.setdefault("server", {}).get("port") or free_port()
    doc["server"]["port"] = port
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    args = ["orchestrator", "serve", "--config", str(cfg)]
    if db:
        args += ["--db", db]
    return Proc(name, args, tmp / f"{name}.log", f"http://127.0.0.1:{port}", "/healthz")


SqliteReader = SqliteFile


# Every fault the simulator injects, at rates that leave most recharges succeeding.
FAULTY: dict[str, Any] = {
    "latency_ms": 3, "latency_jitter_ms": 1, "ping_latency_ms": 0, "hang_ms": 900,
    "decline_rate": 0.03, "decline_codes": {"insufficient_funds": 1, "issuer_unavailable": 1},
    "not_processed_rate": 0.04, "timeout_before_capture_rate": 0.02, "timeout_after_capture_rate": 0.03,
    "reset_rate": 0.02, "error_500_after_capture_rate": 0.02, "pending_rate": 0.08, "webhook_delay_ms": 300,
    "duplicate_webhook_rate": 0.3, "out_of_order_webhook_rate": 0.3, "webhook_drop_rate": 0.1,
    # Still working on it when the client (500 ms timeout) gives up: it lands 900 ms in.
    "late_processing_rate": 0.04, "late_processing_ms": 900}


def faulty_channels(**extra: Any) -> list[dict[str, Any]]:
    """Two direct APIs and a digital-currency channel (slower, often pending), all FAULTY."""
    faulty = {**FAULTY, **extra}
    return [
        {"name": "alpha", "kind": "direct_api", "webhook_secret": "whsec_alpha_e2e", "behaviour": faulty},
        {"name": "beta", "kind": "direct_api", "webhook_secret": "whsec_beta_e2e",
         "behaviour": {**faulty, "latency_ms": 6}},
        {"name": "gamma", "kind": "digital_currency", "webhook_secret": "whsec_gamma_e2e",
         "behaviour": {**faulty, "latency_ms": 15, "pending_rate": 0.3}},
    ]


FRONT_KEY = "e2e-front-key"
SRE_KEY = "e2e-sre-key"


def orchestrator_doc(sim_url: str, db: Path, channels: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    """An orchestrator config for the simulator's ``channels`` (their simulator docs)."""
    import hashlib

    def sha(k: str) -> str:
        return hashlib.sha256(k.encode()).hexdigest()

    chans = []
    for ch in channels:
        chans.append({
            "name": ch["name"], "kind": ch["kind"], "base_url": f"{sim_url}/{ch['name']}",
            "webhook_secret": ch["webhook_secret"], "currencies": ["CNY", "PHP"], "countries": ["CN", "PH"],
            "methods": ["ewallet"], "timeout_ms": ch.get("timeout_ms", 500), **({"api_key": ch["api_key"]} if ch.get("api_key") else {}),
            **({"step_up": True} if ch.get("step_up") else {}),
        })
    doc: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "sync_wait_s": 3},
        "storage": {"url": f"sqlite:///{db}"},
        "clients": [{"name": "front", "key_sha256": sha(FRONT_KEY), "scopes": ["recharge"]},
                    {"name": "sre", "key_sha256": sha(SRE_KEY), "scopes": ["admin"]}],
        "channels": chans,
        "routing": {"max_attempts": 3, "deadline_s": 8,
                    "inquiry": {"attempts": 3, "initial_backoff_ms": 50, "max_backoff_ms": 400,
                                "reconcile_interval_s": 1}},
        "health": {"probe_interval_s": 0.5, "probe_timeout_ms": 300},
        "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404, "PHP": 0.0171}},
        # Test traffic reuses few users at high rates: lift the per-user limit.
        "limits": {"per_user": {"rate_per_s": 10000, "burst": 10000}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key].update(value)
        else:
            doc[key] = value
    return doc


async def ledger(sim: Proc) -> list[Any]:
    from orchestrator.invariants import LedgerPayment

    async with aiohttp.ClientSession() as s, s.get(sim.url + "/_sim/ledger") as r:
        body = await r.json()
    return [LedgerPayment(p["channel"], p["reference"], p["status"], p.get("amount_minor"), p.get("currency"),
                          p.get("refunded_minor"))
            for p in body["payments"]]


async def settle(store: Any, timeout_s: float = 60.0) -> None:
    """Wait until no recharge in ``store`` (anything with ``query``: a SqliteReader, a
    journal) is processing or pending, nor waits for an instantly credited payment to
    settle: every deadline passed and the reconciler done. Returns when the time is up
    too; the invariant check after it says what is left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = await store.query("SELECT count(*) FROM recharges WHERE status IN ('processing', 'pending') "
                                 "OR settlement = 'pending'")
        if rows[0][0] == 0:
            return
        await asyncio.sleep(0.5)


async def behave(sim: Proc, channel: str, **changes: Any) -> None:
    async with aiohttp.ClientSession() as s, s.put(f"{sim.url}/_sim/{channel}/behaviour", json=changes) as r:
        assert r.status == 200, await r.text()


@contextmanager
def checked_stack(tmp: Path, channels: list[dict[str, Any]], *, limits: dict[str, Any] | None = None,
                  **server: Any) -> Iterator[Proc]:
    """A simulator and an orchestrator on SQLite for a module of end-to-end tests; yields
    the orchestrator. When the module is done, the money invariants (SPEC 18) are checked
    against the simulator's ledger, whatever the tests sent."""
    sim = simulator(tmp, {"seed": 1, "channels": channels}).start()
    orch = None
    try:
        asyncio.run(sim.wait_ready())
        doc = orchestrator_doc(sim.url, tmp / "orch.db", channels, server=server)
        doc["limits"].update(limits or {})
        orch = orchestrator(tmp, doc).start()
        asyncio.run(orch.wait_ready())
        yield orch
        report = asyncio.run(check(SqliteFile(tmp / "orch.db"), asyncio.run(ledger(sim)), settled=False))
        assert report.ok, report.violations[:10]
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()
