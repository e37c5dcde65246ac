"""``explain``: a decision laid out for a human (``GET /v1/admin/routing/explain``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from routing._decide import decide
from routing._model import Transaction
from routing._snapshot import Snapshot

if TYPE_CHECKING:
    import random

__all__ = ["explain"]


def explain(snapshot: Snapshot, txn: Transaction, rng: random.Random) -> dict[str, Any]:
    """Decide for ``txn`` and return the decision as JSON-ready data: the rule matched
    (or that the default strategy was used), the ranking with each factor's
    contribution and the inputs behind it, and every filtered channel with its reason."""
    decision = decide(snapshot, txn, rng)
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
        "panic": decision.panic,
        "candidates": list(decision.candidates),
        "ranking": ranking,
        "filtered": [{"channel": name, "reason": reason}
                     for name, reason in sorted(decision.filtered.items())],
    }


def _inputs(snapshot: Snapshot, name: str, txn: Transaction) -> dict[str, Any]:
    """The measurements a channel's factors were computed from."""
    prepared = next(p for p in snapshot._index.prepared if p.name == name)
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
