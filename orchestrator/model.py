"""The recharge domain: statuses, recharges, attempts, trail entries and journal steps.

A ``Step`` is the unit the journal makes durable: everything one transition of the
state machine changes (the recharge row, one attempt row, the wallet credit, the trail
entries) commits together or not at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from channels import AttemptOutcome

__all__ = [
    "Attempt",
    "AttemptState",
    "Credit",
    "Recharge",
    "RechargeStatus",
    "Step",
    "TrailEntry",
    "TERMINAL",
    "OPEN_ATTEMPT_STATES",
]


class RechargeStatus(enum.StrEnum):
    PROCESSING = "processing"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"
    BLOCKED = "blocked"


TERMINAL = frozenset(
    {RechargeStatus.SUCCEEDED, RechargeStatus.DECLINED, RechargeStatus.FAILED, RechargeStatus.BLOCKED}
)


class AttemptState(enum.StrEnum):
    """An attempt's lifecycle. ``STARTED`` is written before the provider is called, so
    after a crash an attempt in that state may or may not have reached the provider."""

    STARTED = "started"
    CAPTURED = "captured"
    PENDING = "pending"
    DECLINED = "declined"
    NOT_PROCESSED = "not_processed"
    UNKNOWN = "unknown"
    VOID_REQUESTED = "void_requested"
    VOIDED = "voided"
    REFUND_REQUESTED = "refund_requested"
    REFUNDED = "refunded"


# Money may be held at the provider for an attempt in one of these states: nothing else
# may be tried until it is resolved.
OPEN_ATTEMPT_STATES = frozenset(
    {AttemptState.STARTED, AttemptState.PENDING, AttemptState.UNKNOWN, AttemptState.VOID_REQUESTED}
)


@dataclass(slots=True)
class Attempt:
    reference: str
    recharge_id: str
    seq: int
    channel: str
    state: AttemptState
    created_at: float
    updated_at: float
    provider_ref: str | None = None
    decline_code: str | None = None
    error: str | None = None
    latency_ms: float | None = None

    @property
    def outcome(self) -> str:
        """The spec's attempt outcome for the API (``unknown`` while unresolved)."""
        match self.state:
            case AttemptState.STARTED | AttemptState.VOID_REQUESTED:
                return AttemptOutcome.UNKNOWN.value
            case AttemptState.REFUND_REQUESTED:
                return AttemptOutcome.CAPTURED.value
            case _:
                return self.state.value

    def to_api(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "reference": self.reference,
            "outcome": self.outcome,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "decline_code": self.decline_code,
            "error": self.error,
        }


@dataclass(slots=True)
class Recharge:
    id: str
    client: str
    idempotency_key: str
    fingerprint: str
    user_id: str
    amount_minor: int
    currency: str
    country: str
    method: str
    instrument: dict[str, Any]
    metadata: dict[str, Any] | None
    coins: int
    bonus_coins: int
    status: RechargeStatus
    created_at: float
    updated_at: float
    deadline_at: float
    config_version: str
    channel: str | None = None
    decline_code: str | None = None
    reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def open_attempt(self) -> Attempt | None:
        if self.attempts and self.attempts[-1].state in OPEN_ATTEMPT_STATES:
            return self.attempts[-1]
        return None


@dataclass(frozen=True, slots=True)
class TrailEntry:
    recharge_id: str
    at: float
    event: str
    status: str | None = None
    reference: str | None = None
    channel: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Credit:
    recharge_id: str
    user_id: str
    coins: int
    at: float


@dataclass(frozen=True, slots=True)
class Step:
    """One durable transition. ``expect_status`` guards the recharge update: it applies
    only while the recharge is still in one of those statuses, so a webhook and the
    state machine racing on one recharge cannot both move it."""

    recharge_id: str
    at: float
    status: RechargeStatus | None = None
    expect_status: frozenset[RechargeStatus] | None = None
    channel: str | None = None
    decline_code: str | None = None
    reason: str | None = None
    attempt: Attempt | None = None
    attempt_is_new: bool = False
    # Optimistic guard on the attempt: it applies only while the stored attempt is in
    # one of these states (the state the writer last saw), so a webhook and the driver
    # never overwrite each other's news.
    expect_attempt: frozenset[AttemptState] | None = None
    credit: Credit | None = None
    # (channel, event_id) of the provider event this step applies: recorded in the same
    # transaction, so an event is applied at most once whatever arrives twice.
    event: tuple[str, str] | None = None
    trail: tuple[TrailEntry, ...] = ()
