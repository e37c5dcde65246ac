"""The recharge domain: statuses, recharges, attempts, trail entries and journal steps.

A ``Step`` is the unit the journal makes durable: everything one transition of the
state machine changes (the recharge row, one attempt row, the wallet credit, the trail
entries, the recharge's follow-up time) commits together or not at all.
``orchestrator.transitions`` makes every Step and is the one reducer that applies one
to a ``Recharge``.
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
    "FirstRecharge",
    "Recharge",
    "RechargeStatus",
    "Step",
    "TrailEntry",
    "TERMINAL",
    "OPEN_ATTEMPT_STATES",
    "KEEP",
    "Fence",
    "Dispute",
    "DisputeStatus",
    "Notice",
    "Refund",
    "RefundStatus",
    "refund_coins",
    "DEFAULT_POOL",
    "ISSUANCE",
    "Transfer",
    "pool_account",
    "wallet_account",
    "Settlement",
    "Discrepancy",
    "DiscrepancyKind",
    "ReconRun",
    "Template",
]


class RechargeStatus(enum.StrEnum):
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"  # the payer must pass a step-up at the provider
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
    REQUIRES_ACTION = "requires_action"  # the provider waits for the payer's step-up
    DECLINED = "declined"
    NOT_PROCESSED = "not_processed"
    UNKNOWN = "unknown"
    VOID_REQUESTED = "void_requested"
    VOIDED = "voided"
    REFUND_REQUESTED = "refund_requested"
    REFUNDED = "refunded"


class Settlement(enum.StrEnum):
    """Where the payment of an instantly credited recharge stands (SPEC 20): credited while
    the channel still settles it, then settled, or failed and its coins clawed back."""

    PENDING = "pending"
    SETTLED = "settled"
    FAILED = "failed"


# Money may be held at the provider for an attempt in one of these states: nothing else
# may be tried until it is resolved.
OPEN_ATTEMPT_STATES = frozenset(
    {AttemptState.STARTED, AttemptState.PENDING, AttemptState.REQUIRES_ACTION, AttemptState.UNKNOWN,
     AttemptState.VOID_REQUESTED}
)

Fence = tuple[str, int]
"""A lease as its holder knows it: (owner, token). The token grows whenever the lease
changes hands, so a write fenced with an old one is refused whatever the clocks say."""


class _Keep:
    """The follow-up time a step leaves as it was (most steps: no write at all)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


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
    # When this attempt, closed without a capture after an unknown outcome, is to be
    # inquired once more for a capture the provider made late (SPEC 7); None: never.
    late_check_at: float | None = None
    # A step-up (SPEC 22): where the payer completes it, and when we void it unfinished.
    # Kept after the attempt moves on: a void of such an attempt is the step-up expiring.
    action_url: str | None = None
    action_expires_at: float | None = None

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
    # Instant credit (SPEC 20): whether a ``pending`` answer may credit at once (decided at
    # creation from the user's history and the amount), and then how its payment settles.
    instant: bool = False
    settlement: Settlement | None = None
    # Risk challenged it (SPEC 22): only step-up channels, asked for ``three_ds: required``.
    step_up: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def open_attempt(self) -> Attempt | None:
        for a in self.attempts:
            if a.state in OPEN_ATTEMPT_STATES:
                return a
        return None

    def attempt(self, reference: str) -> Attempt | None:
        for a in self.attempts:
            if a.reference == reference:
                return a
        return None

    def deadline(self) -> float:
        """``deadline_at``, or later once a step-up began: the payer's window counts too."""
        d = self.deadline_at
        for a in self.attempts:
            if a.action_expires_at is not None and a.action_expires_at > d:
                d = a.action_expires_at
        return d

    def next_action(self) -> dict[str, str] | None:
        """What the payer must do while the recharge ``requires_action`` (SPEC 5, 22)."""
        if self.status is not RechargeStatus.REQUIRES_ACTION:
            return None
        for a in self.attempts:
            if a.state is AttemptState.REQUIRES_ACTION and a.action_url:
                return {"type": "redirect", "url": a.action_url}
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
    """The coins of a succeeded recharge, drawn from ``pool`` (the pool serving the user's
    country; the store falls back to the fullest pool when it is short, and None is the
    default pool of a config without pools)."""

    recharge_id: str
    user_id: str
    coins: int
    at: float
    pool: str | None = None


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
    # Optimistic guard: applies only while the stored attempt is in one of these states (as the
    # writer last saw it), so a webhook and the driver never overwrite each other's news.
    expect_attempt: frozenset[AttemptState] | None = None
    credit: Credit | None = None
    # (channel, event_id) of the provider event this step applies: recorded in the same
    # transaction, so an event is applied at most once whatever arrives twice.
    event: tuple[str, str] | None = None
    trail: tuple[TrailEntry, ...] = ()
    # When the recharge next needs background work (a refund, a late-capture check, an
    # attempt left open on a finished recharge): a time, None (nothing left) or KEEP.
    follow_up: Any = KEEP
    # With several drivers on one store: the writer's lease, checked in the store. A
    # step that records a capture goes unfenced: a capture is never dropped.
    lease: Fence | None = None
    # Notifications to the front service this change makes (SPEC 19), written to the
    # outbox in the same transaction, so a change is never made without its notice.
    notices: tuple[Notice, ...] = ()
    # An instantly credited payment settled (or failed): the recharge's new settlement, and
    # on failure the coins going back from the wallet to the pool the credit drew on.
    settlement: Settlement | None = None
    clawback: Credit | None = None

    @property
    def keeps_money(self) -> bool:
        """Whether this step records money the provider took (a credit, or a capture
        to refund): it must land whoever holds the lease. An instant credit of a payment
        still pending is no such news: only the lease holder makes it."""
        return (self.credit is not None and self.settlement is not Settlement.PENDING) or (
            self.attempt is not None and self.attempt.state in (AttemptState.CAPTURED, AttemptState.REFUND_REQUESTED))


