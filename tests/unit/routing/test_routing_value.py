"""`smart` with the `value` objective: expected value per transaction from approval per
segment, fees and a price on latency past the SLO (issue 26)."""

from __future__ import annotations

import collections
import dataclasses
import random

from routing import (
    ALL_SEGMENTS,
    ChannelState,
    RoutingPolicy,
    SegmentPolicy,
    Transaction,
    ValueWeights,
    decide,
    explain,
)
from routing_builders import CNY, healthy, make_snapshot, make_spec, market

SEGMENTS = SegmentPolicy(amount_bands={"CNY": (10_000, 50_000)})
SMALL = Transaction("CNY", "CN", "ewallet", 8_500)  # band 0
LARGE = Transaction("CNY", "CN", "ewallet", 68_000)  # band 2


def approvals(**by_segment: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """Tallies keyed by segment; ``ALL_SEGMENTS`` is their sum unless given."""
    out = {key.replace("__", "/"): pair for key, pair in by_segment.items()}
    if ALL_SEGMENTS not in out:
        out[ALL_SEGMENTS] = (sum(a for a, _ in out.values()), sum(d for _, d in out.values()))
    return out


def with_approvals(state: ChannelState, tallies: dict[str, tuple[float, float]]) -> ChannelState:
    return dataclasses.replace(state, approvals=tallies)


def first_choices(snapshot, txn=SMALL, n: int = 2000, seed: int = 3) -> collections.Counter[str]:
    rng = random.Random(seed)
    return collections.Counter(decide(snapshot, txn, rng).candidates[0] for _ in range(n))


def test_segment_keys_carry_market_method_band_and_issuer():
    seg = SegmentPolicy(amount_bands={"CNY": (10_000, 50_000)})
    assert seg.key(SMALL) == "CNY/CN/ewallet/b0"
    assert seg.key(Transaction("CNY", "CN", "ewallet", 10_000)) == "CNY/CN/ewallet/b0"  # bounds inclusive
    assert seg.key(Transaction("CNY", "CN", "ewallet", 10_001)) == "CNY/CN/ewallet/b1"
    assert seg.key(LARGE) == "CNY/CN/ewallet/b2"
    assert seg.key(Transaction("PHP", "PH", "ewallet", 10**6)) == "PHP/PH/ewallet/b0"  # no bands: one
    assert seg.key(Transaction("CNY", "CN", "card", 500, issuer="icbc")) == "CNY/CN/card/b0/icbc"
    assert SegmentPolicy(issuer=False).key(Transaction("CNY", "CN", "card", 500, issuer="icbc")) == "CNY/CN/card/b0"


def test_bad_bands_are_refused():
    for bad in ({"CNY": (5, 5)}, {"CNY": (10, 5)}, {"CNY": (0,)}):
        try:
            SegmentPolicy(amount_bands=bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_each_segment_goes_to_the_channel_that_approves_it_best():
    # a approves small payments 97 % and large ones 85 %; b the reverse.
    specs = [make_spec("a"), make_spec("b")]
    states = {
        "a": with_approvals(healthy(30.0), approvals(CNY__CN__ewallet__b0=(970, 30), CNY__CN__ewallet__b2=(850, 150))),
        "b": with_approvals(healthy(30.0), approvals(CNY__CN__ewallet__b0=(850, 150), CNY__CN__ewallet__b2=(970, 30))),
    }
    snap = make_snapshot(specs, states, RoutingPolicy(segments=SEGMENTS))
    assert first_choices(snap, SMALL)["a"] >= 1980
    assert first_choices(snap, LARGE)["b"] >= 1980


def test_a_sparse_segment_borrows_its_channels_record():
    # Nothing is known of b's large payments, but b approves 60 % of all it carries: its
    # estimate for the segment starts there, not at the optimistic global prior.
    specs = [make_spec("a"), make_spec("b")]
    states = {
        "a": with_approvals(healthy(30.0), approvals(CNY__CN__ewallet__b2=(900, 100))),
        "b": with_approvals(healthy(30.0), approvals(CNY__CN__ewallet__b0=(600, 400))),
    }
    snap = make_snapshot(specs, states, RoutingPolicy(segments=SEGMENTS))
    decision = decide(snap, LARGE, random.Random(0))
    assert decision.scores["b"].success < 0.7 < decision.scores["a"].success
    assert first_choices(snap, LARGE)["a"] >= 1980  # b explored in under 1 % of decisions


def test_fees_decide_between_equal_approval():
    specs = [make_spec("dear", fee_percent=2.0), make_spec("cheap", fee_percent=0.2)]
    tallies = approvals(CNY__CN__ewallet__b0=(9_700, 300))
    states = {name: with_approvals(healthy(30.0, successes=100_000, failures=100), tallies) for name in ("dear", "cheap")}
    assert first_choices(make_snapshot(specs, states, RoutingPolicy(segments=SEGMENTS)))["cheap"] == 2000


def test_approval_outweighs_a_fee_difference_worth_less():
    # 1 point of approval is worth more than 0.5 % of fee: the dearer channel wins.
    specs = [make_spec("cheap", fee_percent=0.1), make_spec("better", fee_percent=0.6)]
    states = {
        "cheap": with_approvals(healthy(30.0), approvals(CNY__CN__ewallet__b0=(9_600, 400))),
        "better": with_approvals(healthy(30.0), approvals(CNY__CN__ewallet__b0=(9_800, 200))),
    }
    assert first_choices(make_snapshot(specs, states, RoutingPolicy(segments=SEGMENTS)))["better"] >= 1990


def test_latency_costs_only_past_the_slo():
    # 30 ms and 300 ms are both inside a 500 ms SLO: a tie, broken by config order; a
    # 1.2 s channel pays 0.7 s x 100 bps/s = 0.7 % of the amount.
    specs = [make_spec("slow"), make_spec("fast"), make_spec("settle", timeout_ms=5000)]
    tallies = approvals(CNY__CN__ewallet__b0=(9_700, 300))
    states = {"slow": with_approvals(healthy(300.0), tallies), "fast": with_approvals(healthy(30.0), tallies),
              "settle": with_approvals(healthy(1200.0), tallies)}
    snap = make_snapshot(specs, states, RoutingPolicy(segments=SEGMENTS, exploration="none"))
    decision = decide(snap, SMALL, random.Random(0))
    assert decision.candidates == ("slow", "fast", "settle")
    assert decision.scores["slow"].latency == decision.scores["fast"].latency == 0.0
    assert abs(decision.scores["settle"].latency + 0.007) < 1e-9


def test_exploration_is_bounded_by_its_share():
    # A new channel with no record at all: it is tried, but in no more decisions than
    # the exploration share, and never without it.
    specs = [make_spec("known"), make_spec("new")]
    states = {"known": with_approvals(healthy(30.0), approvals(CNY__CN__ewallet__b0=(9_500, 500))),
              "new": healthy(30.0, successes=0, failures=0)}
    for share in (0.02, 0.1):
        snap = make_snapshot(specs, states, RoutingPolicy(segments=SEGMENTS,
                                                          value=ValueWeights(exploration_share=share)))
        tried = first_choices(snap, n=10_000)["new"]
        assert 0 < tried <= share * 10_000 * 1.2
    snap = make_snapshot(specs, states, RoutingPolicy(segments=SEGMENTS, value=ValueWeights(exploration_share=0.0)))
    assert first_choices(snap, n=2000)["known"] == 2000


def test_a_broken_channel_loses_whatever_its_approval():
    snap = market(alipay_direct=with_approvals(healthy(28.0, successes=100, failures=900),
                                                approvals(CNY__CN__ewallet__b0=(100, 0))))
    assert first_choices(snap)["alipay_direct"] < 60  # only exploration, and rarely


def test_fallbacks_follow_expected_value_without_exploration():
    snap = market(usdt_settle=healthy(1200.0, successes=2, failures=0),
                  unionpay_bank=healthy(4800.0, successes=2, failures=0))
    for seed in range(300):
        decision = decide(snap, CNY, random.Random(seed))
        rest = decision.candidates[1:]
        expected = [decision.scores[n].total - decision.scores[n].exploration for n in rest]
        assert expected == sorted(expected, reverse=True)


def test_value_scores_add_up_and_explain_shows_the_terms():
    snap = market(alipay_direct=with_approvals(healthy(28.0), approvals(CNY__CN__ewallet__b0=(50, 5))))
    decision = decide(snap, CNY, random.Random(5))
    for score in decision.scores.values():
        parts = score.success + score.latency + score.cost + score.weight + score.exploration
        assert abs(score.total - parts) < 1e-12
    doc = explain(snap, CNY, random.Random(5))
    assert doc["objective"] == "value" and doc["segment"] == "CNY/CN/ewallet/b0"
    alipay = next(r for r in doc["ranking"] if r["channel"] == "alipay_direct")
    value = alipay["value"]
    assert value["segment_approved"] == 50 and value["segment_declined"] == 5
    m = ValueWeights().pool_weight
    assert abs(value["p_approve"] - (50 + m * value["channel_approval"]) / (55 + m)) < 1e-6
    assert abs(value["expected_value_minor"] - (value["p_works"] * value["p_approve"] * (8500 - value["fee_minor"])
                                                - value["latency_cost_minor"])) < 0.01
    assert value["fleet"] is None


def test_every_channel_failing_still_gives_a_decision():
    # Found by the property test: all eligible channels with failures only pooled the
    # P(works) prior to 0, and a Beta(0, n) draw raised instead of ranking.
    snap = market(**{name: healthy(28.0, successes=0.0, failures=500.0)
                     for name in ("alipay_direct", "usdt_settle", "unionpay_bank")})
    for seed in range(200):
        assert len(decide(snap, CNY, random.Random(seed)).candidates) == 3
