"""The config schema: one YAML file, validated whole into frozen, typed models.

Key names are fixed by SPEC section 10 (SREs and tests write them). Every model forbids
unknown keys, so a typo is an error with its path rather than a silently ignored knob.
Cross-references (rules naming channels, currencies without a rate) are checked on the
whole document by ``reference_errors``, beside the field errors.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from channels import KIND_DEFAULTS
from config._currencies import is_known

__all__ = [
    "timing_errors",
    "BlocklistConfig",
    "BreakerConfig",
    "ChannelConfig",
    "ClientConfig",
    "Config",
    "DenominationConfig",
    "FeeConfig",
    "FirstRechargeConfig",
    "HealthConfig",
    "HistoryRuleConfig",
    "InquiryConfig",
    "MonthlyConfig",
    "PricingConfig",
    "PromotionsConfig",
    "RateSourceConfig",
    "RiskConfig",
    "RiskModelConfig",
    "RoutingConfig",
    "RuleConfig",
    "RuleMatch",
    "ServerConfig",
    "StorageConfig",
    "SuggestionsConfig",
    "TemplatesConfig",
    "TierConfig",
    "VelocityRule",
]

ChannelKind = Literal["direct_api", "digital_currency", "bank"]
Strategy = Literal["smart", "priority", "weighted", "cheapest"]
Scope = Literal["recharge", "admin"]

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
Method = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
DeclineCode = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _check_currency(code: str) -> str:
    if not is_known(code):
        raise ValueError(f"unknown currency {code!r} (not an ISO 4217 code this product knows)")
    return code


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    sync_wait_s: float = Field(10.0, ge=0, le=120)
    max_body_bytes: int = Field(64 * 1024, gt=0, le=1024 * 1024)
    # Recharge requests being answered at once; past it, 503 + Retry-After before any
    # work, so an overload sheds load instead of queueing into collapse.
    max_concurrent_requests: int = Field(500, gt=0, le=1_000_000)
    # Worker processes behind the port (read at start): each a whole orchestrator on
    # its own SO_REUSEPORT socket, under one supervisor (orchestrator/cluster.py).
    workers: int = Field(1, ge=1, le=64)
    # Against slow and hostile clients: a request line and headers must arrive within this,
    # else 400 request_timeout and the connection closes.
    header_timeout_s: float = Field(10.0, gt=0, le=300)
    # Past this many open connections, a new one is answered 503 and closed.
    max_connections: int = Field(10_000, gt=0, le=1_000_000)
    # A kept-alive connection idle this long is closed (read at start).
    idle_timeout_s: float = Field(75.0, gt=0, le=3600)
    # Where providers send webhooks; defaults to http://{host}:{port}.
    public_url: str | None = None
    # HTTPS only when both are set (PEM files); --tls-cert/--tls-key override them.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Read-only endpoints that need an API key (any scope) when listed here.
    restrict: list[Literal["metrics", "channel_health", "status"]] = Field(default_factory=list)
    # The status page's history: 60 buckets of this many seconds, in memory (read at start).
    status_bucket_s: float = Field(60.0, ge=0.5, le=3600)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class StorageConfig(_Model):
    url: str = "sqlite:///data/orchestrator.db"
    # Upper bound on journal steps folded into one transaction/fsync.
    group_commit_max_batch: int = Field(512, gt=0, le=100_000)
    # SQLite under load (docs/performance.md#batching): commits start at most this often, so the
    # steps between share a transaction and fsync, each waiting at most this (0: back to back).
    commit_interval_ms: float = Field(3.0, ge=0, le=50)
    # A dead instance's leases expire after this (store's clock) and a live one takes over its
    # work; it must outlast every channel's timeout, as a call under way cannot be taken back.
    lease_s: float = Field(15.0, gt=0, le=3600)
    # How often an instance renews the leases it holds (default: a third of lease_s);
    # at most half of lease_s, so one lost renewal does not lose a lease.
    lease_renew_s: float | None = Field(None, gt=0, le=1800)
    # How far the clocks of instances sharing the store may disagree (NTP keeps them to
    # milliseconds): added to every late-capture check, which another instance may run.
    max_clock_skew_s: float = Field(5.0, ge=0, le=600)
    # This instance's lease owner name; default: one per process on PostgreSQL, and a
    # fixed one on SQLite (one process per file), so a restart resumes at once.
    instance_id: str | None = None

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not (url.startswith("sqlite:///") or url.startswith("postgresql://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return url


NotifyEvent = Literal[
    "recharge.succeeded", "recharge.failed", "recharge.declined", "recharge.blocked", "recharge.pending",
    "recharge.requires_action", "recharge.settled", "recharge.settlement_failed", "refund.succeeded", "refund.failed", "dispute.opened", "dispute.won", "dispute.lost",
]
NOTIFY_EVENTS: tuple[str, ...] = NotifyEvent.__args__  # type: ignore[attr-defined]


class NotifyConfig(_Model):
    """Where a client hears of its recharges' changes (SPEC 19): signed POSTs, retried
    with backoff for ``retry_for_s``, then ``dead``."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    secret: Annotated[str, StringConstraints(min_length=16, max_length=256)]
    events: Annotated[list[NotifyEvent], Field(min_length=1)]
    retry_for_s: float = Field(86_400.0, gt=0, le=30 * 86_400)


