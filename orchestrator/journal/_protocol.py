"""The Journal: the durable record of every recharge, attempt, trail entry and credit,
and of the quotes issued.

Whatever the store, a method returns only once its write is durable (committed and
synced), and every write the state machine needs to stay exactly-once is guarded by a
constraint in the store, not by process memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from orchestrator.errors import JournalError
from orchestrator.model import (
    Attempt,
    Discrepancy,
    Dispute,
    DisputeStatus,
    Fence,
    FirstRecharge,
    Notice,
    Recharge,
    ReconRun,
    Refund,
    RefundStatus,
    Step,
    Template,
    TrailEntry,
    Transfer,
)

__all__ = ["FLEET_BLOB_LIMIT", "PURGE_LIMIT", "Account", "Journal", "JournalError", "KeptChannel", "MatchRow",
           "NoticeRow", "OpenRecharges", "OutboxStats", "PastRecharge", "QuoteRecord", "RefundGuard", "ReportRow",
           "UserTotals", "WalletEntry", "WalletView", "fleet_blob", "fleet_time"]


@dataclass(frozen=True, slots=True)
class WalletEntry:
    """One movement of a wallet's coins. ``kind``: ``credit`` (a succeeded recharge),
    ``refund`` (a refund's debit), ``refund_reversal`` (a failed refund's coins back),
    ``clawback`` (a lost dispute); ``ref`` names the refund for the refund kinds."""

    recharge_id: str
    coins: int
    balance_after: int
    created_at: float
    kind: str = "credit"
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class WalletView:
    """``coins`` may be negative (a debt, after a lost dispute); ``frozen_coins`` are
    held by open disputes: spendable is ``coins - frozen_coins``."""

    user_id: str
    coins: int
    entries: tuple[WalletEntry, ...]
    frozen_coins: int = 0


@dataclass(frozen=True, slots=True)
class Account:
    """A ledger account (``pool:<name>``, ``wallet:<user>``, ``issuance``): its balance, what
    its transfers sum to, and (a wallet) the coins open disputes hold."""

    account: str
    balance: int
    frozen: int = 0
    # A pool: the coins it fronted on instant credits whose payment failed (its booked loss;
    # clawed back, a wallet that cannot cover them owes them), and how many credits of its
    # users drew on another pool because it was short.
    lost: int = 0
    shortfalls: int = 0


@dataclass(frozen=True, slots=True)
class RefundGuard:
    """What a refund was decided on, checked again in the store's transaction: the
    recharge's refunds (not failed) still sum to these, its dispute is still this one,
    and, unless ``allow_negative``, the wallet still has the coins to spend."""

    refunded_minor: int
    refunded_coins: int
    dispute: DisputeStatus | None
    allow_negative: bool


class ReportRow(NamedTuple):
    """One item of a provider's settlement report, as a run stages it (SPEC 6, 21)."""

    reference: str
    provider_ref: str | None
    status: str
    amount_minor: int
    currency: str
    fee_minor: int
    settled_at: str | None


class MatchRow(NamedTuple):
    """A staged report item and what the journal holds under its reference (the attempt's
    fields None when no attempt has it)."""

    reference: str
    provider_ref: str | None
    status: str
    amount_minor: int
    currency: str
    fee_minor: int
    settled_at: str | None
    attempt_channel: str | None
    attempt_state: str | None
    recharge_id: str | None
    recharge_status: str | None
    recharge_channel: str | None
    recharge_amount_minor: int | None
    recharge_currency: str | None
    settlement: str | None
    refunded_minor: int | None  # the recharge's refunds not failed


@dataclass(frozen=True, slots=True)
class NoticeRow:
    """An outbox row: the notice, and where its delivery stands."""

    notice: Notice
    state: str  # pending, delivered, dead
    attempts: int
    next_at: float
    window_start: float  # when its retry window began (written, or redelivered)
    last_error: str | None
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    dead: int
    oldest_pending_at: float | None


