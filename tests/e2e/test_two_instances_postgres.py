"""Two orchestrator processes on one PostgreSQL behind one simulator. Every recharge is
sent to both at once with the same key; one instance is killed with SIGKILL mid-run and
the other takes over its unfinished work when the leases expire. Both credit from one
coin pool. SPEC section 18's invariants, the ledger's included, are checked against the
simulator's ledger, and the pool holds its deposit less every credit, to the coin."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from procs import FRONT_KEY, SRE_KEY, behave, ledger, orchestrator, orchestrator_doc, settle, simulator

from orchestrator.invariants import check
from orchestrator.journal.postgres import PostgresJournal

pytestmark = pytest.mark.slow

FAULTS = {"latency_ms": 4, "latency_jitter_ms": 1, "ping_latency_ms": 0, "hang_ms": 900,
          "decline_rate": 0.02, "timeout_after_capture_rate": 0.03, "reset_rate": 0.02,
          "not_processed_rate": 0.03, "pending_rate": 0.1, "pending_decline_rate": 0.2, "webhook_delay_ms": 300,
          "duplicate_webhook_rate": 0.2}
CHANNELS = [
    {"name": "pa", "kind": "direct_api", "webhook_secret": "whsec_pa_e2e", "behaviour": FAULTS},
    {"name": "pb", "kind": "direct_api", "webhook_secret": "whsec_pb_e2e", "behaviour": {**FAULTS, "latency_ms": 8}},
]
TOTAL = 1200
DEPOSIT = 10_000_000


async def test_two_instances_one_database_same_keys_and_a_kill(tmp_path, pg_server):
    url = pg_server.create_schema()
    sim = simulator(tmp_path, {"seed": 4, "channels": CHANNELS}).start()
    a = b = None
    try:
        await sim.wait_ready()
        doc = orchestrator_doc(sim.url, tmp_path / "unused.db", CHANNELS)
        doc["storage"] = {"url": url, "lease_s": 3}
        doc["pools"] = [{"name": "cn", "countries": ["CN"], "target_coins": DEPOSIT, "low_water_coins": 0}]
        # Instant credit on: some credits of pending payments are clawed back when they then fail.
        doc["pool_instant_credit"] = {"max_amount_minor_base": 10_000, "min_succeeded_recharges": 1}
        a = orchestrator(tmp_path, dict(doc, server=dict(doc["server"])), name="a").start()
        await a.wait_ready()
        b = orchestrator(tmp_path, dict(doc, server=dict(doc["server"])), name="b").start()
        await b.wait_ready()
        alive = {"a": a, "b": b}
        async with aiohttp.ClientSession() as session, session.post(
                a.url + "/v1/admin/pools/cn/deposits", json={"coins": DEPOSIT, "reference": "seed"},
                headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
            assert r.status == 201, await r.text()
        answers: dict[int, set[str]] = {}
        sent = 0

        async def ask(session: aiohttp.ClientSession, who: str, i: int, body: dict) -> str | None:
            headers = {"Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": f"both-{i}"}
            for _ in range(100):
                proc = alive.get(who) or alive["b"]
                try:
                    async with session.post(proc.url + "/v1/recharges", json=body, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=15)) as r:
                        rec = await r.json()
                        if r.status in (201, 202):
                            return rec["id"]
                        assert r.status == 409, rec  # in progress on the other instance: retry
                except (aiohttp.ClientError, TimeoutError):
                    who = "b"  # the killed instance: go to the live one
                await asyncio.sleep(0.1)
            raise AssertionError(f"both-{i} never answered")

        async def one(session: aiohttp.ClientSession, i: int) -> None:
            nonlocal sent
            sent += 1
            rnd = random.Random(i)
            body = {"user_id": f"u{i % 100}", "amount_minor": rnd.choice([600, 8500, 32800]), "currency": "CNY",
                    "country": "CN", "method": "ewallet", "instrument": {"token": "tok"}}
            ids = await asyncio.gather(ask(session, "a", i, body), ask(session, "b", i, body))
            answers[i] = set(ids)

        async def kill_a() -> None:
            while sent < TOTAL // 2:
                await asyncio.sleep(0.02)
            alive.pop("a")
            a.kill9()
            await behave(sim, "pa", outage=True, outage_mode="hang")
            await asyncio.sleep(1.0)
            await behave(sim, "pa", outage=False)

        queue = list(range(TOTAL))

        async def worker(session: aiohttp.ClientSession) -> None:
            while queue:
                await one(session, queue.pop())

        async with aiohttp.ClientSession() as session:
            killer = asyncio.create_task(kill_a())
            await asyncio.gather(*(worker(session) for _ in range(24)))
            await killer

        assert all(len(ids) == 1 for ids in answers.values()), "one key, one recharge, on both instances"
        journal = PostgresJournal(url, pool_min=1, pool_max=2)
        await journal.open()
        try:
            await settle(journal)
            report = await check(journal, await ledger(sim), settled=True)
            assert report.ok, report.violations[:10]
            assert report.recharges == TOTAL
            assert "processing" not in report.by_status and "pending" not in report.by_status, report.by_status
            (credited,) = (await journal.query("SELECT COALESCE(SUM(coins), 0) FROM transfers WHERE kind = 'credit' "
                                               "AND debit = 'pool:cn'"))[0]
            (clawed,) = (await journal.query("SELECT COALESCE(SUM(coins), 0) FROM transfers WHERE kind = 'clawback' "
                                             "AND credit = 'pool:cn'"))[0]
            pools = {a.account: (a.balance, a.lost) for a in await journal.accounts("pool:")}
            assert pools == {"pool:cn": (DEPOSIT - credited + clawed, clawed)}, pools
            settlements = dict(await journal.query("SELECT settlement, count(*) FROM recharges WHERE settlement IS "
                                                   "NOT NULL GROUP BY settlement"))
            assert settlements.get("settled", 0) > 0 and settlements.get("failed", 0) > 0, settlements
            assert credited == sum(r[0] for r in await journal.query(
                "SELECT coins + bonus_coins FROM recharges WHERE status = 'succeeded'"))
            owners = await journal.query("SELECT DISTINCT owner FROM leases")
            assert len(owners) >= 2, "both instances drove recharges"
            print(f"\ntwo instances on PostgreSQL, one killed: {report}; instant credits {settlements}")
        finally:
            await journal.close()
    finally:
        for proc in (a, b):
            if proc is not None:
                proc.stop()
        sim.stop()
        pg_server.drop(url)