class ClientConfig(_Model):
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    key_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    scopes: Annotated[list[Scope], Field(min_length=1)]
    notify: NotifyConfig | None = None


class RefundsConfig(_Model):
    # A refund may take coins the user has spent already (the balance goes negative: a debt).
    allow_negative_balance: bool = False
    # How often a refund the provider has not settled is asked after (same refund_reference).
    retry_interval_s: float = Field(30.0, gt=0, le=86_400)


class TemplatesConfig(_Model):
    """Recharge templates (SPEC 22): how many one user may keep with one client."""

    max_per_user: int = Field(10, ge=1, le=1000)


class NotificationsConfig(_Model):
    """The dispatcher of every instance: how hard it pushes each client's endpoint."""

    max_per_destination: int = Field(4, ge=1, le=256)
    timeout_ms: int = Field(5000, gt=0, le=60_000)
    initial_backoff_s: float = Field(1.0, gt=0, le=3600)
    max_backoff_s: float = Field(600.0, gt=0, le=86_400)
    poll_interval_s: float = Field(0.5, gt=0, le=60)


class FeeConfig(_Model):
    fixed_minor: int = Field(0, ge=0)
    percent: float = Field(0.0, ge=0, le=100)


class ChannelConfig(_Model):
    name: Name
    kind: ChannelKind
    base_url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    api_key: str | None = None
    webhook_secret: Annotated[str, StringConstraints(min_length=8, max_length=256)]
    currencies: Annotated[list[CurrencyCode], Field(min_length=1)]
    countries: Annotated[list[CountryCode], Field(min_length=1)]
    methods: Annotated[list[Method], Field(min_length=1)]
    min_amount_minor: int = Field(1, ge=1)
    max_amount_minor: int = Field(10**12, ge=1)
    # Default by kind (channels._kinds): 2 s direct API, 4 s digital currency, 10 s bank.
    timeout_ms: int = Field(2000, gt=0, le=120_000)
    fee: FeeConfig = FeeConfig()
    weight: float = Field(1.0, gt=0, le=1000)
    max_in_flight: int | None = Field(None, gt=0, le=100_000)
    # The provider can run a 3-D Secure step-up: only such channels take challenged recharges.
    step_up: bool = False
    # Outbound TLS is verified against the system CAs; this pins a CA bundle instead.
    ca_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind_timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("timeout_ms") is None and data.get("kind") in KIND_DEFAULTS:
            return {**data, "timeout_ms": KIND_DEFAULTS[data["kind"]].timeout_ms}
        return data

    @field_validator("currencies")
    @classmethod
    def _known_currencies(cls, codes: list[str]) -> list[str]:
        for code in codes:
            _check_currency(code)
        return codes

    @model_validator(mode="after")
    def _amount_range(self) -> ChannelConfig:
        if self.max_amount_minor < self.min_amount_minor:
            raise ValueError("max_amount_minor must be >= min_amount_minor")
        return self


