"""Prometheus metrics, on a registry of their own (one per app, so tests and several
apps in one process never collide)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from channels import AttemptOutcome

__all__ = ["Metrics"]


class _Served(Protocol):
    """What the routable-channels gauge reads of a routing ``ChannelSpec``."""

    currencies: frozenset[str]
    countries: frozenset[str]
    methods: frozenset[str]


class _Condition(Protocol):
    """... and of a routing ``ChannelState``."""

    breaker: str
    drained: bool


class _Payment(Protocol):
    """What the outcome counter reads of a ``Recharge``: its market."""

    currency: str
    country: str


class FastHistogram(Collector):
    """A Prometheus histogram kept as plain counts, turned into samples when scraped.

    ``prometheus_client.Histogram.observe`` takes a lock and increments two values per
    call; these are observed on every attempt and every journal commit, from the event
    loop's thread only, so a list index is enough."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], labelnames: Sequence[str] = (),
                 *, registry: CollectorRegistry) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = tuple(buckets)
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], list[float]] = {}  # counts per bucket (+Inf last), then the sum
        registry.register(self)

    def observe(self, value: float, labels: tuple[str, ...] = ()) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0.0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        for labels, series in sorted(self._series.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self._bounds, float("inf")), series):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            family.add_metric(list(labels), buckets, series[-1])
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter("orchestrator_http_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.recharges = Counter("orchestrator_recharges", "Recharges that reached a final status (succeeded, "
                                 "declined, failed, blocked), by market, counted once by the process that journaled it",
                                 ["status", "currency", "country"], registry=r)
        self.attempts = Counter("orchestrator_attempts", "Provider attempts by outcome", ["channel", "outcome"], registry=r)
        self.attempt_latency = FastHistogram(
            "orchestrator_attempt_latency_seconds", "Provider attempt latency", labelnames=["channel"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # Set from the health registry's own counts when scraped (not per attempt).
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
        self.risk_shadow_decisions = Counter(
            "orchestrator_risk_shadow_decisions", "Shadow risk model decisions (never acted on), beside the live action",
            ["version", "action", "live_action"], registry=r)
        self.shed = Counter("orchestrator_requests_shed", "Recharge requests refused with 503: overload", registry=r)
        self.in_flight_recharges = Gauge("orchestrator_recharges_in_flight", "Recharges being driven", registry=r)
        self.commit_latency = FastHistogram(
            "orchestrator_journal_commit_seconds", "Journal group-commit duration", registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
        )
        self.commit_batch = FastHistogram(
            "orchestrator_journal_batch_size", "Steps per journal commit", registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )

        # After the sale (SPEC 19).
        self.refunds = Counter("orchestrator_refunds", "Refunds by what happened to them (requested, succeeded, "
                               "failed, retried)", ["event"], registry=r)
        self.disputes = Counter("orchestrator_disputes", "Dispute events applied", ["status"], registry=r)
        self.notifications = Counter("orchestrator_notifications", "Notification deliveries by result "
                                     "(delivered, retried, dead)", ["result"], registry=r)
        self.notifications_pending = Gauge("orchestrator_notifications_pending", "Notices waiting in the outbox",
                                           registry=r)
        self.notifications_dead = Gauge("orchestrator_notifications_dead", "Notices given up on (dead)", registry=r)
        self.notifications_oldest_age = Gauge("orchestrator_notifications_oldest_pending_age_seconds",
                                              "Age of the oldest notice not yet delivered", registry=r)

        # Coin pools (SPEC 20), read from the ledger every few seconds.
        self.pool_coins = Gauge("orchestrator_pool_coins", "Coins a pool holds", ["pool"], registry=r)
        # Settlement reconciliation (SPEC 21).
        self.reconciliations = Counter("orchestrator_reconciliations", "Reconciliation runs ended, by channel and "
                                       "status (completed, failed)", ["channel", "status"], registry=r)
        self.open_discrepancies = Gauge("orchestrator_reconciliation_open_discrepancies", "Discrepancies found by "
                                        "settlement reconciliation and not resolved", ["channel"], registry=r)
        self.discrepancy_channels: set[str] = set()
        self.pool_shortfalls = Gauge("orchestrator_pool_shortfall_credits", "Credits of a pool's users that another "
                                     "pool paid because it was short (since the store began)", ["pool"], registry=r)
        self.pool_lost = Gauge("orchestrator_pool_lost_coins", "Coins the pool fronted on instant credits whose "
                               "payment failed (clawed back; a wallet that could not cover them owes them)", ["pool"], registry=r)
        self.pool_low = Gauge("orchestrator_pool_below_low_water", "1 while a pool holds less than its "
                              "low_water_coins", ["pool"], registry=r)
        self.pool_rebalances = Counter("orchestrator_pool_rebalances", "Rebalancing passes that moved coins",
                                       registry=r)

        # For the alert rules (deploy/prometheus/alerts.yml). Set when scraped, from the
        # routing snapshot: a market with no channel left is an outage for its payers.
        self.market_routable = Gauge(
            "orchestrator_market_routable_channels", "Channels configured for a currency, country and method that "
            "routing may use now (not drained, breaker not open)", ["currency", "country", "method"], registry=r)
        # Read from the store every few seconds (orchestrator.backlog): the same figures on
        # every process sharing it.
        self.recharges_open = Gauge("orchestrator_recharges_open", "Recharges not yet final in the store, by status "
                                    "(processing, requires_action, pending)", ["status"], registry=r)
        self.recharges_past_deadline = Gauge(
            "orchestrator_recharges_past_deadline", "Recharges not yet final whose deadline (routing.deadline_s, or "
            "a step-up's expiry) has passed", registry=r)
        self.recharges_oldest_past_deadline = Gauge(
            "orchestrator_recharges_oldest_past_deadline_seconds", "How long ago the deadline of the most overdue "
            "recharge not yet final passed (0 when none is overdue)", registry=r)

    def routed(self, rule: str, strategy: str, first_choice: str) -> None:
        self._child(self.routing_decisions, rule, strategy, first_choice).inc()

    def attempt_finished(self, channel: str, outcome: AttemptOutcome, latency_ms: float) -> None:
        self._child(self.attempts, channel, outcome.value).inc()
        self.attempt_latency.observe(latency_ms / 1000, (channel,))

    def answered(self, route: str, status: int) -> None:
        """An HTTP answer; ``route`` is the route's template (``/v1/recharges/{id}``), so
        the label's values are as few as the routes."""
        self._child(self.requests, route, str(status)).inc()

    def risk_shadow(self, version: str, action: str, live_action: str) -> None:
        self._child(self.risk_shadow_decisions, version, action, live_action).inc()

    def recharge_finished(self, rec: _Payment, status: str) -> None:
        self._child(self.recharges, status, rec.currency, rec.country).inc()

    def routable(self, channels: Mapping[str, _Served], states: Mapping[str, _Condition]) -> None:
        """``orchestrator_market_routable_channels`` from a routing snapshot's channels and
        states; a market the config no longer serves leaves the gauge."""
        counts: dict[tuple[str, str, str], int] = {}
        for name, spec in channels.items():
            state = states.get(name)
            usable = state is None or (state.breaker != "open" and not state.drained)
            for market in _markets(spec):
                counts[market] = counts.get(market, 0) + usable
        self.market_routable.clear()
        for (currency, country, method), n in counts.items():
            self.market_routable.labels(currency, country, method).set(n)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the lookup (a lock and a dict) is on
        every recharge's path. Channel names and outcomes are few, so this stays small."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def journal_commit(self, batch: int, seconds: float) -> None:
        # Called on the event loop's thread (both journals answer their callers there).
        self.commit_batch.observe(batch)
        self.commit_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _markets(spec: _Served) -> Iterable[tuple[str, str, str]]:
    return ((cur, country, method) for cur in sorted(spec.currencies) for country in sorted(spec.countries)
            for method in sorted(spec.methods))
