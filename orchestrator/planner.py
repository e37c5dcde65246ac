"""The driver's routing: one decision over the current snapshot for one recharge,
counted in the metrics. ``routing`` decides; this feeds it and records what it chose."""

from __future__ import annotations

import random
from typing import Any

import structlog

import health
import routing
from orchestrator.driver import RoutePlan
from orchestrator.metrics import Metrics
from orchestrator.model import Recharge

__all__ = ["RoutePlanner", "transaction_of"]

log = structlog.get_logger("orchestrator.planner")


def transaction_of(rec: Recharge) -> routing.Transaction:
    segment = (rec.metadata or {}).get("segment")
    return routing.Transaction(
        currency=rec.currency, country=rec.country, method=rec.method, amount_minor=rec.amount_minor,
        segment=segment if isinstance(segment, str) else None, user_id=rec.user_id, step_up=rec.step_up,
    )


class RoutePlanner:
    def __init__(self, snapshots: routing.SnapshotHolder, registry: health.HealthRegistry, rng: random.Random,
                 metrics: Metrics) -> None:
        self._snapshots = snapshots
        self._registry = registry
        self._rng = rng
        self._metrics = metrics

    def plan(self, rec: Recharge) -> RoutePlan:
        decision = routing.decide(self._snapshots.current, transaction_of(rec), self._rng,
                                  in_flight=self._registry.in_flight())
        self._metrics.routed(decision.rule or "default", decision.strategy,
                             decision.candidates[0] if decision.candidates else "none")
        if decision.panic:
            log.warning("routing_panic", recharge_id=rec.id, candidates=decision.candidates)
        return RoutePlan(decision.candidates, decision.panic)

    def explain(self, txn: routing.Transaction) -> dict[str, Any]:
        return routing.explain(self._snapshots.current, txn, self._rng)
