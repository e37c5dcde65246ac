"""``decide``: filter the channels, then rank the rest by the matched rule's strategy.

Pure and synchronous: the same snapshot, transaction and rng state give the same
decision, which is what makes ``explain``, the tests and the simulator trustworthy.
"""

from __future__ import annotations

import math
from dataclasses import replace
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from routing._model import Decision, Rule, Score, ScoringWeights, Transaction, ValueWeights
from routing._snapshot import Snapshot, _health_reason, _Prepared

if TYPE_CHECKING:
    import random

__all__ = ["approval_posterior", "decide", "match_rule", "works_posterior", "works_prior"]

_Ranker = Callable[[list[_Prepared], Transaction, "random.Random", Rule | None, Snapshot],
                   tuple[list[_Prepared], dict[str, Score]]]


def match_rule(snapshot: Snapshot, txn: Transaction) -> tuple[int, Rule | None]:
    """The first rule whose match accepts ``txn`` and its position, or (-1, None)."""
    for pos, rule in enumerate(snapshot.policy.rules):
        if rule.match.matches(txn):
            return pos, rule
    return -1, None


def decide(snapshot: Snapshot, txn: Transaction, rng: random.Random, *,
           in_flight: Mapping[str, int] | None = None) -> Decision:
    """Choose the failover order of channels for ``txn``.

    ``in_flight``, when given, overrides the snapshot's in-flight counts for the
    concurrency cap (a live gauge is fresher than the last published snapshot).
    """
    pos, rule = match_rule(snapshot, txn)
    strategy = rule.strategy if rule is not None else snapshot.policy.strategy
    eligible, filtered = _filter(snapshot, pos, txn, in_flight)
    panic = False
    if not eligible and any(reason.startswith("breaker") for reason in filtered.values()):
        eligible, filtered = _filter(snapshot, pos, txn, in_flight, ignore_breakers=True)
        panic = bool(eligible)
    ranker = _rank_value if strategy == "smart" and snapshot.policy.objective == "value" else _RANKERS[strategy]
    ranked, scores = ranker(eligible, txn, rng, rule, snapshot)
    return Decision(
        candidates=tuple(p.name for p in ranked),
        rule=rule.name if rule is not None else None,
        strategy=strategy,
        scores=scores,
        filtered=filtered,
        snapshot_version=snapshot.version,
        panic=panic,
    )


def _filter(snapshot: Snapshot, rule_pos: int, txn: Transaction, in_flight: Mapping[str, int] | None,
            *, ignore_breakers: bool = False) -> tuple[list[_Prepared], dict[str, str]]:
    """Eligible channels in config order, and every other channel with its reason.

    Reasons are checked in a fixed order (rule, currency, country, method, step-up, amount,
    drain, breaker, cap) so each filtered channel reports the first one that applies.
    """
    static, static_reasons = snapshot._index.static(rule_pos, txn.currency, txn.country, txn.method)
    filtered = dict(static_reasons)
    eligible: list[_Prepared] = []
    amount = txn.amount_minor
    for p in static:
        spec = p.spec
        if txn.step_up and not spec.step_up:
            filtered[p.name] = "no 3-D Secure step-up for a challenged recharge"
        elif amount < spec.min_amount_minor:
            filtered[p.name] = f"amount {amount} below min {spec.min_amount_minor}"
        elif spec.max_amount_minor is not None and amount > spec.max_amount_minor:
            filtered[p.name] = f"amount {amount} above max {spec.max_amount_minor}"
        elif (reason := _live_reason(p, ignore_breakers)) is not None:
            filtered[p.name] = reason
        elif (in_flight is not None and spec.max_in_flight is not None
              and in_flight.get(p.name, 0) >= spec.max_in_flight):
            filtered[p.name] = f"in-flight cap {spec.max_in_flight} reached"
        else:
            eligible.append(p)
    return eligible, filtered


def _live_reason(p: _Prepared, ignore_breakers: bool) -> str | None:
    if ignore_breakers and p.health_reason is not None and p.health_reason.startswith("breaker"):
        # Panic: judge the channel as if its breaker were closed (drain and cap still hold).
        return _health_reason(p.spec, replace(p.state, breaker="closed"))
    return p.health_reason


def _base_scores(eligible: list[_Prepared], txn: Transaction, snapshot: Snapshot
                 ) -> dict[str, Score]:
    """Every factor except exploration; shown for every strategy so ``explain`` can
    say how a static order compares with what ``smart`` would have chosen."""
    cost_weight = snapshot.policy.weights.cost
    amount = txn.amount_minor
    scores: dict[str, Score] = {}
    for p in eligible:
        cost = -cost_weight * (p.fee_fixed + amount * p.fee_rate) / amount
        total = p.success_term + p.latency_term + cost + p.weight_term
        scores[p.name] = Score(total, p.success_term, p.latency_term, cost, p.weight_term, 0.0)
    return scores


