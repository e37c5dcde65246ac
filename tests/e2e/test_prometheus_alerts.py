"""The alert rules on a real Prometheus: it scrapes an orchestrator running two workers
(one scrape of the port gathers both, labelled ``worker``) every second and evaluates
deploy/prometheus/alerts.yml every second, with its windows and ``for`` durations
shortened for the test. A channel goes down at the simulator: its approval and breaker
alerts fire within their ``for``, only for that channel; it comes back: they resolve.
The live exposition passes ``promtool check metrics`` on the way, and the money
invariants hold at the end."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from procs import FRONT_KEY, SqliteReader, behave, ledger, orchestrator, orchestrator_doc, simulator

from orchestrator.invariants import check
from orchestrator.launch import ROOT, free_port

pytestmark = pytest.mark.slow

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
WINDOW = "10s"  # every range in the rules (5m, 10m, 1h, ...)
FOR_S = 3  # every non-zero `for`
RATE = 25  # recharges per second, all first routed to alpha (priority)
CHANNEL_ALERTS = {"OrchestratorChannelApprovalLow", "OrchestratorChannelBreakerOpen"}
CHANNELS = [
    {"name": "alpha", "kind": "direct_api", "webhook_secret": "whsec_alpha_prom",
     "behaviour": {"latency_ms": 2, "latency_jitter_ms": 1, "ping_latency_ms": 0}},
    {"name": "beta", "kind": "direct_api", "webhook_secret": "whsec_beta_prom",
     "behaviour": {"latency_ms": 3, "latency_jitter_ms": 1, "ping_latency_ms": 0}},
]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` and .ci/run install it as root (apt-get install "
                    f"prometheus); elsewhere put Prometheus 2.x's binaries on PATH")
    return found


def shortened_rules(to: Path) -> Path:
    """alerts.yml as shipped, with every window and `for` shortened: a test copy."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smhdwy]\]", f"[{WINDOW}]", rule["expr"])
            if rule.get("for", "0m") not in ("0m", "0s"):
                rule["for"] = f"{FOR_S}s"
    to.write_text(yaml.safe_dump(doc, sort_keys=False))
    return to


