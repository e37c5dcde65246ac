"""The driver's routing: one decision over the current snapshot for one recharge,
counted in the metrics. ``routing`` decides; this feeds it and records what it chose."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import structlog

import health
import routing
from orchestrator.driver import RoutePlan
from orchestrator.metrics import Metrics
from orchestrator.model import AttemptState, Recharge

__all__ = ["RoutePlanner", "issuer_of", "transaction_of"]

log = structlog.get_logger("orchestrator.planner")


BIN_DIGITS = 6  # a card's issuer identification number: the first six digits


def issuer_of(instrument: Mapping[str, Any]) -> str | None:
    """The issuer routing segments on: the one the front service named, else a card's BIN
    (the masked number keeps its first six digits)."""
    issuer = instrument.get("issuer")
    if isinstance(issuer, str) and issuer:
        return issuer
    number = instrument.get("account_number")
    if isinstance(number, str) and number[:BIN_DIGITS].isdigit():
        return "bin:" + number[:BIN_DIGITS]
    return None


def transaction_of(rec: Recharge) -> routing.Transaction:
    segment = (rec.metadata or {}).get("segment")
    return routing.Transaction(
        currency=rec.currency, country=rec.country, method=rec.method, amount_minor=rec.amount_minor,
        segment=segment if isinstance(segment, str) else None, user_id=rec.user_id, step_up=rec.step_up,
        issuer=issuer_of(rec.instrument),
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

    def learn(self, rec: Recharge, soft_decline_codes: frozenset[str]) -> None:
        """What a recharge that just succeeded tells of approval in its segment: its
        channel approved it, and each channel that soft-declined it before declined for
        its own reasons (another approved the same payer). A hard decline, or a soft one
        nobody then approved, is the payer's issuer speaking, and teaches nothing."""
        if rec.channel is None:
            return
        segment = self._snapshots.current.policy.segments.key(transaction_of(rec))
        tried = [(a.channel, a.state is AttemptState.DECLINED and (a.decline_code or "") in soft_decline_codes)
                 for a in rec.attempts if a.channel != rec.channel]
        for channel, approved in health.lessons(tried, rec.channel):
            self._registry.record_approval(channel, segment, approved)

    def explain(self, txn: routing.Transaction) -> dict[str, Any]:
        return routing.explain(self._snapshots.current, txn, self._rng)
