"""``server.workers: 2``: two worker processes behind one port under a supervisor, with
one journal writer. A kill -9 of a worker, then of the supervisor itself, loses no
recharge and charges none twice; admin changes (config, rollback, drains, SIGHUP)
reach every worker; metrics come from all of them."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import yaml
from procs import FRONT_KEY, SRE_KEY, SqliteReader, checked_stack, ledger, orchestrator, orchestrator_doc, settle, simulator

from orchestrator.invariants import check

pytestmark = pytest.mark.slow

FAULTY = {"latency_ms": 3, "latency_jitter_ms": 1, "ping_latency_ms": 0, "hang_ms": 600,
          "decline_rate": 0.03, "not_processed_rate": 0.04, "timeout_before_capture_rate": 0.02,
          "timeout_after_capture_rate": 0.03, "reset_rate": 0.02, "pending_rate": 0.05, "webhook_delay_ms": 200,
          "duplicate_webhook_rate": 0.3, "out_of_order_webhook_rate": 0.3}
CHANNELS = [
    {"name": "alpha", "kind": "direct_api", "webhook_secret": "whsec_alpha_w", "behaviour": FAULTY},
    {"name": "beta", "kind": "direct_api", "webhook_secret": "whsec_beta_w", "behaviour": {**FAULTY, "latency_ms": 6}},
]
CLEAN = [
    {"name": "alpha", "kind": "direct_api", "webhook_secret": "whsec_alpha_w", "behaviour": {"latency_ms": 2}},
    {"name": "beta", "kind": "direct_api", "webhook_secret": "whsec_beta_w", "behaviour": {"latency_ms": 2}},
]
TOTAL = 1500
CONCURRENCY = 30
ADMIN = {"Authorization": f"Bearer {SRE_KEY}"}


def body_for(i: int) -> dict[str, Any]:
    rnd = random.Random(i)
    return {"user_id": f"u{i % 200}", "amount_minor": rnd.choice([500, 1000, 8500, 20000]),
            "currency": "CNY", "country": "CN", "method": "ewallet", "instrument": {"token": f"tok_{i % 40}"}}


def _worker_pids(supervisor_pid: int) -> dict[int, int]:
    """Worker index -> pid, among the supervisor's children."""
    out = {}
    for child in psutil.Process(supervisor_pid).children():
        try:
            cmd = child.cmdline()
        except psutil.Error:  # a killed worker not yet reaped
            continue
        if "_worker" in cmd:
            out[int(cmd[cmd.index("--index") + 1])] = child.pid
    return out


def _tree(pid: int) -> list[int]:
    return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]