@dataclass(frozen=True, slots=True)
class OpenRecharges:
    """The recharges not yet final, for the metrics: how many in each status, how many
    past their deadline (``Recharge.deadline()``: a step-up's expiry extends it), and the
    earliest deadline among them."""

    by_status: Mapping[str, int]
    past_deadline: int
    earliest_deadline: float | None

    @classmethod
    def of_rows(cls, rows: Sequence[Sequence[Any]]) -> OpenRecharges:
        """From the SQL stores' rows: (status, count, past their deadline, earliest deadline)."""
        earliest = [float(r[3]) for r in rows if r[3] is not None]
        return cls({str(r[0]): int(r[1]) for r in rows}, sum(int(r[2] or 0) for r in rows),
                   min(earliest) if earliest else None)


@dataclass(frozen=True, slots=True)
class QuoteRecord:
    """A quote as the journal keeps it (``orchestrator.quotes`` writes and reads them).
    ``price`` is that module's JSON document (every Decimal as its exact string),
    stored and returned as given. The quote holds while ``now < expires_at``."""

    quote_id: str
    user_id: str
    amount_minor: int
    currency: str
    price: dict[str, Any]
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class UserTotals:
    """A user's succeeded recharges in one currency: how many, their sum, and how many
    of them were created at or after the time asked about (``Journal.user_totals``)."""

    currency: str
    recharges: int
    amount_minor: int
    this_month: int


@dataclass(frozen=True, slots=True)
class PastRecharge:
    """One succeeded (and paid) recharge of a user, as amount suggestions read them
    (``Journal.succeeded_recharges``)."""

    amount_minor: int
    currency: str
    country: str
    created_at: float


@dataclass(frozen=True, slots=True)
class KeptChannel:
    """A channel the journal knows: its config (as JSON), and when it left the config
    (None while it is in it). A channel removed while its attempts may still hold money,
    by a reload or by an edit of the file while no instance ran, is found here by any
    instance after any restart, which can still inquire, void, refund and take webhooks."""

    name: str
    config: dict[str, Any]
    retired_at: float | None


# The most quotes one purge deletes: it runs inside a group commit, so it must stay
# short; a backlog goes in several.
PURGE_LIMIT = 1000

# The largest fleet blob a store takes: four times the ~1 MB a big fleet publishes, so a
# large one passes and a runaway one (it is written every second or two) is refused.
FLEET_BLOB_LIMIT = 4 << 20


def fleet_blob(instance: str, blob: bytes, at: float) -> bytes:
    """``blob`` as every store keeps it (bytes), once ``put_fleet_stats``'s arguments are
    checked: TypeError or ValueError names the one that is not."""
    if not isinstance(instance, str) or not instance:
        raise ValueError(f"fleet stats need an instance id, not {instance!r}")
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"a fleet blob is bytes, not {type(blob).__name__}")
    if len(blob) > FLEET_BLOB_LIMIT:
        raise ValueError(f"fleet blob of {len(blob)} bytes (at most {FLEET_BLOB_LIMIT})")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise ValueError(f"fleet stats need a wall-clock time, not {at!r}")
    return bytes(blob)


