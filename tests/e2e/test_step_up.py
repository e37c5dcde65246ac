"""3-D Secure step-up (SPEC 22) end to end over real HTTP: risk challenges a recharge above
``challenge_amount_base``; it goes only to the step-up channel, asked for
``three_ds: required``, and waits ``requires_action`` with a ``next_action`` while the
payer completes, abandons or ignores the challenge at the simulator. Completed: credited
once; abandoned: failed ``action_abandoned``; ignored: voided and failed ``action_expired``
within ``action_ttl_s`` plus the reconcile interval. A channel may demand a step-up on
its own. Then a kill -9 while recharges wait for their payers loses none. After each,
SPEC 18 holds against the simulator's ledger."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from procs import FRONT_KEY, SqliteReader, behave, ledger, orchestrator, orchestrator_doc, settle, simulator

from orchestrator.invariants import check

QUICK = {"latency_ms": 5, "latency_jitter_ms": 1, "ping_latency_ms": 0}
CHANNELS = [
    {"name": "card3ds", "kind": "direct_api", "webhook_secret": "whsec_card3ds_e2e", "step_up": True,
     "behaviour": {**QUICK, "three_ds": True, "action_ttl_s": 120}},  # the provider waits longer than we do
    {"name": "plain", "kind": "direct_api", "webhook_secret": "whsec_plain_e2e", "behaviour": QUICK},
]
TTL_S = 4.0  # routing.action_ttl_s
RECONCILE_S = 1.0
SMALL, BIG = 8500, 50_000  # 11.93 and 70.20 USD: under and over the challenge limit (50 USD)


class Front:
    def __init__(self, orch_url: str, sim_url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.sim, self.s = orch_url, sim_url, session

    async def recharge(self, key: str, user: str, amount: int) -> tuple[int, dict[str, Any]]:
        body = {"user_id": user, "amount_minor": amount, "currency": "CNY", "country": "CN", "method": "ewallet",
                "instrument": {"token": "tok_1"}}
        async with self.s.post(self.url + "/v1/recharges", json=body, headers={
                "Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": key}) as r:
            return r.status, await r.json()

    async def get(self, rid: str) -> dict[str, Any]:
        async with self.s.get(f"{self.url}/v1/recharges/{rid}", headers={"Authorization": f"Bearer {FRONT_KEY}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def wallet(self, user: str) -> int:
        async with self.s.get(f"{self.url}/v1/wallets/{user}", headers={"Authorization": f"Bearer {FRONT_KEY}"}) as r:
            return (await r.json())["coins"]

    async def payer(self, rec: dict[str, Any], act: str) -> None:
        """The payer finishes (complete) or abandons (fail) the challenge at the provider."""
        att = rec["attempts"][-1]
        async with self.s.post(f"{self.sim}/_sim/{att['channel']}/payments/{att['reference']}/{act}") as r:
            assert r.status == 200, await r.text()

    async def until(self, rid: str, done: Any, timeout_s: float = 20.0) -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        while True:
            rec = await self.get(rid)
            if done(rec) or time.monotonic() - started > timeout_s:
                return rec, time.monotonic() - started
            await asyncio.sleep(0.1)


KILL_TTL_S = 10.0  # long enough for the payers to act while the orchestrator is down


@pytest.fixture(params=[TTL_S])
def stack(tmp_path: Path, request: pytest.FixtureRequest):
    sim_channels = [{k: v for k, v in ch.items() if k != "step_up"} for ch in CHANNELS]  # ours, not the provider's
    sim = simulator(tmp_path, {"seed": 7, "channels": sim_channels}).start()
    orch = None
    try:
        asyncio.run(sim.wait_ready())
        doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS, routing={"action_ttl_s": request.param},
                               risk={"challenge_amount_base": 50})
        orch = orchestrator(tmp_path, doc).start()
        asyncio.run(orch.wait_ready())
        yield sim, orch, tmp_path / "orch.db"
    finally:
        if orch is not None:
            orch.stop()
        sim.stop()


def _waiting(rec: dict[str, Any]) -> bool:
    return rec["status"] == "requires_action"


async def _challenged(front: Front, key: str, user: str) -> dict[str, Any]:
    status, rec = await front.recharge(key, user, BIG)
    assert status == 202 and rec["status"] == "requires_action", rec
    assert rec["risk"]["action"] == "challenge" and "amount_over_challenge_limit" in rec["risk"]["reasons"], rec
    assert [a["channel"] for a in rec["attempts"]] == ["card3ds"], "a challenged recharge goes to step-up channels only"
    att = rec["attempts"][0]
    assert att["outcome"] == "requires_action"
    assert rec["next_action"] == {"type": "redirect", "url": f"{front.sim}/card3ds/challenge/{att['reference']}"}, rec
    return rec


def test_challenged_recharges_complete_abandon_and_expire(stack):
    sim, orch, db = stack
    asyncio.run(_scenario(sim, orch))
    report = asyncio.run(check(SqliteReader(db), asyncio.run(ledger(sim)), settled=True))
    assert report.ok, report.violations[:10]


async def _scenario(sim: Any, orch: Any) -> None:
    async with aiohttp.ClientSession() as s:
        front = Front(orch.url, sim.url, s)
        status, small = await front.recharge("k0", "u0", SMALL)
        assert status == 201 and small["status"] == "succeeded" and small["risk"]["action"] == "allow", small

        # Completed: credited once, by the provider's webhook.
        rec = await _challenged(front, "k1", "u1")
        await front.payer(rec, "complete")
        rec, _ = await front.until(rec["id"], lambda r: r["status"] != "requires_action")
        assert rec["status"] == "succeeded" and "next_action" not in rec, rec
        assert await front.wallet("u1") == rec["coins"] + rec["bonus_coins"]

        # Abandoned: failed, nothing charged, nothing tried elsewhere.
        rec = await _challenged(front, "k2", "u2")
        await front.payer(rec, "fail")
        rec, _ = await front.until(rec["id"], lambda r: r["status"] != "requires_action")
        assert (rec["status"], rec["reason"], len(rec["attempts"])) == ("failed", "action_abandoned", 1), rec
        assert await front.wallet("u2") == 0

        # Ignored: voided at action_ttl_s, failed action_expired within the reconcile interval after.
        rec = await _challenged(front, "k3", "u3")
        created = time.monotonic()
        rec, _ = await front.until(rec["id"], lambda r: r["status"] != "requires_action", timeout_s=TTL_S + 15)
        waited = time.monotonic() - created
        assert (rec["status"], rec["reason"]) == ("failed", "action_expired"), rec
        assert rec["attempts"][0]["outcome"] == "voided"
        assert waited <= TTL_S + 2 * RECONCILE_S + 2.0, f"left waiting {waited:.1f} s"
        # The payer arrives too late: the provider refuses, nothing is charged.
        att = rec["attempts"][0]
        async with s.post(f"{sim.url}/_sim/card3ds/payments/{att['reference']}/complete") as r:
            assert r.status == 409
        assert await front.wallet("u3") == 0

        # A channel that demands a step-up on its own, reached by failover.
        await behave(sim, "card3ds", requires_action_rate=1.0)
        await behave(sim, "plain", not_processed_rate=1.0)
        status, rec = await front.recharge("k4", "u4", SMALL)
        assert status == 202 and rec["status"] == "requires_action" and rec["risk"]["action"] == "allow", rec
        assert rec["attempts"][-1]["channel"] == "card3ds" and "next_action" in rec, rec
        await front.payer(rec, "complete")
        rec, _ = await front.until(rec["id"], lambda r: r["status"] != "requires_action")
        assert rec["status"] == "succeeded", rec

        # Nothing can take a challenged recharge: it fails at once, never charged elsewhere.
        await behave(sim, "card3ds", outage=True)
        await asyncio.sleep(1.5)  # the breaker and probes see it
        status, rec = await front.recharge("k5", "u5", BIG)
        if rec["status"] == "requires_action":  # the breaker had not opened yet: the outage refuses it
            rec, _ = await front.until(rec["id"], lambda r: r["status"] != "requires_action")
        rec, _ = await front.until(rec["id"], lambda r: r["status"] not in ("processing", "pending"), timeout_s=15)
        assert rec["status"] == "failed" and all(a["channel"] == "card3ds" for a in rec["attempts"]), rec
        await behave(sim, "card3ds", outage=False, requires_action_rate=0.0)
        await behave(sim, "plain", not_processed_rate=0.0)


@pytest.mark.parametrize("stack", [KILL_TTL_S], indirect=True)
def test_kill_9_while_recharges_wait_for_their_payers_loses_none(stack):
    sim, orch, db = stack
    asyncio.run(_kill_scenario(sim, orch, db))


async def _kill_scenario(sim: Any, orch: Any, db: Path) -> None:
    async with aiohttp.ClientSession() as s:
        front = Front(orch.url, sim.url, s)
        waiting = list(await asyncio.gather(*(_challenged(front, f"kk{i}", f"ku{i}") for i in range(18))))
        orch.kill9()
        # While it is down: a third of the payers complete, a third abandon, a third do nothing.
        for i, rec in enumerate(waiting):
            if i % 3 == 0:
                await front.payer(rec, "complete")
            elif i % 3 == 1:
                await front.payer(rec, "fail")
        await asyncio.sleep(1.0)
        orch.start()
        await orch.wait_ready()
        started = time.monotonic()
        done = []
        for rec in waiting:
            final, _ = await front.until(rec["id"], lambda r: r["status"] not in ("requires_action", "processing"),
                                         timeout_s=KILL_TTL_S + 20)
            done.append(final)
        took = time.monotonic() - started
        want = {0: ("succeeded", None), 1: ("failed", "action_abandoned"), 2: ("failed", "action_expired")}
        got = [(r["status"], r["reason"]) for r in done]
        assert got == [want[i % 3] for i in range(len(waiting))], got
        for i, rec in enumerate(done):
            coins = await front.wallet(f"ku{i}")
            assert coins == (rec["coins"] + rec["bonus_coins"] if i % 3 == 0 else 0), (i, rec, coins)
        print(f"\nstep-up kill -9: {len(done)} recharges waiting for their payers all ended {took:.1f} s "
              f"after the restart: {sorted(set(got))}")
        reader = SqliteReader(db)
        await settle(reader)
        report = await check(reader, await ledger(sim), settled=True)
        assert report.ok, report.violations[:10]
        assert report.recharges == len(waiting)
