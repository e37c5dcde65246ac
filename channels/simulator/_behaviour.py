"""A simulated channel's behaviour: what its provider does with each request.

Every rate is a probability per request, drawn from the channel's own seeded RNG, so a
run is repeatable. Behaviours change live through the control API; a partial update is
validated whole before it is applied (a bad field changes nothing).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["KIND_DEFAULTS", "Behaviour", "BehaviourError", "OUTAGE_MODES"]

OUTAGE_MODES = ("refuse", "hang", "reset")
"""How a channel in outage answers: ``refuse`` answers 503 at once (the provider's edge
says no: nothing processed); ``hang`` never answers (the client times out); ``reset``
drops the connection without an answer."""


class BehaviourError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


_RATES = (
    "decline_rate", "not_processed_rate", "timeout_before_capture_rate", "timeout_after_capture_rate",
    "reset_rate", "error_500_after_capture_rate", "pending_rate", "duplicate_webhook_rate",
    "out_of_order_webhook_rate", "webhook_drop_rate", "pending_decline_rate",
)


@dataclass(frozen=True, slots=True)
class Behaviour:
    latency_ms: float = 28.0
    latency_jitter_ms: float = 4.0  # standard deviation; the draw is clipped at 0
    latency_multiplier: float = 1.0  # a brownout: x20 makes a 28 ms channel answer in 560 ms
    ping_latency_ms: float = 2.0
    decline_rate: float = 0.0
    decline_codes: dict[str, float] = field(default_factory=lambda: {"insufficient_funds": 1.0})
    not_processed_rate: float = 0.0
    timeout_before_capture_rate: float = 0.0
    timeout_after_capture_rate: float = 0.0
    reset_rate: float = 0.0
    error_500_after_capture_rate: float = 0.0
    pending_rate: float = 0.0
    pending_decline_rate: float = 0.0  # of pending payments, the share that end declined
    webhook_delay_ms: float = 1000.0
    duplicate_webhook_rate: float = 0.0
    out_of_order_webhook_rate: float = 0.0
    webhook_drop_rate: float = 0.0
    hang_ms: float = 30_000.0  # how long a "timeout" stalls before the connection is closed
    outage: bool = False
    outage_mode: str = "refuse"

    def validate(self) -> Behaviour:
        for name in _RATES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise BehaviourError(name, "must be a number from 0 to 1")
        for name in ("latency_ms", "latency_jitter_ms", "ping_latency_ms", "webhook_delay_ms", "hang_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 600_000:
                raise BehaviourError(name, "must be a number of milliseconds from 0 to 600000")
        if not isinstance(self.latency_multiplier, (int, float)) or not 0 < self.latency_multiplier <= 1000:
            raise BehaviourError("latency_multiplier", "must be > 0 and <= 1000")
        if not isinstance(self.outage, bool):
            raise BehaviourError("outage", "must be true or false")
        if self.outage_mode not in OUTAGE_MODES:
            raise BehaviourError("outage_mode", f"must be one of {list(OUTAGE_MODES)}")
        codes = self.decline_codes
        if not isinstance(codes, dict) or not codes or not all(
            isinstance(k, str) and k and isinstance(v, (int, float)) and v > 0 for k, v in codes.items()
        ):
            raise BehaviourError("decline_codes", "must map decline codes to positive weights")
        unknown = sum(getattr(self, n) for n in (
            "not_processed_rate", "timeout_before_capture_rate", "timeout_after_capture_rate", "reset_rate",
            "error_500_after_capture_rate", "decline_rate", "pending_rate"))
        if unknown > 1 + 1e-9:
            raise BehaviourError("rates", "the per-request outcome rates must add up to at most 1")
        return self

    def updated(self, changes: Any) -> Behaviour:
        """A new behaviour with ``changes`` applied, validated whole."""
        if not isinstance(changes, dict):
            raise BehaviourError("body", "must be a JSON object")
        names = {f.name for f in fields(self)}
        for key in changes:
            if key not in names:
                raise BehaviourError(key, "unknown behaviour field")
        try:
            return replace(self, **changes).validate()
        except TypeError as exc:  # pragma: no cover - replace() refuses odd keys already
            raise BehaviourError("body", str(exc)) from None

    def latency_s(self, rng: random.Random) -> float:
        ms = max(0.0, rng.gauss(self.latency_ms, self.latency_jitter_ms)) * self.latency_multiplier
        return ms / 1000

    def decline_code(self, rng: random.Random) -> str:
        codes = list(self.decline_codes)
        return rng.choices(codes, weights=[self.decline_codes[c] for c in codes])[0]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in out.items()}


KIND_DEFAULTS = {
    "direct_api": Behaviour(latency_ms=28, latency_jitter_ms=4, ping_latency_ms=2),
    "digital_currency": Behaviour(latency_ms=1200, latency_jitter_ms=150, ping_latency_ms=20, pending_rate=0.2,
                                  webhook_delay_ms=1500),
    "bank": Behaviour(latency_ms=4800, latency_jitter_ms=500, ping_latency_ms=40, pending_rate=0.3,
                      webhook_delay_ms=3000),
}
