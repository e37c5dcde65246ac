"""A journal in process memory, built on the state machine's own reducer.

The same contract as the SQL stores, guard for guard (the conformance suite runs one
set of tests on all three): one recharge per (client, idempotency key), one attempt
per reference and per (recharge, number), one credit per recharge, one application per
provider event, leases fenced by token and timed by the journal's clock. Every method
completes without awaiting anything, so each is atomic on its event loop, as a
transaction is in a store.

For the deterministic simulation and for tests; nothing here survives the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from orchestrator.audit import GENESIS
from orchestrator.journal._protocol import (
    PURGE_LIMIT,
    Account,
    KeptChannel,
    MatchRow,
    NoticeRow,
    OpenRecharges,
    OutboxStats,
    PastRecharge,
    QuoteRecord,
    RefundGuard,
    ReportRow,
    UserTotals,
    WalletEntry,
    WalletView,
    fleet_blob,
    fleet_time,
)
from orchestrator.journal._rows import trail_rows
from orchestrator.model import (
    DEFAULT_POOL,
    ISSUANCE,
    KEEP,
    TERMINAL,
    Attempt,
    Credit,
    Discrepancy,
    DiscrepancyKind,
    Dispute,
    DisputeStatus,
    Fence,
    FirstRecharge,
    Notice,
    Recharge,
    RechargeStatus,
    ReconRun,
    Refund,
    RefundStatus,
    Settlement,
    Step,
    Template,
    TrailEntry,
    Transfer,
    pool_account,
    wallet_account,
)
from orchestrator.journal._ledger import SETTLEMENT_FAILED, choose_pool
from orchestrator.transitions import admits, reduce

__all__ = ["MemoryJournal"]

_RUNNING_OR_DONE = frozenset({RechargeStatus.PROCESSING, RechargeStatus.REQUIRES_ACTION, RechargeStatus.PENDING,
                              RechargeStatus.SUCCEEDED})


def _json(value: Any) -> Any:
    """``value`` as the SQL stores read it back from its JSON text (a copy of its own)."""
    return None if value is None else orjson.loads(orjson.dumps(value))


def _clone(rec: Recharge) -> Recharge:
    """A copy a caller may change (attempts are replaced, never changed in place)."""
    return replace(rec, attempts=list(rec.attempts))


@dataclass(slots=True)
class _Outboxed:
    notice: Notice
    seq: int
    state: str
    attempts: int
    next_at: float
    window_start: float
    last_error: str | None = None
    delivered_at: float | None = None
    claimed_by: str | None = None
    claimed_until: float = 0.0

    def row(self) -> NoticeRow:
        return NoticeRow(self.notice, self.state, self.attempts, self.next_at, self.window_start, self.last_error,
                         self.delivered_at)


class _Ledger:
    """The double-entry ledger in memory, as the SQL stores keep it: accounts with their
    balance (and a wallet's frozen coins), and the transfers, appended only."""

    def __init__(self) -> None:
        self.accounts: dict[str, list[int]] = {}  # account -> [balance, frozen]
        self.transfers: list[Transfer] = []
        self._credit_pool: dict[str, str] = {}  # recharge -> the pool its credit drew on
        self.demand: dict[str, int] = {}  # pool -> coins credited since the last rebalancing pass
        self._refs: set[tuple[str, str]] = set()
        self.lost: dict[str, int] = {}  # pool -> coins it fronted on failed instant credits
        self.shortfalls: dict[str, int] = {}  # pool -> credits of its users another pool paid

    def of(self, account: str) -> tuple[int, int]:
        held = self.accounts.get(account)
        return (0, 0) if held is None else (held[0], held[1])

    def _add(self, account: str, coins: int) -> int:
        held = self.accounts.setdefault(account, [0, 0])
        held[0] += coins
        return held[0]

    def transfer(self, debit: str, credit: str, coins: int, kind: str, at: float, recharge_id: str | None = None,
                 ref: str | None = None, note: str | None = None) -> Transfer:
        seq = len(self.transfers) + 1
        self._add(debit, -coins)
        self._add(credit, coins)
        t = Transfer(f"tr_{seq}", debit, credit, coins, kind, at, recharge_id, ref, note, seq)
        self.transfers.append(t)
        if ref is not None:
            self._refs.add((kind, ref))
        return t

    def credit(self, c: Credit) -> None:
        pool, note = choose_pool(c, {a: held[0] for a, held in self.accounts.items() if a.startswith("pool:")})
        self._credit_pool[c.recharge_id] = pool
        self.demand[pool] = self.demand.get(pool, 0) + c.coins
        local = pool_account(c.pool) if c.pool is not None else ""
        if note is not None and local in self.accounts:  # as the SQL stores: an open pool's count
            self.shortfalls[local] = self.shortfalls.get(local, 0) + 1
        self.transfer(pool, wallet_account(c.user_id), c.coins, "credit", c.at, c.recharge_id, None, note)

    def move(self, user_id: str, recharge_id: str, coins: int, at: float, kind: str, ref: str | None) -> None:
        """Coins into (> 0) or out of the wallet, against the pool the recharge's credit drew on."""
        if coins == 0:  # as the SQL stores: a transfer moves something
            return
        pool = self._credit_pool.get(recharge_id, pool_account(DEFAULT_POOL))
        wallet = wallet_account(user_id)
        if coins > 0:
            self.transfer(pool, wallet, coins, kind, at, recharge_id, ref)
        else:
            self.transfer(wallet, pool, -coins, kind, at, recharge_id, ref)

    def claw_back(self, c: Credit) -> None:
        """An instant credit whose payment failed: its coins back from the wallet (which may
        go negative: a debt) to its pool, and booked as the pool's loss."""
        pool = self._credit_pool.get(c.recharge_id, pool_account(DEFAULT_POOL))
        self.transfer(wallet_account(c.user_id), pool, c.coins, "clawback", c.at, c.recharge_id, None,
                      SETTLEMENT_FAILED)
        self.lost[pool] = self.lost.get(pool, 0) + c.coins

    def freeze(self, user_id: str, coins: int, at: float) -> None:
        self.accounts.setdefault(wallet_account(user_id), [0, 0])[1] += coins

    def summed(self, account: str) -> int:
        return sum(t.coins for t in self.transfers if t.credit == account) - sum(
            t.coins for t in self.transfers if t.debit == account)

    def wallet(self, user_id: str, limit: int) -> WalletView:
        account = wallet_account(user_id)
        balance, frozen = self.of(account)
        entries = []
        running = balance
        for t in reversed(self.transfers):
            if len(entries) >= limit:
                break
            if account not in (t.debit, t.credit):
                continue
            coins = t.coins if t.credit == account else -t.coins
            entries.append(WalletEntry(t.recharge_id or "", coins, running, t.at, t.kind, t.ref))
            running -= coins
        return WalletView(user_id, balance, tuple(entries), frozen)


@dataclass(slots=True)
class _Lease:
    owner: str | None
    expires_at: float
    token: int


class MemoryJournal:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._recharges: dict[str, Recharge] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._references: dict[str, str] = {}
        self._by_user: dict[str, list[str]] = {}
        self._credited: set[str] = set()
        self._ledger = _Ledger()
        self._events: set[tuple[str, str]] = set()
        self._trail: list[tuple[Any, ...]] = []
        self._head = GENESIS
        self._leases: dict[str, _Lease] = {}
        self._follow_ups: dict[str, float] = {}
        self._kept: dict[str, KeptChannel] = {}
        self._quotes: dict[str, QuoteRecord] = {}
        self._refunds: dict[str, Refund] = {}
        self._refund_keys: dict[tuple[str, str], str] = {}
        self._disputes: dict[str, Dispute] = {}
        self._outbox: dict[str, _Outboxed] = {}
        self._outbox_seq = 0
        self._runs: dict[str, ReconRun] = {}
        self._staged: dict[str, dict[str, ReportRow]] = {}  # run -> reference -> item
        self._found: dict[str, dict[tuple[str, str], Discrepancy]] = {}  # run -> (reference, kind) -> finding
        self._discrepancies: dict[int, Discrepancy] = {}  # seq -> discrepancy
        self._discrepancy_keys: dict[tuple[str, str, str, str], int] = {}  # (channel, date, reference, kind) -> seq
        self._discrepancy_seq = 0
        self._templates: dict[str, Template] = {}  # in creation order
        self._fleet: dict[str, tuple[float, bytes]] = {}  # instance -> (at, blob)
        self.opened = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False

    # -- writes ---------------------------------------------------------------------------

    def _append_trail(self, entries: tuple[TrailEntry, ...] | list[TrailEntry]) -> None:
        rows, self._head = trail_rows(self._head, entries)
        for row in rows:
            self._trail.append((len(self._trail) + 1, *row))

    async def create(self, recharge: Recharge, trail: TrailEntry, lease: tuple[str, float] | None = None,
                     first: FirstRecharge | None = None,
                     started: tuple[Attempt, TrailEntry] | None = None,
                     notices: tuple[Notice, ...] = ()) -> Recharge | None:
        holder = self._keys.get((recharge.client, recharge.idempotency_key))
        if holder is not None:
            return _clone(self._recharges[holder])
        if started is not None and started[0].reference in self._references:
            raise ValueError(f"attempt reference {started[0].reference} is taken")
        entry = trail
        if first is not None and any(self._recharges[rid].status in _RUNNING_OR_DONE
                                     for rid in self._by_user.get(recharge.user_id, ())):
            entry = first.deny(recharge, trail)
        stored = _clone(recharge)
        if started is not None:
            stored.attempts.append(started[0])
            self._references[started[0].reference] = recharge.id
        self._recharges[recharge.id] = stored
        self._keys[(recharge.client, recharge.idempotency_key)] = recharge.id
        self._by_user.setdefault(recharge.user_id, []).append(recharge.id)
        if lease is not None:
            self._leases[recharge.id] = _Lease(lease[0], self._clock() + lease[1], 1)
        self._append_trail([entry] if started is None else [entry, started[1]])
        self._outbox_add(notices)
        return None

    async def apply(self, step: Step) -> bool:
        rec = self._recharges.get(step.recharge_id)
        if rec is None or not admits(rec, step):
            return False
        if step.lease is not None:
            held = self._leases.get(rec.id)
            if held is None or (held.owner, held.token) != step.lease:
                return False
        if step.event is not None and step.event in self._events:
            return False
        if step.credit is not None and step.credit.recharge_id in self._credited:
            return False
        a = step.attempt
        if a is not None and step.attempt_is_new and a.reference in self._references:
            return False
        # Every guard holds: the step lands whole.
        if step.event is not None:
            self._events.add(step.event)
        if a is not None and step.attempt_is_new:
            self._references[a.reference] = rec.id
        c = step.credit
        if c is not None:
            self._credited.add(c.recharge_id)
            self._ledger.credit(c)
        if step.clawback is not None:
            self._ledger.claw_back(step.clawback)
        reduce(rec, step)
        self._outbox_add(step.notices)
        if step.follow_up is not KEEP:
            if step.follow_up is None:
                self._follow_ups.pop(rec.id, None)
            else:
                self._follow_ups[rec.id] = step.follow_up
        if step.trail:
            self._append_trail(step.trail)
        return True

    def _move(self, user_id: str, recharge_id: str, coins: int, at: float, kind: str, ref: str | None) -> None:
        self._ledger.move(user_id, recharge_id, coins, at, kind, ref)

    async def record(self, entry: TrailEntry) -> None:
        self._append_trail([entry])

    async def ping(self) -> None:
        return None

    # -- reads ----------------------------------------------------------------------------

    async def get(self, recharge_id: str) -> Recharge | None:
        rec = self._recharges.get(recharge_id)
        return None if rec is None else _clone(rec)

    async def find(self, client: str, idempotency_key: str) -> Recharge | None:
        rid = self._keys.get((client, idempotency_key))
        return None if rid is None else await self.get(rid)

    async def attempt(self, reference: str) -> Attempt | None:
        rid = self._references.get(reference)
        return None if rid is None else self._recharges[rid].attempt(reference)

    async def trail(self, recharge_id: str) -> list[TrailEntry]:
        from orchestrator.journal._rows import trail_entry_of

        return [trail_entry_of(r[1:8]) for r in self._trail if r[1] == recharge_id]

    async def audit_rows(self) -> list[tuple[Any, ...]]:
        return list(self._trail)

    async def wallet(self, user_id: str, limit: int = 100) -> WalletView:
        return self._ledger.wallet(user_id, limit)

    async def user_totals(self, user_id: str, since: float) -> list[UserTotals]:
        out: dict[str, list[int]] = {}
        for rid in self._by_user.get(user_id, ()):
            r = self._recharges[rid]
            if r.status is RechargeStatus.SUCCEEDED and r.settlement is not Settlement.FAILED:
                t = out.setdefault(r.currency, [0, 0, 0])
                t[0] += 1
                t[1] += r.amount_minor
                t[2] += r.created_at >= since
        return [UserTotals(cur, n, amount, month) for cur, (n, amount, month) in sorted(out.items())]

    async def succeeded_recharges(self, user_id: str, limit: int) -> list[PastRecharge]:
        # Newest first; ties newest inserted first, as SQLite's walk back along its index.
        paid = [r for r in map(self._recharges.__getitem__, reversed(self._by_user.get(user_id, ())))
                if r.status is RechargeStatus.SUCCEEDED and r.settlement is not Settlement.FAILED]
        paid.sort(key=lambda r: r.created_at, reverse=True)
        return [PastRecharge(r.amount_minor, r.currency, r.country, r.created_at) for r in paid[:max(limit, 0)]]

    async def has_unsettled_credit(self, user_id: str) -> bool:
        return any(self._recharges[rid].settlement in (Settlement.PENDING, Settlement.FAILED)
                   for rid in self._by_user.get(user_id, ()))

    async def nonterminal(self) -> list[Recharge]:
        open_ = [r for r in self._recharges.values() if r.status not in TERMINAL]
        return [_clone(r) for r in sorted(open_, key=lambda r: (r.created_at, r.id))]

    async def event_seen(self, channel: str, event_id: str) -> bool:
        return (channel, event_id) in self._events

    async def claim_follow_ups(self, now: float, retry_at: float, limit: int = 500) -> list[Recharge]:
        due = sorted((at, rid) for rid, at in self._follow_ups.items() if at <= now)[:limit]
        for _, rid in due:
            self._follow_ups[rid] = retry_at
        return [_clone(self._recharges[rid]) for _, rid in due]

    # -- leases ---------------------------------------------------------------------------

    def _take(self, owner: str, recharge_id: str, lease_s: float, now: float) -> int | None:
        held = self._leases.get(recharge_id)
        if held is None:
            self._leases[recharge_id] = _Lease(owner, now + lease_s, 1)
            return 1
        if held.owner == owner:
            held.expires_at = now + lease_s
            return held.token
        if held.owner is None or held.expires_at <= now:
            held.owner, held.expires_at, held.token = owner, now + lease_s, held.token + 1
            return held.token
        return None

    async def claim(self, owner: str, lease_s: float, limit: int = 500) -> list[tuple[Recharge, int]]:
        now = self._clock()
        out = []
        for rec in await self.nonterminal():
            if len(out) >= limit:
                break
            token = self._take(owner, rec.id, lease_s, now)
            if token is not None:
                out.append((rec, token))
        return out

    async def lease(self, owner: str, recharge_id: str, lease_s: float) -> int | None:
        if recharge_id not in self._recharges:
            return None
        return self._take(owner, recharge_id, lease_s, self._clock())

    async def renew(self, owner: str, held: dict[str, int], lease_s: float) -> set[str]:
        now = self._clock()
        kept = set()
        for rid, token in held.items():
            lease = self._leases.get(rid)
            if lease is not None and lease.owner == owner and lease.token == token:
                lease.expires_at = now + lease_s
                kept.add(rid)
        return kept

    async def release(self, owner: str, recharge_id: str) -> None:
        held = self._leases.get(recharge_id)
        if held is not None and held.owner == owner:
            held.owner, held.expires_at = None, 0.0

    async def lease_of(self, recharge_id: str) -> Fence | None:
        held = self._leases.get(recharge_id)
        return None if held is None or held.owner is None else (held.owner, held.token)

    # -- kept channels --------------------------------------------------------------------

    async def keep_channel(self, name: str, config: dict[str, Any], retired_at: float | None) -> None:
        self._kept[name] = KeptChannel(name, config, retired_at)

    async def kept_channels(self) -> list[KeptChannel]:
        return sorted(self._kept.values(), key=lambda r: r.name)

    async def channel_busy(self, name: str) -> bool:
        for rid in {*self._follow_ups, *(r.id for r in self._recharges.values() if r.status not in TERMINAL)}:
            if any(a.channel == name for a in self._recharges[rid].attempts):
                return True
        return False

    # -- quotes ---------------------------------------------------------------------------

    async def put_quote(self, quote: QuoteRecord, purge_before: float | None = None,
                        purge_limit: int = PURGE_LIMIT) -> int:
        if quote.quote_id in self._quotes:
            raise ValueError(f"quote {quote.quote_id} exists")
        self._quotes[quote.quote_id] = quote
        if purge_before is None:
            return 0
        gone = sorted((q.expires_at, q.quote_id) for q in self._quotes.values()
                      if q.expires_at <= purge_before)[:purge_limit]
        for _, qid in gone:
            del self._quotes[qid]
        return len(gone)

    async def get_quote(self, quote_id: str) -> QuoteRecord | None:
        return self._quotes.get(quote_id)

    # -- refunds and disputes -------------------------------------------------------------

    def _refunded(self, recharge_id: str) -> tuple[int, int]:
        live = [r for r in self._refunds.values() if r.recharge_id == recharge_id and r.status is not RefundStatus.FAILED]
        return sum(r.amount_minor for r in live), sum(r.coins for r in live)

    async def create_refund(self, refund: Refund, trail: TrailEntry, guard: RefundGuard,
                            notices: tuple[Notice, ...] = ()) -> Refund | str | None:
        held = self._refund_keys.get((refund.client, refund.idempotency_key))
        if held is not None:
            return replace(self._refunds[held])
        dispute = self._disputes.get(refund.recharge_id)
        if (self._refunded(refund.recharge_id) != (guard.refunded_minor, guard.refunded_coins)
                or (dispute.status if dispute else None) != guard.dispute):
            return "stale"
        balance, frozen = self._ledger.of(wallet_account(refund.user_id))
        spendable = balance - frozen
        if not guard.allow_negative and spendable < refund.coins:
            return "insufficient_coins"
        self._refunds[refund.id] = replace(refund)
        self._refund_keys[(refund.client, refund.idempotency_key)] = refund.id
        self._move(refund.user_id, refund.recharge_id, -refund.coins, refund.created_at, "refund", refund.id)
        self._append_trail([trail])
        self._outbox_add(notices)
        return None

    async def settle_refund(self, refund_id: str, status: RefundStatus, at: float, *, error: str | None = None,
                            event: tuple[str, str] | None = None, trail: tuple[TrailEntry, ...] = (),
                            notices: tuple[Notice, ...] = ()) -> bool:
        r = self._refunds.get(refund_id)
        if r is None or r.status is not RefundStatus.PENDING or (event is not None and event in self._events):
            return False
        if event is not None:
            self._events.add(event)
        r.status, r.updated_at, r.error, r.next_at = status, at, error, None
        if status is RefundStatus.FAILED:
            self._move(r.user_id, r.recharge_id, r.coins, at, "refund_reversal", r.id)
            d = self._disputes.get(r.recharge_id)
            if d is not None and d.status is DisputeStatus.OPEN:
                self._disputes[r.recharge_id] = replace(d, coins=d.coins + r.coins, updated_at=at)
                self._ledger.freeze(r.user_id, r.coins, at)
            elif d is not None and d.status is DisputeStatus.LOST:
                self._disputes[r.recharge_id] = replace(d, coins=d.coins + r.coins, updated_at=at)
                self._move(r.user_id, r.recharge_id, -r.coins, at, "clawback", r.id)
        self._append_trail(list(trail))
        self._outbox_add(notices)
        return True

    async def retry_refund(self, refund_id: str, next_at: float, error: str | None) -> None:
        r = self._refunds.get(refund_id)
        if r is not None and r.status is RefundStatus.PENDING:
            r.next_at, r.error, r.tries = next_at, error, r.tries + 1

    async def claim_refunds(self, now: float, retry_at: float, limit: int = 100) -> list[Refund]:
        due = sorted((r for r in self._refunds.values() if r.status is RefundStatus.PENDING
                      and r.next_at is not None and r.next_at <= now), key=lambda r: (r.next_at, r.id))[:limit]
        for r in due:
            r.next_at = retry_at
        return [replace(r) for r in due]

    async def get_refund(self, refund_id: str) -> Refund | None:
        r = self._refunds.get(refund_id)
        return None if r is None else replace(r)

    async def find_refund(self, client: str, idempotency_key: str) -> Refund | None:
        rid = self._refund_keys.get((client, idempotency_key))
        return None if rid is None else replace(self._refunds[rid])

    async def refunds_of(self, recharge_id: str) -> list[Refund]:
        return [replace(r) for r in sorted(self._refunds.values(), key=lambda r: (r.created_at, r.id))
                if r.recharge_id == recharge_id]

    async def dispute_of(self, recharge_id: str) -> Dispute | None:
        return self._disputes.get(recharge_id)

    async def apply_dispute(self, dispute: Dispute, expect: DisputeStatus | None, refunded_coins: int,
                            event: tuple[str, str], trail: tuple[TrailEntry, ...] = (),
                            notices: tuple[Notice, ...] = ()) -> bool:
        current = self._disputes.get(dispute.recharge_id)
        if ((current.status if current else None) != expect or event in self._events
                or self._refunded(dispute.recharge_id)[1] != refunded_coins):
            return False
        self._events.add(event)
        user, coins = dispute.user_id, dispute.coins
        if dispute.status is DisputeStatus.OPEN:
            self._ledger.freeze(user, coins, dispute.updated_at)
        elif current is not None:  # open -> won or lost: what it froze is free, or gone
            self._ledger.freeze(user, -coins, dispute.updated_at)
        if dispute.status is DisputeStatus.LOST:
            self._move(user, dispute.recharge_id, -coins, dispute.updated_at, "clawback", None)
        self._disputes[dispute.recharge_id] = dispute
        self._append_trail(list(trail))
        self._outbox_add(notices)
        return True

    async def record_event(self, event: tuple[str, str], recharge_id: str, trail: tuple[TrailEntry, ...]) -> bool:
        if event in self._events:
            return False
        self._events.add(event)
        self._append_trail(list(trail))
        return True

    # -- the ledger's own operations -----------------------------------------------------

    async def open_pools(self, pools: Sequence[str], at: float) -> None:
        for name in pools:
            self._ledger.accounts.setdefault(pool_account(name), [0, 0])

    async def deposit(self, pool: str, coins: int, reference: str, at: float,
                      trail: TrailEntry) -> tuple[str, Transfer | None]:
        held = next((t for t in self._ledger.transfers if t.kind == "deposit" and t.ref == reference), None)
        if held is not None:
            same = (held.credit, held.coins) == (pool_account(pool), coins)
            return ("held", held) if same else ("conflict", None)
        made = self._ledger.transfer(ISSUANCE, pool_account(pool), coins, "deposit", at, None, reference)
        self._append_trail([trail])
        return "made", made

    async def accounts(self, prefix: str = "") -> list[Account]:
        return [Account(a, bal, frozen, self._ledger.lost.get(a, 0), self._ledger.shortfalls.get(a, 0))
                for a, (bal, frozen) in sorted(self._ledger.accounts.items()) if a.startswith(prefix)]

    async def transfers(self, account: str | None = None, after: int = 0, limit: int = 100) -> list[Transfer]:
        return [t for t in self._ledger.transfers if t.seq > after
                and (account is None or account in (t.debit, t.credit))][:limit]

    async def rebalance(self, expect: Mapping[str, int], moves: Sequence[tuple[str, str, int]], at: float,
                        trail: TrailEntry | None) -> bool:
        pools = {a: held[0] for a, held in self._ledger.accounts.items() if a.startswith("pool:")}
        if pools != dict(expect):
            return False
        for source, target, coins in moves:
            self._ledger.transfer(pool_account(source), pool_account(target), coins, "rebalance", at)
        self._ledger.demand.clear()
        if trail is not None:
            self._append_trail([trail])
        return True

    async def pool_demand(self) -> dict[str, int]:
        return {a: n for a, n in self._ledger.demand.items() if n}

    # -- the outbox -----------------------------------------------------------------------

    def _outbox_add(self, notices: tuple[Notice, ...]) -> None:
        for n in notices:
            self._outbox_seq += 1
            self._outbox[n.id] = _Outboxed(n, self._outbox_seq, "pending", 0, n.created_at, n.created_at)

    async def add_notices(self, notices: tuple[Notice, ...]) -> None:
        self._outbox_add(notices)

    async def claim_notices(self, owner: str, now: float, lease_s: float, limit: int = 100) -> list[NoticeRow]:
        first: dict[tuple[str, str], _Outboxed] = {}
        for o in sorted(self._outbox.values(), key=lambda o: o.seq):
            if o.state == "pending" and (o.notice.client, o.notice.key) not in first:
                first[(o.notice.client, o.notice.key)] = o
        due = [o for o in first.values() if o.next_at <= now and o.claimed_until <= now]
        out = []
        for o in sorted(due, key=lambda o: (o.next_at, o.seq))[:limit]:
            o.claimed_by, o.claimed_until = owner, now + lease_s
            out.append(o.row())
        return out

    def _held(self, notice_id: str, owner: str) -> _Outboxed | None:
        o = self._outbox.get(notice_id)
        return o if o is not None and o.state == "pending" and o.claimed_by == owner else None

    async def notice_delivered(self, notice_id: str, owner: str, at: float) -> bool:
        o = self._held(notice_id, owner)
        if o is None:
            return False
        o.state, o.delivered_at, o.attempts, o.claimed_by = "delivered", at, o.attempts + 1, None
        return True

    async def notice_failed(self, notice_id: str, owner: str, next_at: float | None, error: str) -> bool:
        o = self._held(notice_id, owner)
        if o is None:
            return False
        o.attempts, o.last_error, o.claimed_by, o.claimed_until = o.attempts + 1, error[:500], None, 0.0
        if next_at is None:
            o.state = "dead"
        else:
            o.next_at = next_at
        return True

    async def notices(self, state: str, limit: int = 100, after: str | None = None) -> list[NoticeRow]:
        rows = sorted((o for o in self._outbox.values() if o.state == state), key=lambda o: o.seq)
        if after is not None and after in self._outbox:
            rows = [o for o in rows if o.seq > self._outbox[after].seq]
        return [o.row() for o in rows[:limit]]

    async def notice(self, notice_id: str) -> NoticeRow | None:
        o = self._outbox.get(notice_id)
        return None if o is None else o.row()

    async def redeliver(self, notice_id: str, now: float) -> NoticeRow | None:
        o = self._outbox.get(notice_id)
        if o is None:
            return None
        if o.state != "pending" or o.claimed_until <= now:
            o.state, o.next_at, o.window_start, o.claimed_by, o.claimed_until = "pending", now, now, None, 0.0
        return o.row()

    async def outbox_stats(self) -> OutboxStats:
        pending = [o.notice.created_at for o in self._outbox.values() if o.state == "pending"]
        return OutboxStats(len(pending), sum(o.state == "dead" for o in self._outbox.values()),
                           min(pending) if pending else None)

    async def open_recharges(self, now: float) -> OpenRecharges:
        by_status: dict[str, int] = {}
        deadlines = []
        for r in self._recharges.values():
            if r.status not in TERMINAL:
                by_status[r.status.value] = by_status.get(r.status.value, 0) + 1
                deadlines.append(r.deadline())
        return OpenRecharges(by_status, sum(d < now for d in deadlines), min(deadlines, default=None))

    # -- settlement reconciliation (SPEC 21) ---------------------------------------------

    async def recon_start(self, run: ReconRun) -> bool:
        if run.id in self._runs or (run.trigger == "schedule" and any(
                (r.channel, r.date, r.trigger) == (run.channel, run.date, "schedule") and r.status != "failed"
                for r in self._runs.values())):
            return False
        self._runs[run.id] = ReconRun(run.id, run.channel, run.date, run.trigger, "running", run.started_at)
        return True

    async def recon_stage(self, run_id: str, items: Sequence[ReportRow]) -> int:
        staged = self._staged.setdefault(run_id, {})
        new = 0
        for i in items:
            if i.reference not in staged:
                staged[i.reference] = ReportRow(*i)
                new += 1
        return new

    async def recon_matches(self, run_id: str, after: str, limit: int) -> list[MatchRow]:
        staged = self._staged.get(run_id, {})
        out = []
        for ref in sorted(r for r in staged if r > after)[:limit]:
            i = staged[ref]
            rid = self._references.get(ref)
            rec = None if rid is None else self._recharges[rid]
            a = None if rec is None else rec.attempt(ref)
            if rec is None or a is None:
                out.append(MatchRow(*i, None, None, None, None, None, None, None, None, None))
                continue
            out.append(MatchRow(*i, a.channel, a.state.value, rid, rec.status.value, rec.channel, rec.amount_minor,
                                rec.currency, None if rec.settlement is None else rec.settlement.value,
                                self._refunded(rid)[0]))
        return out

    async def recon_unreported(self, run_id: str, channel: str, start: float, end: float, after: str,
                               limit: int) -> list[tuple[str, str, int, str]]:
        staged = self._staged.get(run_id, {})
        out = []
        for ref, rid in self._references.items():
            if ref <= after or ref in staged:
                continue
            rec = self._recharges[rid]
            a = rec.attempt(ref)
            if (a is not None and a.channel == channel and a.state.value == "captured" and start <= a.updated_at < end
                    and rec.status is RechargeStatus.SUCCEEDED and rec.channel == a.channel):
                out.append((ref, rid, rec.amount_minor, rec.currency))
        return sorted(out)[:limit]

    async def recon_found(self, run_id: str, found: Sequence[Discrepancy]) -> None:
        staged = self._found.setdefault(run_id, {})
        for d in found:
            kind = DiscrepancyKind(d.kind)
            staged[(d.reference, kind.value)] = Discrepancy(
                d.reference, kind, d.recharge_id, d.amount_minor, d.currency, _json(d.expected), _json(d.reported),
                d.status, d.resolution)

    async def recon_finish(self, run_id: str, status: str, reason: str | None, at: float, report_items: int,
                           summary: dict[str, Any] | None) -> ReconRun | None:
        run = self._runs.get(run_id)
        if run is None or run.status != "running":
            return None
        found = self._found.pop(run_id, {})
        if status == "completed":
            self._promote(run, [found[k] for k in sorted(found)], at)
        done = replace(run, status=status, reason=reason, finished_at=at, report_items=report_items,
                       summary=_json(summary))
        self._runs[run_id] = done
        return replace(done, summary=_json(summary))

    def _promote(self, run: ReconRun, found: list[Discrepancy], at: float) -> None:
        """The run's findings join the day's discrepancies (in the order of their references);
        the day's others it did not find again are resolved."""
        for f in found:
            key = (run.channel, run.date, f.reference, f.kind.value)
            seq = self._discrepancy_keys.get(key)
            if seq is None:
                self._discrepancy_seq += 1
                seq = self._discrepancy_seq
                self._discrepancy_keys[key] = seq
                self._discrepancies[seq] = replace(f, channel=run.channel, date=run.date, run_id=run.id, seq=seq,
                                                   created_at=at, updated_at=at)
                continue
            held = self._discrepancies[seq]
            again = held.status == "resolved"  # found again after it was resolved: as the run says
            self._discrepancies[seq] = replace(
                held, run_id=run.id, updated_at=at, expected=f.expected, reported=f.reported,
                amount_minor=f.amount_minor, currency=f.currency,
                resolution=f.resolution if again else held.resolution, status=f.status if again else held.status)
        for seq, d in self._discrepancies.items():
            if (d.channel, d.date) == (run.channel, run.date) and d.run_id != run.id and d.status != "resolved":
                self._discrepancies[seq] = replace(d, status="resolved", resolution=f"not found again by {run.id}",
                                                   updated_at=at)

    async def recon_purge(self, run_id: str, limit: int) -> int:
        run = self._runs.get(run_id)
        staged = self._staged.get(run_id)
        if run is None or run.status == "running" or not staged:
            return 0
        gone = sorted(staged)[:limit]
        for ref in gone:
            del staged[ref]
        if not staged:
            del self._staged[run_id]
        return len(gone)

    async def recon_runs(self, channel: str | None = None, limit: int = 50) -> list[ReconRun]:
        runs = sorted((r for r in self._runs.values() if channel is None or r.channel == channel),
                      key=lambda r: (r.started_at, r.id), reverse=True)
        return [replace(r, summary=_json(r.summary)) for r in runs[:limit]]

    async def recon_run(self, run_id: str) -> ReconRun | None:
        run = self._runs.get(run_id)
        return None if run is None else replace(run, summary=_json(run.summary))

    async def discrepancies(self, channel: str, date: str, status: str | None = None, after: int = 0,
                            limit: int = 100) -> list[Discrepancy]:
        return [replace(d, expected=_json(d.expected), reported=_json(d.reported))
                for seq, d in sorted(self._discrepancies.items()) if seq > after and d.channel == channel
                and d.date == date and (status is None or d.status == status)][:limit]

    async def open_discrepancies(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self._discrepancies.values():
            if d.status != "resolved":
                out[d.channel] = out.get(d.channel, 0) + 1
        return out

    async def resolve_discrepancy(self, seq: int, status: str, resolution: str, at: float) -> bool:
        d = self._discrepancies.get(seq)
        if d is None:
            return False
        self._discrepancies[seq] = replace(d, status=status, resolution=resolution, updated_at=at)
        return True

    # -- recharge templates (SPEC 22) ------------------------------------------------------

    async def create_template(self, template: Template, max_per_user: int) -> bool:
        if template.id in self._templates:
            raise ValueError(f"template id {template.id} is taken")
        if len(self._own_templates(template.client, template.user_id)) >= max_per_user:
            return False
        self._templates[template.id] = replace(template, instrument=_json(template.instrument))
        return True

    def _own_templates(self, client: str, user_id: str) -> list[Template]:
        own = [t for t in self._templates.values() if (t.client, t.user_id) == (client, user_id)]
        return sorted(own, key=lambda t: (t.created_at, t.id))

    async def templates_of(self, client: str, user_id: str) -> list[Template]:
        return self._own_templates(client, user_id)

    async def get_template(self, template_id: str) -> Template | None:
        return self._templates.get(template_id)

    async def delete_template(self, client: str, user_id: str, template_id: str) -> bool:
        t = self._templates.get(template_id)
        if t is None or (t.client, t.user_id) != (client, user_id):
            return False
        del self._templates[template_id]
        return True

    # -- the fleet view ------------------------------------------------------------------

    async def put_fleet_stats(self, instance: str, blob: bytes, at: float) -> None:
        kept = fleet_blob(instance, blob, at)
        self._fleet[instance] = (float(at), kept)

    async def fleet_stats(self, since: float, limit: int = 256) -> list[tuple[str, float, bytes]]:
        since = fleet_time(since)
        if limit < 0:
            raise ValueError(f"limit {limit} < 0")
        recent = sorted(((i, at, blob) for i, (at, blob) in self._fleet.items() if at >= since),
                        key=lambda r: (-r[1], r[0]))
        return recent[:limit]

    async def purge_fleet_stats(self, before: float) -> int:
        before = fleet_time(before)
        gone = [i for i, (at, _) in self._fleet.items() if at < before]
        for i in gone:
            del self._fleet[i]
        return len(gone)

    # -- for the invariant checks ---------------------------------------------------------

    def facts(self) -> Any:
        """What SPEC 18's invariants are checked on (``orchestrator.invariants``)."""
        from orchestrator.invariants import Facts

        led = self._ledger
        return Facts(
            recharges=[(r.id, r.status.value, r.coins + r.bonus_coins, r.user_id, r.channel, r.reason, r.client,
                        r.idempotency_key, r.amount_minor, r.currency, r.settlement and r.settlement.value)
                       for r in self._recharges.values()],
            attempts=[(a.reference, a.recharge_id, a.channel, a.state.value)
                      for r in self._recharges.values() for a in r.attempts],
            credits=[(t.recharge_id, t.credit.removeprefix("wallet:"), t.coins) for t in led.transfers
                     if t.kind == "credit"],
            wallets=[(a.removeprefix("wallet:"), bal, led.summed(a), frozen) for a, (bal, frozen) in led.accounts.items()
                     if a.startswith("wallet:")],
            refunds=[(r.id, r.recharge_id, r.amount_minor, r.coins, r.status.value) for r in self._refunds.values()],
            disputes=[(d.recharge_id, d.status.value, d.coins) for d in self._disputes.values()],
            moves=[(t.recharge_id, t.kind, t.ref, t.coins if t.credit.startswith("wallet:") else -t.coins)
                   for t in led.transfers if t.kind not in ("credit", "deposit", "rebalance")],
            accounts=[(a, bal, led.summed(a)) for a, (bal, _) in led.accounts.items()],
        )
