"""Properties of decide() over arbitrary channel sets, states and transactions."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from routing import ChannelSpec, ChannelState, RoutingPolicy, Rule, RuleMatch, Snapshot, Transaction, decide

CURRENCIES = ("CNY", "PHP")
COUNTRIES = ("CN", "PH")
METHODS = ("ewallet", "card")
KINDS = ("direct_api", "digital_currency", "bank")

subsets = st.frozensets(st.sampled_from(CURRENCIES), min_size=1)


@st.composite
def specs(draw: st.DrawFn, name: str) -> ChannelSpec:
    low = draw(st.integers(0, 5000))
    return ChannelSpec(
        name=name, kind=draw(st.sampled_from(KINDS)), currencies=draw(subsets),
        countries=draw(st.frozensets(st.sampled_from(COUNTRIES), min_size=1)),
        methods=draw(st.frozensets(st.sampled_from(METHODS), min_size=1)),
        min_amount_minor=low, max_amount_minor=draw(st.one_of(st.none(), st.integers(low, 100_000))),
        fee_fixed_minor=draw(st.integers(0, 300)), fee_percent=draw(st.floats(0, 3)),
        weight=draw(st.floats(0.1, 5)), max_in_flight=draw(st.one_of(st.none(), st.integers(1, 20))),
        timeout_ms=draw(st.integers(100, 10_000)),
    )


states = st.builds(
    ChannelState,
    breaker=st.sampled_from(("closed", "open", "half_open")),
    half_open_trials_available=st.booleans(), drained=st.booleans(),
    in_flight=st.integers(0, 30),
    latency_ewma_ms=st.one_of(st.none(), st.floats(1, 10_000)),
    latency_p99_ms=st.one_of(st.none(), st.floats(1, 20_000)),
    successes=st.floats(0, 1e5), failures=st.floats(0, 1e4),
    stalled_ms=st.floats(0, 5000),
)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    names = [f"ch{i}" for i in range(draw(st.integers(0, 8)))]
    channel_specs = [draw(specs(name)) for name in names]
    channel_states = {name: draw(states) for name in names if draw(st.booleans())}
    rules = ()
    if names and draw(st.booleans()):
        chosen = tuple(draw(st.permutations(names))[: draw(st.integers(1, len(names)))])
        rules = (Rule("r", RuleMatch(currency=draw(st.sampled_from(CURRENCIES))),
                      draw(st.sampled_from(("smart", "priority", "weighted", "cheapest"))), chosen),)
    policy = RoutingPolicy(strategy=draw(st.sampled_from(("smart", "priority", "weighted", "cheapest"))),
                           rules=rules)
    return Snapshot.build(channel_specs, channel_states, policy, "p")


transactions = st.builds(
    Transaction, currency=st.sampled_from(CURRENCIES), country=st.sampled_from(COUNTRIES),
    method=st.sampled_from(METHODS), amount_minor=st.integers(1, 200_000))


@settings(max_examples=120, deadline=None)
@given(snapshots(), transactions, st.integers(0, 2**32))
def test_candidates_and_filtered_partition_the_channels(snap, txn, seed):
    decision = decide(snap, txn, random.Random(seed))
    candidates = decision.candidates
    assert len(set(candidates)) == len(candidates)
    assert not set(candidates) & set(decision.filtered)
    assert set(candidates) | set(decision.filtered) == set(snap.channels)
    assert set(decision.scores) == set(candidates)


@settings(max_examples=120, deadline=None)
@given(snapshots(), transactions, st.integers(0, 2**32))
def test_never_returns_a_channel_a_filter_rules_out(snap, txn, seed):
    decision = decide(snap, txn, random.Random(seed))
    for name in decision.candidates:
        spec, state = snap.channels[name], snap.states.get(name, ChannelState())
        assert txn.currency in spec.currencies and txn.country in spec.countries
        assert txn.method in spec.methods and txn.amount_minor >= spec.min_amount_minor
        assert spec.max_amount_minor is None or txn.amount_minor <= spec.max_amount_minor
        assert not state.drained
        assert spec.max_in_flight is None or state.in_flight < spec.max_in_flight
        if not decision.panic:
            assert state.breaker != "open"
            assert state.breaker != "half_open" or state.half_open_trials_available
    if decision.panic:
        # Panic only when every channel that passed the other filters was ejected.
        assert decision.candidates
        assert all(reason.startswith("breaker") is False for reason in decision.filtered.values())


@settings(max_examples=80, deadline=None)
@given(snapshots(), transactions, st.integers(0, 2**32))
def test_same_seed_same_decision(snap, txn, seed):
    assert decide(snap, txn, random.Random(seed)) == decide(snap, txn, random.Random(seed))