class RuleMatch(_Model):
    currency: CurrencyCode | None = None
    country: CountryCode | None = None
    method: Method | None = None
    segment: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    min_amount_minor: int | None = Field(None, ge=0)
    max_amount_minor: int | None = Field(None, ge=0)


class RuleConfig(_Model):
    name: str | None = None
    match: RuleMatch = RuleMatch()
    strategy: Strategy = "smart"
    channels: list[Name] | None = None


class InquiryConfig(_Model):
    """How an attempt whose outcome is unknown is chased before anything else is tried."""

    attempts: int = Field(4, ge=1, le=50)
    initial_backoff_ms: int = Field(100, gt=0, le=60_000)
    max_backoff_ms: int = Field(2000, gt=0, le=300_000)
    # How often a pending recharge is re-inquired by the background reconciler.
    reconcile_interval_s: float = Field(5.0, gt=0, le=3600)
    # An attempt closed without a capture after an unknown outcome is inquired once
    # more this long after, for a capture the provider made late (SPEC 7).
    late_capture_check_s: float = Field(120.0, gt=0, le=86_400)


class ValueConfig(_Model):
    """The ``value`` objective of ``smart`` (issue 26): each channel's expected value of
    the payment, P(works) x P(approved | segment) x (amount - fee), minus
    ``latency_price_bps_per_s`` basis points of the amount per second of expected latency
    beyond ``latency_slo_ms``."""

    latency_slo_ms: float = Field(500.0, ge=0, le=600_000)
    latency_price_bps_per_s: float = Field(100.0, ge=0, le=10_000)
    approval_prior: float = Field(0.9, gt=0, lt=1)
    approval_prior_weight: float = Field(10.0, gt=0, le=1_000_000)
    pool_weight: float = Field(5.0, gt=0, le=1_000_000)
    exploration_share: float = Field(0.1, ge=0, le=1)


