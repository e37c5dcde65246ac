"""The routing simulator (bench/routing_sim.py): replayable from its seed, an oracle that
never explores or errs, scenarios that change only what they say, and a goals checker
that judges what the issue asks."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from bench import medians
from bench import routing_sim as sim
from routing import Transaction

SEED = sim.SEEDS[0]


def _without_wall(result: sim.Result) -> dict:
    return {k: v for k, v in dataclasses.asdict(result).items() if k != "wall_s"}


@pytest.mark.parametrize("policy", sim.POLICIES)
def test_a_run_replays_from_its_seed(policy):
    first = sim.simulate("segment_outage", policy, 1500, SEED)
    again = sim.simulate("segment_outage", policy, 1500, SEED)
    assert _without_wall(first) == _without_wall(again)
    assert _without_wall(sim.simulate("segment_outage", policy, 1500, SEED + 1)) != _without_wall(first)


def test_the_oracle_never_explores_and_ranks_by_true_expected_value():
    result = sim.simulate("steady", "oracle", 3000, SEED)
    assert result.explored == 0
    world = sim.World(sim.SCENARIOS["steady"], 10.0)
    oracle = sim.OracleRouter(world, sim.VirtualClock(1.0), sim.VALUE)
    sample = next(s for s in sim.SAMPLES if s.segment == "PHP/PH/ewallet/b0/bpi")
    order, explored, panic = oracle.order(sim.Txn(1.0, sample, False, []))
    # maya approves bpi payers as often as gcash and charges 1.1 % against 1.5 %.
    assert order[0] == "maya_direct" and not explored and not panic
    assert set(order) == {"gcash_direct", "maya_direct", "usdt_settle", "bdo_bank"}
    assert order[-1] == "bdo_bank"  # 4.8 s costs more than any approval edge on 50 PHP


def test_the_oracle_routes_around_a_channel_that_is_down():
    world = sim.World(sim.SCENARIOS["flapping"], 100.0)
    sample = next(s for s in sim.SAMPLES if s.segment == "CNY/CN/ewallet/b0/icbc")
    down_at, up_at = 20.0 + 1.0, 20.0 + 11.0  # flapping: down 10 s of every 30 from 20 % of the run
    for t, expect_alipay in ((down_at, False), (up_at, True)):
        order, _, _ = sim.OracleRouter(world, sim.VirtualClock(t), sim.VALUE).order(sim.Txn(t, sample, False, []))
        assert ("alipay_direct" in order) is expect_alipay
        if expect_alipay:
            assert order[0] == "alipay_direct"


def test_a_segment_outage_hits_one_channel_for_one_issuer_only():
    world = sim.World(sim.SCENARIOS["segment_outage"], 100.0)
    assert world.approval("alipay_direct", 0, "icbc", 45.0) == 0.2
    assert world.approval("alipay_direct", 0, "icbc", 25.0) == sim.BY_NAME["alipay_direct"].approves(0, "icbc")
    assert world.approval("alipay_direct", 0, "icbc", 60.0) == sim.BY_NAME["alipay_direct"].approves(0, "icbc")
    assert world.approval("alipay_direct", 1, "ccb", 45.0) == sim.BY_NAME["alipay_direct"].approves(1, "ccb")
    assert world.approval("wechat_direct", 0, "icbc", 45.0) == sim.BY_NAME["wechat_direct"].approves(0, "icbc")


def test_drift_slides_between_a_fifth_and_four_fifths_of_the_run():
    world = sim.World(sim.SCENARIOS["drift"], 100.0)
    start = sim.BY_NAME["alipay_direct"].approves(2, "icbc")
    assert world.approval("alipay_direct", 2, "icbc", 10.0) == start
    assert world.approval("alipay_direct", 2, "icbc", 50.0) == pytest.approx(start - 0.075)
    assert world.approval("alipay_direct", 2, "icbc", 90.0) == pytest.approx(start - 0.15)
    assert world.approval("wechat_direct", 2, "icbc", 90.0) > sim.BY_NAME["wechat_direct"].approves(2, "icbc")


def test_true_approval_stays_in_the_documented_range():
    rates = [ch.approves(band, issuer) for ch in sim.BY_NAME.values() for band in range(3)
             for issuers in sim.ISSUERS.values() for issuer, _ in issuers]
    assert 0.78 <= min(rates) and max(rates) <= 0.99


def test_segments_are_the_products_keys():
    for sample in sim.SAMPLES:
        assert sample.segment == sim.SEGMENTS.key(sample.txn)
    assert {s.band for s in sim.SAMPLES} == {0, 1, 2}
    assert None in {s.issuer for s in sim.SAMPLES}


def test_a_new_channel_joins_by_reload_and_earns_traffic():
    for policy in ("oracle", "smart"):
        result = sim.simulate("new_channel", policy, 6000, SEED)
        assert result.captures.get("yeepay_direct", 0) > 0, policy


def test_smart_learns_approvals_under_the_snapshots_segment_keys():
    run = sim._Run("steady", "smart", 2000, SEED)
    run.run()
    router = run.router
    assert isinstance(router, sim.ProductRouter)
    learnt = router.registry.approvals.by_channel()
    segments = {seg for by_segment in learnt.values() for seg in by_segment}
    assert "*" in segments and segments - {"*"} <= {s.segment for s in sim.SAMPLES}
    assert sum(a for by in learnt.values() for a, _ in by.values()) > 0


def test_juspay_prefers_the_best_window_and_explores_a_twentieth():
    world = sim.World(sim.SCENARIOS["steady"], 100.0)
    router = sim.JuspayRouter(world, sim.VirtualClock(0.0), random.Random(1))
    sample = next(s for s in sim.SAMPLES if s.segment == "CNY/CN/ewallet/b0/icbc")
    st = sim.Txn(0.0, sample, False, [])
    for name, rate in (("alipay_direct", 0.9), ("wechat_direct", 0.95), ("lianlian_direct", 0.8)):
        for i in range(sim.JUSPAY_WINDOW):
            router.observe(st, name, i < rate * sim.JUSPAY_WINDOW)
    firsts = [router.order(st) for _ in range(4000)]
    explored = sum(e for _, e, _ in firsts)
    assert sum(o[0] == "wechat_direct" for o, _, _ in firsts) > 0.95 * 4000
    assert 0.02 * 4000 < explored < 0.06 * 4000


def _summary(success: float, fee: float) -> sim.Summary:
    return sim.Summary(success_pct=success, fee_bps=fee)


def _goals(smart: tuple[float, float], oracle: tuple[float, float], juspay: tuple[float, float]) -> list[bool]:
    means = {"s": {"smart": _summary(*smart), "oracle": _summary(*oracle), "juspay": _summary(*juspay)}}
    return [g.held for g in sim.check_goals(means)]


def test_goals_hold_near_the_oracle_and_ahead_of_juspay():
    assert _goals(smart=(98.4, 84.0), oracle=(98.6, 80.0), juspay=(98.4, 88.0)) == [True, True, True]


def test_goals_fail_when_behind_the_oracle():
    assert _goals(smart=(98.2, 86.0), oracle=(98.6, 80.0), juspay=(98.2, 90.0)) == [False, False, True]


def test_against_juspay_noise_is_neither_a_loss_nor_a_win():
    oracle = (98.5, 80.0)
    assert _goals((98.49, 84.0), oracle, juspay=(98.50, 85.0)) == [True, True, True]  # -0.01 pp is noise
    assert _goals((98.47, 84.0), oracle, juspay=(98.50, 85.0)) == [True, True, False]  # -0.03 pp is a loss
    assert _goals((98.50, 84.4), oracle, juspay=(98.50, 84.0)) == [True, True, False]  # +0.4 bps: no win
    assert _goals((98.50, 83.4), oracle, juspay=(98.50, 84.0)) == [True, True, True]  # -0.6 bps: a win
    assert _goals((98.53, 84.3), oracle, juspay=(98.50, 84.0)) == [True, True, True]  # +0.03 pp: a win


def test_the_report_keeps_the_row_bench_medians_reads(tmp_path):
    results = [sim.simulate("steady", policy, 500, SEED) for policy in sim.POLICIES]
    text = sim.render(results, {"smart": (4.0, 12.5), "smart_score": (3.0, 9.0)}, 500, (SEED,), 1.0, 1)
    path = tmp_path / "routing_sim.md"
    path.write_text(text)
    assert medians._smart_p99(path) == 12.5
    assert "## Goals" in text and str(SEED) in text


def test_main_writes_the_report_and_its_json(tmp_path):
    out = tmp_path / "routing_sim.md"
    code = sim.main(["--quick", "--transactions", "600", "--workers", "1", "--micro-iterations", "200",
                     "--out", str(out)])
    assert code == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert {r["policy"] for r in data["results"]} == set(sim.POLICIES)
    assert set(data["means"]) == set(sim.SCENARIOS)
    assert data["decide_us"]["smart"]["p99"] > 0


def test_a_hard_declined_payer_is_declined_everywhere_and_teaches_nothing():
    run = sim._Run("steady", "smart", 10, SEED)
    sample = sim.Sample(Transaction("CNY", "CN", "ewallet", 3000, issuer="icbc"), 0, "icbc",
                        "CNY/CN/ewallet/b0/icbc", 1.0)
    st = sim.Txn(0.0, sample, True, [0.0] * len(sim.INDEX))
    results = {run._attempt(st, "alipay_direct", 0.0)[0] for _ in range(50)}
    assert results <= {sim._HARD, sim._FAILED}
