"""Routing's own input and output types.

Routing is pure: it never imports ``config/`` or ``orchestrator/``. Whoever builds a
``Snapshot`` translates config and health into these frozen values, so a decision can be
replayed from its inputs alone (tests, the simulator, ``explain``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "ALL_SEGMENTS",
    "BREAKER_STATES",
    "CHANNEL_KINDS",
    "STRATEGIES",
    "ChannelSpec",
    "ChannelState",
    "Decision",
    "FleetShare",
    "OBJECTIVES",
    "RoutingPolicy",
    "Rule",
    "RuleMatch",
    "Score",
    "ScoringWeights",
    "SegmentPolicy",
    "Transaction",
    "ValueWeights",
]

CHANNEL_KINDS = frozenset({"direct_api", "digital_currency", "bank"})
BREAKER_STATES = frozenset({"closed", "open", "half_open"})
STRATEGIES = frozenset({"smart", "priority", "weighted", "cheapest"})
EXPLORATIONS = frozenset({"thompson", "none"})
# ``value``: expected value of the payment (approval x (amount - fee) - a price on latency
# beyond the SLO); ``score``: the first version's score (success, log latency, fee).
OBJECTIVES = frozenset({"value", "score"})
# The segment a channel's whole traffic is tallied under: the prior its segments pool from.
ALL_SEGMENTS = "*"
_NO_APPROVALS: Mapping[str, tuple[float, float]] = MappingProxyType({})


def _frozen(values: Iterable[str]) -> frozenset[str]:
    # A bare string is an iterable of letters: refuse it rather than match on "C", "N", "Y".
    if isinstance(values, str):
        raise TypeError(f"expected a collection of strings, got the string {values!r}")
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A channel's static description, as configured.

    ``fee_percent`` is a percentage (0.6 means 0.6 %); ``max_amount_minor`` and
    ``max_in_flight`` are unbounded when None.
    """

    name: str
    kind: str
    currencies: frozenset[str]
    countries: frozenset[str]
    methods: frozenset[str]
    min_amount_minor: int = 0
    max_amount_minor: int | None = None
    fee_fixed_minor: int = 0
    fee_percent: float = 0.0
    weight: float = 1.0
    max_in_flight: int | None = None
    timeout_ms: int = 2000
    step_up: bool = False  # can run a 3-D Secure step-up (SPEC 22)

    def __post_init__(self) -> None:
        # Accept lists/tuples from callers but store frozensets so the spec stays hashable.
        for name in ("currencies", "countries", "methods"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.kind not in CHANNEL_KINDS:
            raise ValueError(f"channel {self.name}: kind must be one of {sorted(CHANNEL_KINDS)}")
        if self.min_amount_minor < 0:
            raise ValueError(f"channel {self.name}: min_amount_minor must be >= 0")
        if self.max_amount_minor is not None and self.max_amount_minor < self.min_amount_minor:
            raise ValueError(f"channel {self.name}: max_amount_minor must be >= min_amount_minor")
        if self.fee_fixed_minor < 0 or self.fee_percent < 0:
            raise ValueError(f"channel {self.name}: fees must be >= 0")
        if not self.weight > 0 or not math.isfinite(self.weight):
            raise ValueError(f"channel {self.name}: weight must be a finite number > 0")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"channel {self.name}: max_in_flight must be >= 1")
        if self.timeout_ms <= 0:
            raise ValueError(f"channel {self.name}: timeout_ms must be > 0")

    def fee_minor(self, amount_minor: int) -> float:
        """What this channel charges on ``amount_minor``, in (fractional) minor units."""
        return self.fee_fixed_minor + amount_minor * self.fee_percent / 100.0


class FleetShare(NamedTuple):
    """What of a ``ChannelState`` the other instances on the store measured (already
    included in its figures): for ``explain``, which numbers are local and which the fleet's."""

    instances: int
    ejected_on: int  # of them, how many have the channel's breaker open
    successes: float
    failures: float
    latency_ewma_ms: float | None
    probe_ok: bool | None
    probe_age_s: float | None
    approvals: Mapping[str, tuple[float, float]]