@dataclass(frozen=True, slots=True)
class FirstRecharge:
    """A recharge priced with the first-recharge bonus, and its price without it (made by
    ``pricing.Price.first_recharge_claim``). The journal grants the bonus only if the user
    has no other running or succeeded recharge, checked in the creating transaction;
    otherwise it ``deny``s it."""

    bonus_without: int
    detail_without: dict[str, Any]

    def deny(self, recharge: Recharge, trail: TrailEntry) -> TrailEntry:
        recharge.bonus_coins = self.bonus_without
        return TrailEntry(trail.recharge_id, trail.at, trail.event, trail.status, trail.reference, trail.channel,
                          {**(trail.detail or {}), **self.detail_without, "first_recharge": "already claimed"})


# -- after the sale: refunds, disputes, notifications (SPEC 19) --------------------------------


class RefundStatus(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True)
class Refund:
    """A front service's refund of (part of) a succeeded recharge. Its coins leave the
    wallet when it is journaled, before the provider is asked; a failed refund gives them
    back. ``id`` is also the ``refund_reference`` the provider deduplicates on, and
    ``next_at`` is when the provider is to be asked (again) while it is pending."""

    id: str
    recharge_id: str
    client: str
    idempotency_key: str
    fingerprint: str
    user_id: str
    channel: str
    reference: str  # the captured attempt's: the payment the provider refunds
    amount_minor: int
    currency: str
    coins: int
    status: RefundStatus
    reason: str | None
    created_at: float
    updated_at: float
    error: str | None = None
    next_at: float | None = None
    tries: int = 0


