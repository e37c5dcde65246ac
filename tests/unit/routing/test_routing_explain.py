"""explain(): the decision as JSON-ready data."""

from __future__ import annotations

import json
import random

from routing import RoutingPolicy, Rule, RuleMatch, Transaction, decide, explain
from routing_builders import CNY, healthy, market


def test_explain_shape_and_content():
    snap = market(unionpay_bank=healthy(4800.0, breaker="open"))
    out = explain(snap, CNY, random.Random(9))
    json.dumps(out)  # JSON-ready
    assert out["rule"] is None and out["default_used"] is True
    assert out["strategy"] == "smart" and out["snapshot_version"] == "v1"
    assert out["transaction"]["amount_minor"] == 8500
    assert out["candidates"] == [r["channel"] for r in out["ranking"]]
    assert [r["rank"] for r in out["ranking"]] == [1, 2]
    first = out["ranking"][0]
    assert set(first["factors"]) == {"success", "latency", "cost", "weight", "exploration"}
    assert abs(sum(first["factors"].values()) - first["score"]) < 1e-5
    assert first["inputs"]["breaker"] == "closed"
    assert first["inputs"]["fee_minor"] == 51.0
    assert out["filtered"] == [{"channel": "unionpay_bank", "reason": "breaker open"}]


def test_explain_matches_decide_for_the_same_rng_state():
    snap = market()
    assert explain(snap, CNY, random.Random(4))["candidates"] == list(
        decide(snap, CNY, random.Random(4)).candidates)


def test_explain_names_the_rule():
    policy = RoutingPolicy(rules=(Rule("big", RuleMatch(min_amount_minor=5000), "cheapest"),))
    out = explain(market(policy), Transaction("CNY", "CN", "ewallet", 9000, segment="vip"),
                  random.Random(0))
    assert (out["rule"], out["default_used"], out["strategy"]) == ("big", False, "cheapest")
    assert out["transaction"]["segment"] == "vip"
