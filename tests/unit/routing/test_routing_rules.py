"""Rule matching: first match wins, every key, amount range, segment, the fallback."""

from __future__ import annotations

import random

import pytest

from routing import RoutingPolicy, Rule, RuleMatch, Transaction, decide, match_rule
from routing_builders import make_snapshot, make_spec

TXN = Transaction("CNY", "CN", "ewallet", 8500, segment="vip", user_id="u_1")


def policy(*rules: Rule, default: str = "smart") -> RoutingPolicy:
    return RoutingPolicy(strategy=default, rules=rules)


def rule_for(snapshot_policy: RoutingPolicy, txn: Transaction = TXN) -> str | None:
    snap = make_snapshot([make_spec("a")], policy=snapshot_policy)
    return decide(snap, txn, random.Random(0)).rule


def test_first_matching_rule_wins():
    p = policy(Rule("cny", RuleMatch(currency="CNY"), "priority"),
               Rule("cn", RuleMatch(country="CN"), "cheapest"))
    snap = make_snapshot([make_spec("a")], policy=p)
    decision = decide(snap, TXN, random.Random(0))
    assert (decision.rule, decision.strategy) == ("cny", "priority")
    assert match_rule(snap, TXN)[0] == 0


def test_no_match_falls_back_to_the_default_strategy():
    p = policy(Rule("php", RuleMatch(currency="PHP"), "priority"), default="cheapest")
    snap = make_snapshot([make_spec("a")], policy=p)
    decision = decide(snap, TXN, random.Random(0))
    assert (decision.rule, decision.strategy) == (None, "cheapest")
    assert match_rule(snap, TXN) == (-1, None)


@pytest.mark.parametrize(("match", "matches"), [
    (RuleMatch(currency="CNY"), True), (RuleMatch(currency="PHP"), False),
    (RuleMatch(country="CN"), True), (RuleMatch(country="PH"), False),
    (RuleMatch(method="ewallet"), True), (RuleMatch(method="card"), False),
    (RuleMatch(segment="vip"), True), (RuleMatch(segment="new"), False),
    (RuleMatch(min_amount_minor=8500), True), (RuleMatch(min_amount_minor=8501), False),
    (RuleMatch(max_amount_minor=8500), True), (RuleMatch(max_amount_minor=8499), False),
    (RuleMatch(min_amount_minor=1000, max_amount_minor=10_000), True),
    (RuleMatch(currency="CNY", country="CN", method="ewallet", segment="vip"), True),
    (RuleMatch(currency="CNY", country="CN", method="ewallet", segment="new"), False),
    (RuleMatch(), True),
])
def test_each_match_key(match, matches):
    assert match.matches(TXN) is matches
    assert rule_for(policy(Rule("r", match, "priority"))) == ("r" if matches else None)


def test_segment_rule_does_not_match_a_transaction_without_segment():
    anonymous = Transaction("CNY", "CN", "ewallet", 8500)
    assert rule_for(policy(Rule("vip", RuleMatch(segment="vip"))), anonymous) is None


def test_rule_channels_restrict_every_strategy():
    specs = [make_spec("a"), make_spec("b"), make_spec("c")]
    for strategy in ("smart", "priority", "weighted", "cheapest"):
        p = policy(Rule("r", RuleMatch(), strategy, ("c", "a")))
        decision = decide(make_snapshot(specs, policy=p), TXN, random.Random(0))
        assert set(decision.candidates) == {"a", "c"}
        assert decision.filtered == {"b": "not in rule channels"}


def test_rule_validation():
    with pytest.raises(ValueError):
        Rule("r", RuleMatch(), "fastest")
    with pytest.raises(TypeError):
        Rule("r", RuleMatch(), "priority", "abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RoutingPolicy(rules=(Rule("r"), Rule("r")))
    with pytest.raises(ValueError):
        RoutingPolicy(strategy="fastest")
