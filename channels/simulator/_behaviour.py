"""A simulated channel's behaviour: what its provider does with each request.

Every rate is a probability per new payment, drawn from the channel's own seeded RNG, so
a run with the same seed and the same request order is repeatable. A behaviour changes
live through the control API; a partial update is validated whole before it is applied,
so a bad field changes nothing.

A new payment's fate is one draw over these rates, in this order (their sum is at most 1;
the rest is a plain capture):

    not_processed            429 or 503, nothing recorded
    timeout_before_capture   stall past the client's timeout, nothing recorded
    reset_before_capture     drop the connection (TCP reset), nothing recorded
    timeout_after_capture    record the capture, then stall past the client's timeout
    reset                    record the capture, then drop the connection (TCP reset)
    error_500_after_capture  record the capture, then answer 500
    decline                  record a decline with a weighted code from ``decline_codes``
    pending                  record it pending; after ``webhook_delay_ms`` it becomes captured
                             (or declined, ``pending_decline_rate``) and a signed webhook goes out
    late_processing          keep working on it for ``late_processing_ms`` whatever the client
                             does (it has usually given up): meanwhile an inquiry finds nothing
                             (404) and a void leaves a tombstone; then it is captured, unless a
                             tombstone is there, and the answer goes to whoever still listens

Approval by segment (``segments``, ``_segments.py``): a new charge that matches an entry
(its issuer, BIN prefix, amount range, currency, method) meets that entry's
``decline_rate`` and ``decline_codes`` in place of the channel's, for its fate above and,
if it goes pending and then declines, its code; the first entry that matches wins, no
match leaves the channel's. Matching draws nothing: the draws are the same ones, only the
decline's share of them moves.

A void of a reference the provider has not seen answers ``voided`` and keeps a tombstone,
so a charge with that reference arriving later is refused as voided (SPEC 6).

Step-up (3-D Secure, SPEC 6 and 22). A charge may carry ``"three_ds": "required"`` or
``"if_available"`` (absent or null: no preference):

    three_ds                 whether this provider supports step-up (default false). Without
                             it, a charge asking "required" is declined ``three_ds_not_supported``
                             at once, before the fate draw, drawing nothing
    requires_action_rate     of new payments not asking "required", the share the provider
                             challenges on its own (default 0; only with ``three_ds``)
    action_ttl_s             a challenge not completed within this many seconds of the
                             payment's creation is ``expired``, never charged (default 600)
    payer_complete_rate      the automatic payer (load tests, the demo): the share of challenges
    payer_abandon_rate       it completes (captured) and abandons (declined ``action_abandoned``);
                             their sum is at most 1, the rest never acts and expires (default 0)
    payer_delay_ms           its mean delay before it acts, +-25% (default 3000)

Step-up composes with the fate: the fate is drawn first, exactly as above, and a step-up
replaces the capture of a payment the fate would record captured or pending (capture,
pending, late_processing once it lands, and the *_after_capture fates and reset, which
still lose their answer the same way: an inquiry then finds ``requires_action``). The
other fates (not processed, lost before capture, decline) happen as drawn, without a
challenge. A payment in ``requires_action`` has charged nothing; the payer completes it
(``captured``), abandons it, or lets it expire, and a signed webhook tells the outcome.
``requires_action_rate`` is drawn, right after the fate, only when ``three_ds`` is on,
the rate is above 0 and the payment would be challenged by it: a channel that does not
use it draws exactly what it drew before step-up existed. Each challenge then draws the
automatic payer's choice (always, even at rates 0) and, when it acts, its delay.

A new refund (one with a body, ``_app.py``) draws twice, both draws always made:

    refund_pending_rate      answer ``pending``; after ``webhook_delay_ms`` it settles and a
                             signed webhook goes out
    refund_failure_rate      the refund fails (``failed``, nothing refunded): at once, or when a
                             pending one settles

A refund without a body (the whole remaining payment, as before refunds were partial)
draws nothing and is refunded at once.

The settlement report (``GET /{ch}/settlements?date=``) draws nothing either:

    settlement_fee_fixed_minor   each item's fee: this many minor units (an integer >= 0) ...
    settlement_fee_percent       ... plus this percent of its amount (0 to 100), rounded half up
    settlement_report_fault      null: the report as it is; "malformed": the body is not JSON
                                 (it ends in garbage); "truncated": the connection is closed
                                 mid-array; "unavailable": 503 and no report
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from decimal import Decimal
from functools import cached_property
from typing import Any

from channels.simulator._segments import Segment, SegmentError, codes_ok, parse_segments

__all__ = ["KIND_DEFAULTS", "LATENCY_DISTRIBUTIONS", "OUTAGE_MODES", "REPORT_FAULTS", "Behaviour", "BehaviourError",
           "Fate"]

OUTAGE_MODES = ("refuse", "hang", "reset")
"""How a channel in outage answers every request, ping included: ``refuse`` answers 503
at once (what a provider's edge says when the service behind it is down: nothing was
processed; one port serves every channel, so a real TCP refusal cannot be per channel);
``hang`` never answers (the client times out); ``reset`` drops the connection at once."""

REPORT_FAULTS = ("malformed", "truncated", "unavailable")
"""How the settlement report fails when ``settlement_report_fault`` names one (null: it
does not)."""

LATENCY_DISTRIBUTIONS = ("lognormal", "normal", "fixed")
"""``latency_ms`` is the mean and ``latency_jitter_ms`` the standard deviation of either
random distribution; lognormal has the long right tail real providers show."""


class Fate(enum.StrEnum):
    NOT_PROCESSED = "not_processed"
    TIMEOUT_BEFORE_CAPTURE = "timeout_before_capture"
    RESET_BEFORE_CAPTURE = "reset_before_capture"
    TIMEOUT_AFTER_CAPTURE = "timeout_after_capture"
    RESET = "reset"
    ERROR_500_AFTER_CAPTURE = "error_500_after_capture"
    DECLINE = "decline"
    PENDING = "pending"
    LATE_PROCESSING = "late_processing"
    CAPTURE = "capture"


_FATE_ORDER = tuple(f for f in Fate if f is not Fate.CAPTURE)
_FATE_RATES = tuple(f"{f.value}_rate" for f in _FATE_ORDER)
_FATES = (*_FATE_ORDER, Fate.CAPTURE)  # indexed by where the draw falls among the edges
_OTHER_RATES = ("pending_decline_rate", "duplicate_webhook_rate", "out_of_order_webhook_rate", "webhook_drop_rate",
                "refund_pending_rate", "refund_failure_rate", "requires_action_rate", "payer_complete_rate",
                "payer_abandon_rate")
_DURATIONS_MS = ("latency_ms", "latency_jitter_ms", "ping_latency_ms", "webhook_delay_ms", "webhook_retry_ms",
                 "hang_ms", "late_processing_ms", "payer_delay_ms")
# The fates that record a payment captured or pending: a step-up takes the capture's place.
_STEP_UP_FATES = frozenset({Fate.CAPTURE, Fate.PENDING, Fate.LATE_PROCESSING, Fate.TIMEOUT_AFTER_CAPTURE, Fate.RESET,
                            Fate.ERROR_500_AFTER_CAPTURE})
_MAX_ACTION_TTL_S = 86_400.0
_MAX_MS = 600_000
_MAX_FIXED_FEE_MINOR = 10**12


class BehaviourError(ValueError):
    """A bad behaviour field; ``field`` is its name (the control API's 422 ``field``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)  # no slots: the cached properties below live in the instance dict
class Behaviour:
    latency_ms: float = 28.0
    latency_jitter_ms: float = 4.0
    latency_distribution: str = "lognormal"
    latency_multiplier: float = 1.0  # a brownout: x20 makes a 28 ms channel answer in 560 ms
    ping_latency_ms: float = 2.0
    decline_rate: float = 0.0
    decline_codes: dict[str, float] = field(default_factory=lambda: {"insufficient_funds": 1.0})
    not_processed_rate: float = 0.0
    timeout_before_capture_rate: float = 0.0
    reset_before_capture_rate: float = 0.0
    timeout_after_capture_rate: float = 0.0
    reset_rate: float = 0.0
    error_500_after_capture_rate: float = 0.0
    pending_rate: float = 0.0
    pending_decline_rate: float = 0.0  # of pending payments, the share that end declined
    late_processing_rate: float = 0.0
    late_processing_ms: float = 3000.0  # how long after the charge arrives a late one lands
    webhook_delay_ms: float = 1000.0
    duplicate_webhook_rate: float = 0.0
    out_of_order_webhook_rate: float = 0.0
    webhook_drop_rate: float = 0.0
    webhook_max_attempts: int = 6
    webhook_retry_ms: float = 200.0  # the first retry's backoff; it doubles each time
    refund_pending_rate: float = 0.0  # of refunds, the share answered pending and settled later
    refund_failure_rate: float = 0.0  # of refunds, the share that fail (pending or not)
    hang_ms: float = 30_000.0  # a "timeout" stalls this long, or until the client hangs up
    outage: bool = False
    outage_mode: str = "refuse"
    settlement_fee_fixed_minor: int = 0  # the report's fee per item: fixed part ...
    settlement_fee_percent: float = 0.0  # ... plus this percent of the amount, rounded half up
    settlement_report_fault: str | None = None  # None or one of REPORT_FAULTS
    three_ds: bool = False  # supports step-up (module doc)
    requires_action_rate: float = 0.0  # of payments not asking "required", the share challenged anyway
    action_ttl_s: float = 600.0  # a challenge not completed within this (from creation) expires
    payer_complete_rate: float = 0.0  # the automatic payer completes this share of challenges ...
    payer_abandon_rate: float = 0.0  # ... abandons this share, and lets the rest expire
    payer_delay_ms: float = 3000.0  # the automatic payer's mean delay before it acts (+-25%)
    segments: tuple[Segment, ...] = ()  # decline rates by segment (module doc); parsed by ``updated``

    # -- validation ---------------------------------------------------------------------

    def validate(self) -> Behaviour:
        """This behaviour, or ``BehaviourError`` naming the first bad field."""
        for name in _FATE_RATES + _OTHER_RATES:
            if not _is_number(value := getattr(self, name)) or not 0 <= value <= 1:
                raise BehaviourError(name, "must be a number from 0 to 1")
        for name in _DURATIONS_MS:
            if not _is_number(value := getattr(self, name)) or not 0 <= value <= _MAX_MS:
                raise BehaviourError(name, f"must be a number of milliseconds from 0 to {_MAX_MS}")
        if not _is_number(self.latency_multiplier) or not 0 < self.latency_multiplier <= 1000:
            raise BehaviourError("latency_multiplier", "must be a number > 0 and <= 1000")
        if self.latency_distribution not in LATENCY_DISTRIBUTIONS:
            raise BehaviourError("latency_distribution", f"must be one of {list(LATENCY_DISTRIBUTIONS)}")
        if not isinstance(self.outage, bool):
            raise BehaviourError("outage", "must be true or false")
        if self.outage_mode not in OUTAGE_MODES:
            raise BehaviourError("outage_mode", f"must be one of {list(OUTAGE_MODES)}")
        attempts = self.webhook_max_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 20:
            raise BehaviourError("webhook_max_attempts", "must be an integer from 1 to 20")
        self._validate_codes()
        self._validate_settlement()
        self._validate_step_up()
        if (total := sum(getattr(self, name) for name in _FATE_RATES)) > 1 + 1e-9:
            raise BehaviourError("rates", f"{' + '.join(_FATE_RATES)} must add up to at most 1, not {total:g}")
        self._validate_segments(total - self.decline_rate)
        return self

    def _validate_codes(self) -> None:
        if not codes_ok(self.decline_codes):
            raise BehaviourError("decline_codes", "must map decline codes to positive weights")

    def _validate_segments(self, other_fates: float) -> None:
        """Each entry is parsed (``updated`` parses what a request sends); its decline rate
        takes the channel's place among the fate rates, whose sum stays at most 1."""
        if not isinstance(self.segments, tuple) or not all(isinstance(s, Segment) for s in self.segments):
            raise BehaviourError("segments", "must be a list of {match, decline_rate, decline_codes} entries")
        for i, segment in enumerate(self.segments):
            if (total := other_fates + segment.decline_rate) > 1 + 1e-9:
                raise BehaviourError(f"segments[{i}].decline_rate", f"with the channel's other fate rates it must "
                                     f"add up to at most 1, not {total:g}")

    def _validate_settlement(self) -> None:
        fixed = self.settlement_fee_fixed_minor
        if not isinstance(fixed, int) or isinstance(fixed, bool) or not 0 <= fixed <= _MAX_FIXED_FEE_MINOR:
            raise BehaviourError("settlement_fee_fixed_minor", f"must be an integer from 0 to {_MAX_FIXED_FEE_MINOR}")
        if not _is_number(self.settlement_fee_percent) or not 0 <= self.settlement_fee_percent <= 100:
            raise BehaviourError("settlement_fee_percent", "must be a number from 0 to 100")
        if self.settlement_report_fault is not None and self.settlement_report_fault not in REPORT_FAULTS:
            raise BehaviourError("settlement_report_fault", f"must be null or one of {list(REPORT_FAULTS)}")

    def _validate_step_up(self) -> None:
        if not isinstance(self.three_ds, bool):
            raise BehaviourError("three_ds", "must be true or false")
        if not _is_number(self.action_ttl_s) or not 0 < self.action_ttl_s <= _MAX_ACTION_TTL_S:
            raise BehaviourError("action_ttl_s", f"must be a number of seconds > 0 and <= {_MAX_ACTION_TTL_S:g}")
        if (total := self.payer_complete_rate + self.payer_abandon_rate) > 1 + 1e-9:
            raise BehaviourError("payer_rates", f"payer_complete_rate + payer_abandon_rate must add up to at most 1, "
                                 f"not {total:g}")

    def updated(self, changes: Any) -> Behaviour:
        """A new behaviour with ``changes`` (a JSON object) applied, validated whole."""
        if not isinstance(changes, dict):
            raise BehaviourError("body", "must be a JSON object")
        known = {f.name for f in fields(self)}
        for key in changes:
            if key not in known:
                raise BehaviourError(str(key), "unknown behaviour field")
        if "segments" in changes:
            try:
                changes = {**changes, "segments": parse_segments(changes["segments"])}
            except SegmentError as exc:
                raise BehaviourError(exc.field, exc.message) from None
        return replace(self, **changes).validate()

    def to_json(self) -> dict[str, Any]:
        """As a config or control request writes it: ``updated(to_json())`` changes nothing."""
        return {**asdict(self), "segments": [s.to_json() for s in self.segments]}

    def for_charge(self, charge: dict[str, Any]) -> Behaviour:
        """The behaviour a new charge (its protocol-v1 body) meets: this one, or with the
        decline rate and codes of the first segment it matches (module doc)."""
        for segment, behaviour in self._segmented:
            if segment.match.holds(charge):
                return behaviour
        return self

    @cached_property
    def _segmented(self) -> tuple[tuple[Segment, Behaviour], ...]:
        """Each segment with the behaviour it makes, built once: a charge only picks one."""
        return tuple((s, replace(self, decline_rate=s.decline_rate, segments=(),
                                 decline_codes=self.decline_codes if s.decline_codes is None else s.decline_codes))
                     for s in self.segments)

    # -- draws (each from the channel's own RNG) ------------------------------------------

    # What draws need besides the RNG is cached per behaviour: a draw comes with every payment,
    # and a frozen behaviour never goes stale (docs/performance.md#simulator-draws).

    def latency_s(self, rng: random.Random) -> float:
        mean, sd = self.latency_ms, self.latency_jitter_ms
        if self.latency_distribution == "fixed" or sd == 0 or mean == 0:
            ms = mean
        elif self.latency_distribution == "normal":
            ms = max(0.0, rng.gauss(mean, sd))
        else:
            ms = rng.lognormvariate(*self._lognormal)
        return ms * self.latency_multiplier / 1000

    @cached_property
    def _lognormal(self) -> tuple[float, float]:
        """mu and sigma of the lognormal with mean ``latency_ms`` and sd ``latency_jitter_ms``."""
        sigma2 = math.log1p((self.latency_jitter_ms / self.latency_ms) ** 2)
        return math.log(self.latency_ms) - sigma2 / 2, math.sqrt(sigma2)

    def ping_latency_s(self) -> float:
        return self.ping_latency_ms * self.latency_multiplier / 1000

    def fate(self, rng: random.Random) -> Fate:
        """The first fate whose cumulative rate exceeds a uniform draw; capture past them all."""
        return _FATES[bisect.bisect_right(self._fate_edges, rng.random())]

    @cached_property
    def _fate_edges(self) -> tuple[float, ...]:
        """Where each fate's share of [0, 1) ends, in ``_FATE_ORDER`` (summed from 0.0 in that order)."""
        return tuple(itertools.accumulate((getattr(self, name) for name in _FATE_RATES), initial=0.0))[1:]

    def steps_up(self, fate: Fate, three_ds: str | None, rng: random.Random) -> bool:
        """Whether a new payment of ``fate``, asking ``three_ds`` ("required", "if_available"
        or None), is answered ``requires_action`` (module doc). Draws only when
        ``requires_action_rate`` decides it."""
        if not self.three_ds or fate not in _STEP_UP_FATES:
            return False
        if three_ds == "required":
            return True
        return self.requires_action_rate > 0 and rng.random() < self.requires_action_rate

    def payer(self, rng: random.Random) -> tuple[str | None, float]:
        """What the automatic payer does with a new challenge: ``"complete"``, ``"fail"``
        or None (never acts), and after how many seconds (``payer_delay_ms`` +-25%)."""
        draw = rng.random()
        if draw < self.payer_complete_rate:
            action = "complete"
        elif draw < self.payer_complete_rate + self.payer_abandon_rate:
            action = "fail"
        else:
            return None, 0.0
        return action, self.payer_delay_ms * (0.75 + rng.random() / 2) / 1000

    def decline_code(self, rng: random.Random) -> str:
        codes, cum_weights = self._decline_table
        return rng.choices(codes, cum_weights=cum_weights)[0]

    @cached_property
    def _decline_table(self) -> tuple[list[str], list[float]]:
        """The decline codes and their cumulative weights, as ``random.choices`` sums them."""
        return list(self.decline_codes), list(itertools.accumulate(self.decline_codes.values()))

    def webhook_delay_s(self, rng: random.Random) -> float:
        # A tenth of the delay as jitter, so many pending payments do not settle in lockstep.
        return max(0.0, rng.gauss(self.webhook_delay_ms, self.webhook_delay_ms / 10)) / 1000

    def settlement_fee(self, amount_minor: int) -> int:
        """The fee the report states for an item of ``amount_minor``: the fixed part plus
        the percent, rounded half up, in integers (a float would round 0.5 either way)."""
        num, den = self._fee_ratio
        return self.settlement_fee_fixed_minor + (2 * amount_minor * num + den) // (2 * den)

    @cached_property
    def _fee_ratio(self) -> tuple[int, int]:
        """``settlement_fee_percent / 100`` as an exact fraction of the number as written
        (1.1 is 11/1000, not the binary float's)."""
        num, den = Decimal(str(self.settlement_fee_percent)).as_integer_ratio()
        return num, den * 100

    def chance(self, rate_name: str, rng: random.Random) -> bool:
        """One Bernoulli draw for a webhook or settlement rate (drawn even at 0, so the
        RNG sequence does not depend on which rates are set)."""
        return rng.random() < getattr(self, rate_name)


KIND_DEFAULTS = {
    "direct_api": Behaviour(latency_ms=28, latency_jitter_ms=4, ping_latency_ms=2),
    "digital_currency": Behaviour(latency_ms=1200, latency_jitter_ms=150, ping_latency_ms=20, pending_rate=0.2,
                                  webhook_delay_ms=1500),
    "bank": Behaviour(latency_ms=4800, latency_jitter_ms=500, ping_latency_ms=40, pending_rate=0.3,
                      webhook_delay_ms=3000),
}
"""Behaviour by kind, matching the latencies of the systems the orchestrator replaces
(direct API ~28 ms, digital-currency settlement ~1.2 s, local bank ~4.8 s)."""
