"""Prometheus metrics, on a registry of their own (one per app, so tests and several
apps in one process never collide)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from channels import AttemptOutcome

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter("orchestrator_http_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.recharges = Counter("orchestrator_recharges", "Recharges by final or current status", ["status"], registry=r)
        self.attempts = Counter("orchestrator_attempts", "Provider attempts by outcome", ["channel", "outcome"], registry=r)
        self.attempt_latency = Histogram(
            "orchestrator_attempt_latency_seconds", "Provider attempt latency", ["channel"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.in_flight_attempts = Gauge("orchestrator_attempts_in_flight", "Provider calls in flight", ["channel"], registry=r)
        self.routing_decisions = Counter(
            "orchestrator_routing_decisions", "Routing decisions by rule, strategy and first choice",
            ["rule", "strategy", "first"], registry=r,
        )
        self.breaker_state = Gauge(
            "orchestrator_breaker_state", "Breaker per channel: 0 closed, 1 half-open, 2 open", ["channel"], registry=r
        )
        self.risk_decisions = Counter("orchestrator_risk_decisions", "Recharges flagged by risk", ["action"],
                                      registry=r)
        self.shed = Counter("orchestrator_requests_shed", "Recharge requests refused with 503: overload", registry=r)
        self.in_flight_recharges = Gauge("orchestrator_recharges_in_flight", "Recharges being driven", registry=r)
        self.commit_latency = Histogram(
            "orchestrator_journal_commit_seconds", "Journal group-commit duration", registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
        )
        self.commit_batch = Histogram(
            "orchestrator_journal_batch_size", "Steps per journal commit", registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )

    def routed(self, rule: str, strategy: str, first_choice: str) -> None:
        self._child(self.routing_decisions, rule, strategy, first_choice).inc()

    def attempt_started(self, channel: str) -> None:
        self._child(self.in_flight_attempts, channel).inc()

    def attempt_abandoned(self, channel: str) -> None:
        self._child(self.in_flight_attempts, channel).dec()

    def attempt_finished(self, channel: str, outcome: AttemptOutcome, latency_ms: float) -> None:
        self._child(self.in_flight_attempts, channel).dec()
        self._child(self.attempts, channel, outcome.value).inc()
        self._child(self.attempt_latency, channel).observe(latency_ms / 1000)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the lookup (a lock and a dict) is on
        every recharge's path. Channel names and outcomes are few, so this stays small."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def journal_commit(self, batch: int, seconds: float) -> None:
        # Called from the journal's writer thread; prometheus_client is thread-safe.
        self.commit_batch.observe(batch)
        self.commit_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