class SegmentsConfig(_Model):
    """How recharges are grouped for approval estimates: currency, country and method,
    an amount band (``amount_bands[currency]``: ascending upper bounds in minor units),
    and the instrument's issuer (or card BIN prefix) when sent and ``issuer`` is on."""

    amount_bands: dict[CurrencyCode, list[int]] = Field(default_factory=dict)
    issuer: bool = True

    @field_validator("amount_bands")
    @classmethod
    def _ascending(cls, bands: dict[str, list[int]]) -> dict[str, list[int]]:
        for currency, bounds in bands.items():
            _check_currency(currency)
            if len(bounds) > 32:
                raise ValueError(f"amount_bands.{currency}: at most 32 bounds")
            if any(b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
                raise ValueError(f"amount_bands.{currency} must be strictly ascending amounts > 0 (minor units)")
        return bands


class RoutingConfig(_Model):
    strategy: Strategy = "smart"
    # ``value``: expected value per transaction (ValueConfig); ``score``: the first version's
    # score of success rate, log latency and fee (health.scoring weights).
    objective: Literal["value", "score"] = "value"
    value: ValueConfig = ValueConfig()
    segments: SegmentsConfig = SegmentsConfig()
    max_attempts: int = Field(3, ge=1, le=10)
    deadline_s: float = Field(15.0, gt=0, le=3600)
    # How long a payer has to finish a step-up (SPEC 22); then it is voided (action_expired).
    action_ttl_s: float = Field(600.0, gt=0, le=86_400)
    soft_decline_codes: list[DeclineCode] = Field(
        default_factory=lambda: ["issuer_unavailable", "do_not_honor"]
    )
    rules: list[RuleConfig] = Field(default_factory=list)
    inquiry: InquiryConfig = InquiryConfig()


class BreakerConfig(_Model):
    """Outlier ejection per channel, in the manner of Envoy's outlier detection."""

    consecutive_failures: int = Field(5, ge=1, le=1000)
    success_rate_threshold: float = Field(0.85, ge=0, le=1)
    success_rate_min_volume: int = Field(50, ge=1)
    success_rate_window_s: float = Field(30.0, gt=0, le=3600)
    base_ejection_s: float = Field(30.0, gt=0, le=3600)
    max_ejection_s: float = Field(300.0, gt=0, le=86_400)
    half_open_max_trials: int = Field(3, ge=1, le=1000)


class ApprovalLearningConfig(_Model):
    """Approval per (channel, segment), learnt from finished recharges: a slow tally
    (``half_life_s``) and a fast one (``fast_half_life_s``) that takes over when the two
    differ by more than ``change_z`` standard errors; at most ``max_segments`` kept."""

    half_life_s: float = Field(120.0, gt=0, le=86_400)
    fast_half_life_s: float = Field(10.0, gt=0, le=3600)
    change_z: float = Field(3.0, gt=0, le=100)
    max_segments: int = Field(20_000, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _fast_is_faster(self) -> ApprovalLearningConfig:
        if self.fast_half_life_s >= self.half_life_s:
            raise ValueError("fast_half_life_s must be below half_life_s")
        return self


class FleetConfig(_Model):
    """Instances on one store share channel statistics: each publishes its own every
    ``interval_s`` and reads the others' no older than ``max_age_s``."""

    enabled: bool = True
    interval_s: float = Field(2.0, gt=0, le=3600)
    max_age_s: float = Field(30.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _age_covers_interval(self) -> FleetConfig:
        if self.max_age_s < 2 * self.interval_s:
            raise ValueError("max_age_s must be at least twice interval_s (else a live instance looks gone)")
        return self


class HealthConfig(_Model):
    probe_interval_s: float = Field(2.0, gt=0, le=3600)
    probe_timeout_ms: int = Field(1000, gt=0, le=60_000)
    breaker: BreakerConfig = BreakerConfig()
    approval: ApprovalLearningConfig = ApprovalLearningConfig()
    fleet: FleetConfig = FleetConfig()


def _float_to_decimal(value: object) -> object:
    # YAML hands us floats; repr() gives the shortest text that round-trips, so
    # 0.1404 becomes Decimal("0.1404") and not 0.14039999999999999...
    return Decimal(repr(value)) if isinstance(value, float) else value


# A Decimal that YAML may write as a float, kept exact (no binary fraction leaks in).
ExactDecimal = Annotated[Decimal, BeforeValidator(_float_to_decimal)]
Percent = Annotated[ExactDecimal, Field(ge=0, le=100)]


class RateSourceConfig(_Model):
    """A live FX source: GET ``url`` every ``refresh_s``; a currency whose rate is older
    than ``max_age_s`` is stale and refused (503 ``rates_stale``) until a refresh lands."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    refresh_s: float = Field(60.0, gt=0, le=86_400)
    max_age_s: float = Field(300.0, gt=0, le=7 * 86_400)

    @model_validator(mode="after")
    def _age_covers_refresh(self) -> RateSourceConfig:
        if self.max_age_s < self.refresh_s:
            raise ValueError("max_age_s must be >= refresh_s (else every rate goes stale between refreshes)")
        return self


class DenominationConfig(_Model):
    """Per-recharge limits, in whole units of ``currency`` (5 to 2,000 CNY-equivalent),
    applied to every currency through the rates."""

    currency: CurrencyCode = "CNY"
    min: ExactDecimal = Field(Decimal(5), gt=0)
    max: ExactDecimal = Field(Decimal(2000), gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DenominationConfig:
        _check_currency(self.currency)
        if self.max < self.min:
            raise ValueError("max must be >= min")
        return self


class FirstRechargeConfig(_Model):
    enabled: bool = True
    bonus_percent: Percent = Decimal(15)


class TierConfig(_Model):
    """A membership tier: users whose lifetime spend (base-currency units, before this
    recharge) is at least ``min_lifetime`` get ``bonus_percent``."""

    min_lifetime: ExactDecimal = Field(ge=0)
    bonus_percent: Percent


class MonthlyConfig(_Model):
    """Frequency cashback: a user with MORE THAN ``after_recharges`` succeeded recharges
    this calendar month (UTC) before this one gets ``bonus_percent``."""

    enabled: bool = True
    after_recharges: int = Field(5, ge=0, le=10_000)
    bonus_percent: Percent = Decimal(8)


class PromotionsConfig(_Model):
    # best_of: the single largest promotion; additive: their sum. Both capped.
    stacking: Literal["best_of", "additive"] = "best_of"
    cap_percent: Percent = Decimal(25)
    first_recharge: FirstRechargeConfig = FirstRechargeConfig()
    tiers: list[TierConfig] = Field(default_factory=list, max_length=50)
    monthly: MonthlyConfig = MonthlyConfig()

    @field_validator("tiers")
    @classmethod
    def _increasing(cls, tiers: list[TierConfig]) -> list[TierConfig]:
        for lower, upper in zip(tiers, tiers[1:]):
            if upper.min_lifetime <= lower.min_lifetime:
                raise ValueError("tiers must be in strictly increasing order of min_lifetime")
        return tiers


class PricingConfig(_Model):
    base_currency: CurrencyCode = "USD"
    coins_per_unit: ExactDecimal = Field(Decimal(70), gt=0)
    rates: dict[CurrencyCode, ExactDecimal] = Field(default_factory=dict)
    # Without a source the config rates are used as they are and never go stale.
    rate_source: RateSourceConfig | None = None
    denomination: DenominationConfig = DenominationConfig()
    quote_ttl_s: float = Field(300.0, gt=0, le=86_400)
    # A quote is refused (409 quote_expired) once the rate moved by this fraction or more.
    max_rate_drift: ExactDecimal = Field(Decimal("0.003"), gt=0, lt=1)
    # Bounds nothing (docs/history.md#quote-book); accepted so configs that set it still
    # load. Quotes live in the journal, purged a quote_ttl_s after expiry.
    max_quotes: int = Field(100_000, ge=1, le=10_000_000)
    promotions: PromotionsConfig = PromotionsConfig()

    @field_validator("rates")
    @classmethod
    def _positive_known(cls, rates: dict[str, Decimal]) -> dict[str, Decimal]:
        for code, rate in rates.items():
            _check_currency(code)
            if not rate.is_finite() or rate <= 0:
                raise ValueError(f"rate for {code} must be > 0")
        return rates

    @model_validator(mode="after")
    def _base_has_rate(self) -> PricingConfig:
        _check_currency(self.base_currency)
        limit = self.denomination.currency
        # With no rates at all only the base currency is sold; the limits then apply
        # only if they are written in the base currency.
        if self.rates and self.rate(limit) is None:
            raise ValueError(f"denomination.currency {limit} has no rate in pricing.rates")
        return self

    def rate(self, currency: str) -> Decimal | None:
        """Base-currency units per one unit of ``currency``; the base itself is 1."""
        if currency == self.base_currency:
            return Decimal(1)
        return self.rates.get(currency)


Action = Literal["block", "challenge", "review"]
RiskScore = Annotated[float, Field(gt=0, le=1)]


class VelocityRule(_Model):
    """At most ``max_count`` recharges, or at most ``max_amount_base`` base-currency
    units, per ``key`` within the sliding ``window_s``; past it, ``action``."""

    name: Name
    key: Literal["user", "instrument"]
    window_s: float = Field(gt=0, le=31 * 86_400)
    max_count: int | None = Field(None, ge=1, le=100_000)
    max_amount_base: ExactDecimal | None = Field(None, gt=0)
    action: Action = "block"
    # What it adds to the recharge's risk score when it fires (None: by its action).
    score: RiskScore | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> VelocityRule:
        if (self.max_count is None) == (self.max_amount_base is None):
            raise ValueError("give exactly one of max_count or max_amount_base")
        return self


class BlocklistConfig(_Model):
    users: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(default_factory=list)
    # Instrument tokens, or masked account numbers as stored (first 6 / last 4).
    instruments: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(default_factory=list)
    countries: list[CountryCode] = Field(default_factory=list)


class HistoryRuleConfig(_Model):
    """An amount above ``multiple`` x the user's own average, once the user has at least
    ``min_prior`` succeeded recharges, gets ``action``."""

    enabled: bool = True
    multiple: ExactDecimal = Field(Decimal(10), gt=1)
    min_prior: int = Field(3, ge=1, le=100_000)
    action: Action = "review"
    score: RiskScore | None = None


ArtefactRef = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f]+$")]


class RiskModelConfig(_Model):
    """The behaviour model (docs/risk.md): its score (P(fraud), 0..1) challenges a
    recharge at ``challenge_at`` and blocks it at ``block_at``; ``shadow``, when set,
    scores every recharge too and is logged, never acted on."""

    # An artefact's name (a file in orchestrator/risk_models/) or a path to a .json file.
    artefact: ArtefactRef
    challenge_at: RiskScore = 0.5
    block_at: RiskScore = 0.95
    shadow: ArtefactRef | None = None
    # False: score, record and explain every recharge, but act on the rules alone (a first
    # rollout, or a load test whose traffic is not meant to look human).
    enforce: bool = True
    # Memory bounds of the feature state (least recently seen dropped first).
    max_users: int = Field(1_000_000, ge=2, le=20_000_000)
    max_instruments: int = Field(1_000_000, ge=2, le=20_000_000)
    max_devices: int = Field(500_000, ge=2, le=20_000_000)

    @model_validator(mode="after")
    def _ordered(self) -> RiskModelConfig:
        if self.block_at <= self.challenge_at:
            raise ValueError("block_at must be above challenge_at")
        return self


class RiskConfig(_Model):
    enabled: bool = True
    # The behaviour model, combined with the rules (None: the rules alone).
    model: RiskModelConfig | None = None
    # Per recharge, in base-currency units; above it the recharge is blocked.
    max_amount_base: ExactDecimal | None = Field(None, gt=0)
    # Per recharge, in base-currency units; above it the payer must pass a step-up.
    challenge_amount_base: ExactDecimal | None = Field(None, gt=0)
    # The risk score (0..1, from the rules that fired) at which a recharge is challenged
    # (3-D Secure, SPEC 22) or blocked; None: only rules whose action says so.
    challenge_score: RiskScore | None = None
    block_score: RiskScore | None = None
    velocity: list[VelocityRule] = Field(default_factory=list, max_length=50)
    blocklist: BlocklistConfig = BlocklistConfig()
    luhn: bool = True
    history: HistoryRuleConfig = HistoryRuleConfig()
    # Memory bounds: users/instruments tracked (least recently seen dropped first) and
    # events kept per key.
    max_keys: int = Field(100_000, ge=1, le=10_000_000)
    max_events_per_key: int = Field(256, ge=1, le=100_000)

    @model_validator(mode="after")
    def _consistent(self) -> RiskConfig:
        names = [rule.name for rule in self.velocity]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate velocity rule name(s): {', '.join(dupes)}")
        counts = [rule.max_count for rule in self.velocity if rule.max_count is not None]
        if counts and self.max_events_per_key < max(counts):
            raise ValueError(f"max_events_per_key must be >= the largest max_count ({max(counts)})")
        if (self.challenge_score is not None and self.block_score is not None
                and self.block_score <= self.challenge_score):
            raise ValueError("block_score must be above challenge_score")
        return self


class RateLimit(_Model):
    rate_per_s: float = Field(gt=0, le=1_000_000)
    burst: int = Field(gt=0, le=10_000_000)


class LimitsConfig(_Model):
    """Token buckets, checked before any work: over the limit is 429 with Retry-After."""

    per_client: RateLimit = RateLimit(rate_per_s=5000, burst=10000)
    per_user: RateLimit = RateLimit(rate_per_s=2, burst=10)
    max_users_tracked: int = Field(100_000, ge=1, le=10_000_000)


class LoggingConfig(_Model):
    # Share of succeeded recharges logged at info, as the line costs more than their bookkeeping
    # (docs/performance.md#success-logging); failures and anything unusual are always logged.
    success_sample: float = Field(0.01, ge=0, le=1)


class PoolConfig(_Model):
    """A prefunded pool of coins (SPEC 20): the credits of users in ``countries`` draw on it."""

    name: Name
    countries: Annotated[list[CountryCode], Field(min_length=1)]
    target_coins: int = Field(0, ge=0, le=10**15)
    low_water_coins: int = Field(0, ge=0, le=10**15)


class ReconciliationConfig(_Model):
    """Settlement reconciliation (SPEC 21): every channel's report of yesterday, daily at
    ``schedule_utc``; a fee more than ``fee_tolerance_minor`` off the configured one is a
    discrepancy; the store is read in pages of ``page_size``."""

    enabled: bool = True
    schedule_utc: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] = "02:00"
    fee_tolerance_minor: int = Field(0, ge=0, le=10**9)
    page_size: int = Field(5000, ge=100, le=100_000)
    # Days the schedule looks back for a day not reconciled (missed, or its run failed).
    catch_up_days: int = Field(3, ge=1, le=31)
    retry_failed_after_s: float = Field(3600.0, gt=0, le=7 * 86_400)
    # A run still running after this long was interrupted (its instance died): failed, cleaned up.
    stale_run_s: float = Field(21_600.0, gt=0, le=7 * 86_400)
    # Our capture time lags the provider's: captures journaled this long after midnight are
    # looked for in the report of the day before.
    day_edge_grace_s: float = Field(300.0, ge=0, le=3600)


class InstantCreditConfig(_Model):
    """Instant credit on ``pending`` channels (SPEC 20): for a user with at least
    ``min_succeeded_recharges`` succeeded recharges, up to ``max_amount_minor_base``."""

    max_amount_minor_base: int = Field(gt=0, le=10**12)
    min_succeeded_recharges: int = Field(1, ge=1, le=10**6)


class SuggestionsConfig(_Model):
    """Amount suggestions (SPEC 22, ``GET /v1/users/{user_id}/suggestions``): what each
    process keeps to answer them (orchestrator/suggestions.py), and what it falls back to."""

    # Users whose summary is kept (the least recently asked for dropped first), and amounts
    # per user: a few hundred bytes each (bench/results/suggestions.md).
    max_users: int = Field(100_000, ge=1, le=10_000_000)
    max_amounts_per_user: int = Field(8, ge=1, le=64)
    # Recharges read from the journal for a user this process does not know yet.
    history_limit: int = Field(200, ge=1, le=10_000)
    # A user's summary older than this is read again on their next request, so a worker
    # catches up with the recharges other workers saw succeed.
    refresh_s: float = Field(300.0, gt=0, le=7 * 86_400)
    # How fast a user's amounts lose weight with time (each later recharge also takes some).
    half_life_days: float = Field(90.0, gt=0, le=3650)
    # A country's amounts: their half-life, and the (decayed) recharges needed to use them.
    cohort_half_life_days: float = Field(30.0, gt=0, le=3650)
    cohort_min_recharges: float = Field(20.0, ge=1, le=1_000_000)
    # Per currency, the amounts (minor units) offered when nothing is known of the user or
    # their country; a currency without any gets round amounts from its denomination minimum.
    defaults: dict[CurrencyCode, Annotated[list[Annotated[int, Field(gt=0, le=10**12)]],
                                           Field(min_length=1, max_length=10)]] = Field(default_factory=dict)

    @field_validator("defaults")
    @classmethod
    def _known_currencies(cls, defaults: dict[str, list[int]]) -> dict[str, list[int]]:
        for code in defaults:
            _check_currency(code)
        return defaults


class Config(_Model):
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    storage: StorageConfig = StorageConfig()
    clients: list[ClientConfig] = Field(default_factory=list)
    channels: list[ChannelConfig] = Field(default_factory=list)
    routing: RoutingConfig = RoutingConfig()
    health: HealthConfig = HealthConfig()
    pricing: PricingConfig = PricingConfig()
    risk: RiskConfig = RiskConfig()
    limits: LimitsConfig = LimitsConfig()
    refunds: RefundsConfig = RefundsConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    pools: list[PoolConfig] = Field(default_factory=list, max_length=200)
    pool_rebalance_interval_s: float = Field(1800.0, gt=0, le=7 * 86_400)
    # SPEC 20's ``pools.instant_credit``: ``pools`` is the list of pools, so it sits beside it.
    pool_instant_credit: InstantCreditConfig | None = None
    reconciliation: ReconciliationConfig = ReconciliationConfig()
    templates: TemplatesConfig = TemplatesConfig()
    suggestions: SuggestionsConfig = SuggestionsConfig()

    def pool_of(self, country: str) -> str | None:
        return next((p.name for p in self.pools if country in p.countries), None)

    def channel(self, name: str) -> ChannelConfig | None:
        return next((c for c in self.channels if c.name == name), None)


def timing_errors(cfg: Config) -> list[tuple[str, str]]:
    """Settings valid alone that cannot work together: a lease the renewal cannot keep,
    or one shorter than a provider call it must outlast."""
    errors: list[tuple[str, str]] = []
    s = cfg.storage
    if s.lease_renew_s is not None and s.lease_renew_s > s.lease_s / 2:
        errors.append(("storage.lease_renew_s", f"must be at most half of storage.lease_s ({s.lease_s:g} s): "
                                                "one lost renewal must not lose the lease"))
    for i, ch in enumerate(cfg.channels):
        if ch.timeout_ms / 1000 >= s.lease_s:
            errors.append((f"channels[{i}].timeout_ms", f"must be shorter than storage.lease_s ({s.lease_s:g} s): "
                                                       "a lease must outlast the provider calls made under it"))
    return errors


def reference_errors(doc: Any) -> list[tuple[str, str]]:
    """Errors that need the whole document: duplicates and dangling names. Works on the
    raw document, defensively, so they are reported beside field errors, not after."""
    errors: list[tuple[str, str]] = []
    if not isinstance(doc, dict):
        return errors
    pricing = doc.get("pricing") if isinstance(doc.get("pricing"), dict) else {}
    rates = pricing.get("rates") if isinstance(pricing.get("rates"), dict) else {}
    base = pricing.get("base_currency", "USD")

    def has_rate(code: object) -> bool:
        return code == base or code in rates

    seen: dict[str, int] = {}
    for i, ch in enumerate(_items(doc.get("channels"))):
        name = ch.get("name")
        if isinstance(name, str):
            if name in seen:
                errors.append((f"channels[{i}].name", f"duplicate channel name {name!r} (also channels[{seen[name]}])"))
            seen.setdefault(name, i)
        for j, cur in enumerate(ch.get("currencies") or []):
            if isinstance(cur, str) and is_known(cur) and not has_rate(cur):
                errors.append((f"channels[{i}].currencies[{j}]", f"currency {cur} has no rate in pricing.rates"))
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    for i, cl in enumerate(_items(doc.get("clients"))):
        name, key = cl.get("name"), cl.get("key_sha256")
        if isinstance(name, str) and name in names:
            errors.append((f"clients[{i}].name", f"duplicate client name {name!r}"))
        if isinstance(key, str) and key in keys:
            errors.append((f"clients[{i}].key_sha256", f"same key as clients[{keys[key]}]"))
        if isinstance(name, str):
            names.setdefault(name, i)
        if isinstance(key, str):
            keys.setdefault(key, i)
    pool_names: dict[str, int] = {}
    pool_countries: dict[str, int] = {}
    for i, pool in enumerate(_items(doc.get("pools"))):
        name = pool.get("name")
        if isinstance(name, str):
            if name in pool_names:
                errors.append((f"pools[{i}].name", f"duplicate pool name {name!r} (also pools[{pool_names[name]}])"))
            pool_names.setdefault(name, i)
        for j, country in enumerate(pool.get("countries") or []):
            if isinstance(country, str) and country in pool_countries:
                errors.append((f"pools[{i}].countries[{j}]",
                               f"{country} is served by pools[{pool_countries[country]}] already"))
            if isinstance(country, str):
                pool_countries.setdefault(country, i)
    routing = doc.get("routing") if isinstance(doc.get("routing"), dict) else {}
    for i, rule in enumerate(_items(routing.get("rules"))):
        for j, name in enumerate(rule.get("channels") or []):
            if isinstance(name, str) and name not in seen:
                errors.append((f"routing.rules[{i}].channels[{j}]", f"unknown channel {name!r}"))
        match = rule.get("match") if isinstance(rule.get("match"), dict) else {}
        cur = match.get("currency")
        if isinstance(cur, str) and is_known(cur) and not has_rate(cur):
            errors.append((f"routing.rules[{i}].match.currency", f"currency {cur} has no rate in pricing.rates"))
        lo, hi = match.get("min_amount_minor"), match.get("max_amount_minor")
        if isinstance(lo, int) and isinstance(hi, int) and hi < lo:
            errors.append((f"routing.rules[{i}].match.max_amount_minor", "must be >= min_amount_minor"))
    return errors


def _items(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [v if isinstance(v, dict) else {} for v in value]