def _all_gone(pids: list[int], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


async def test_kill_9_of_a_worker_then_of_the_supervisor_loses_nothing(tmp_path):
    sim = simulator(tmp_path, {"seed": 5, "channels": CHANNELS}).start()
    db = tmp_path / "orch.db"
    orch = None
    try:
        await sim.wait_ready()
        orch = orchestrator(tmp_path, orchestrator_doc(sim.url, db, CHANNELS, server={"workers": 2})).start()
        await orch.wait_ready()
        assert orch.pid is not None
        assert len(_worker_pids(orch.pid)) == 2
        answers: dict[int, dict[str, Any]] = {}
        done = 0
        seen_workers: set[str] = set()
        up = asyncio.Event()
        up.set()

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            nonlocal done
            headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"key-{i}"}
            for _ in range(300):  # a front service retries with the same key until it hears back
                await up.wait()
                try:
                    async with session.post(orch.url + "/v1/recharges", json=body_for(i), headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=15)) as r:
                        if r.status in (201, 202):
                            answers[i] = await r.json()
                            seen_workers.add(r.headers["X-Worker"])
                            done += 1
                            return
                        if r.status in (409, 503):  # in progress on another worker, or a worker stopping
                            await asyncio.sleep(0.2)
                            continue
                        raise AssertionError(f"key-{i}: {r.status} {await r.text()}")
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.1)
            raise AssertionError(f"key-{i} never answered")

        async def chaos() -> None:
            assert orch is not None and orch.pid is not None
            while done < TOTAL // 3:
                await asyncio.sleep(0.05)
            # One worker dies: the other keeps serving; the supervisor starts it again.
            before = _worker_pids(orch.pid)
            psutil.Process(before[0]).send_signal(signal.SIGKILL)
            deadline = time.monotonic() + 30
            while _worker_pids(orch.pid).get(0) in (None, before[0]):
                assert time.monotonic() < deadline, "worker 0 was not started again"
                await asyncio.sleep(0.1)
            while done < 2 * TOTAL // 3:
                await asyncio.sleep(0.05)
            # The supervisor dies: its workers and its journal writer go with it.
            up.clear()
            tree = _tree(orch.pid)
            orch.kill9()
            assert await asyncio.to_thread(_all_gone, tree), "a process outlived the supervisor"
            orch.start()
            await orch.wait_ready()
            up.set()

        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(TOTAL):
            queue.put_nowait(i)

        async def client(session: aiohttp.ClientSession) -> None:
            while not queue.empty():
                await one(session, queue.get_nowait())

        async with aiohttp.ClientSession() as session:
            task = asyncio.create_task(chaos())
            await asyncio.gather(*(client(session) for _ in range(CONCURRENCY)))
            await task
        assert len(answers) == TOTAL
        assert seen_workers == {"0", "1"}, seen_workers

        reader = SqliteReader(db)
        await settle(reader)
        report = await check(reader, await ledger(sim), settled=True)
        assert report.ok, report.violations[:20]
        assert report.recharges == TOTAL, report
        by_key = dict(await reader.query("SELECT idempotency_key, id FROM recharges"))
        assert all(by_key[f"key-{i}"] == a["id"] for i, a in answers.items()), "a retry made a second recharge"
        assert "pending" not in report.by_status and "processing" not in report.by_status, report.by_status
        owners = {o for (o,) in await reader.query("SELECT DISTINCT owner FROM leases")}
        assert owners <= {"local-w0", "local-w1"} and owners, owners
        print(f"\nworkers kill -9 e2e: {report}")
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()