class DisputeStatus(enum.StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Dispute:
    """A chargeback on a recharge. ``coins``: what it froze (open), gave back (won) or
    clawed back (lost): the recharge's coins not already refunded when it opened."""

    recharge_id: str
    user_id: str
    status: DisputeStatus
    coins: int
    opened_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Notice:
    """One event for a front service, as the outbox holds it until delivered. ``key``
    (the recharge) orders delivery: one client's events of one recharge in the order
    written; ``body`` is the
    exact JSON the client receives and the signature covers."""

    id: str
    client: str
    key: str
    type: str
    created_at: float
    body: str  # JSON text


def refund_coins(total_coins: int, amount_minor: int, recharge_minor: int, refunded_minor: int,
                 refunded_coins: int) -> int:
    """The coins a refund of ``amount_minor`` takes back, in proportion to the amount and
    counted on the refunds before it (not failed), so the refunds of a whole recharge
    take back exactly its coins and never more."""
    after = total_coins * (refunded_minor + amount_minor) // recharge_minor
    return max(0, min(after, total_coins) - refunded_coins)


# -- the double-entry ledger (SPEC 20) ---------------------------------------------------------

ISSUANCE = "issuance"  # where deposited coins come from: its balance is minus all coins issued
DEFAULT_POOL = "default"  # the pool of a config that names none


def pool_account(name: str) -> str:
    return f"pool:{name}"


def wallet_account(user_id: str) -> str:
    return f"wallet:{user_id}"


@dataclass(frozen=True, slots=True)
class Transfer:
    """``coins`` (> 0) move from ``debit`` to ``credit``; ``kind``: deposit, credit, refund,
    refund_reversal, clawback or rebalance. ``ref`` names what it belongs to besides the
    recharge (the refund, the deposit's reference); ``note`` says why a credit drew on
    another pool than the user's (``short:<pool>``). The ledger only ever appends them."""

    id: str
    debit: str
    credit: str
    coins: int
    kind: str
    at: float
    recharge_id: str | None = None
    ref: str | None = None
    note: str | None = None
    seq: int = 0


# -- settlement reconciliation (SPEC 21) -------------------------------------------------------


class DiscrepancyKind(enum.StrEnum):
    MISSING_IN_REPORT = "missing_in_report"  # we credited it, the provider did not settle it
    MISSING_IN_JOURNAL = "missing_in_journal"  # settled, a reference no attempt of this channel made
    ORPHAN_CAPTURE = "orphan_capture"  # settled, our attempt is not the recharge's kept capture
    AMOUNT_MISMATCH = "amount_mismatch"
    STATUS_MISMATCH = "status_mismatch"  # settled, while our attempt still waits to hear
    FEE_MISMATCH = "fee_mismatch"  # against the channel's configured fee


@dataclass(frozen=True, slots=True)
class ReconRun:
    """One reconciliation of a channel's settlement report for one day. ``trigger``:
    manual or schedule (one scheduled run per channel and day, whichever instance makes
    it); ``status``: running, completed or failed (with ``reason``); ``summary``: counts
    and amounts by class and currency, and the deviation rate."""

    id: str
    channel: str
    date: str
    trigger: str
    status: str
    started_at: float
    finished_at: float | None = None
    reason: str | None = None
    report_items: int = 0
    summary: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """What a run found about one reference of a day, with the evidence (``expected``: the
    journal's side, ``reported``: the provider's). Kept once per channel, day, reference
    and kind, however often the day is reconciled; ``status``: open (for a person),
    resolving (an automatic fix under way) or resolved."""

    reference: str
    kind: DiscrepancyKind
    recharge_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    expected: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None
    status: str = "open"
    resolution: str | None = None
    channel: str = ""
    date: str = ""
    run_id: str = ""
    seq: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


# -- recharge templates (SPEC 22) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A user's saved recharge ("lightning recharge"), kept per (client, user): what a
    recharge naming it is filled with. ``instrument`` is as a recharge stores it (the
    token, or the masked number: a recharge from a masked one brings the number again)."""

    id: str
    client: str
    user_id: str
    name: str
    amount_minor: int
    currency: str
    country: str
    method: str
    instrument: dict[str, str]
    created_at: float
