"""The four strategies, and what `smart` must get right."""

from __future__ import annotations

import collections
import random

from routing import ChannelState, RoutingPolicy, Rule, RuleMatch, ScoringWeights, decide
from routing_builders import CNY, healthy, make_snapshot, make_spec, market


def first_choices(snapshot, n: int = 2000, seed: int = 3) -> collections.Counter[str]:
    rng = random.Random(seed)
    return collections.Counter(decide(snapshot, CNY, rng).candidates[0] for _ in range(n))


# -- priority -----------------------------------------------------------------------

def test_priority_follows_the_rule_order_minus_filtered_channels():
    p = RoutingPolicy(rules=(Rule("ph", RuleMatch(), "priority",
                                  ("unionpay_bank", "alipay_direct", "usdt_settle")),))
    snap = market(p, alipay_direct=healthy(breaker="open"))
    decision = decide(snap, CNY, random.Random(0))
    assert decision.candidates == ("unionpay_bank", "usdt_settle")
    assert decision.strategy == "priority"


def test_priority_without_a_list_orders_by_weight_then_config_order():
    specs = [make_spec("a"), make_spec("b", weight=2.0), make_spec("c")]
    snap = make_snapshot(specs, policy=RoutingPolicy(strategy="priority"))
    assert decide(snap, CNY, random.Random(0)).candidates == ("b", "a", "c")


# -- weighted -----------------------------------------------------------------------

def test_weighted_splits_first_choices_by_weight():
    specs = [make_spec("a", weight=3.0), make_spec("b", weight=1.0)]
    snap = make_snapshot(specs, policy=RoutingPolicy(strategy="weighted"))
    counts = first_choices(snap, n=4000)
    share = counts["a"] / 4000
    assert 0.72 < share < 0.78  # 3/4, with a seeded rng
    assert all(len(decide(snap, CNY, random.Random(i)).candidates) == 2 for i in range(20))


# -- cheapest -----------------------------------------------------------------------

def test_cheapest_orders_by_fee_on_this_amount():
    snap = market(RoutingPolicy(strategy="cheapest"))
    # 8500: alipay 0.6 % = 51, usdt 0.3 % = 25.5, bank 100 + 8.5 = 108.5
    assert decide(snap, CNY, random.Random(0)).candidates == (
        "usdt_settle", "alipay_direct", "unionpay_bank")


def test_cheapest_breaks_fee_ties_by_latency():
    specs = [make_spec("slow"), make_spec("fast")]
    states = {"slow": healthy(900.0), "fast": healthy(30.0)}
    snap = make_snapshot(specs, states, RoutingPolicy(strategy="cheapest"))
    assert decide(snap, CNY, random.Random(0)).candidates == ("fast", "slow")


# -- smart, objective "score" (the first version's; "value" is in test_routing_value.py) --

SCORE = RoutingPolicy(objective="score")

def test_smart_prefers_the_fast_channel_when_all_are_healthy():
    snap = market()
    assert decide(snap, CNY, random.Random(0)).candidates == (
        "alipay_direct", "usdt_settle", "unionpay_bank")


def test_smart_success_dominates_latency():
    # 50 % at 28 ms must lose to 99 % at 4.8 s.
    snap = market(SCORE, alipay_direct=healthy(28.0, successes=500, failures=500),
                  usdt_settle=healthy(1200.0, successes=990, failures=10))
    counts = first_choices(snap)
    assert counts["usdt_settle"] == 2000


def test_smart_latency_decides_between_similar_success_rates():
    specs = [make_spec("slow"), make_spec("fast")]
    states = {"slow": healthy(300.0, successes=9950, failures=50),
              "fast": healthy(30.0, successes=9940, failures=60)}
    assert first_choices(make_snapshot(specs, states, SCORE))["fast"] == 2000


def test_smart_cost_breaks_a_tie():
    specs = [make_spec("dear", fee_percent=2.0), make_spec("cheap", fee_percent=0.2)]
    states = {name: healthy(30.0, successes=100_000, failures=100) for name in ("dear", "cheap")}
    assert first_choices(make_snapshot(specs, states, SCORE))["cheap"] == 2000


def test_smart_configured_weight_counts():
    specs = [make_spec("plain"), make_spec("favoured", weight=3.0)]
    states = {name: healthy(30.0, successes=100_000, failures=100) for name in specs_names(specs)}
    assert first_choices(make_snapshot(specs, states, SCORE))["favoured"] == 2000


def specs_names(specs) -> list[str]:
    return [s.name for s in specs]


def test_smart_demotes_a_channel_that_went_silent():
    # 25 attempts out, nothing answered for 200 ms on a 28 ms channel: suspected hung.
    silent = healthy(28.0, in_flight=25, stalled_ms=200.0)
    snap = market(alipay_direct=silent)
    decision = decide(snap, CNY, random.Random(0))
    assert decision.candidates[0] == "usdt_settle"
    assert decision.scores["alipay_direct"].latency < decision.scores["usdt_settle"].latency


def test_smart_ignores_a_silence_in_character():
    # 2 ms without an answer at 25 in flight is normal.
    snap = market(alipay_direct=healthy(28.0, in_flight=25, stalled_ms=2.0))
    assert decide(snap, CNY, random.Random(0)).candidates[0] == "alipay_direct"


def test_unmeasured_channel_is_taken_at_its_timeout():
    specs = [make_spec("new", timeout_ms=2000), make_spec("known")]
    states = {"new": ChannelState(), "known": healthy(100.0)}
    decision = decide(make_snapshot(specs, states), CNY, random.Random(0))
    assert decision.scores["new"].latency < decision.scores["known"].latency


def test_exploration_lets_a_recovering_channel_get_traffic():
    # The incumbent is good and well known; the recovering channel is a little faster
    # but has only a handful of recent results. It must get some first attempts (to
    # learn), but not most of them.
    specs = [make_spec("incumbent"), make_spec("recovering")]
    states = {"incumbent": healthy(36.0, successes=20_000, failures=60),
              "recovering": healthy(28.0, successes=3, failures=0)}
    counts = first_choices(make_snapshot(specs, states), n=4000)
    assert 40 < counts["recovering"] < 2000


def test_without_exploration_the_order_is_deterministic():
    specs = [make_spec("incumbent"), make_spec("recovering")]
    states = {"incumbent": healthy(36.0, successes=20_000, failures=60),
              "recovering": healthy(28.0, successes=3, failures=0)}
    snap = make_snapshot(specs, states, RoutingPolicy(exploration="none"))
    assert first_choices(snap)["incumbent"] == 2000
    decision = decide(snap, CNY, random.Random(0))
    assert all(score.exploration == 0.0 for score in decision.scores.values())


def test_fallbacks_are_ordered_without_exploration():
    # Two slow fallbacks with little data: Thompson noise must not put the 4.8 s bank
    # ahead of the 1.2 s channel behind the first choice.
    snap = market(SCORE, usdt_settle=healthy(1200.0, successes=2, failures=0),
                  unionpay_bank=healthy(4800.0, successes=2, failures=0))
    for seed in range(300):
        assert decide(snap, CNY, random.Random(seed)).candidates[1:] == (
            "usdt_settle", "unionpay_bank")


def test_scores_add_up():
    decision = decide(market(), CNY, random.Random(5))
    for score in decision.scores.values():
        parts = score.success + score.latency + score.cost + score.weight + score.exploration
        assert abs(score.total - parts) < 1e-12


def test_weights_validate():
    for bad in ({"success": -1.0}, {"latency_ref_ms": 0.0}, {"prior_failures": 0.0}):
        try:
            ScoringWeights(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
