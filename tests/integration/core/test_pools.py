"""Coin pools (SPEC 20) on every store: credits draw on their market's pool, rebalancing
follows demand to within 0.03% of each target, and the admin API deposits (idempotent by
reference), shows the pools and lists transfers, refusing bad input with nothing stored."""

from __future__ import annotations

import random

import pytest
from harness import make_recharge
from test_api import SRE_KEY, assert_error, config_doc, running_api_with

from config import PoolConfig, parse
from orchestrator import pools, transitions as tr
from orchestrator.clock import VirtualClock
from orchestrator.invariants import ledger_violations
from orchestrator.metrics import Metrics
from orchestrator.model import Credit, RechargeStatus, Step

POOLS = [PoolConfig(name="cn", countries=["CN"], target_coins=500_000, low_water_coins=50_000),
         PoolConfig(name="ph", countries=["PH"], target_coins=500_000, low_water_coins=50_000)]
INTERVAL = 1800.0


def test_a_plan_reaches_targets_in_proportion_exactly():
    targets, moves = pools.plan_rebalance({"a": 1000, "b": 0, "c": 1}, {"a": 1, "b": 1, "c": 1})
    assert targets == {"a": 334, "b": 334, "c": 333} and sum(targets.values()) == 1001
    assert sorted(moves) == [("a", "b", 334), ("a", "c", 332)]
    assert pools.plan_rebalance({"a": -5, "b": 5}, {"a": 1, "b": 1}) == ({"a": -5, "b": 5}, []), "nothing to share"
    assert pools.plan_rebalance({"a": 5, "b": 5}, {"a": 0, "b": 0})[1] == [], "no weight: nothing moves"


async def test_rebalancing_follows_demand_80_20_to_within_0_03_percent_each_pass(store):
    clock = VirtualClock()
    journal = store.journal(clock=clock.now)
    await journal.open()
    deps = pools.PoolDeps(journal, clock, Metrics(), lambda: POOLS, lambda: INTERVAL)
    try:
        await journal.open_pools(["cn", "ph"], clock.now())
        await pools.deposit(pools.Deposit("cn", 2_000_000, "seed-cn"), deps)
        await pools.deposit(pools.Deposit("ph", 2_000_000, "seed-ph"), deps)
        rng = random.Random(5)
        n = 0
        for interval in range(3):
            for _ in range(200):  # 80% of the demand in CN, 20% in PH
                n += 1
                country = "CN" if rng.random() < 0.8 else "PH"
                rec, trail = make_recharge(clock, f"k{n}", user=f"u{n % 17}")
                assert await journal.create(rec, trail) is None
                coins = rng.choice((700, 1400, 3500))
                assert await journal.apply(Step(rec.id, clock.now(), status=RechargeStatus.SUCCEEDED,
                                                expect_status=tr.NONTERMINAL, channel="a", credit=Credit(
                                                    rec.id, rec.user_id, coins, clock.now(),
                                                    "cn" if country == "CN" else "ph")))
                clock.advance(INTERVAL / 250)
            clock.advance(INTERVAL / 5)
            demand = await journal.pool_demand()
            targets = await pools.Rebalancer(deps).pass_once()
            balances = {a.account.removeprefix("pool:"): a.balance for a in await journal.accounts("pool:")}
            for name in ("cn", "ph"):
                assert abs(balances[name] - targets[name]) <= targets[name] * 0.0003, (interval, balances, targets)
            share = targets["cn"] / (targets["cn"] + targets["ph"])
            want = demand["pool:cn"] / (demand["pool:cn"] + demand["pool:ph"])
            assert abs(share - want) < 1e-6, (share, want)
            assert 0.7 < share < 0.9
        moved = [t for t in await journal.transfers(limit=10_000) if t.kind == "rebalance"]
        assert moved and all(t.debit != t.credit for t in moved)
        accounts = await journal.accounts()
        summed = {a.account: 0 for a in accounts}
        for t in await journal.transfers(limit=10_000):
            summed[t.debit] -= t.coins
            summed[t.credit] += t.coins
        assert ledger_violations([(a.account, a.balance, summed[a.account]) for a in accounts]) == []
    finally:
        await journal.close()