@contextlib.contextmanager
def prometheus(tmp: Path, target: str) -> Iterator[str]:
    """A Prometheus server on a free loopback port, its TSDB in ``tmp``, scraping
    ``target`` as job "orchestrator"; stopped (and its files left to tmp) after."""
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(shortened_rules(tmp / "alerts.test.yml"))],
        "scrape_configs": [{"job_name": "orchestrator", "static_configs": [{"targets": [target]}]}],
    }))
    log = open(tmp / "prometheus.log", "ab")
    proc = subprocess.Popen([_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=log, start_new_session=True)
    log.close()
    try:
        yield f"http://127.0.0.1:{port}"
    except AssertionError as exc:  # what Prometheus said helps more than the timeout
        log_tail = (tmp / "prometheus.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\nprometheus.log:\n{log_tail}") from exc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def _api(session: aiohttp.ClientSession, prom: str, path: str, **params: str) -> Any:
    async with session.get(prom + path, params=params) as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "success", body
        return body["data"]


async def _ready(session: aiohttp.ClientSession, prom: str) -> bool:
    try:
        async with session.get(prom + "/-/ready") as r:
            return r.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def _until(probe: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await probe()
        if got:
            return got
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


class Load:
    """Recharges at a steady rate until stopped; every answer must be 201 or 202."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.answers: list[str] = []
        self._stop = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession) -> None:
        start, tasks = time.monotonic(), set()
        while not self._stop.is_set():
            task = asyncio.create_task(self._one(session))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, start + self.sent / RATE - time.monotonic()))
        await asyncio.gather(*tasks)

    def stop(self) -> None:
        self._stop.set()

    async def _one(self, session: aiohttp.ClientSession) -> None:
        self.sent += 1
        body = {"user_id": f"u{self.sent % 89}", "amount_minor": 8500, "currency": "CNY", "country": "CN",
                "method": "ewallet", "instrument": {"token": "tok_1"}}
        headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"prom-{self.sent}"}
        async with session.post(self.url + "/v1/recharges", json=body, headers=headers) as r:
            rec = await r.json()
            assert r.status in (201, 202), rec
            self.answers.append(rec["status"])


def _at(stamp: str) -> float:
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", stamp.replace("Z", "+00:00"))).timestamp()


async def test_a_channel_outage_fires_its_alerts_within_their_for_and_recovery_resolves_them(tmp_path):
    sim = simulator(tmp_path, {"seed": 3, "channels": CHANNELS}).start()
    orch = None
    try:
        await sim.wait_ready()
        doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS, server={"workers": 2},
                               routing={"strategy": "priority"},
                               health={"probe_interval_s": 0.5, "probe_timeout_ms": 300,
                                       "breaker": {"base_ejection_s": 2.0, "max_ejection_s": 4.0}})
        orch = orchestrator(tmp_path, doc).start()
        await orch.wait_ready()
        started = time.monotonic()
        with prometheus(tmp_path, orch.url.removeprefix("http://")) as prom:
            async with aiohttp.ClientSession() as session:
                load = Load(orch.url)
                loading = asyncio.create_task(load.run(session))
                try:
                    await _run(session, prom, sim, orch, started)
                finally:
                    load.stop()
                    await loading
        assert load.answers.count("succeeded") >= 0.99 * len(load.answers), "failover kept recharges succeeding"
        report = await check(SqliteReader(tmp_path / "orch.db"), await ledger(sim), settled=False)
        assert report.ok, report.violations[:10]
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()


async def _run(session: aiohttp.ClientSession, prom: str, sim: Any, orch: Any, started: float) -> None:
    async def query(q: str) -> list[dict[str, Any]]:
        return (await _api(session, prom, "/api/v1/query", query=q))["result"]

    async def active() -> list[dict[str, Any]]:
        return (await _api(session, prom, "/api/v1/alerts"))["alerts"]

    await _until(lambda: _ready(session, prom), 15, "Prometheus is ready")
    # Both workers' samples arrive through the one target, and alpha approves.
    await _until(lambda: query('count(count by (worker) (orchestrator_breaker_state{job="orchestrator"})) == 2'),
                 15, "one scrape of the port gathers both workers")
    await _until(lambda: query(f'sum(rate(orchestrator_attempts_total{{channel="alpha",outcome="captured"}}[{WINDOW}]))'
                               ' > 5'), 15, "alpha approves the traffic")
    assert not [a for a in await active() if a["labels"].get("channel")], "a healthy channel raises nothing"
    assert await query('up{job="orchestrator"} == 1')

    async with session.get(orch.url + "/metrics") as r:  # what Prometheus reads, checked by its own linter
        text = await r.text()
    assert 'worker="0"' in text and 'worker="1"' in text
    lint = subprocess.run([_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr

    outage = time.time()
    await behave(sim, "alpha", outage=True, outage_mode="refuse")
    fired: dict[str, tuple[float, float]] = {}  # alert -> (activeAt, seen firing)

    async def channel_alerts_fired() -> bool:
        for a in await active():
            name, channel = a["labels"]["alertname"], a["labels"].get("channel")
            if name in CHANNEL_ALERTS:
                assert channel == "alpha", a
                if a["state"] == "firing" and name not in fired:
                    fired[name] = (_at(a["activeAt"]), time.time())
        return set(fired) == CHANNEL_ALERTS

    await _until(channel_alerts_fired, 40, f"{sorted(CHANNEL_ALERTS)} fire for alpha")
    for name, (active_at, seen) in fired.items():
        assert active_at >= outage - 1, f"{name} was pending before the outage"
        # Pending for `for`, then firing at the next evaluation (1 s) and our next look (0.25 s).
        assert seen - active_at <= FOR_S + 2.5, f"{name} fired {seen - active_at:.1f} s after it was pending"

    recovery = time.time()
    await behave(sim, "alpha", outage=False)

    async def resolved() -> bool:
        return not [a for a in await active() if a["labels"]["alertname"] in CHANNEL_ALERTS]

    await _until(resolved, 40, "alpha's alerts resolve after it recovers")
    done = time.time()
    firing = [a["labels"]["alertname"] for a in await active() if a["state"] == "firing"]
    assert "OrchestratorInstanceDown" not in firing and "OrchestratorApiErrorRate" not in firing, firing
    print(f"\nalerts fired {', '.join(f'{n} {fired[n][1] - outage:.1f} s' for n in sorted(fired))} after the outage; "
          f"resolved {done - recovery:.1f} s after recovery; {time.monotonic() - started:.0f} s with Prometheus")