def _sample_success(p: _Prepared, rng: random.Random) -> float:
    """One Thompson draw from the channel's Beta posterior.

    Exact while the counts are small (the shape matters there); beyond that the normal
    approximation, clamped to [0, 1]: the same mean and variance, and much cheaper
    (docs/performance.md#thompson-sampling).
    """
    if p.exact_beta:
        return rng.betavariate(p.alpha, p.beta)
    draw = rng.gauss(p.mean, p.sd)
    return 0.0 if draw < 0.0 else 1.0 if draw > 1.0 else draw


def _rank_smart(eligible: list[_Prepared], txn: Transaction, rng: random.Random,
                rule: Rule | None, snapshot: Snapshot) -> tuple[list[_Prepared], dict[str, Score]]:
    """First the channel with the highest sampled total (Thompson: success estimate
    drawn from its posterior, plus latency, cost, weight); then the fallbacks by their
    total without exploration.

    Exploration pays for itself on the first attempt, which almost every transaction
    makes, so a channel that may have recovered soon gets enough traffic to show it.
    A fallback is tried only after a failure: curiosity there buys little evidence
    and can put a 4.8 s bank ahead of a 1.2 s channel at the worst moment.
    One pass, one Score per channel: this is the hot path.
    """
    w = snapshot.policy.weights
    thompson = snapshot.policy.exploration == "thompson"
    amount = txn.amount_minor
    scores: dict[str, Score] = {}
    keyed: list[tuple[float, int, _Prepared]] = []
    best: _Prepared | None = None
    best_key = (math.inf, 0)
    for p in eligible:
        cost = -w.cost * (p.fee_fixed + amount * p.fee_rate) / amount
        expected = p.success_term + p.latency_term + cost + p.weight_term
        explore = w.success * (_sample_success(p, rng) - p.mean) if thompson else 0.0
        total = expected + explore
        scores[p.name] = Score(total, p.success_term, p.latency_term, cost, p.weight_term, explore)
        keyed.append((-expected, p.order, p))
        if (-total, p.order) < best_key:
            best, best_key = p, (-total, p.order)
    if best is None:
        return [], scores
    keyed.sort(key=_first_two)
    return [best] + [k[2] for k in keyed if k[2] is not best], scores


def _first_two(item: tuple[float, int, _Prepared]) -> tuple[float, int]:
    return item[0], item[1]


_NO_TALLY = (0.0, 0.0)


def approval_posterior(p: _Prepared, segment: str, v: ValueWeights) -> tuple[float, float]:
    """Beta(alpha, beta) of P(approved | channel, segment): the segment's own (decayed)
    tally on a prior of the channel's whole traffic worth ``pool_weight`` observations."""
    yes, no = p.approvals.get(segment, _NO_TALLY)
    m = v.pool_weight
    return yes + m * p.approval_mean, no + m * (1.0 - p.approval_mean)


# An unproven channel is taken to fail this many times as often as the eligible channels
# do together: on equal evidence the measured one keeps the traffic (docs/routing.md#learning).
UNPROVEN_FAILURE_FACTOR = 2.0
_PRIOR_EDGE = 1e-3


def works_prior(eligible: list[_Prepared], w: ScoringWeights) -> float:
    """The prior mean of a channel's P(works) for the value objective: the eligible
    channels' recent attempts pooled (with the configured prior, which is all there is
    when nobody has measured anything), failures counted ``UNPROVEN_FAILURE_FACTOR`` times."""
    ok = failed = 0.0
    for p in eligible:
        ok += p.state.successes
        failed += p.state.failures
    pooled_failure = (failed + w.prior_failures) / (ok + failed + w.prior_successes + w.prior_failures)
    # Strictly inside (0, 1): a Beta with a zero parameter cannot be drawn from (every
    # eligible channel failing would otherwise fail the decision itself).
    return min(1.0 - _PRIOR_EDGE, max(_PRIOR_EDGE, 1.0 - UNPROVEN_FAILURE_FACTOR * pooled_failure))


def works_posterior(p: _Prepared, prior: float, w: ScoringWeights) -> tuple[float, float]:
    """Beta(alpha, beta) of P(the channel answers) for the value objective: its own
    decayed counts on ``prior`` worth as many observations as the configured prior.

    Not the configured Beta(19, 1) alone: that takes a channel idle for a minute as 95 %
    likely to work, a 5-point haircut on its expected value, larger than any fee
    difference, so a channel that carries little traffic never earns more (the simulator:
    0.24 pp of success and 2.4 bps of fees lost to it, docs/routing.md#learning)."""
    m = w.prior_successes + w.prior_failures
    return p.state.successes + m * prior, p.state.failures + m * (1.0 - prior)


