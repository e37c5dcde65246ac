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
import functools
import os
import random
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

import health
import routing
from channels import AttemptOutcome, Channel
from channels.notify import NotifySender
from channels.rates import HttpRateSource
from config import ChannelConfig, Config, LoadedConfig
from config import diff as config_diff
from orchestrator.activity import Activity
from orchestrator.backlog import BacklogWatch
from orchestrator.disputes import DisputeDeps
from orchestrator.notifications import Dispatcher, Notifier
from orchestrator.pools import PoolDeps, PoolWatch, Rebalancer
from orchestrator.settlements import ReconDeps, Reconciler
from orchestrator.refunds import RefundDeps, RefundWorker
from orchestrator.channel_set import ChannelFactory, ChannelSet
from orchestrator.cluster import Refused, WorkerLink
from orchestrator.clock import Clock, SystemClock
from orchestrator.errors import NothingToRollBack, ReloadError
from orchestrator.driver import Driver, RoutePlan, Running, RunSettings
from orchestrator.journal import Journal, open_journal
from orchestrator.metrics import Metrics
from orchestrator.pricing import PricingError
from orchestrator.planner import RoutePlanner
from orchestrator.quotes import PricingService
from orchestrator.recharges import InstrumentVault, RechargeDeps
from orchestrator.risk import ModelError, PreparedRisk, RiskEngine
from orchestrator.suggestion_service import SuggestionService
from orchestrator.templates import TemplateDeps
from orchestrator.ratelimit import Limiter
from orchestrator.model import Recharge, RechargeStatus, TrailEntry

__all__ = ["AppliedConfig", "ChannelFactory", "HealthGate", "ReloadError", "RouteOverride", "Service", "snapshot_for"]

log = structlog.get_logger("orchestrator.service")

# A test's routing in place of the planner's: (service, recharge) -> failover order.
RouteOverride = Callable[["Service", Recharge], "RoutePlan | Sequence[str]"]

# Breaker moves, drains and probes publish at once; this carries the live-traffic
# statistics (success estimates, latency) to routing between them.
SNAPSHOT_PERIOD_S = 0.1
HISTORY_LENGTH = 20  # configs kept for GET /v1/admin/config/history and rollback