@dataclass(frozen=True, slots=True)
class ChannelState:
    """A channel's live condition, as measured by ``health`` when the snapshot was built.

    ``successes``/``failures`` are the (possibly time-decayed, hence float) counts the
    success-rate estimate is drawn from. ``stalled_ms`` is how long the channel has had
    attempts outstanding without answering anything: a hung channel answers nothing, so
    this is the first sign of an outage, long before its timeouts come back as failures.
    """

    breaker: str = "closed"
    half_open_trials_available: bool = True
    drained: bool = False
    in_flight: int = 0
    latency_ewma_ms: float | None = None
    latency_p99_ms: float | None = None
    successes: float = 0.0
    failures: float = 0.0
    last_probe_ok: bool | None = None
    stalled_ms: float = 0.0
    # segment -> (approved, declined), time-decayed, ``ALL_SEGMENTS`` for all of them.
    approvals: Mapping[str, tuple[float, float]] = field(default_factory=lambda: _NO_APPROVALS)
    fleet: FleetShare | None = None

    def __post_init__(self) -> None:
        if self.breaker not in BREAKER_STATES:
            raise ValueError(f"breaker must be one of {sorted(BREAKER_STATES)}")
        if self.successes < 0 or self.failures < 0 or self.in_flight < 0 or self.stalled_ms < 0:
            raise ValueError("counts must be >= 0")


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """What a rule applies to; a key left None matches anything. Amounts are inclusive."""

    currency: str | None = None
    country: str | None = None
    method: str | None = None
    min_amount_minor: int | None = None
    max_amount_minor: int | None = None
    segment: str | None = None

    def matches(self, txn: Transaction) -> bool:
        return (
            (self.currency is None or self.currency == txn.currency)
            and (self.country is None or self.country == txn.country)
            and (self.method is None or self.method == txn.method)
            and (self.min_amount_minor is None or txn.amount_minor >= self.min_amount_minor)
            and (self.max_amount_minor is None or txn.amount_minor <= self.max_amount_minor)
            and (self.segment is None or self.segment == txn.segment)
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """A routing rule. ``channels``, when given, restricts the candidates to those names
    and, for ``priority``, is the order they are tried in."""

    name: str
    match: RuleMatch = RuleMatch()
    strategy: str = "smart"
    channels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"rule {self.name}: strategy must be one of {sorted(STRATEGIES)}")
        if self.channels is not None:
            if isinstance(self.channels, str):
                raise TypeError(f"rule {self.name}: channels must be a sequence of names")
            object.__setattr__(self, "channels", tuple(self.channels))


