"""The routing snapshot: config + live channel state, frozen, with its derived tables.

Everything that does not depend on the transaction (health filter reasons, posterior
parameters, latency and weight terms) is computed once here, when the snapshot is
built, so that ``decide`` only does per-transaction work. A new snapshot is built for
every change; nothing in one is ever mutated except a bounded memo of static filters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from routing._model import ALL_SEGMENTS, ChannelSpec, ChannelState, RoutingPolicy, ScoringWeights, ValueWeights

__all__ = ["Snapshot"]

_DEFAULT_STATE = ChannelState()
# Distinct (rule, currency, country, method) keys are few in practice; the cap only
# guards memory against a caller feeding arbitrary strings.
_STATIC_MEMO_LIMIT = 4096


class _Prepared:
    """Per-channel values derived from spec + state + scoring weights."""

    __slots__ = (
        "alpha",
        "approval_mean",
        "approvals",
        "beta",
        "exact_beta",
        "fee_fixed",
        "fee_rate",
        "health_reason",
        "latency_ms",
        "latency_cost",
        "latency_term",
        "mean",
        "name",
        "order",
        "sd",
        "spec",
        "stalled",
        "state",
        "success_term",
        "weight_term",
    )

    def __init__(self, order: int, spec: ChannelSpec, state: ChannelState, w: ScoringWeights,
                 v: ValueWeights):
        self.order = order
        self.name = spec.name
        self.spec = spec
        self.state = state
        self.health_reason = _health_reason(spec, state)
        # Beta(successes + a0, failures + b0): the prior keeps an unmeasured channel's
        # estimate wide, which is what lets exploration find it.
        self.alpha = state.successes + w.prior_successes
        self.beta = state.failures + w.prior_failures
        total = self.alpha + self.beta
        self.mean = self.alpha / total
        self.sd = math.sqrt(self.alpha * self.beta / (total * total * (total + 1.0)))
        self.exact_beta = total < w.exact_beta_below
        self.success_term = w.success * self.mean
        self.latency_ms, self.stalled = _effective_latency(spec, state, w)
        self.latency_term = _latency_term(self.latency_ms, w)
        self.weight_term = w.weight * math.log(spec.weight)
        self.fee_fixed = float(spec.fee_fixed_minor)
        self.fee_rate = spec.fee_percent / 100.0
        # The value objective: the channel's approval over all its traffic (the prior its
        # segments pool from), and latency past the SLO as a fraction of the amount.
        self.approvals = state.approvals
        yes, no = state.approvals.get(ALL_SEGMENTS, (0.0, 0.0))
        self.approval_mean = (yes + v.approval_prior_weight * v.approval_prior) / (yes + no + v.approval_prior_weight)
        self.latency_cost = v.latency_price_bps_per_s / 10_000.0 * max(0.0, self.latency_ms - v.latency_slo_ms) / 1000.0


def _health_reason(spec: ChannelSpec, state: ChannelState) -> str | None:
    """Why live state rules the channel out, or None when it may be tried."""
    if state.drained:
        return "drained"
    if state.breaker == "open":
        return "breaker open"
    if state.breaker == "half_open" and not state.half_open_trials_available:
        return "breaker half-open, no trial available"
    if spec.max_in_flight is not None and state.in_flight >= spec.max_in_flight:
        return f"in-flight cap {spec.max_in_flight} reached"
    return None


def _stall_threshold(state: ChannelState, w: ScoringWeights) -> float | None:
    """How long a channel may stay silent, attempts outstanding, before it is suspect.

    A hung channel reports nothing until its timeouts come back, seconds later; the
    time it has been busy without answering anything is the earliest honest evidence.
    (Not the oldest attempt's age: at thousands of attempts a second one of them is
    always hanging somewhere while the channel as a whole keeps answering.)
    """
    latency = state.latency_ewma_ms
    if state.stalled_ms <= 0.0 or latency is None:
        return None
    tail = state.latency_p99_ms if state.latency_p99_ms is not None else latency
    threshold = w.stall_factor * tail
    if state.in_flight > 0:
        # Little's law: a healthy channel with n attempts out answers about every
        # latency / n ms; a silence of many such gaps is already far out of character.
        threshold = min(threshold, w.stall_gaps * latency / state.in_flight)
    return threshold


def _effective_latency(spec: ChannelSpec, state: ChannelState, w: ScoringWeights
                       ) -> tuple[float, bool]:
    """(latency to score, whether the channel is suspected of hanging).

    Normally the EWMA. Past the stall threshold, the estimate moves towards what an
    attempt on a hung channel costs (the timeout), reaching it at twice the threshold:
    a short silence is enough to prefer a similar channel, only a long one to fall
    back to one that is many times slower. Suspicion lasts until the channel answers
    again, so a fluke costs one snapshot.

    An unmeasured channel is taken at its timeout: until a probe or an attempt has
    answered, nothing says it is fast, and a new channel should not take traffic from
    measured ones on a blank record (the first probe fixes this within seconds).
    """
    ewma = state.latency_ewma_ms
    if ewma is None:
        return max(float(spec.timeout_ms), state.stalled_ms), False
    threshold = _stall_threshold(state, w)
    if threshold is None or state.stalled_ms <= threshold:
        return ewma, False
    hung = max(float(spec.timeout_ms), state.stalled_ms)
    evidence = min(1.0, (state.stalled_ms - threshold) / threshold)
    return ewma + evidence * max(0.0, hung - ewma), True


def _latency_term(latency_ms: float, w: ScoringWeights) -> float:
    """Log scale: 28 ms, 1.2 s and 4.8 s differ by orders of magnitude, and a 10 ms
    difference matters between direct APIs but not between banks."""
    return -w.latency * math.log10(max(latency_ms, 1.0) / w.latency_ref_ms)


class _Index:
    """Lookup tables derived from a snapshot."""

    __slots__ = ("prepared", "rule_sets", "static_memo")

    def __init__(self, channels: Mapping[str, ChannelSpec], states: Mapping[str, ChannelState],
                 policy: RoutingPolicy):
        w, v = policy.weights, policy.value
        self.prepared: tuple[_Prepared, ...] = tuple(
            _Prepared(i, spec, states.get(name, _DEFAULT_STATE), w, v)
            for i, (name, spec) in enumerate(channels.items())
        )
        self.rule_sets: tuple[frozenset[str] | None, ...] = tuple(
            None if rule.channels is None else frozenset(rule.channels) for rule in policy.rules
        )
        self.static_memo: dict[tuple[int, str, str, str], tuple[tuple[_Prepared, ...], dict[str, str]]] = {}

    def static(self, rule_pos: int, currency: str, country: str, method: str
               ) -> tuple[tuple[_Prepared, ...], dict[str, str]]:
        """Channels passing the rule restriction, currency, country and method checks,
        with the reason for each one left out. Memoised: these depend on 4 strings."""
        key = (rule_pos, currency, country, method)
        hit = self.static_memo.get(key)
        if hit is not None:
            return hit
        allowed = self.rule_sets[rule_pos] if rule_pos >= 0 else None
        passing: list[_Prepared] = []
        reasons: dict[str, str] = {}
        for p in self.prepared:
            reason = _static_reason(p.spec, allowed, currency, country, method)
            if reason is None:
                passing.append(p)
            else:
                reasons[p.name] = reason
        hit = (tuple(passing), reasons)
        if len(self.static_memo) >= _STATIC_MEMO_LIMIT:
            self.static_memo.clear()
        self.static_memo[key] = hit
        return hit


def _static_reason(spec: ChannelSpec, allowed: frozenset[str] | None, currency: str,
                   country: str, method: str) -> str | None:
    if allowed is not None and spec.name not in allowed:
        return "not in rule channels"
    if currency not in spec.currencies:
        return f"currency {currency} not supported"
    if country not in spec.countries:
        return f"country {country} not supported"
    if method not in spec.methods:
        return f"method {method} not supported"
    return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Config and channel state at one moment; build a new one to change anything.

    ``channels`` keeps config order (it breaks ties and orders ``priority`` without a
    rule list). A channel missing from ``states`` is taken as closed, with no data;
    states of channels not in ``channels`` are ignored.
    """

    channels: Mapping[str, ChannelSpec]
    states: Mapping[str, ChannelState]
    policy: RoutingPolicy
    version: str
    _index: _Index = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        channels = dict(self.channels)
        for name, spec in channels.items():
            if spec.name != name:
                raise ValueError(f"channel key {name!r} does not match its spec name {spec.name!r}")
        states = dict(self.states)
        object.__setattr__(self, "channels", MappingProxyType(channels))
        object.__setattr__(self, "states", MappingProxyType(states))
        object.__setattr__(self, "_index", _Index(channels, states, self.policy))

    @classmethod
    def build(cls, channels: list[ChannelSpec] | tuple[ChannelSpec, ...],
              states: Mapping[str, ChannelState] | None = None,
              policy: RoutingPolicy | None = None, version: str = "") -> Snapshot:
        """Convenience constructor from a list of specs (config order preserved)."""
        return cls(
            channels={spec.name: spec for spec in channels},
            states=states or {},
            policy=policy or RoutingPolicy(),
            version=version,
        )

    def with_states(self, states: Mapping[str, ChannelState]) -> Snapshot:
        """The same config with fresh health: what a health update publishes."""
        return dataclasses.replace(self, states=states)

    def with_config(self, channels: Mapping[str, ChannelSpec], policy: RoutingPolicy,
                    version: str) -> Snapshot:
        """A reloaded config with the current health: what a config reload publishes."""
        return dataclasses.replace(self, channels=channels, policy=policy, version=version)