def _spec(ch: ChannelConfig) -> routing.ChannelSpec:
    return routing.ChannelSpec(
        name=ch.name, kind=ch.kind, currencies=ch.currencies, countries=ch.countries, methods=ch.methods,
        min_amount_minor=ch.min_amount_minor, max_amount_minor=ch.max_amount_minor,
        fee_fixed_minor=ch.fee.fixed_minor, fee_percent=ch.fee.percent, weight=ch.weight,
        max_in_flight=ch.max_in_flight, timeout_ms=ch.timeout_ms, step_up=ch.step_up,
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
    r = cfg.routing
    return routing.RoutingPolicy(
        strategy=r.strategy, rules=rules, objective=r.objective,
        value=routing.ValueWeights(**r.value.model_dump()),
        segments=routing.SegmentPolicy(amount_bands={c: tuple(b) for c, b in r.segments.amount_bands.items()},
                                       issuer=r.segments.issuer),
    )


def _approval(cfg: Config) -> health.ApprovalConfig:
    a = cfg.health.approval
    return health.ApprovalConfig(half_life_s=a.half_life_s, fast_half_life_s=a.fast_half_life_s,
                                 change_z=a.change_z, max_keys=a.max_segments)


def snapshot_for(loaded: LoadedConfig, states: dict[str, routing.ChannelState] | None = None) -> routing.Snapshot:
    cfg = loaded.config
    return routing.Snapshot.build([_spec(c) for c in cfg.channels], states, _policy(cfg), loaded.version)


def _base_url(cfg: Config) -> str:
    """Where providers reach this instance's webhooks."""
    server = cfg.server
    scheme = "https" if server.tls_cert else "http"
    return server.public_url or f"{scheme}://{server.host}:{server.port}"


def _breaker(cfg: Config) -> health.BreakerConfig:
    b = cfg.health.breaker
    return health.BreakerConfig(
        consecutive_failures=b.consecutive_failures, success_rate_threshold=b.success_rate_threshold,
        success_rate_min_volume=b.success_rate_min_volume, success_rate_window_s=b.success_rate_window_s,
        base_ejection_s=b.base_ejection_s, max_ejection_s=b.max_ejection_s,
        half_open_max_trials=b.half_open_max_trials,
    )


@dataclass(frozen=True, slots=True)
class AppliedConfig:
    """One config the service ran on: its version, when and how it was applied."""

    loaded: LoadedConfig
    applied_at: float
    source: str  # start, file, api, rollback

    def summary(self) -> dict[str, Any]:
        return {"version": self.loaded.version, "applied_at": self.applied_at, "source": self.source}


class HealthGate:
    """The driver's admission gate: breakers and in-flight caps decide, statistics and
    metrics are fed with every answer."""

    def __init__(self, registry: health.HealthRegistry, metrics: Metrics, activity: Activity | None = None) -> None:
        self._registry = registry
        self._metrics = metrics
        self._activity = activity

    def admit(self, channel: str, *, panic: bool = False) -> object | None:
        return self._registry.begin_attempt(channel, panic=panic)

    def finished(self, ticket: object, outcome: AttemptOutcome, latency_ms: float) -> None:
        t: health.AttemptTicket = ticket  # type: ignore[assignment]
        self._registry.end_attempt(t, outcome, latency_ms)
        self._metrics.attempt_finished(t.channel, outcome, latency_ms)
        if self._activity is not None:
            self._activity.answered(t.channel, outcome, latency_ms)

    def abandoned(self, ticket: object) -> None:
        t: health.AttemptTicket = ticket  # type: ignore[assignment]
        self._registry.abandon_attempt(t)


class Service:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        channel_factory: ChannelFactory,
        router: RouteOverride | None = None,
        journal: Journal | None = None,
        clock: Clock | None = None,
        reconcile: bool = True,
        probe: bool = True,
        rng: random.Random | None = None,
        config_path: str | None = None,
        cluster: WorkerLink | None = None,
    ) -> None:
        self.loaded = loaded
        self.config_path = config_path
        # A worker of several behind one port (orchestrator.cluster), or None: alone.
        self.cluster = cluster
        self._share = 1 / cluster.workers if cluster is not None else 1.0
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        sqlite = loaded.config.storage.url.startswith("sqlite")
        self.journal = journal or open_journal(
            loaded.config.storage.url,
            max_batch=loaded.config.storage.group_commit_max_batch,
            on_commit=self.metrics.journal_commit,
            **({"commit_interval_ms": loaded.config.storage.commit_interval_ms,
                "writer_socket": cluster.journal_socket if cluster is not None else None} if sqlite else {}),
        )
        # Channels removed by a reload take no new attempts, but inquiries, voids,
        # refunds and webhooks for their attempts work until nothing needs them.
        self.channel_set = ChannelSet(channel_factory, self.journal)
        self.channels: dict[str, Channel] = self.channel_set.live
        self.history: deque[AppliedConfig] = deque(maxlen=HISTORY_LENGTH)
        self._reload_lock = asyncio.Lock()
        self.requests_in_flight = 0
        lim = loaded.config.limits
        self.client_limits = Limiter(*self._limit(lim.per_client), self.clock.monotonic, max_keys=1000)
        self.user_limits = Limiter(*self._limit(lim.per_user), self.clock.monotonic, max_keys=lim.max_users_tracked)
        self.rng = rng or random.Random()
        self.health = health.HealthRegistry(
            self.clock.monotonic, breaker_config=_breaker(loaded.config),
            on_change=self._health_changed, wall_clock=self.clock.now, approval_config=_approval(loaded.config),
        )
        self.routing = routing.SnapshotHolder(snapshot_for(loaded))
        self.planner = RoutePlanner(self.routing, self.health, self.rng, self.metrics)
        self._reconcile = reconcile
        self._probe = probe
        self._prober: health.Prober | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._publish_due = False
        self.running = Running(RunSettings.from_config(loaded.config, loaded.version), _base_url(loaded.config))
        self.activity = Activity(self.clock.monotonic, history_bucket_s=loaded.config.server.status_bucket_s)
        self.vault = InstrumentVault()
        self._rate_source = HttpRateSource(self._rate_source_url)
        # Quotes live in the journal: any instance on the store redeems any one's.
        self.pricing = PricingService(lambda: self.config.pricing, self.clock, self.journal, totals=self.journal)
        self.risk = RiskEngine(loaded.config.risk, self.clock, on_shadow=self.metrics.risk_shadow)
        self.suggestions = SuggestionService(lambda: self.config, self.journal, self.clock, self.pricing.rates)
        storage = loaded.config.storage
        # On SQLite the names are fixed (one instance per file, one name per worker), so
        # a restart resumes its own recharges at once; on PostgreSQL one per process.
        self.instance_id = storage.instance_id or (
            "local" if sqlite else f"{socket.gethostname()}-{os.getpid()}-{random.getrandbits(32):08x}"
        )
        if cluster is not None:
            self.instance_id += f"-w{cluster.index}"
        self.notifier = Notifier(lambda: self.config.clients)
        self.driver = Driver(
            self.journal,
            self.channel_set.get,
            functools.partial(router, self) if router is not None else self.planner.plan,
            self.clock,
            self.running,
            gate=HealthGate(self.health, self.metrics, self.activity),
            callback_url=self.running.callback_url,
            activity=self.activity,
            settle_channels=self.channel_set.find,
            instrument=self.vault.of,
            on_terminal=self.vault.forget,
            on_outcome=self._finished,
            # Alone on a SQLite file (server.JournalLock), nothing else could drive its recharges:
            # no lease on each. Workers, PostgreSQL instances or a set instance_id lease theirs.
            owner=self.instance_id if (not sqlite or cluster is not None or storage.instance_id) else None,
            lease_s=storage.lease_s,
            renew_s=storage.lease_renew_s,
            rng=self.rng,
            notifier=self.notifier,
            on_succeeded=self._succeeded,
        )
        self.refunds = RefundDeps(self.journal, self.channel_set.find, self.clock, self.metrics, self.notifier,
                                  lambda: self.config.refunds)
        self.disputes = DisputeDeps(self.journal, self.clock, self.metrics, self.notifier)
        n = loaded.config.notifications
        self._notify_sender = NotifySender(timeout_s=n.timeout_ms / 1000, max_per_destination=n.max_per_destination)
        self.dispatcher = Dispatcher(self.journal, self._notify_sender, lambda: self.config.clients,
                                     lambda: self.config.notifications, self.clock, self.metrics,
                                     owner=f"{self.instance_id}-{os.getpid()}-{random.getrandbits(32):08x}",
                                     rng=self.rng, clock_skew_s=loaded.config.storage.max_clock_skew_s)
        self.notifier.on_written = self.dispatcher.nudge
        self.pools = PoolDeps(self.journal, self.clock, self.metrics, lambda: self.config.pools,
                              lambda: self.config.pool_rebalance_interval_s)
        self.pool_watch = PoolWatch(self.pools)
        self.backlog_watch = BacklogWatch(self.journal, self.metrics, self.clock)
        self.settlements = ReconDeps(self.journal, self.clock, self.metrics,
                                     lambda name: self.channel_set.find(name, self.clock.now()), self.channel_config,
                                     lambda: self.config.reconciliation)
        self.reconciler = Reconciler(self.settlements, lambda: [c.name for c in self.config.channels])
        self.recharges = RechargeDeps(self.journal, self.driver, self.pricing, self.risk, self.clock, self.metrics,
                                      self.vault, self.running, self._sync_wait_s)
        self.templates = TemplateDeps(self.journal, self.pricing, self.clock, lambda: self.config.templates)

    def _succeeded(self, rec: Recharge) -> None:
        """A recharge was credited: suggestions and approval estimates learn from it."""
        self.suggestions.succeeded(rec)
        self.planner.learn(rec, self.running.settings.soft_decline_codes)

    def _rate_source_url(self) -> str | None:
        source = self.config.pricing.rate_source
        return None if source is None else source.url

    @property
    def settings(self) -> RunSettings:
        """The running config's settings: a recharge keeps those it started with."""
        return self.running.settings

    @settings.setter
    def settings(self, settings: RunSettings) -> None:
        self.running.settings = settings

    def _sync_wait_s(self) -> float:
        return self.config.server.sync_wait_s

    async def channel_config(self, name: str) -> ChannelConfig | None:
        """A channel's config, current or retired (webhooks for retired ones still land)."""
        return await self.channel_set.find_config(name, self.clock.now())

    @property
    def config(self) -> Config:
        return self.loaded.config

    def callback_url(self, channel: str) -> str | None:
        return self.running.callback_url(channel)

    # -- routing ----------------------------------------------------------------------

    def _finished(self, rec: Recharge, status: RechargeStatus) -> None:
        """A recharge's final status, once: counted, and a decline told to risk's features."""
        self.metrics.recharge_finished(rec, status)
        self.risk.outcome(rec.id, status is RechargeStatus.DECLINED)

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

    async def _share_fleet(self, *, publish: bool = True) -> None:
        """Publish this instance's channel statistics and take in the other instances'
        (issue 26): a new instance routes from what the fleet measured."""
        fleet = self.config.health.fleet
        now = self.clock.now()
        if publish:
            await self.journal.put_fleet_stats(self.instance_id, self.health.export(), now)
        self.health.update_fleet(await self.journal.fleet_stats(now - fleet.max_age_s), self.instance_id)

    async def _share_fleet_forever(self) -> None:
        purged_at = self.clock.monotonic()
        while True:
            fleet = self.config.health.fleet
            if fleet.enabled:
                try:
                    await self._share_fleet()
                    if self.clock.monotonic() - purged_at > 3600:
                        purged_at = self.clock.monotonic()
                        await self.journal.purge_fleet_stats(self.clock.now() - 86_400)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the store is down: routing goes on with local figures
                    log.warning("fleet_share_failed", error=str(exc))
            await self.clock.sleep(fleet.interval_s)

    def routable(self) -> list[str]:
        """Channels a new recharge could be sent to right now."""
        return [n for n, st in self.routing.current.states.items() if st.breaker != "open" and not st.drained]

    # -- life -------------------------------------------------------------------------

    def adopt(self, history: Sequence[AppliedConfig], drained: set[str]) -> None:
        """Before ``start``: take over the config history and the drains of a cluster
        (the running config is the history's last), as a worker that restarts does."""
        self.history.extend(history)
        for name in drained:
            self.health.drain(name)

    async def start(self) -> None:
        if not self.history:
            self.history.append(AppliedConfig(self.loaded, self.clock.now(), "start"))
        await self.journal.open()
        await self.journal.open_pools([p.name for p in self.config.pools], self.clock.now())
        await self.channel_set.open(self.config.channels, self.clock.now())
        for ch in self.config.channels:
            self.health.add_channel(ch.name, max_in_flight=ch.max_in_flight,
                                    ping_like_payment=ch.kind == "direct_api")
        if self.config.health.fleet.enabled:
            try:  # route from the fleet's view from the first request
                await self._share_fleet(publish=False)
            except Exception as exc:  # noqa: BLE001 - local figures only, as when alone
                log.warning("fleet_share_failed", error=str(exc))
        self.publish_snapshot()
        loop = asyncio.get_running_loop()
        if self.config.health.fleet.enabled:
            self._tasks.append(loop.create_task(self._share_fleet_forever()))
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
        if self.config.pricing.rate_source is not None:
            try:
                await self.pricing.rates.refresh(self._rate_source.fetch)
            except PricingError as exc:  # sourced currencies answer rates_stale until a fetch lands
                log.warning("rates_first_refresh_failed", error=str(exc))
        self._tasks.append(loop.create_task(self.pricing.rates.run(self._rate_source.fetch)))
        await self.journal.record(TrailEntry("", self.clock.now(), "config_applied", detail={
            "version": self.loaded.version, "source": "start", "instance": self.instance_id}))
        resumed = await self.driver.recover()
        log.info("service_started", config_version=self.loaded.version, resumed=resumed, channels=len(self.channels),
                 retired=sorted(self.channel_set.retired))
        if self._reconcile:
            self.driver.start_background(on_pass=self._close_idle_retired)
            # After the sale: refunds still pending, and the outbox (both shared by every instance).
            self._tasks.append(loop.create_task(RefundWorker(self.refunds).run_forever()))
            self._tasks.append(loop.create_task(self.dispatcher.run_forever()))
            self._tasks.append(loop.create_task(Rebalancer(self.pools).run_forever()))
            self._tasks.append(loop.create_task(self.pool_watch.run_forever()))
            self._tasks.append(loop.create_task(self.backlog_watch.run_forever()))
            self._tasks.append(loop.create_task(self.reconciler.run_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._prober is not None:
            await self._prober.stop()
        await self.dispatcher.stop()
        await self.reconciler.stop()
        await self._notify_sender.close()
        await self.driver.stop()
        await self.channel_set.close()
        await self._rate_source.close()
        await self.journal.close()

    # -- reload -------------------------------------------------------------------------

    async def reload(self, new: LoadedConfig, source: str) -> list[str]:
        """Swap to ``new`` (already validated whole) atomically; return the diff.

        Everything a request or a decision reads is replaced between two awaits, so no
        request sees half of it. Running recharges keep the settings and the failover
        order they started with; removed channels take no new attempts but stay reachable
        for the attempts they hold.
        """
        async with self._reload_lock:
            old = self.loaded
            lines = config_diff(old.config, new.config)
            now = self.clock.now()
            fresh = self._fresh_channels(new)
            risk = self._risk_for(new)
            await self.channel_set.record(new.config.channels, now)
            await self.journal.open_pools([p.name for p in new.config.pools], now)
            # -- the swap: no awaits from here to the end of the block --------------------
            self.channel_set.swap(new.config.channels, fresh, now)
            self.health.sync({c.name: c.max_in_flight for c in new.config.channels},
                             {c.name: c.kind == "direct_api" for c in new.config.channels})
            self.loaded = new
            self.running.settings = RunSettings.from_config(new.config, new.version)
            self.running.base_url = _base_url(new.config)
            self.risk.configure(risk)
            self.health.approvals.config = _approval(new.config)
            lim = new.config.limits
            self.client_limits.reconfigure(*self._limit(lim.per_client))
            self.user_limits.reconfigure(*self._limit(lim.per_user))
            self.routing.update(lambda snap: snapshot_for(new, self.health.states()))
            self.history.append(AppliedConfig(new, now, source))
            # -- end of the swap ----------------------------------------------------------
            if self._prober is not None:
                await self._prober.set_channels(self.channels)
            await self.journal.record(TrailEntry(
                "", now, "config_applied", detail={"version": new.version, "previous": old.version,
                                                   "source": source, "changes": lines[:200]}))
            log.info("config_applied", config_version=new.version, previous=old.version, source=source,
                     changes=len(lines))
            return lines

    def _risk_for(self, new: LoadedConfig) -> PreparedRisk:
        """``new``'s risk rules with their models loaded; ReloadError if one cannot be served."""
        try:
            return RiskEngine.prepare(new.config.risk)
        except ModelError as exc:
            raise ReloadError(f"risk.model: {exc}") from None

    def _limit(self, limit: Any) -> tuple[float, float]:
        """A rate limit's (rate, burst) for this process: its share of the whole when
        it is one of several workers (each sees about 1/N of any client's traffic)."""
        return limit.rate_per_s * self._share, max(1.0, limit.burst * self._share)

    # -- SRE actions: on every worker when there are several ------------------------------

    async def apply_config(self, new: LoadedConfig, source: str) -> tuple[list[str], list[dict[str, Any]]]:
        """Reload to ``new`` here, or through the supervisor on every worker; the diff and
        each worker's answer. ReloadError when it cannot be applied (nothing changed)."""
        if self.cluster is None:
            return await self.reload(new, source), []
        await self.check_applicable(new)
        try:
            results = await self.cluster.request({"kind": "apply", "doc": new.config.model_dump(mode="json"),
                                                  "source": source})
        except Refused as exc:
            raise ReloadError(str(exc)) from None
        return list(self.cluster.mine(results).get("lines", [])), results

    async def rollback_config(self) -> tuple[list[str], list[dict[str, Any]]]:
        if self.cluster is None:
            return await self.rollback(), []
        try:
            results = await self.cluster.request({"kind": "rollback"})
        except Refused as exc:
            raise NothingToRollBack(str(exc)) from None
        return list(self.cluster.mine(results).get("lines", [])), results

    async def set_drained(self, name: str, drained: bool) -> list[dict[str, Any]]:
        if self.cluster is None:
            (self.drain if drained else self.enable)(name)
            return []
        return await self.cluster.request({"kind": "drain" if drained else "enable", "channel": name})

    def _fresh_channels(self, new: LoadedConfig) -> dict[str, Channel]:
        """The channel objects ``new`` needs made (new, or changed in what makes one);
        ReloadError if one cannot be made (a CA file that does not load)."""
        try:
            return self.channel_set.prepare(new.config.channels)
        except (OSError, ValueError) as exc:
            raise ReloadError(f"channels: cannot be set up: {exc}") from exc

    async def check_applicable(self, new: LoadedConfig) -> None:
        """ReloadError unless ``new`` can be applied here (its new channels can be made);
        changes nothing. Every worker runs on this machine: what works here works there."""
        self._risk_for(new)
        for channel in self._fresh_channels(new).values():
            await channel.close()

    async def rollback(self) -> list[str]:
        if len(self.history) < 2:
            raise NothingToRollBack("no previous config to roll back to")
        previous = self.history[-2].loaded
        return await self.reload(previous, "rollback")

    def drain(self, name: str) -> None:
        self.health.drain(name)
        self.publish_snapshot()

    def enable(self, name: str) -> None:
        self.health.enable(name)
        self.publish_snapshot()

    async def _close_idle_retired(self) -> None:
        """Close retired channels once no recharge with work left has an attempt on
        them, and a deadline has passed since they were retired."""
        await self.channel_set.close_idle(self.clock.now(), self.settings.deadline_s)
