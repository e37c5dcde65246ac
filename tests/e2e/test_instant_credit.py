"""Instant credit on a slow channel (SPEC 20), end to end over real HTTP: a bank channel
of the simulator answers every payment ``pending`` and settles it by webhook later. An
established user's recharge is credited at once from the pool (``settlement: pending``),
then settled; when the payment then fails, the coins are clawed back into the pool and
booked as its loss. A new user, or an amount above the limit, waits for the money as
before. Afterwards SPEC 18 holds and ``orchestrator ledger verify`` passes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from procs import FRONT_KEY, SRE_KEY, SqliteReader, behave, ledger, orchestrator, orchestrator_doc, settle, simulator

from orchestrator.invariants import check

CHANNELS = [{"name": "bank", "kind": "bank", "webhook_secret": "whsec_bank_e2e",
             "behaviour": {"latency_ms": 5, "latency_jitter_ms": 1, "ping_latency_ms": 0, "pending_rate": 1.0,
                           "pending_decline_rate": 0.0, "webhook_delay_ms": 4000}}]  # past sync_wait_s (3)
POOL_COINS = 100_000
LIMIT_BASE_MINOR = 5000  # 50.00 USD: 8,500 CNY minor (11.93 USD) is under it, 50,000 (70.20 USD) over


class Front:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.s = url, session

    async def recharge(self, key: str, user: str, amount: int) -> tuple[int, dict[str, Any], float]:
        body = {"user_id": user, "amount_minor": amount, "currency": "CNY", "country": "CN", "method": "ewallet",
                "instrument": {"token": "tok_1"}}
        started = time.monotonic()
        async with self.s.post(self.url + "/v1/recharges", json=body, headers={
                "Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": key}) as r:
            return r.status, await r.json(), time.monotonic() - started

    async def get(self, path: str, token: str = FRONT_KEY) -> dict[str, Any]:
        async with self.s.get(self.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def until(self, rid: str, check_fn: Any, timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            rec = await self.get(f"/v1/recharges/{rid}")
            if check_fn(rec) or time.monotonic() > deadline:
                return rec
            await asyncio.sleep(0.2)


@pytest.fixture
def stack(tmp_path: Path):
    sim = simulator(tmp_path, {"seed": 3, "channels": CHANNELS}).start()
    orch = None
    try:
        asyncio.run(sim.wait_ready())
        doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS, routing={"deadline_s": 30},
                               pools=[{"name": "cn", "countries": ["CN"], "target_coins": POOL_COINS}],
                               pool_instant_credit={"max_amount_minor_base": LIMIT_BASE_MINOR,
                                                    "min_succeeded_recharges": 1})
        orch = orchestrator(tmp_path, doc).start()
        asyncio.run(orch.wait_ready())
        yield sim, orch, tmp_path / "orch.db"
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()


def test_an_established_user_is_credited_at_once_and_a_failed_payment_is_clawed_back(stack):
    sim, orch, db = stack
    asyncio.run(_scenario(sim, orch, db))
    report = asyncio.run(check(SqliteReader(db), asyncio.run(ledger(sim))))
    assert report.ok, report.violations[:10]
    verify = subprocess.run([sys.executable, "-m", "orchestrator", "ledger", "verify", "--db", f"sqlite:///{db}"],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def _scenario(sim: Any, orch: Any, db: Path) -> None:
    async with aiohttp.ClientSession() as s:
        front = Front(orch.url, s)
        async with s.post(orch.url + "/v1/admin/pools/cn/deposits", json={"coins": POOL_COINS, "reference": "w-1"},
                          headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
            assert r.status == 201

        # A first recharge: nothing to trust yet, so it waits for the bank like any other.
        status, first, _ = await front.recharge("k1", "u1", 8500)
        assert status == 202 and first["status"] == "pending" and "settlement" not in first
        first = await front.until(first["id"], lambda r: r["status"] == "succeeded")
        assert first["status"] == "succeeded" and "settlement" not in first
        c1 = first["coins"] + first["bonus_coins"]

        # Established now: credited as soon as the bank accepted the payment, then settled.
        status, second, took = await front.recharge("k2", "u1", 8500)
        assert status == 201 and (second["status"], second["settlement"]) == ("succeeded", "pending"), second
        assert took < 1.0, f"instant credit answered in {took:.2f} s"
        c2 = second["coins"] + second["bonus_coins"]
        assert (await front.get("/v1/wallets/u1"))["coins"] == c1 + c2
        second = await front.until(second["id"], lambda r: r["settlement"] != "pending")
        assert second["settlement"] == "settled" and second["attempts"][0]["outcome"] == "captured"
        assert (await front.get("/v1/wallets/u1"))["coins"] == c1 + c2, "settling credits nothing more"

        # Over the limit: no instant credit. A new user: none either.
        status, big, _ = await front.recharge("k3", "u1", 50_000)
        assert status == 202 and "settlement" not in big
        status, newcomer, _ = await front.recharge("k4", "u2", 8500)
        assert status == 202 and "settlement" not in newcomer
        big = await front.until(big["id"], lambda r: r["status"] != "pending")
        newcomer = await front.until(newcomer["id"], lambda r: r["status"] != "pending")
        for rec in (big, newcomer):  # credited when the bank captured them, as before
            assert rec["status"] == "succeeded" and "settlement" not in rec, rec
        c_big = big["coins"] + big["bonus_coins"]

        # The bank now fails every payment after accepting it: the coins come back.
        await behave(sim, "bank", pending_decline_rate=1.0)
        status, third, _ = await front.recharge("k5", "u1", 8500)
        assert status == 201 and third["settlement"] == "pending"
        c3 = third["coins"] + third["bonus_coins"]
        assert (await front.get("/v1/wallets/u1"))["coins"] == c1 + c2 + c_big + c3
        third = await front.until(third["id"], lambda r: r["settlement"] != "pending")
        assert (third["status"], third["settlement"], third["attempts"][0]["outcome"]) == (
            "succeeded", "failed", "declined"), third
        wallet = await front.get("/v1/wallets/u1")
        assert wallet["coins"] == c1 + c2 + c_big, "the failed payment's coins are clawed back"
        moves = (await front.get("/v1/admin/ledger/transfers?account=wallet:u1", SRE_KEY))["transfers"]
        mine = [(t["kind"], t["debit"], t["credit"], t["coins"]) for t in moves if t["recharge_id"] == third["id"]]
        assert mine == [("credit", "pool:cn", "wallet:u1", c3), ("clawback", "wallet:u1", "pool:cn", c3)]
        pools = {p["name"]: p for p in (await front.get("/v1/admin/pools", SRE_KEY))["pools"]}
        assert pools["cn"]["lost_coins"] == c3, pools
        c_new = newcomer["coins"] + newcomer["bonus_coins"]
        assert pools["cn"]["balance"] == POOL_COINS - (c1 + c2 + c_big + c_new), "c3 went back to the pool"
        status, after_failure, _ = await front.recharge("k6", "u1", 8500)
        assert status == 202 and "settlement" not in after_failure, "no more instant credit after a clawback"
        trail = [e["event"] for e in (await front.get(f"/v1/recharges/{third['id']}/trail"))["entries"]]
        assert "clawed_back" in trail and trail.index("credited") < trail.index("clawed_back")
        await settle(SqliteReader(db), timeout_s=30)