def fleet_time(t: float) -> float:
    """A bound of ``fleet_stats`` or ``purge_fleet_stats`` as seconds (infinities allowed);
    ValueError for NaN, which PostgreSQL orders above every time and SQLite reads as NULL."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t):
        raise ValueError(f"not a time: {t!r}")
    return float(t)


class Journal(Protocol):
    """What the core needs of a store. Leases are timed by the store's own clock (the
    database server's, or the journal's ``clock``), never by the callers': two hosts
    whose clocks disagree still agree on when a lease ends. Guards hold in the store."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, recharge: Recharge, trail: TrailEntry,
                     lease: tuple[str, float] | None = None,
                     first: FirstRecharge | None = None,
                     started: tuple[Attempt, TrailEntry] | None = None,
                     notices: tuple[Notice, ...] = ()) -> Recharge | None:
        """Insert a new recharge, unless its (client, idempotency key) is taken; in the
        same transaction its lease (``lease`` = (owner, lease_s): token 1), its first
        attempt, journaled ``started`` with its trail entry, before the provider hears
        of it, and its notices (a recharge blocked at once). Returns None when it was created, or the recharge already holding the
        key (and then writes nothing)."""
        ...

    async def apply(self, step: Step) -> bool:
        """Make ``step`` durable. False (and nothing written) when a guard no longer
        holds: its status or attempt guard, its lease (``step.lease`` is not the lease
        the store holds), its credit already given, its event already applied, its new
        attempt's reference or number taken. A step that marks its recharge succeeded
        and credits it also adds the recharge to its user's totals (``user_totals``);
        its ``follow_up`` sets or clears the recharge's follow-up time."""
        ...

    async def get(self, recharge_id: str) -> Recharge | None: ...

    async def find(self, client: str, idempotency_key: str) -> Recharge | None:
        """The recharge holding ``client``'s idempotency key, if any."""
        ...

    async def trail(self, recharge_id: str) -> list[TrailEntry]: ...

    async def wallet(self, user_id: str, limit: int = 100) -> WalletView: ...

    async def user_totals(self, user_id: str, since: float) -> list[UserTotals]:
        """The user's succeeded recharges per currency, ``this_month`` counting those
        created at or after ``since``: what pricing and risk know of the user. When
        ``since`` is the start of a UTC calendar month (``pricing.month_start(now)``),
        one primary-key range read of the totals kept with every credit, whatever the
        user's history; otherwise (or with a clock behind a recharge's) counted from
        the recharges themselves, with the same answer."""
        ...

    async def succeeded_recharges(self, user_id: str, limit: int) -> list[PastRecharge]:
        """The user's ``limit`` most recent succeeded recharges, newest first (by
        creation), leaving out instant credits whose payment failed (as ``user_totals``
        does): a walk of the user's index (``recharges_user``) that stops at ``limit``."""
        ...

    async def nonterminal(self) -> list[Recharge]:
        """Every recharge not yet terminal, oldest first: the recovery scan's input."""
        ...

    async def event_seen(self, channel: str, event_id: str) -> bool:
        """Whether a provider event was already applied (recorded by a ``Step.event``)."""
        ...

    async def attempt(self, reference: str) -> Attempt | None: ...

    async def claim_follow_ups(self, now: float, retry_at: float, limit: int = 500) -> list[Recharge]:
        """The recharges whose follow-up time is at or before ``now`` (refunds owed,
        late-capture checks due, attempts left open on finished recharges), each
        postponed to ``retry_at`` in the same transaction: the claimer has until then
        to finish it (its step sets the next time), or it comes due again."""
        ...

    async def record(self, entry: TrailEntry) -> None:
        """Append an audit entry that belongs to no recharge step (a config change)."""
        ...

    async def audit_rows(self) -> list[tuple[Any, ...]]:
        """The whole trail in order, with its chain: what ``audit verify`` checks."""
        ...

    async def ping(self) -> None:
        """Raise JournalError unless the store accepts a write right now."""
        ...

    # Leases (docs/exactly-once.md#leases): the holder of a recharge's (owner, token) drives it;
    # the store refuses a step whose ``Step.lease`` has since moved on (the token grew).

    async def claim(self, owner: str, lease_s: float, limit: int = 500) -> list[tuple[Recharge, int]]:
        """Lease to ``owner`` for ``lease_s`` up to ``limit`` non-terminal recharges,
        oldest first, that no live lease of another owner holds (no lease, an expired
        one, or one ``owner`` already holds, which is renewed); each with its token.
        Atomic: two claimers never both get one recharge while its lease is live."""
        ...

    async def lease(self, owner: str, recharge_id: str, lease_s: float) -> int | None:
        """Take or renew ``owner``'s lease on one recharge: its token, or None while
        another owner's lease is live."""
        ...

    async def renew(self, owner: str, held: dict[str, int], lease_s: float) -> set[str]:
        """Extend by ``lease_s`` the leases in ``held`` (recharge id -> token) that
        ``owner`` still holds with that token; answers their ids (the others were lost)."""
        ...

    async def release(self, owner: str, recharge_id: str) -> None:
        """Give up ``owner``'s lease on ``recharge_id`` (nothing if another owner holds it)."""
        ...

    async def lease_of(self, recharge_id: str) -> Fence | None:
        """Who holds the recharge's lease, live or not, and its token (None: nobody)."""
        ...

    # The channels of the config, and those that left it while attempts on them may
    # still hold money.

    async def keep_channel(self, name: str, config: dict[str, Any], retired_at: float | None) -> None:
        """Record (or update) a channel's config; ``retired_at``: when it left the config.
        Kept for good: an instance that still runs it, or a late webhook, may need it."""
        ...

    async def kept_channels(self) -> list[KeptChannel]: ...

    async def channel_busy(self, name: str) -> bool:
        """Whether a recharge still running or with follow-up work has an attempt on
        ``name``: a retired channel is kept until this is False."""
        ...

    # Quotes (``POST /v1/quotes``), shared by every instance on the store: any of them
    # redeems a quote another issued.

    async def put_quote(self, quote: QuoteRecord, purge_before: float | None = None,
                        purge_limit: int = PURGE_LIMIT) -> int:
        """Store ``quote`` (durable when this returns). With ``purge_before``, the same
        transaction deletes up to ``purge_limit`` quotes whose ``expires_at`` is at or
        before it, the soonest expired first (an indexed range, never a scan). Answers
        how many it deleted."""
        ...

    async def get_quote(self, quote_id: str) -> QuoteRecord | None:
        """The quote (one primary-key read), or None: never issued, or purged."""
        ...

    # Refunds and disputes of succeeded recharges (SPEC 19).

    async def create_refund(self, refund: Refund, trail: TrailEntry, guard: RefundGuard,
                            notices: tuple[Notice, ...] = ()) -> Refund | str | None:
        """Journal a new refund and debit its coins from the wallet, in one transaction
        with its trail entry and notices. None: done. A Refund: the (client,
        idempotency key) is taken by that refund (nothing written). A string: refused,
        nothing written: ``insufficient_coins``, or ``stale`` when ``guard`` no longer
        holds (decide again on fresh reads). The caller refuses a refund of a recharge
        whose dispute is open or lost (``guard.dispute`` is None or won); the store then
        holds it to that."""
        ...

    async def settle_refund(self, refund_id: str, status: RefundStatus, at: float, *, error: str | None = None,
                            event: tuple[str, str] | None = None, trail: tuple[TrailEntry, ...] = (),
                            notices: tuple[Notice, ...] = ()) -> bool:
        """End a pending refund as succeeded or failed (a failed one's coins go back to the
        wallet: frozen again while the recharge's dispute is open, clawed back again if it
        was lost). False, and nothing written, when it is no longer pending or ``event``
        was already applied."""
        ...

    async def retry_refund(self, refund_id: str, next_at: float, error: str | None) -> None:
        """A pending refund the provider has not settled: ask again at ``next_at``."""
        ...

    async def claim_refunds(self, now: float, retry_at: float, limit: int = 100) -> list[Refund]:
        """Pending refunds due at ``now``, each postponed to ``retry_at`` in the same
        transaction (the claimer settles or retries it before then, or it comes due again)."""
        ...

    async def get_refund(self, refund_id: str) -> Refund | None: ...

    async def find_refund(self, client: str, idempotency_key: str) -> Refund | None: ...

    async def refunds_of(self, recharge_id: str) -> list[Refund]:
        """The recharge's refunds, oldest first."""
        ...

    async def dispute_of(self, recharge_id: str) -> Dispute | None: ...

    async def apply_dispute(self, dispute: Dispute, expect: DisputeStatus | None, refunded_coins: int,
                            event: tuple[str, str], trail: tuple[TrailEntry, ...] = (),
                            notices: tuple[Notice, ...] = ()) -> bool:
        """Move the recharge's dispute from ``expect`` (None: none yet) to ``dispute``,
        with the wallet: an opened dispute freezes ``dispute.coins``, a won one unfreezes
        them, a lost one claws them back (the balance may go negative). ``event`` is
        recorded in the same transaction. False, nothing written, when the dispute is no
        longer ``expect``, the recharge's refunds (not failed) no longer hold
        ``refunded_coins``, or ``event`` was already applied."""
        ...

    async def record_event(self, event: tuple[str, str], recharge_id: str, trail: tuple[TrailEntry, ...]) -> bool:
        """Record a provider event that changes nothing (with its trail), so it is not
        applied twice. False when it already was."""
        ...

    # The double-entry ledger (SPEC 20): every coin movement above is a transfer between a
    # pool and a wallet, written with it; these are the pools' own.

    async def open_pools(self, pools: Sequence[str], at: float) -> None:
        """Make sure each pool has its account (balance 0 until a deposit)."""
        ...

    async def deposit(self, pool: str, coins: int, reference: str, at: float,
                      trail: TrailEntry) -> tuple[str, Transfer | None]:
        """Coins from issuance into ``pool``, idempotent by ``reference``: ("made", its
        transfer), ("held", the transfer the reference made before), or ("conflict", None)
        when the reference made a deposit of another pool or amount (nothing written)."""
        ...

    async def accounts(self, prefix: str = "") -> list[Account]:
        """The accounts whose name starts with ``prefix``, by name."""
        ...

    async def transfers(self, account: str | None = None, after: int = 0, limit: int = 100) -> list[Transfer]:
        """Transfers after the one numbered ``after`` (all, or those of ``account``), oldest first."""
        ...

    async def rebalance(self, expect: Mapping[str, int], moves: Sequence[tuple[str, str, int]], at: float,
                        trail: TrailEntry | None) -> bool:
        """Move coins between pools (``moves``: from pool, to pool, coins), in one
        transaction, only while every pool account still holds what ``expect`` says (else
        False, nothing written: plan again); the same transaction starts every pool's
        demand count again (``pool_demand``)."""
        ...

    async def pool_demand(self) -> dict[str, int]:
        """Coins credited from each pool account since the last rebalancing pass (a count
        kept on the account with each credit: no read grows with the ledger)."""
        ...

    # The outbox of notifications (SPEC 19). Rows are written by ``Step.notices`` and the
    # ``notices`` arguments above; a dispatcher claims them.

    async def add_notices(self, notices: tuple[Notice, ...]) -> None:
        """Write notices of a change that is already durable (a recharge refused at once)."""
        ...

    async def claim_notices(self, owner: str, now: float, lease_s: float, limit: int = 100) -> list[NoticeRow]:
        """Up to ``limit`` pending notices due at ``now`` that no live claim holds
        and that are each the oldest pending one of their client's ``key`` (delivery in
        order per client and recharge: one client's dead endpoint holds no other's back),
        claimed by ``owner`` until ``now + lease_s``. Atomic: one claimer per notice."""
        ...

    async def notice_delivered(self, notice_id: str, owner: str, at: float) -> bool:
        """Mark a claimed notice delivered; False when ``owner`` no longer holds it."""
        ...

    async def notice_failed(self, notice_id: str, owner: str, next_at: float | None, error: str) -> bool:
        """A failed delivery: try again at ``next_at``, or ``dead`` when None."""
        ...

    async def notices(self, state: str, limit: int = 100, after: str | None = None) -> list[NoticeRow]:
        """Notices in ``state`` (pending, delivered or dead), oldest first."""
        ...

    async def notice(self, notice_id: str) -> NoticeRow | None: ...

    async def redeliver(self, notice_id: str, now: float) -> NoticeRow | None:
        """Make a notice pending again, due now, its retry window restarted (a notice a
        dispatcher holds right now is left to it). Redelivered, an old notice goes out
        again after the newer ones of its recharge that were delivered meanwhile."""
        ...

    async def outbox_stats(self) -> OutboxStats: ...

    async def open_recharges(self, now: float) -> OpenRecharges:
        """The recharges with work left, counted (along the index of open recharges:
        bounded by the work in progress, never by the history)."""
        ...

    async def has_unsettled_credit(self, user_id: str) -> bool:
        """Whether one of the user's instant credits waits for its payment or was clawed
        back (SPEC 20): such a user gets no more instant credit."""
        ...

    # Settlement reconciliation (SPEC 21). A run stages the provider's report and what it
    # finds, then ``recon_finish`` keeps the findings (or, failed, drops them) at once.

    async def recon_start(self, run: ReconRun) -> bool:
        """Record a running reconciliation; False when ``run`` is scheduled and a scheduled
        run of that channel and day exists that did not fail (another instance took the day)."""
        ...

    async def recon_stage(self, run_id: str, items: Sequence[ReportRow]) -> int:
        """Stage report items of a running run; answers how many were new (a reference
        the report repeats is staged once)."""
        ...

    async def recon_matches(self, run_id: str, after: str, limit: int) -> list[MatchRow]:
        """Staged items after reference ``after``, in reference order, each with what the
        journal holds under that reference (its attempt and recharge, when any)."""
        ...

    async def recon_unreported(self, run_id: str, channel: str, start: float, end: float, after: str,
                               limit: int) -> list[tuple[str, str, int, str]]:
        """Captures kept on ``channel`` (the succeeded recharge's own) journaled in
        [start, end) and not in the run's staged report: (reference, recharge id,
        amount_minor, currency), in reference order after ``after``."""
        ...

    async def recon_found(self, run_id: str, found: Sequence[Discrepancy]) -> None:
        """Stage what the run found (kept by ``recon_finish`` when the run completes)."""
        ...

    async def recon_finish(self, run_id: str, status: str, reason: str | None, at: float, report_items: int,
                           summary: dict[str, Any] | None) -> ReconRun | None:
        """End a running run, in one transaction: completed, its findings join the day's
        discrepancies (one per reference and kind: a repeat is updated, not added; one
        resolved before and found again is open again) and the day's discrepancies it did
        not find again are resolved; failed, its findings are dropped. Its staged findings go
        either way; its staged report is ``recon_purge``'s. None when no such running run."""
        ...

    async def recon_purge(self, run_id: str, limit: int) -> int:
        """Delete up to ``limit`` staged report items of a run that is not running (a few
        thousand per write: a big day never holds the store's writer for long); answers how
        many went (0: none left, or the run still runs)."""
        ...

    async def recon_runs(self, channel: str | None = None, limit: int = 50) -> list[ReconRun]:
        """Runs, newest first (by start, then id)."""
        ...

    async def recon_run(self, run_id: str) -> ReconRun | None: ...

    async def discrepancies(self, channel: str, date: str, status: str | None = None, after: int = 0,
                            limit: int = 100) -> list[Discrepancy]:
        """The day's discrepancies of a channel, oldest first, after ``seq`` ``after``."""
        ...

    async def open_discrepancies(self) -> dict[str, int]:
        """Per channel, how many discrepancies are not resolved."""
        ...

    async def resolve_discrepancy(self, seq: int, status: str, resolution: str, at: float) -> bool:
        """Set a discrepancy's status (open, resolving, resolved) and why; False if none."""
        ...

    # Recharge templates (SPEC 22), each of one (client, user): no other sees or removes it.

    async def create_template(self, template: Template, max_per_user: int) -> bool:
        """Keep ``template``, unless its user already has ``max_per_user`` templates of its
        client: then False, nothing written. The count and the insert are one transaction,
        so creates racing (on one instance or several) never pass the cap."""
        ...

    async def templates_of(self, client: str, user_id: str) -> list[Template]:
        """The user's templates of ``client``, oldest first."""
        ...

    async def get_template(self, template_id: str) -> Template | None:
        """The template (one primary-key read), whoever's it is: the caller checks its
        client and user."""
        ...

    async def delete_template(self, client: str, user_id: str, template_id: str) -> bool:
        """Remove the template if it is this client's and user's; False when no such one."""
        ...

    # The fleet view (SPEC 8/9; issue 26): each instance on the store publishes its own
    # channel statistics as one opaque blob, and reads every other one's.

    async def put_fleet_stats(self, instance: str, blob: bytes, at: float) -> None:
        """Publish this instance's channel statistics (SPEC 8/9, fleet view): replaces its
        previous blob; ``at`` is wall-clock seconds. One upsert, durable when this returns
        (called every second or two by every instance: it never holds a store's writer
        for more than that statement). ``instance`` non-empty, ``blob`` bytes of at most
        ``FLEET_BLOB_LIMIT`` (``fleet_blob``)."""
        ...

    async def fleet_stats(self, since: float, limit: int = 256) -> list[tuple[str, float, bytes]]:
        """Every instance's blob published at or after ``since``: (instance, at, blob),
        newest first (then by instance), at most ``limit``."""
        ...

    async def purge_fleet_stats(self, before: float) -> int:
        """Forget blobs published before ``before`` (instances long gone); how many."""
        ...
