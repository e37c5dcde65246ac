"""Every filter, and the reason it gives."""

from __future__ import annotations

import random

import pytest

from routing_builders import CNY, healthy, make_snapshot, make_spec
from routing import ChannelState, RoutingPolicy, Rule, RuleMatch, Transaction, decide

RNG_SEED = 1


def only(spec_overrides: dict[str, object] | None = None, state: ChannelState | None = None,
         txn: Transaction = CNY, policy: RoutingPolicy | None = None,
         in_flight: dict[str, int] | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """Decide over a healthy reference channel plus the channel under test ('x')."""
    specs = [make_spec("ref", min_amount_minor=1, max_amount_minor=None),
             make_spec("x", **(spec_overrides or {}))]
    states = {"ref": healthy(), "x": state or healthy()}
    d = decide(make_snapshot(specs, states, policy), txn, random.Random(RNG_SEED), in_flight=in_flight)
    return d.candidates, dict(d.filtered)


@pytest.mark.parametrize(("overrides", "txn", "reason"), [
    ({"currencies": {"PHP"}}, CNY, "currency CNY not supported"),
    ({"countries": {"PH"}}, CNY, "country CN not supported"),
    ({"methods": {"card"}}, CNY, "method ewallet not supported"),
    ({"min_amount_minor": 500}, Transaction("CNY", "CN", "ewallet", 100), "amount 100 below min 500"),
    ({"max_amount_minor": 200_000}, Transaction("CNY", "CN", "ewallet", 300_000),
     "amount 300000 above max 200000"),
])
def test_static_filters_give_their_reason(overrides, txn, reason):
    candidates, filtered = only(overrides, txn=txn)
    assert candidates == ("ref",)
    assert filtered == {"x": reason}


def test_amount_bounds_are_inclusive():
    for amount in (500, 200_000):
        candidates, _ = only(txn=Transaction("CNY", "CN", "ewallet", amount))
        assert "x" in candidates


@pytest.mark.parametrize(("state", "reason"), [
    (healthy(drained=True), "drained"),
    (healthy(breaker="open"), "breaker open"),
    (healthy(breaker="half_open", half_open_trials_available=False),
     "breaker half-open, no trial available"),
])
def test_health_filters_give_their_reason(state, reason):
    candidates, filtered = only(state=state)
    assert candidates == ("ref",)
    assert filtered == {"x": reason}


def test_half_open_with_a_trial_available_is_eligible():
    candidates, filtered = only(state=healthy(breaker="half_open", half_open_trials_available=True))
    assert "x" in candidates and filtered == {}


def test_in_flight_cap_from_the_snapshot():
    candidates, filtered = only({"max_in_flight": 50}, state=healthy(in_flight=50))
    assert filtered == {"x": "in-flight cap 50 reached"}
    candidates, filtered = only({"max_in_flight": 50}, state=healthy(in_flight=49))
    assert "x" in candidates


def test_live_in_flight_overrides_a_stale_snapshot():
    _, filtered = only({"max_in_flight": 50}, state=healthy(in_flight=0), in_flight={"x": 50})
    assert filtered == {"x": "in-flight cap 50 reached"}
    candidates, _ = only({"max_in_flight": 50}, state=healthy(in_flight=0), in_flight={"x": 49})
    assert "x" in candidates


def test_uncapped_channel_ignores_in_flight():
    candidates, _ = only(state=healthy(in_flight=10_000), in_flight={"x": 10_000})
    assert "x" in candidates


def test_not_in_rule_channels():
    policy = RoutingPolicy(rules=(Rule("only-ref", RuleMatch(), "smart", ("ref",)),))
    candidates, filtered = only(policy=policy)
    assert candidates == ("ref",)
    assert filtered == {"x": "not in rule channels"}


def test_first_applicable_reason_wins():
    # Outside the rule and the wrong currency and drained: the rule is named first.
    policy = RoutingPolicy(rules=(Rule("only-ref", RuleMatch(), "smart", ("ref",)),))
    _, filtered = only({"currencies": {"PHP"}}, state=healthy(drained=True), policy=policy)
    assert filtered == {"x": "not in rule channels"}
    # Wrong amount and breaker open: the amount is named first.
    _, filtered = only({"min_amount_minor": 10_000}, state=healthy(breaker="open"))
    assert filtered == {"x": "amount 8500 below min 10000"}


def test_nothing_eligible_gives_an_empty_order():
    specs = [make_spec("a", currencies={"PHP"})]
    d = decide(make_snapshot(specs), CNY, random.Random(0))
    assert d.candidates == ()
    assert d.filtered == {"a": "currency CNY not supported"}


def test_channel_without_state_is_taken_as_closed_and_unmeasured():
    d = decide(make_snapshot([make_spec("a")], states={}), CNY, random.Random(0))
    assert d.candidates == ("a",)


def test_a_challenged_recharge_goes_only_to_channels_that_can_step_up():
    step_up = Transaction("CNY", "CN", "ewallet", 8500, step_up=True)
    candidates, filtered = only({"step_up": True}, txn=step_up)
    assert candidates == ("x",)
    assert filtered == {"ref": "no 3-D Secure step-up for a challenged recharge"}
    assert set(only({"step_up": True})[0]) == {"ref", "x"}, "a plain recharge may go anywhere"