@pytest.fixture
async def api(tmp_path):
    doc = config_doc(tmp_path)
    doc["pools"] = [{"name": "cn", "countries": ["CN"], "target_coins": 1000, "low_water_coins": 100},
                    {"name": "jp", "countries": ["JP"], "target_coins": 1000, "low_water_coins": 100}]
    async with running_api_with(parse(doc)) as a:
        yield a


async def _deposit(api, pool: str, body: object, token: str = SRE_KEY):
    resp = await api.client.post(f"/v1/admin/pools/{pool}/deposits", json=body,
                                 headers={"Authorization": f"Bearer {token}"})
    return resp, await resp.json()


async def test_admins_deposit_into_pools_once_per_reference_and_see_them(api):
    resp, made = await _deposit(api, "cn", {"coins": 5000, "reference": "wire-7"})
    assert resp.status == 201 and (made["debit"], made["credit"], made["coins"], made["kind"]) == (
        "issuance", "pool:cn", 5000, "deposit")
    resp, again = await _deposit(api, "cn", {"coins": 5000, "reference": "wire-7"})
    assert resp.status == 200 and again == made
    resp, err = await _deposit(api, "cn", {"coins": 4000, "reference": "wire-7"})
    assert_error(resp, err, 422, "idempotency_key_reused", "reference")
    from test_api import BODY
    resp, rec = await api.post(BODY)  # a CN recharge: drawn on pool cn
    assert resp.status == 201
    resp, body = await api.get("/v1/admin/pools", token=SRE_KEY)
    assert resp.status == 200
    view = {p["name"]: p for p in body["pools"]}
    total = rec["coins"] + rec["bonus_coins"]
    assert view["cn"]["balance"] == 5000 - total and view["cn"]["demand"] == total and not view["cn"]["low"]
    assert view["jp"]["balance"] == 0 and view["jp"]["low"]
    resp, listed = await api.get("/v1/admin/ledger/transfers?account=pool:cn", token=SRE_KEY)
    assert [(t["kind"], t["coins"]) for t in listed["transfers"]] == [("deposit", 5000), ("credit", total)]
    resp, page = await api.get(f"/v1/admin/ledger/transfers?after={listed['transfers'][0]['seq']}&limit=1",
                               token=SRE_KEY)
    assert [t["kind"] for t in page["transfers"]] == ["credit"] and page["next_after"] == page["transfers"][0]["seq"]
    await api.invariants()


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"coins": 0, "reference": "r"}, "coins", "invalid_field"),
    ({"coins": -5, "reference": "r"}, "coins", "invalid_field"),
    ({"coins": 1.5, "reference": "r"}, "coins", "invalid_field"),
    ({"coins": 10, "reference": ""}, "reference", "invalid_field"),
    ({"coins": 10}, "reference", "missing_field"),
    ({"coins": 10, "reference": "r", "x": 1}, "x", "unknown_field"),
])
async def test_a_bad_deposit_is_refused_and_stores_nothing(api, body, field, code):
    resp, err = await _deposit(api, "cn", body)
    assert_error(resp, err, 422, code, field)
    assert await api.service.journal.transfers() == []


async def test_deposits_need_an_admin_and_a_configured_pool(api):
    from test_api import FRONT_KEY
    resp, err = await _deposit(api, "cn", {"coins": 10, "reference": "r"}, token=FRONT_KEY)
    assert_error(resp, err, 403, "forbidden")
    resp, err = await _deposit(api, "nope", {"coins": 10, "reference": "r"})
    assert_error(resp, err, 404, "not_found")
    resp, err = await api.get("/v1/admin/ledger/transfers?account=bank:x", token=SRE_KEY)
    assert_error(resp, err, 422, "invalid_field", "account")
    resp, err = await api.get("/v1/admin/ledger/transfers?after=-1", token=SRE_KEY)
    assert_error(resp, err, 422, "invalid_field", "after")
    assert await api.service.journal.transfers() == []