@dataclass(frozen=True, slots=True)
class ScoringWeights:
    """How the ``smart`` score trades success, latency, cost and configured weight.

    All contributions are in "success probability" units, so they read as percentage
    points: with the defaults, one decade of latency (28 ms -> 280 ms) is worth 4 points
    of success rate and a 1 % fee 1 point. A 50 % channel therefore never beats a 99 %
    one on speed (49 points against at most ~9 for 28 ms vs 4.8 s), while two channels
    within a point of each other are separated by latency.

    - ``success``: multiplies the success probability.
    - ``latency``: per decade (log10) of latency above ``latency_ref_ms``.
    - ``cost``: multiplies the fee as a fraction of the amount.
    - ``weight``: multiplies ln(configured weight) (weight 1 is neutral).
    - ``stall_factor``, ``stall_gaps``: a channel silent, while attempts are outstanding,
      for longer than ``stall_factor`` x its p99 latency, or than ``stall_gaps`` times
      its expected gap between answers (latency / in-flight), is suspected of hanging:
      its latency estimate moves towards its timeout, reaching it at twice that
      threshold. Outage detection before the timeouts come back.
    - ``prior_successes``, ``prior_failures``: the Beta prior of the success estimate,
      Beta(successes + a0, failures + b0). The default (19, 1) says a channel nobody has
      measured is taken as 95 % likely to work, worth 20 observations: wide enough for
      exploration to find out, narrow enough that a cold start or an idle fallback is
      not ranked on a coin toss (a uniform Beta(1, 1) would put a 4.8 s bank first a
      third of the time on a blank record).
    - ``exact_beta_below``: Thompson samples come from the exact Beta posterior while
      successes + failures are below this; above it, from its normal approximation,
      which is indistinguishable there and cheaper (docs/performance.md#thompson-sampling).
    """

    success: float = 1.0
    latency: float = 0.04
    latency_ref_ms: float = 1000.0
    cost: float = 1.0
    weight: float = 0.02
    stall_factor: float = 1.5
    stall_gaps: float = 10.0
    prior_successes: float = 19.0
    prior_failures: float = 1.0
    exact_beta_below: float = 200.0

    def __post_init__(self) -> None:
        for name in ("success", "latency", "cost", "weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"scoring weight {name} must be >= 0")
        if self.prior_successes <= 0 or self.prior_failures <= 0:
            raise ValueError("prior_successes and prior_failures must be > 0")
        if self.latency_ref_ms <= 0 or self.stall_factor <= 0 or self.stall_gaps <= 0:
            raise ValueError("latency_ref_ms, stall_factor and stall_gaps must be > 0")


@dataclass(frozen=True, slots=True)
class ValueWeights:
    """The ``value`` objective: per transaction, each channel's expected value,
    P(works) x P(approved | segment) x (amount - fee) - amount x a price on latency
    beyond the SLO, all as fractions of the amount (so they read as points).

    - ``latency_slo_ms``, ``latency_price_bps_per_s``: every second of expected latency
      past the SLO costs this many basis points of the amount (a bank at 4.8 s against a
      500 ms SLO and 100 bps/s: 4.3 %, more than any fee difference).
    - ``approval_prior``, ``approval_prior_weight``: what a channel with no approval record
      is believed to approve, worth this many observations.
    - ``pool_weight``: a segment's estimate starts from its channel's whole traffic, worth
      this many observations: a sparse segment borrows strength, a busy one soon has its own.
      Kept small: a channel that serves a segment only when explored or as a fallback gathers
      a few dozen observations there before they decay, and a heavier prior drowns them
      (docs/routing.md#learning).
    - ``exploration_share``: at most this share of decisions sample the estimates (Thompson)
      instead of taking their means; the rest exploit.
    """

    latency_slo_ms: float = 500.0
    latency_price_bps_per_s: float = 100.0
    approval_prior: float = 0.9
    approval_prior_weight: float = 10.0
    pool_weight: float = 5.0
    exploration_share: float = 0.1

    def __post_init__(self) -> None:
        if self.latency_slo_ms < 0 or self.latency_price_bps_per_s < 0:
            raise ValueError("latency_slo_ms and latency_price_bps_per_s must be >= 0")
        if not 0 < self.approval_prior < 1 or self.approval_prior_weight <= 0 or self.pool_weight <= 0:
            raise ValueError("approval_prior must be in (0, 1), its weight and pool_weight > 0")
        if not 0 <= self.exploration_share <= 1:
            raise ValueError("exploration_share must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class SegmentPolicy:
    """How transactions are grouped for approval estimates: currency, country and method
    always; an amount band (``amount_bands[currency]``: ascending upper bounds in minor
    units; band i holds amounts up to bound i, the last band the rest); and, with
    ``issuer``, the instrument's issuer or card BIN prefix when the front service sent one."""

    amount_bands: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    issuer: bool = True

    def __post_init__(self) -> None:
        bands = {}
        for currency, bounds in self.amount_bands.items():
            bounds = tuple(bounds)
            if any(b <= 0 for b in bounds) or list(bounds) != sorted(set(bounds)):
                raise ValueError(f"amount_bands[{currency}] must be ascending positive bounds")
            bands[currency] = bounds
        object.__setattr__(self, "amount_bands", MappingProxyType(bands))

    def key(self, txn: Transaction) -> str:
        """The transaction's segment: ``CNY/CN/ewallet/b1`` (+ ``/icbc`` with an issuer)."""
        band = 0
        for bound in self.amount_bands.get(txn.currency, ()):
            if txn.amount_minor <= bound:
                break
            band += 1
        key = f"{txn.currency}/{txn.country}/{txn.method}/b{band}"
        return f"{key}/{txn.issuer}" if self.issuer and txn.issuer else key


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Rules (first match wins), the strategy used when none matches, and scoring.

    ``exploration``: ``"thompson"`` samples each channel's success rate from its Beta
    posterior (so a channel with little recent data is tried in proportion to the chance
    it is the best); ``"none"`` uses the posterior mean.
    """

    strategy: str = "smart"
    rules: tuple[Rule, ...] = ()
    weights: ScoringWeights = ScoringWeights()
    exploration: str = "thompson"
    objective: str = "value"
    value: ValueWeights = ValueWeights()
    segments: SegmentPolicy = SegmentPolicy()

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}")
        if self.exploration not in EXPLORATIONS:
            raise ValueError(f"exploration must be one of {sorted(EXPLORATIONS)}")
        object.__setattr__(self, "rules", tuple(self.rules))
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")


@dataclass(frozen=True, slots=True)
class Transaction:
    """The facts about one recharge that routing looks at."""

    currency: str
    country: str
    method: str
    amount_minor: int
    segment: str | None = None
    user_id: str | None = None
    step_up: bool = False  # risk challenged it: only channels that can step up
    issuer: str | None = None  # the instrument's issuer, or ``bin:`` + a card's BIN prefix

    def __post_init__(self) -> None:
        if self.amount_minor <= 0:
            raise ValueError("amount_minor must be > 0")


class Score(NamedTuple):
    """One candidate's score and each factor's contribution (``total`` is their sum).

    A NamedTuple rather than a dataclass: one is built per candidate per decision, and
    a tuple is cheaper to build (docs/performance.md#score-tuples).
    """

    total: float
    success: float
    latency: float
    cost: float
    weight: float
    exploration: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The failover order for one transaction and why.

    ``rule`` is None when no rule matched and the policy's default strategy was used.
    ``filtered`` names every channel left out, with the reason. ``scores`` has every
    candidate's factors for every strategy; with ``smart`` the first candidate has the
    highest ``total`` (exploration included) and the fallbacks follow by ``total`` minus
    ``exploration``.
    """

    candidates: tuple[str, ...]
    rule: str | None
    strategy: str
    scores: Mapping[str, Score] = field(default_factory=dict)
    filtered: Mapping[str, str] = field(default_factory=dict)
    snapshot_version: str = ""
    # Every channel that could serve the transaction had its breaker open, so they are
    # all tried anyway (Envoy's panic routing): better a likely failure than a certain one.
    panic: bool = False
