"""``explain``: a decision laid out for a human (``GET /v1/admin/routing/explain``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from routing._decide import approval_posterior, decide, works_posterior, works_prior
from routing._model import ALL_SEGMENTS, Transaction
from routing._snapshot import Snapshot, _Prepared

if TYPE_CHECKING:
    import random

__all__ = ["explain"]


def explain(snapshot: Snapshot, txn: Transaction, rng: random.Random) -> dict[str, Any]:
    """Decide for ``txn`` and return the decision as JSON-ready data: the rule matched
    (or that the default strategy was used), the ranking with each factor's
    contribution and the inputs behind it, and every filtered channel with its reason."""
    decision = decide(snapshot, txn, rng)
    value = snapshot.policy.objective == "value" and decision.strategy == "smart"
    segment = snapshot.policy.segments.key(txn)
    prior = works_prior([_prepared(snapshot, name) for name in decision.candidates], snapshot.policy.weights)
    ranking = []
    for rank, name in enumerate(decision.candidates, start=1):
        score = decision.scores[name]
        ranking.append({
            "rank": rank,
            "channel": name,
            "kind": snapshot.channels[name].kind,
            "score": round(score.total, 6),
            "factors": {
                "success": round(score.success, 6),
                "latency": round(score.latency, 6),
                "cost": round(score.cost, 6),
                "weight": round(score.weight, 6),
                "exploration": round(score.exploration, 6),
            },
            "inputs": _inputs(snapshot, name, txn),
            "value": _value(snapshot, name, txn, segment, prior) if value else None,
        })
    return {
        "snapshot_version": decision.snapshot_version,
        "transaction": {
            "currency": txn.currency,
            "country": txn.country,
            "method": txn.method,
            "amount_minor": txn.amount_minor,
            "segment": txn.segment,
        },
        "rule": decision.rule,
        "default_used": decision.rule is None,
        "strategy": decision.strategy,
        "objective": snapshot.policy.objective if decision.strategy == "smart" else None,
        "segment": segment,
        "panic": decision.panic,
        "candidates": list(decision.candidates),
        "ranking": ranking,
        "filtered": [{"channel": name, "reason": reason}
                     for name, reason in sorted(decision.filtered.items())],
    }


def _prepared(snapshot: Snapshot, name: str) -> _Prepared:
    return next(p for p in snapshot._index.prepared if p.name == name)


def _value(snapshot: Snapshot, name: str, txn: Transaction, segment: str, prior: float) -> dict[str, Any]:
    """The ``value`` objective's terms in minor units, and where each estimate came from:
    this instance's measurements, or the other instances' (``fleet``)."""
    p = _prepared(snapshot, name)
    v = snapshot.policy.value
    alpha, beta = approval_posterior(p, segment, v)
    p_approve = alpha / (alpha + beta)
    w_alpha, w_beta = works_posterior(p, prior, snapshot.policy.weights)
    p_works = w_alpha / (w_alpha + w_beta)
    amount = txn.amount_minor
    fee = p.fee_fixed + amount * p.fee_rate
    yes, no = p.approvals.get(segment, (0.0, 0.0))
    fleet = p.state.fleet
    fleet_doc = None
    if fleet is not None:
        f_yes, f_no = fleet.approvals.get(segment, (0.0, 0.0))
        f_all = fleet.approvals.get(ALL_SEGMENTS, (0.0, 0.0))
        fleet_doc = {
            "instances": fleet.instances, "ejected_on": fleet.ejected_on,
            "successes": round(fleet.successes, 3), "failures": round(fleet.failures, 3),
            "segment_approved": round(f_yes, 3), "segment_declined": round(f_no, 3),
            "channel_approved": round(f_all[0], 3), "channel_declined": round(f_all[1], 3),
            "latency_ewma_ms": None if fleet.latency_ewma_ms is None else round(fleet.latency_ewma_ms, 3),
            "last_probe_ok": fleet.probe_ok,
            "last_probe_age_s": None if fleet.probe_age_s is None else round(fleet.probe_age_s, 3),
        }
    return {
        "p_works": round(p_works, 6),
        "p_works_prior": round(prior, 6),
        "p_approve": round(p_approve, 6),
        "channel_approval": round(p.approval_mean, 6),
        "segment_approved": round(yes, 3),
        "segment_declined": round(no, 3),
        "fee_minor": round(fee, 3),
        "latency_ms": round(p.latency_ms, 3),
        "latency_slo_ms": v.latency_slo_ms,
        "latency_cost_minor": round(p.latency_cost * amount, 3),
        "expected_value_minor": round(p_works * p_approve * (amount - fee) - p.latency_cost * amount, 3),
        # The figures above include these: what the other instances on the store measured.
        "fleet": fleet_doc,
    }


def _inputs(snapshot: Snapshot, name: str, txn: Transaction) -> dict[str, Any]:
    """The measurements a channel's factors were computed from."""
    prepared = _prepared(snapshot, name)
    state = prepared.state
    return {
        "success_rate_estimate": round(prepared.mean, 6),
        "successes": state.successes,
        "failures": state.failures,
        "latency_ms": round(prepared.latency_ms, 3),
        "latency_ewma_ms": state.latency_ewma_ms,
        "latency_p99_ms": state.latency_p99_ms,
        "stalled": prepared.stalled,
        "stalled_ms": state.stalled_ms,
        "fee_minor": round(prepared.spec.fee_minor(txn.amount_minor), 3),
        "weight": prepared.spec.weight,
        "breaker": state.breaker,
        "in_flight": state.in_flight,
    }
