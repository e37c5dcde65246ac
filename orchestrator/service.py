"""The composition root: one orchestrator process's object graph, built in one place.

Nothing connects to anything at import time. ``Service.start`` opens the journal,
builds the channels and their probers, resumes every unfinished recharge and starts the
reconciler and the snapshot publisher; ``Service.stop`` undoes it in reverse order.

Routing reads a frozen ``routing.Snapshot`` (config + channel health) that is rebuilt
and swapped whole: on every health change, and every ``SNAPSHOT_PERIOD_S`` so that the
live-traffic statistics reach it too. A decision never takes a lock.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

import structlog

import health
import routing
from channels import AttemptOutcome, Channel
from config import ChannelConfig, Config, LoadedConfig
from orchestrator.activity import Activity
from orchestrator.api.auth import Authenticator
from orchestrator.clock import Clock, SystemClock
from orchestrator.engine import Engine, RunSettings
from orchestrator.journal import Journal, open_journal
from orchestrator.metrics import Metrics
from orchestrator.model import Recharge

__all__ = ["ChannelFactory", "HealthGate", "Router", "Service", "snapshot_for"]

log = structlog.get_logger("orchestrator.service")

ChannelFactory = Callable[[ChannelConfig], Channel]
Router = Callable[["Service", Recharge], Sequence[str]]

SNAPSHOT_PERIOD_S = 0.02


def _spec(ch: ChannelConfig) -> routing.ChannelSpec:
    return routing.ChannelSpec(
        name=ch.name, kind=ch.kind, currencies=ch.currencies, countries=ch.countries, methods=ch.methods,
        min_amount_minor=ch.min_amount_minor, max_amount_minor=ch.max_amount_minor,
        fee_fixed_minor=ch.fee.fixed_minor, fee_percent=ch.fee.percent, weight=ch.weight,
        max_in_flight=ch.max_in_flight, timeout_ms=ch.timeout_ms,
    )


def _policy(cfg: Config) -> routing.RoutingPolicy:
    rules = tuple(
        routing.Rule(
            name=rule.name or f"rules[{i}]",
            match=routing.RuleMatch(**rule.match.model_dump()),
            strategy=rule.strategy,
            channels=tuple(rule.channels) if rule.channels is not None else None,
        )
        for i, rule in enumerate(cfg.routing.rules)
    )
    return routing.RoutingPolicy(strategy=cfg.routing.strategy, rules=rules)


def snapshot_for(loaded: LoadedConfig, states: dict[str, routing.ChannelState] | None = None) -> routing.Snapshot:
    cfg = loaded.config
    return routing.Snapshot.build([_spec(c) for c in cfg.channels], states, _policy(cfg), loaded.version)


def _breaker(cfg: Config) -> health.BreakerConfig:
    b = cfg.health.breaker
    return health.BreakerConfig(
        consecutive_failures=b.consecutive_failures, success_rate_threshold=b.success_rate_threshold,
        success_rate_min_volume=b.success_rate_min_volume, success_rate_window_s=b.success_rate_window_s,
        base_ejection_s=b.base_ejection_s, max_ejection_s=b.max_ejection_s,
        half_open_max_trials=b.half_open_max_trials,
    )


class HealthGate:
    """The engine's admission gate: breakers and in-flight caps decide, statistics and
    metrics are fed with every answer."""

    def __init__(self, registry: health.HealthRegistry, metrics: Metrics) -> None:
        self._registry = registry
        self._metrics = metrics

    def admit(self, channel: str) -> object | None:
        ticket = self._registry.begin_attempt(channel)
        if ticket is not None:
            self._metrics.in_flight_attempts.labels(channel).inc()
        return ticket

    def finished(self, ticket: object, outcome: AttemptOutcome, latency_ms: float) -> None:
        t: health.AttemptTicket = ticket  # type: ignore[assignment]
        self._registry.end_attempt(t, outcome, latency_ms)
        self._metrics.attempt_finished(t.channel, outcome, latency_ms)

    def abandoned(self, ticket: object) -> None:
        t: health.AttemptTicket = ticket  # type: ignore[assignment]
        self._registry.abandon_attempt(t)
        self._metrics.in_flight_attempts.labels(t.channel).dec()


class Service:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        channel_factory: ChannelFactory,
        router: Router | None = None,
        journal: Journal | None = None,
        clock: Clock | None = None,
        reconcile: bool = True,
        probe: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.loaded = loaded
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.journal = journal or open_journal(
            loaded.config.storage.url,
            max_batch=loaded.config.storage.group_commit_max_batch,
            on_commit=self.metrics.journal_commit,
        )
        self.auth = Authenticator(loaded.config.clients)
        self.channels: dict[str, Channel] = {}
        self.rng = rng or random.Random()
        self.health = health.HealthRegistry(
            self.clock.monotonic, breaker_config=_breaker(loaded.config),
            on_change=self._health_changed, wall_clock=self.clock.now,
        )
        self.routing = routing.SnapshotHolder(snapshot_for(loaded))
        self._channel_factory = channel_factory
        self._router: Router = router or Service.route
        self._reconcile = reconcile
        self._probe = probe
        self._prober: health.Prober | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._publish_due = False
        self.settings = RunSettings.from_config(loaded.config, loaded.version)
        self.activity = Activity(self.clock.monotonic)
        self.engine = Engine(
            self.journal,
            self.channels.get,
            lambda rec: self._router(self, rec),
            self.clock,
            lambda: self.settings,
            gate=HealthGate(self.health, self.metrics),
            callback_url=self.callback_url,
            activity=self.activity,
        )

    @property
    def config(self) -> Config:
        return self.loaded.config

    def callback_url(self, channel: str) -> str:
        server = self.config.server
        base = server.public_url or f"http://{server.host}:{server.port}"
        return f"{base.rstrip('/')}/v1/webhooks/{channel}"

    # -- routing ----------------------------------------------------------------------

    @staticmethod
    def transaction(rec: Recharge) -> routing.Transaction:
        segment = (rec.metadata or {}).get("segment")
        return routing.Transaction(
            currency=rec.currency, country=rec.country, method=rec.method, amount_minor=rec.amount_minor,
            segment=segment if isinstance(segment, str) else None, user_id=rec.user_id,
        )

    def route(self, rec: Recharge) -> Sequence[str]:
        decision = routing.decide(self.routing.current, self.transaction(rec), self.rng,
                                  in_flight=self.health.in_flight())
        self.metrics.routing_decisions.labels(decision.rule or "default", decision.strategy,
                                              decision.candidates[0] if decision.candidates else "none").inc()
        return decision.candidates

    def explain(self, txn: routing.Transaction) -> dict[str, Any]:
        return routing.explain(self.routing.current, txn, self.rng)

    def publish_snapshot(self) -> None:
        self._publish_due = False
        self.routing.update(lambda snap: snap.with_states(self.health.states()))

    def _health_changed(self, channel: str) -> None:
        # Inline from the registry: only schedule, never do the work here.
        if not self._publish_due:
            self._publish_due = True
            try:
                asyncio.get_running_loop().call_soon(self.publish_snapshot)
            except RuntimeError:
                self._publish_due = False

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_PERIOD_S)
            self.publish_snapshot()

    def routable(self) -> list[str]:
        """Channels a new recharge could be sent to right now."""
        return [n for n, st in self.routing.current.states.items() if st.breaker != "open" and not st.drained]

    # -- life -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.journal.open()
        for ch in self.config.channels:
            self.channels[ch.name] = self._channel_factory(ch)
            self.health.add_channel(ch.name, max_in_flight=ch.max_in_flight)
        self.publish_snapshot()
        loop = asyncio.get_running_loop()
        if self._probe:
            h = self.config.health
            self._prober = health.Prober(
                self.health, self.channels, clock=self.clock.monotonic, sleep=self.clock.sleep,
                interval_s=h.probe_interval_s, timeout_s=h.probe_timeout_ms / 1000,
                timeouts_s={c.name: max(h.probe_timeout_ms, c.timeout_ms) / 1000
                            for c in self.config.channels if c.kind == "bank"},
            )
            await self._prober.start()
        self._tasks.append(loop.create_task(self._publish_forever()))
        resumed = await self.engine.recover()
        log.info("service_started", config_version=self.loaded.version, resumed=resumed, channels=len(self.channels))
        if self._reconcile:
            self._tasks.append(loop.create_task(self._reconcile_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._prober is not None:
            await self._prober.stop()
        await self.engine.stop()
        for ch in self.channels.values():
            await ch.close()
        self.channels.clear()
        await self.journal.close()

    async def _reconcile_forever(self) -> None:
        """Resume what no driver is working on: recharges left pending with an unknown
        outcome, refunds not yet confirmed, or work abandoned by a failed driver."""
        while True:
            await self.clock.sleep(self.settings.reconcile_interval_s)
            try:
                await self.engine.recover()
            except Exception:
                log.exception("reconcile_failed")
