"""The Journal: the durable record of every recharge, attempt, trail entry and credit,
and of the quotes issued.

Whatever the store, a method returns only once its write is durable (committed and
synced), and every write the state machine needs to stay exactly-once is guarded by a
constraint in the store, not by process memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.errors import JournalError
from orchestrator.model import Attempt, Fence, FirstRecharge, Recharge, Step, TrailEntry

__all__ = ["PURGE_LIMIT", "Journal", "JournalError", "KeptChannel", "QuoteRecord", "UserTotals",
           "WalletEntry", "WalletView"]


@dataclass(frozen=True, slots=True)
class WalletEntry:
    recharge_id: str
    coins: int
    balance_after: int
    created_at: float


@dataclass(frozen=True, slots=True)
class WalletView:
    user_id: str
    coins: int
    entries: tuple[WalletEntry, ...]


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


class Journal(Protocol):
    """What the core needs of a store. Leases are timed by the store's own clock (the
    database server's, or the journal's ``clock``), never by the callers': two hosts
    whose clocks disagree still agree on when a lease ends. Guards hold in the store."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(self, recharge: Recharge, trail: TrailEntry,
                     lease: tuple[str, float] | None = None,
                     first: FirstRecharge | None = None,
                     started: tuple[Attempt, TrailEntry] | None = None) -> Recharge | None:
        """Insert a new recharge, unless its (client, idempotency key) is taken; in the
        same transaction its lease (``lease`` = (owner, lease_s): token 1) and its first
        attempt, journaled ``started`` with its trail entry, before the provider hears
        of it. Returns None when it was created, or the recharge already holding the
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
