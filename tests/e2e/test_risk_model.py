"""The behaviour model end to end (issue 27), over real HTTP against the simulator, with
the risk section the example config ships (rules + ``risk-lr-v1`` and its thresholds).

A regular fan has recharged before (their recharges are in the journal; the orchestrator
has restarted since, as after a deploy, so its behaviour state starts empty). Today, in
the same minutes, a card tester works one account from one device through a run of
stolen card numbers, small amounts a fraction of a second apart, most declined by the
issuer (a BIN the simulator declines 85 % of the time), while the fan recharges as usual:
one token, one phone, the usual amounts, a few seconds apart. The tester's recharges are
challenged or blocked once the pattern shows (a challenged one goes to the step-up channel,
where the tester fails the 3-D Secure challenge); the fan's are allowed and succeed. An
explain call names the features behind a stopped one. SPEC 18 holds against the
simulator's ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from procs import FRONT_KEY, SRE_KEY, SqliteReader, ledger, orchestrator, orchestrator_doc, settle, simulator

from orchestrator.invariants import check
from orchestrator.risk import luhn_ok

ROOT = Path(__file__).resolve().parents[2]
QUICK = {"latency_ms": 5, "latency_jitter_ms": 1, "ping_latency_ms": 0}
STOLEN_BIN = "400000"
CHANNELS = [
    {"name": "card3ds", "kind": "direct_api", "webhook_secret": "whsec_card3ds_e2e", "step_up": True,
     "behaviour": {**QUICK, "three_ds": True, "payer_complete_rate": 0.0, "payer_abandon_rate": 1.0,
                   "payer_delay_ms": 300,
                   "segments": [{"match": {"bin_prefix": STOLEN_BIN}, "decline_rate": 0.85,
                                 "decline_codes": {"do_not_honor": 1}}]}},
]
TESTER_CARDS = 24
FAN_AMOUNTS = [6800, 6800, 3000, 6800, 6800, 3000]  # CNY 68 and 30: about 9.5 and 4.2 USD


def luhn_card(serial: int) -> str:
    body = f"{STOLEN_BIN}{serial:09d}"
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def shipped_risk() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "config" / "orchestrator.example.yaml").read_text())
    assert doc["risk"].get("model"), "the example config ships the model"
    return doc["risk"]


@pytest.fixture
def stack(tmp_path: Path):
    sim_channels = [{k: v for k, v in ch.items() if k != "step_up"} for ch in CHANNELS]
    sim = simulator(tmp_path, {"seed": 27, "channels": sim_channels}).start()
    doc = orchestrator_doc(sim.url, tmp_path / "orch.db", CHANNELS, risk=shipped_risk(), routing={"action_ttl_s": 5})
    started: list[Any] = []

    def start() -> Any:
        if started:
            started.pop().stop()
        started.append(orchestrator(tmp_path, doc).start())  # the same port and journal each time
        asyncio.run(started[-1].wait_ready())
        return started[-1]

    try:
        asyncio.run(sim.wait_ready())
        yield sim, start, tmp_path / "orch.db"
    finally:
        for orch in started:
            orch.stop()
        sim.stop()


class Front:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.s = url, session

    async def recharge(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.s.post(self.url + "/v1/recharges", json=body, headers={
                "Authorization": f"Bearer {FRONT_KEY}", "Idempotency-Key": key}) as r:
            rec = await r.json()
            assert r.status in (201, 202), rec
            return rec

    async def explain(self, rid: str) -> dict[str, Any]:
        async with self.s.get(self.url + "/v1/admin/risk/explain", params={"recharge_id": rid},
                              headers={"Authorization": f"Bearer {SRE_KEY}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def get(self, rid: str) -> dict[str, Any]:
        async with self.s.get(f"{self.url}/v1/recharges/{rid}", headers={"Authorization": f"Bearer {FRONT_KEY}"}) as r:
            return await r.json()


async def _fan(front: Front, day: str, gap_s: float) -> list[dict[str, Any]]:
    """A regular's recharges: one token, one phone, the usual amounts."""
    out = []
    for i, amount in enumerate(FAN_AMOUNTS):
        out.append(await front.recharge(f"fan-{day}-{i}", {
            "user_id": "u_fan", "amount_minor": amount, "currency": "CNY", "country": "CN", "method": "ewallet",
            "instrument": {"token": "tok_fan"}, "device_id": "phone-fan", "ip_country": "CN"}))
        await asyncio.sleep(gap_s)
    return out


async def _tester(front: Front) -> list[dict[str, Any]]:
    """A card tester: one account, one device, a new stolen card each time, small amounts."""
    out = []
    await asyncio.sleep(0.5)
    for i in range(TESTER_CARDS):
        out.append(await front.recharge(f"tester-{i}", {
            "user_id": "u_tester", "amount_minor": 600 + 100 * (i % 3), "currency": "CNY", "country": "CN",
            "method": "ewallet", "instrument": {"account_number": luhn_card(1000 + i)}, "device_id": "dev-farm",
            "ip_country": "VN"}))
        await asyncio.sleep(0.3)
    return out


def test_a_card_testing_burst_is_stopped_while_a_regular_fan_pays(stack):
    sim, start, db = stack
    orch = start()
    before = asyncio.run(_before(orch))
    assert [r["status"] for r in before].count("succeeded") >= 4, [(r["status"], r["risk"]) for r in before]
    orch = start()  # a deploy: the behaviour state is empty, the journal keeps the fan's history
    fan, tester, explained = asyncio.run(_today(orch, db))
    actions = [r["risk"]["action"] for r in tester]
    stopped = [a in ("challenge", "block") for a in actions]
    # Once the pattern shows (a few cards in), every further card is challenged or blocked.
    assert all(stopped[4:]), actions
    assert all(r["risk"].get("model") == "risk-lr-v1" for r in tester)
    assert [r["risk"]["action"] for r in fan] == ["allow"] * len(FAN_AMOUNTS), [r["risk"] for r in fan]
    assert [r["status"] for r in fan] == ["succeeded"] * len(FAN_AMOUNTS), fan
    # The explanation names the features behind the score, the largest first.
    names = [f["feature"] for f in explained["features"]]
    assert explained["model"] == "risk-lr-v1" and explained["action"] in ("challenge", "block"), explained
    assert len(names) == 5 and len(set(names)) == 5, explained
    sizes = [abs(f["contribution"]) for f in explained["features"]]
    assert sizes == sorted(sizes, reverse=True), explained
    assert any(n.startswith(("user_", "device_", "instrument_", "new_")) for n in names), names
    report = asyncio.run(check(SqliteReader(db), asyncio.run(ledger(sim)), settled=True))
    assert report.ok, report.violations[:10]


async def _before(orch: Any) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        return await _fan(Front(orch.url, s), "before", 2.0)


async def _today(orch: Any, db: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        front = Front(orch.url, s)
        fan, tester = await asyncio.gather(_fan(front, "today", 2.0), _tester(front))
        last = next(r for r in reversed(tester) if r["risk"]["action"] in ("challenge", "block"))
        explained = await front.explain(last["id"])
        await settle(SqliteReader(db), timeout_s=30)
        fan = [await front.get(r["id"]) for r in fan]
    return fan, tester, explained