def _draw(rng: random.Random, alpha: float, beta: float, exact_below: float) -> float:
    """One draw from Beta(alpha, beta): exact while the evidence is thin, its normal
    approximation (clamped) beyond, as for the success estimate."""
    total = alpha + beta
    if alpha <= 0.0 or beta <= 0.0:  # a degenerate posterior: its mean is all there is
        return 1.0 if beta <= 0.0 < alpha else 0.0 if alpha <= 0.0 < beta else 0.5
    if total < exact_below:
        return rng.betavariate(alpha, beta)
    draw = rng.gauss(alpha / total, math.sqrt(alpha * beta / (total * total * (total + 1.0))))
    return 0.0 if draw < 0.0 else 1.0 if draw > 1.0 else draw


def _rank_value(eligible: list[_Prepared], txn: Transaction, rng: random.Random,
                rule: Rule | None, snapshot: Snapshot) -> tuple[list[_Prepared], dict[str, Score]]:
    """The ``value`` objective: first the channel with the highest expected value of the
    payment, P(works) x P(approved | segment) x (1 - fee / amount) - the price of its
    latency past the SLO (+ the configured weight's term), all in fractions of the amount;
    then the fallbacks by the same, without exploration.

    In ``exploration_share`` of decisions both probabilities are Thompson draws from their
    posteriors instead of their means: a channel whose estimate is uncertain (new, idle,
    recovering, or a segment it rarely serves) is tried in proportion to its chance of
    being the best, and never more than that share of traffic explores.
    """
    policy = snapshot.policy
    v, w = policy.value, policy.weights
    exact_below = w.exact_beta_below
    segment = policy.segments.key(txn)
    prior = works_prior(eligible, w)
    explore = (policy.exploration == "thompson" and v.exploration_share > 0.0
               and rng.random() < v.exploration_share)
    amount = txn.amount_minor
    scores: dict[str, Score] = {}
    keyed: list[tuple[float, int, _Prepared]] = []
    best: _Prepared | None = None
    best_key = (math.inf, 0)
    for p in eligible:
        fee = (p.fee_fixed + amount * p.fee_rate) / amount
        alpha, beta = approval_posterior(p, segment, v)
        w_alpha, w_beta = works_posterior(p, prior, w)
        approve = w_alpha / (w_alpha + w_beta) * alpha / (alpha + beta)
        expected = approve * (1.0 - fee) - p.latency_cost + p.weight_term
        total = expected
        if explore:
            drawn = _draw(rng, w_alpha, w_beta, exact_below) * _draw(rng, alpha, beta, exact_below)
            total = drawn * (1.0 - fee) - p.latency_cost + p.weight_term
        scores[p.name] = Score(total, approve, -p.latency_cost, -approve * fee, p.weight_term, total - expected)
        keyed.append((-expected, p.order, p))
        if (-total, p.order) < best_key:
            best, best_key = p, (-total, p.order)
    if best is None:
        return [], scores
    keyed.sort(key=_first_two)
    return [best] + [k[2] for k in keyed if k[2] is not best], scores


def _rank_priority(eligible: list[_Prepared], txn: Transaction, rng: random.Random,
                   rule: Rule | None, snapshot: Snapshot) -> tuple[list[_Prepared], dict[str, Score]]:
    """The rule's list order; without one, configured weight (descending), then config order."""
    if rule is not None and rule.channels is not None:
        position = {name: i for i, name in enumerate(rule.channels)}
        ranked = sorted(eligible, key=lambda p: position[p.name])
    else:
        ranked = sorted(eligible, key=lambda p: (-p.spec.weight, p.order))
    return ranked, _base_scores(eligible, txn, snapshot)


def _rank_weighted(eligible: list[_Prepared], txn: Transaction, rng: random.Random,
                   rule: Rule | None, snapshot: Snapshot) -> tuple[list[_Prepared], dict[str, Score]]:
    """A weighted random order (Efraimidis-Spirakis): each channel comes first with
    probability weight / total weight, so the first choices split volume by weight."""
    keys = {p.name: rng.expovariate(p.spec.weight) for p in eligible}
    ranked = sorted(eligible, key=lambda p: (keys[p.name], p.order))
    return ranked, _base_scores(eligible, txn, snapshot)


def _rank_cheapest(eligible: list[_Prepared], txn: Transaction, rng: random.Random,
                   rule: Rule | None, snapshot: Snapshot) -> tuple[list[_Prepared], dict[str, Score]]:
    """Ascending fee on this amount; ties by latency (unmeasured counts as its timeout),
    then config order."""
    amount = txn.amount_minor
    ranked = sorted(eligible, key=lambda p: (p.fee_fixed + amount * p.fee_rate, p.latency_ms, p.order))
    return ranked, _base_scores(eligible, txn, snapshot)


_RANKERS: dict[str, _Ranker] = {
    "smart": _rank_smart,
    "priority": _rank_priority,
    "weighted": _rank_weighted,
    "cheapest": _rank_cheapest,
}
