"""The health registry: every channel's statistics, breaker and drain flag in one place.

It is where live attempts and probes are recorded, where an attempt is admitted (the
breaker's half-open trial budget, drain and the concurrency cap are enforced here, at
the moment of sending, since a published snapshot may be a little stale), and where
``routing.ChannelState``s are built for the next snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from channels import AttemptOutcome
from health._approval import ApprovalBook, ApprovalConfig
from health._breaker import Breaker, BreakerConfig, Permit
from health._fleet import FleetChannel, FleetView, encode_blob
from health._stats import ChannelStats, Monotonic, StatsConfig
from routing import ALL_SEGMENTS, ChannelState, FleetShare

__all__ = ["AttemptTicket", "HealthRegistry"]

# Below this window success rate a closed channel is reported "degraded" (report only;
# routing weighs the estimate itself and the breaker has its own threshold).
_DEGRADED_BELOW = 0.95


PANIC_PERMIT = Permit(trial=False, period=-1)


@dataclass(frozen=True, slots=True)
class AttemptTicket:
    """An admitted attempt: pass it back to ``end_attempt`` or ``abandon_attempt``."""

    channel: str
    token: int
    permit: Permit


class _Channel:
    __slots__ = ("breaker", "drained", "max_in_flight", "stats")

    def __init__(self, stats: ChannelStats, breaker: Breaker, max_in_flight: int | None):
        self.stats = stats
        self.breaker = breaker
        self.max_in_flight = max_in_flight
        self.drained = False


class HealthRegistry:
    """Stats + breaker + drain flag per channel.

    ``on_change(channel)`` is called when something routing cares about changed
    discretely: a breaker transition, a drain or enable, a channel added or removed,
    and after every probe (fresh latency). Live attempts do not call it (they are far
    too frequent); publish a snapshot periodically as well. The callback runs inline:
    it should schedule a publication, not do I/O.
    """

    def __init__(self, clock: Monotonic, *, stats_config: StatsConfig = StatsConfig(),
                 breaker_config: BreakerConfig = BreakerConfig(),
                 on_change: Callable[[str], None] | None = None,
                 wall_clock: Callable[[], float] | None = None,
                 approval_config: ApprovalConfig = ApprovalConfig()) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._stats_config = stats_config
        self._breaker_config = breaker_config
        self.on_change = on_change
        self._channels: dict[str, _Channel] = {}
        # Approval per (channel, segment), learnt from finished recharges (``record_approval``).
        self.approvals = ApprovalBook(clock, approval_config)
        # The other instances' measurements (``update_fleet``); routing adds them to ours.
        self.fleet = FleetView(stats_config.half_life_s, approval_config.half_life_s)
        # Drained names outlive their channel: one removed and added back stays drained.
        self._drained: set[str] = set()

    # -- membership (config reload) ------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._channels)

    def add_channel(self, name: str, *, max_in_flight: int | None = None, ping_like_payment: bool = True) -> None:
        """Start tracking ``name``; a channel already tracked keeps its history and only
        takes the new cap. ``ping_like_payment``: see ``ChannelStats.record_probe``."""
        existing = self._channels.get(name)
        if existing is not None:
            existing.max_in_flight = max_in_flight
            existing.stats.ping_like_payment = ping_like_payment
            return
        stats = ChannelStats(self._clock, self._stats_config, ping_like_payment=ping_like_payment)
        breaker = Breaker(self._clock, self._breaker_config)
        breaker.on_transition = lambda _old, new: self._breaker_moved(name, stats, new)
        self._channels[name] = _Channel(stats, breaker, max_in_flight)
        self._channels[name].drained = name in self._drained
        self._changed(name)

    def remove_channel(self, name: str) -> None:
        if self._channels.pop(name, None) is not None:
            self.approvals.forget(name)
            self._changed(name)

    def sync(self, caps: Mapping[str, int | None], ping_like: Mapping[str, bool] | None = None) -> None:
        """Make the tracked set equal to ``caps``' keys (name -> max_in_flight):
        new channels start fresh, kept ones keep their history, gone ones are dropped."""
        for name in [n for n in self._channels if n not in caps]:
            self.remove_channel(name)
        for name, cap in caps.items():
            self.add_channel(name, max_in_flight=cap, ping_like_payment=(ping_like or {}).get(name, True))

    def stats(self, name: str) -> ChannelStats:
        return self._get(name).stats

    def breaker(self, name: str) -> Breaker:
        return self._get(name).breaker

    def _get(self, name: str) -> _Channel:
        try:
            return self._channels[name]
        except KeyError:
            raise KeyError(f"unknown channel {name!r}") from None

    def _breaker_moved(self, name: str, stats: ChannelStats, new: str) -> None:
        if new == "half_open":
            # Let back in on a clean slate: the window's failures are the outage that ejected it.
            # Kept (decay shrinks counts, not ratios), they'd bar traffic a whole window past recovery.
            stats.reset_success_window()
        self._changed(name)

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(name)

    # -- manual override -----------------------------------------------------------

    def drain(self, name: str) -> None:
        """Take the channel out of routing at once (``POST /v1/admin/channels/{name}/drain``)."""
        self._set_drained(name, True)

    def enable(self, name: str) -> None:
        self._set_drained(name, False)

    def is_drained(self, name: str) -> bool:
        return name in self._drained

    def drained(self) -> frozenset[str]:
        """Every drained name, also of channels not tracked now."""
        return frozenset(self._drained)

    def _set_drained(self, name: str, drained: bool) -> None:
        (self._drained.add if drained else self._drained.discard)(name)
        channel = self._channels.get(name)
        if channel is not None and channel.drained != drained:
            channel.drained = drained
            self._changed(name)

    # -- live attempts -------------------------------------------------------------

    def begin_attempt(self, name: str, *, panic: bool = False) -> AttemptTicket | None:
        """Admit one attempt on ``name`` now, or None when it is drained, at its in-flight
        cap, open, or half-open with every trial out. An admitted attempt is counted in
        flight until ``end_attempt`` or ``abandon_attempt``.

        ``panic``: routing found every channel for the transaction ejected and tries
        them anyway; the breaker is bypassed (its answer is not counted as a trial)."""
        channel = self._get(name)
        if channel.drained:
            return None
        if channel.max_in_flight is not None and channel.stats.in_flight >= channel.max_in_flight:
            return None
        permit = channel.breaker.try_acquire()
        if permit is None and panic:
            permit = PANIC_PERMIT
        if permit is None:
            return None
        return AttemptTicket(name, channel.stats.enter(), permit)

    def end_attempt(self, ticket: AttemptTicket, outcome: AttemptOutcome | str,
                    latency_ms: float) -> None:
        """The attempt answered (or timed out: ``unknown``). Feeds stats and breaker."""
        channel = self._channels.get(ticket.channel)
        if channel is None:
            return  # removed by a reload while the attempt was out
        channel.stats.exit(ticket.token)
        worked = channel.stats.record(outcome, latency_ms)
        channel.breaker.record(worked, ticket.permit)

    def abandon_attempt(self, ticket: AttemptTicket) -> None:
        """The attempt ended without telling anything about the channel (cancelled before
        sending, or the caller gave up): free its slot and any trial permit."""
        channel = self._channels.get(ticket.channel)
        if channel is None:
            return
        channel.stats.exit(ticket.token)
        channel.breaker.release(ticket.permit)

    def record_attempt(self, name: str, outcome: AttemptOutcome | str, latency_ms: float) -> None:
        """An outcome learned outside ``begin``/``end`` (e.g. a recovered attempt)."""
        channel = self._channels.get(name)
        if channel is None:
            return
        worked = channel.stats.record(outcome, latency_ms)
        channel.breaker.record(worked)

    def record_probe(self, name: str, ok: bool, latency_ms: float) -> None:
        channel = self._channels.get(name)
        if channel is None:
            return
        channel.stats.record_probe(ok, latency_ms)
        channel.breaker.record_probe(ok)
        self._changed(name)

    def record_approval(self, name: str, segment: str, approved: bool) -> None:
        """A payment of ``segment`` on ``name`` was approved, or declined by the channel's
        doing (a soft decline that another channel then approved)."""
        if name in self._channels:
            self.approvals.record(name, segment, approved)

    # -- the fleet -----------------------------------------------------------------

    def export(self) -> bytes:
        """This instance's own measurements, to publish for the fleet (never the fleet's:
        a sum re-published would be counted again)."""
        wall = self._wall_clock() if self._wall_clock is not None else 0.0
        now = self._clock()
        approvals = self.approvals.by_channel()
        channels: dict[str, dict[str, object]] = {}
        for name, ch in self._channels.items():
            successes, failures = ch.stats.decayed_counts()
            if ch.breaker.state == "open":
                # Ejected here: no traffic, so its failures fade while it is still down. Tell
                # the fleet it is as bad as the volume that ejects a channel by rate.
                failures = max(failures, float(self._breaker_config.success_rate_min_volume))
            probe = ch.stats.last_probe
            channels[name] = {
                "breaker": ch.breaker.state,
                "s": round(successes, 3), "f": round(failures, 3), "lat": ch.stats.latency_ewma_ms,
                "probe": None if probe is None else [probe.ok, round(wall - (now - probe.at), 3)],
                "seg": {seg: [round(a, 3), round(d, 3)] for seg, (a, d) in approvals.get(name, {}).items()},
            }
        return encode_blob(wall, channels)

    def update_fleet(self, published: list[tuple[str, float, bytes]], me: str) -> None:
        """Take in the other instances' latest blobs (instance, wall time, blob)."""
        self.fleet.update(published, me, self._wall_clock() if self._wall_clock is not None else 0.0)
        for name in self._channels:
            self._changed(name)

    def in_flight(self) -> dict[str, int]:
        """Live in-flight counts, for ``routing.decide(..., in_flight=...)``."""
        return {name: ch.stats.in_flight for name, ch in self._channels.items()}

    # -- views ---------------------------------------------------------------------

    def states(self) -> dict[str, ChannelState]:
        """Every channel's ``routing.ChannelState`` as of now, for a new snapshot: our own
        measurements plus the fleet's."""
        approvals = self.approvals.by_channel()
        wall = self._wall_clock() if self._wall_clock is not None else None
        return {name: self._state(ch, approvals.get(name, {}), self.fleet.channels.get(name), wall)
                for name, ch in self._channels.items()}

    @staticmethod
    def _state(channel: _Channel, approvals: dict[str, tuple[float, float]], fleet: FleetChannel | None,
               wall: float | None) -> ChannelState:
        stats, breaker = channel.stats, channel.breaker
        successes, failures = stats.decayed_counts()
        probe = stats.last_probe
        latency = stats.latency_ewma_ms
        share = None
        if fleet is not None and fleet.instances:
            successes += fleet.successes
            failures += fleet.failures
            if latency is None:  # measured by the fleet before we measured it
                latency = fleet.latency_ewma_ms
            merged = dict(approvals)
            for segment, (a, d) in fleet.segments.items():
                own_a, own_d = merged.get(segment, (0.0, 0.0))
                merged[segment] = (own_a + a, own_d + d)
            approvals = merged
            share = FleetShare(
                instances=fleet.instances, ejected_on=fleet.ejected_on, successes=fleet.successes,
                failures=fleet.failures,
                latency_ewma_ms=fleet.latency_ewma_ms, probe_ok=fleet.probe_ok,
                probe_age_s=None if fleet.probe_at is None or wall is None else max(0.0, wall - fleet.probe_at),
                approvals=fleet.segments,
            )
        return ChannelState(
            breaker=breaker.state,
            half_open_trials_available=breaker.trials_available,
            drained=channel.drained,
            in_flight=stats.in_flight,
            latency_ewma_ms=latency,
            latency_p99_ms=stats.latency_quantiles()[2],
            successes=successes,
            failures=failures,
            last_probe_ok=None if probe is None else probe.ok,
            stalled_ms=stats.stalled_ms(),
            approvals=approvals,
            fleet=share,
        )

    def report(self) -> dict[str, dict[str, Any]]:
        """Per channel, JSON-ready, for ``GET /v1/health/channels``."""
        approvals = self.approvals.by_channel()
        return {name: {**self._report(name, ch), "approval": _approval_report(approvals.get(name, {})),
                       "fleet": self._fleet_report(name)}
                for name, ch in self._channels.items()}

    def _fleet_report(self, name: str) -> dict[str, Any] | None:
        """What the other instances on the store measured of the channel (routing adds it)."""
        f = self.fleet.channels.get(name)
        if f is None:
            return None
        yes, no = f.segments.get(ALL_SEGMENTS, (0.0, 0.0))
        wall = self._wall_clock() if self._wall_clock is not None else None
        return {
            "instances": f.instances, "ejected_on": f.ejected_on,
            "successes": round(f.successes, 3), "failures": round(f.failures, 3),
            "approved": round(yes, 3), "declined": round(no, 3), "latency_ewma_ms": _round(f.latency_ewma_ms),
            "last_probe_ok": f.probe_ok,
            "last_probe_age_s": None if f.probe_at is None or wall is None else round(max(0.0, wall - f.probe_at), 3),
        }

    def _report(self, name: str, channel: _Channel) -> dict[str, Any]:
        stats = channel.stats
        p50, p95, p99 = stats.latency_quantiles(fresh=True)
        ok, failed = stats.window_counts()
        rate = stats.success_rate()
        ewma = stats.latency_ewma_ms
        return {
            "channel": name,
            "state": self._summary(channel, rate),
            "drained": channel.drained,
            "breaker": channel.breaker.describe(),
            "latency_ms": {
                "ewma": _round(ewma), "p50": _round(p50), "p95": _round(p95), "p99": _round(p99),
            },
            "success_rate": None if rate is None else round(rate, 6),
            "window": {"seconds": stats.config.window_s, "successes": ok, "failures": failed},
            "outcomes": stats.outcome_counts(),
            "in_flight": stats.in_flight,
            "stalled_ms": round(stats.stalled_ms(), 3),
            "max_in_flight": channel.max_in_flight,
            "probes": stats.probe_counts(),
            "last_probe": self._probe_report(stats),
        }

    def _probe_report(self, stats: ChannelStats) -> dict[str, Any] | None:
        probe = stats.last_probe
        if probe is None:
            return None
        age_s = self._clock() - probe.at
        return {
            "ok": probe.ok,
            "latency_ms": _round(probe.latency_ms),
            "age_s": round(age_s, 3),
            # Monotonic time means nothing to a reader; give wall time when we can.
            "at_unix": None if self._wall_clock is None else round(self._wall_clock() - age_s, 3),
        }

    @staticmethod
    def _summary(channel: _Channel, rate: float | None) -> str:
        if channel.drained:
            return "drained"
        breaker = channel.breaker.state
        if breaker == "open":
            return "ejected"
        if breaker == "half_open":
            return "recovering"
        probe = channel.stats.last_probe
        if (probe is not None and not probe.ok) or (rate is not None and rate < _DEGRADED_BELOW):
            return "degraded"
        if probe is None and rate is None:
            return "unknown"
        return "healthy"


def _approval_report(tallies: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """This instance's approval record of a channel: all its traffic, and how many segments."""
    yes, no = tallies.get(ALL_SEGMENTS, (0.0, 0.0))
    return {"approved": round(yes, 3), "declined": round(no, 3),
            "rate": round(yes / (yes + no), 6) if yes + no >= 1.0 else None,
            "segments": sum(1 for segment in tallies if segment != ALL_SEGMENTS)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