async def _per_worker(url: str, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET ``path`` on fresh connections until both workers have answered; worker -> body."""
    seen: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(200):
            async with s.get(url + path, headers=headers) as r:
                assert r.status == 200, await r.text()
                seen.setdefault(r.headers["X-Worker"], await r.json())
            if len(seen) == 2:
                return seen
    raise AssertionError(f"only workers {sorted(seen)} answered {path}")


async def _versions(url: str) -> set[str]:
    return {body["version"] for body in (await _per_worker(url, "/v1/admin/config", ADMIN)).values()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    with checked_stack(tmp, CLEAN, workers=2) as orch:
        yield orch, tmp


async def test_config_changes_reach_every_worker_in_one_order(stack):
    orch, tmp = stack
    start = await _versions(orch.url)
    assert len(start) == 1
    async with aiohttp.ClientSession() as s:
        current = (await (await s.get(orch.url + "/v1/admin/config", headers=ADMIN)).json())["config"]
        changed = {**current, "health": {**current["health"], "probe_interval_s": 0.7}}
        changed["clients"] = yaml.safe_load((tmp / "orchestrator.yaml").read_text())["clients"]
        async with s.put(orch.url + "/v1/admin/config", json=changed, headers=ADMIN) as r:
            applied = await r.json()
            assert r.status == 200 and applied["applied"], applied
            assert [w["version"] for w in applied["workers"]] == [applied["version"]] * 2
        assert await _versions(orch.url) == {applied["version"]}
        # An invalid config changes nothing anywhere.
        async with s.put(orch.url + "/v1/admin/config", json={**changed, "routing": {"max_attempts": 0}},
                         headers=ADMIN) as r:
            assert r.status == 422 and (await r.json())["error"]["code"] == "validation_failed"
        assert await _versions(orch.url) == {applied["version"]}
        histories = await _per_worker(orch.url, "/v1/admin/config/history", ADMIN)
        assert len({tuple(h["version"] for h in body["history"]) for body in histories.values()}) == 1
        async with s.post(orch.url + "/v1/admin/config/rollback", headers=ADMIN) as r:
            assert r.status == 200, await r.text()
        assert await _versions(orch.url) == start


async def test_sighup_to_the_supervisor_reloads_every_worker(stack):
    orch, tmp = stack
    cfg = tmp / "orchestrator.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["routing"]["max_attempts"] = 2
    cfg.write_text(yaml.safe_dump(doc))
    before = await _versions(orch.url)
    orch.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while (versions := await _versions(orch.url)) == before or len(versions) != 1:
        assert time.monotonic() < deadline, versions
        await asyncio.sleep(0.2)
    sources = await _per_worker(orch.url, "/v1/admin/config", ADMIN)
    assert {body["source"] for body in sources.values()} == {"file"}


async def test_a_drain_reaches_every_worker_and_traffic_avoids_the_channel(stack):
    orch, _ = stack
    async with aiohttp.ClientSession() as s:
        async with s.post(orch.url + "/v1/admin/channels/alpha/drain", headers=ADMIN) as r:
            body = await r.json()
            assert r.status == 200 and [w["drained"] for w in body["workers"]] == [True, True], body
        health = await _per_worker(orch.url, "/v1/health/channels")
        for report in health.values():
            assert {c["channel"]: c["drained"] for c in report["channels"]} == {"alpha": True, "beta": False}
        channels = set()
        for i in range(40):
            headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"drained-{i}"}
            async with s.post(orch.url + "/v1/recharges", json=body_for(i), headers=headers) as r:
                assert r.status == 201, await r.text()
                channels.add((await r.json())["channel"])
        assert channels == {"beta"}
        async with s.post(orch.url + "/v1/admin/channels/alpha/enable", headers=ADMIN) as r:
            assert r.status == 200
        health = await _per_worker(orch.url, "/v1/health/channels")
        assert all(not c["drained"] for report in health.values() for c in report["channels"])


async def test_metrics_gather_every_worker(stack):
    orch, _ = stack
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"metrics-{i}"}
            async with s.post(orch.url + "/v1/recharges", json=body_for(i), headers=headers) as r:
                assert r.status == 201
        async with s.get(orch.url + "/metrics") as r:
            text = await r.text()
    assert r.status == 200
    assert 'worker="0"' in text and 'worker="1"' in text
    assert text.count("# TYPE orchestrator_attempts_total counter") == 1, "one family per metric"
    captured = [line for line in text.splitlines() if line.startswith("orchestrator_attempts_total{")
                and 'outcome="captured"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in captured) >= 20


def test_the_port_taken_fails_at_once(tmp_path):
    """Bound by the supervisor before any worker starts: a taken port is a clear failure."""
    import socket
    import subprocess
    import sys

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        doc = orchestrator_doc("http://127.0.0.1:9", tmp_path / "o.db", CLEAN,
                               server={"workers": 2, "port": blocker.getsockname()[1]})
        cfg = Path(tmp_path / "o.yaml")
        cfg.write_text(yaml.safe_dump(doc))
        out = subprocess.run([sys.executable, "-m", "orchestrator", "serve", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "cannot_listen" in out.stderr, out.stderr[-2000:]
    finally:
        blocker.close()


async def test_a_config_that_cannot_be_applied_is_refused_and_a_restart_stays_healthy(stack):
    """Valid but not applicable (a CA file that does not exist): 422 on every worker, no
    part of the history, and a worker restarted afterwards starts on the running config."""
    orch, tmp = stack
    before = await _versions(orch.url)
    async with aiohttp.ClientSession() as s:
        current = (await (await s.get(orch.url + "/v1/admin/config", headers=ADMIN)).json())["config"]
        doc = {**current, "clients": yaml.safe_load((tmp / "orchestrator.yaml").read_text())["clients"]}
        doc["channels"] = [dict(c) for c in current["channels"]]
        for c, original in zip(doc["channels"], yaml.safe_load((tmp / "orchestrator.yaml").read_text())["channels"]):
            c["webhook_secret"] = original["webhook_secret"]
        doc["channels"][0]["ca_file"] = str(tmp / "no-such-ca.pem")
        async with s.put(orch.url + "/v1/admin/config", json=doc, headers=ADMIN) as r:
            body = await r.json()
            assert r.status == 422 and body["error"]["code"] == "validation_failed", body
            assert "cannot be applied" in body["error"]["message"]
    assert await _versions(orch.url) == before
    assert orch.pid is not None
    old = _worker_pids(orch.pid)[0]
    psutil.Process(old).send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        pids = _worker_pids(orch.pid)
        if pids.get(0) not in (None, old):
            try:
                if await _versions(orch.url) == before:
                    break
            except (aiohttp.ClientError, AssertionError):
                pass
        assert time.monotonic() < deadline, "worker 0 did not come back on the running config"
        await asyncio.sleep(0.2)


def _serve(cfg: Path, timeout: float = 30) -> tuple[int, str]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "orchestrator", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stderr


def test_a_bad_tls_certificate_fails_at_once_before_any_worker_starts(tmp_path):
    doc = orchestrator_doc("http://127.0.0.1:9", tmp_path / "o.db", CLEAN,
                           server={"workers": 2, "tls_cert": str(tmp_path / "no.pem"),
                                   "tls_key": str(tmp_path / "no.key")})
    cfg = tmp_path / "o.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    started = time.monotonic()
    code, err = _serve(cfg)
    assert code == 1 and "cannot_start" in err and "tls_cert" in err, err[-2000:]
    assert time.monotonic() - started < 20
    assert "worker_started" not in err, "no worker was started for a config that cannot serve"


async def test_a_second_orchestrator_on_one_journal_is_refused(tmp_path):
    """Two orchestrators on one SQLite file would drive each other's recharges under the
    same lease names: the second one stops at once, whatever its port or worker count."""
    sim = simulator(tmp_path, {"seed": 1, "channels": CLEAN}).start()
    first = None
    try:
        await sim.wait_ready()
        first = orchestrator(tmp_path, orchestrator_doc(sim.url, tmp_path / "o.db", CLEAN), name="first").start()
        await first.wait_ready()
        for workers in (1, 2):
            doc = orchestrator_doc(sim.url, tmp_path / "o.db", CLEAN, server={"workers": workers})
            cfg = tmp_path / f"second-{workers}.yaml"
            cfg.write_text(yaml.safe_dump(doc))
            code, err = await asyncio.to_thread(_serve, cfg)
            assert code == 1 and "another orchestrator is running on this journal" in err, err[-2000:]
        # The running one is untouched, and money invariants hold.
        async with aiohttp.ClientSession() as s:
            headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": "one-journal"}
            async with s.post(first.url + "/v1/recharges", json=body_for(1), headers=headers) as r:
                assert r.status == 201, await r.text()
        report = await check(SqliteReader(tmp_path / "o.db"), await ledger(sim), settled=False)
        assert report.ok and report.recharges == 1, report
    finally:
        if first is not None:
            first.stop()
        sim.stop()


async def test_workers_share_their_channel_statistics(stack):
    """The fleet view on SQLite (issue 26): each worker's channel report includes what the
    other worker measured, published through the one journal every ``fleet.interval_s``."""
    orch, _ = stack
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for i in range(40):  # fresh connections: both workers serve some
            headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"fleet-{i}"}
            async with s.post(orch.url + "/v1/recharges", json=body_for(i), headers=headers) as r:
                assert r.status == 201, await r.text()
    deadline = time.monotonic() + 10
    while True:
        health = await _per_worker(orch.url, "/v1/health/channels")
        fleets = {worker: {c["channel"]: c["fleet"] for c in report["channels"]} for worker, report in health.items()}
        if all(all(f[ch] and f[ch]["instances"] == 1 for ch in f) and sum(f[ch]["successes"] for ch in f) > 0
               for f in fleets.values()):
            break
        assert time.monotonic() < deadline, fleets
        await asyncio.sleep(0.5)
