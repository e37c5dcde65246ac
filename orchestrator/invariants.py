"""SPEC section 18's money invariants, checked against the journal and the providers'
own ledgers. Used by the end-to-end tests, the crash tests and the demo's summary.

Each check returns human-readable violations; an empty list means the money is right.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.clock import month_of

__all__ = ["Facts", "LedgerPayment", "Report", "SqliteFile", "check", "check_facts", "facts_of", "ledger_violations"]


@dataclass(frozen=True, slots=True)
class LedgerPayment:
    """One payment as the provider holds it."""

    channel: str
    reference: str
    status: str  # captured, pending, declined, voided, refunded
    amount_minor: int | None = None  # what the provider took, when the ledger says
    currency: str | None = None
    refunded_minor: int | None = None  # what it gave back (partial refunds), when the ledger says


class _Queryable(Protocol):
    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True, slots=True)
class Report:
    recharges: int
    by_status: dict[str, int]
    captures_kept: int
    refunded: int
    credits: int
    violations: list[str]

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True, slots=True)
class Facts:
    """What the invariants are checked on, read from a journal at one moment.
    ``recharges``: (id, status, coins + bonus, user, channel, reason, client, key,
    amount_minor, currency, settlement);
    ``attempts``: (reference, recharge id, channel, state); ``credits``: (recharge id,
    user, coins); ``wallets``: (user, balance, sum of its entries, frozen);
    ``refunds``: (id, recharge id, amount_minor, coins, status); ``disputes``: (recharge id,
    status, coins); ``moves``: every wallet transfer that is not a credit (recharge id, kind,
    ref, coins into the wallet); ``accounts``: every ledger account (account, balance, what
    its transfers sum to)."""

    recharges: list[tuple[Any, ...]]
    attempts: list[tuple[Any, ...]]
    credits: list[tuple[Any, ...]]
    wallets: list[tuple[Any, ...]]
    refunds: list[tuple[Any, ...]] = field(default_factory=list)
    disputes: list[tuple[Any, ...]] = field(default_factory=list)
    moves: list[tuple[Any, ...]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)  # (account, balance, sum of its transfers)


# Each account with what its transfers sum to: one pass over the transfers, not one per account.
_ACCOUNTS = (
    "SELECT a.account, a.balance, COALESCE(t.total, 0), a.frozen FROM accounts a LEFT JOIN ("
    "SELECT account, SUM(coins) AS total FROM (SELECT credit AS account, coins FROM transfers "
    "UNION ALL SELECT debit AS account, -coins FROM transfers) moves GROUP BY account) t ON t.account = a.account"
)


async def facts_of(journal: _Queryable) -> Facts:
    """The facts of a SQL journal (or of its file, read from outside)."""
    accounts = await journal.query(_ACCOUNTS)
    return Facts(
        recharges=await journal.query(
            "SELECT id, status, coins + bonus_coins, user_id, channel, reason, client, idempotency_key, amount_minor, "
            "currency, settlement FROM recharges"),
        attempts=await journal.query("SELECT reference, recharge_id, channel, state FROM attempts"),
        credits=await journal.query("SELECT recharge_id, substr(credit, 8), coins FROM transfers WHERE kind = 'credit'"),
        wallets=[(a[7:], balance, total, frozen) for a, balance, total, frozen in accounts if a.startswith("wallet:")],
        refunds=await journal.query("SELECT id, recharge_id, amount_minor, coins, status FROM refunds"),
        disputes=await journal.query("SELECT recharge_id, status, coins FROM disputes"),
        moves=await journal.query(
            "SELECT recharge_id, kind, ref, CASE WHEN credit LIKE 'wallet:%' THEN coins ELSE -coins END FROM transfers "
            "WHERE kind NOT IN ('credit', 'deposit', 'rebalance')"),
        accounts=[(a, balance, total) for a, balance, total, _ in accounts],
    )


async def check(journal: Any, ledger: Iterable[LedgerPayment], *, settled: bool = True) -> Report:
    """``settled``: every recharge's deadline has passed, so each must be terminal, or
    ``pending`` with a stated reason. ``journal``: a SQL journal (or ``SqliteFile``),
    or one that gives its ``facts()`` itself (the in-memory journal)."""
    if hasattr(journal, "facts"):
        return check_facts(journal.facts(), ledger, settled=settled)
    report = check_facts(await facts_of(journal), ledger, settled=settled)
    report.violations.extend(await _totals_violations(journal))
    return report


def check_facts(facts: Facts, ledger: Iterable[LedgerPayment], *, settled: bool = True) -> Report:
    v: list[str] = []
    recharges = {r[0]: r for r in facts.recharges}
    keys = Counter((r[6], r[7]) for r in recharges.values())
    v += [f"{n} recharges share client/key {k}" for k, n in keys.items() if n > 1]

    attempts = {a[0]: a for a in facts.attempts}
    kept: dict[str, list[LedgerPayment]] = defaultdict(list)
    refunded = 0
    for p in ledger:
        att = attempts.get(p.reference)
        if att is None:
            if p.status in ("captured", "pending"):
                v.append(f"provider {p.channel} holds {p.status} payment {p.reference} that no attempt made")
            continue
        if att[2] != p.channel:
            v.append(f"payment {p.reference} is on {p.channel} but its attempt was on {att[2]}")
        if p.status == "captured" or (p.status == "refunded" and att[3] == "captured"):
            kept[att[1]].append(p)  # kept, and maybe refunded since by the client's refunds
        elif p.status == "refunded":
            refunded += 1

    credits = defaultdict(list)
    for e in facts.credits:
        credits[e[0]].append(e)
    settlement_clawed: Counter[str] = Counter()
    for rid, kind, ref, moved in facts.moves:
        if kind == "clawback" and ref is None:
            settlement_clawed[rid] -= moved

    for rid, (_, status, coins, user, channel, reason, _c, _k, amount, currency, *rest) in recharges.items():
        caps = kept.get(rid, [])
        creds = credits.get(rid, [])
        settlement = rest[0] if rest else None
        if status == "succeeded" and settlement in ("pending", "failed"):
            # Credited while the payment was pending (SPEC 20): kept once settled; if it failed,
            # nothing kept and every coin clawed back.
            if len(caps) > (1 if settlement == "pending" else 0):
                v.append(f"{rid} settlement {settlement} but provider(s) kept {len(caps)} capture(s)")
            if settlement == "pending" and not caps and not any(
                    a[1] == rid and a[3] == "pending" for a in attempts.values()):
                v.append(f"{rid} waits for its payment to settle but no attempt of it is pending")
            if settlement == "failed" and settlement_clawed[rid] != coins:
                v.append(f"{rid}'s payment failed to settle but {settlement_clawed[rid]} of its {coins} coins were "
                         "clawed back")
            if len(creds) != 1:
                v.append(f"{rid} succeeded with {len(creds)} credits (want exactly 1)")
        elif status == "succeeded":
            if len(caps) != 1:
                v.append(f"{rid} succeeded with {len(caps)} kept captures (want exactly 1)")
            elif caps[0].channel != channel:
                v.append(f"{rid} succeeded on {channel} but the capture is on {caps[0].channel}")
            elif (caps[0].amount_minor is not None and caps[0].amount_minor != amount) or (
                    caps[0].currency is not None and caps[0].currency != currency):
                v.append(f"{rid} credited for {amount} {currency} but the provider captured "
                         f"{caps[0].amount_minor} {caps[0].currency}")
            if len(creds) != 1:
                v.append(f"{rid} succeeded with {len(creds)} credits (want exactly 1)")
            elif creds[0][2] != coins or creds[0][1] != user:
                v.append(f"{rid} credited {creds[0][2]} coins to {creds[0][1]}, want {coins} to {user}")
        else:
            if creds:
                v.append(f"{rid} is {status} but was credited")
            if len(caps) > 1 or (caps and status != "pending"):
                v.append(f"{rid} is {status} but provider {caps[0].channel} kept {len(caps)} capture(s), "
                         f"the first {caps[0].reference}")
        if settled and status in ("processing", "requires_action"):
            v.append(f"{rid} still {status} after its deadline")
        if settled and status == "pending" and not reason:
            v.append(f"{rid} pending with no reason")

    for rid in set(credits) - set(recharges):
        v.append(f"credit for unknown recharge {rid}")
    for user, coins, total, *_ in facts.wallets:
        if coins != total:
            v.append(f"wallet {user} holds {coins} coins but its entries sum to {total}")
    v += _after_sale(facts, recharges, credits, kept)
    v += ledger_violations(facts.accounts)

    return Report(
        recharges=len(recharges),
        by_status=dict(Counter(r[1] for r in recharges.values())),
        captures_kept=sum(len(c) for c in kept.values()),
        refunded=refunded,
        credits=sum(len(c) for c in credits.values()),
        violations=v,
    )


def _after_sale(facts: Facts, recharges: dict[str, tuple[Any, ...]], credits: dict[str, list[tuple[Any, ...]]],
                kept: dict[str, list[LedgerPayment]]) -> list[str]:
    """Refunds and disputes (SPEC 18, 19): no refund past its recharge's amount or coins,
    only of succeeded recharges, each with its coins out (and back if it failed), the
    provider's refunds matching ours, frozen coins those of open disputes, a lost
    dispute's coins clawed back once."""
    v: list[str] = []
    by_recharge: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for r in facts.refunds:
        by_recharge[r[1]].append(r)
    moves: Counter[tuple[str, str | None]] = Counter()
    clawed: Counter[str] = Counter()
    for rid, kind, ref, coins in facts.moves:
        moves[(kind, ref)] += coins
        if kind == "clawback":
            clawed[rid] += coins
    for rid, refunds in by_recharge.items():
        rec = recharges.get(rid)
        if rec is None or rec[1] != "succeeded":
            v.append(f"refunds of {rid}, which is {rec[1] if rec else 'unknown'}")
            continue
        live = [r for r in refunds if r[4] != "failed"]
        if sum(r[2] for r in live) > rec[8]:
            v.append(f"{rid} refunded {sum(r[2] for r in live)} of its {rec[8]} {rec[9]}")
        credited = sum(c[2] for c in credits.get(rid, []))
        if sum(r[3] for r in live) > credited:
            v.append(f"{rid} refunds take {sum(r[3] for r in live)} coins of the {credited} credited")
        for ref, _, _, coins, status in refunds:
            if coins and moves[("refund", ref)] != -coins:
                v.append(f"refund {ref} took {-moves[('refund', ref)]} coins from the wallet, want {coins}")
            back = moves[("refund_reversal", ref)]
            if back != (coins if status == "failed" else 0):
                v.append(f"refund {ref} is {status} but gave back {back} coins")
        done = sum(r[2] for r in refunds if r[4] == "succeeded")
        pending = sum(r[2] for r in refunds if r[4] == "pending")
        for p in kept.get(rid, []):
            given = p.refunded_minor
            if given is not None and not done <= given <= done + pending:
                v.append(f"{rid}: provider {p.channel} refunded {given}, our refunds say {done} "
                         f"(+{pending} pending)")
    frozen: Counter[str] = Counter()
    users = {r[0]: r[3] for r in facts.recharges}
    for rid, status, coins in facts.disputes:
        if status == "open":
            frozen[users.get(rid, "?")] += coins
        if clawed[rid] != (-coins if status == "lost" else 0):
            v.append(f"{rid}'s dispute is {status} ({coins} coins) but {-clawed[rid]} were clawed back")
    for user, _, _, *held in facts.wallets:
        if held and held[0] != frozen[user]:
            v.append(f"wallet {user} has {held[0]} coins frozen, its open disputes {frozen[user]}")
    return v


def ledger_violations(accounts: Iterable[tuple[Any, ...]]) -> list[str]:
    """SPEC 20: every account's balance is what its transfers sum to, and the ledger sums to
    zero (every coin a wallet or a pool holds came from issuance)."""
    v, total = [], 0
    for account, balance, summed in accounts:
        total += balance
        if balance != summed:
            v.append(f"account {account} holds {balance} coins but its transfers sum to {summed}")
    if total != 0:
        v.append(f"the ledger sums to {total}, not 0")
    return v


async def _totals_violations(journal: _Queryable) -> list[str]:
    """Each user's totals (kept with every credit) say what its succeeded recharges say
    (a clawed-back instant credit was never paid: not counted): count, sum, the newest month
    one was created in, and how many were created in it."""
    want: dict[tuple[str, str], list[int]] = {}
    for user, currency, amount, created_at in await journal.query(
        "SELECT user_id, currency, amount_minor, created_at FROM recharges WHERE status = 'succeeded' "
        "AND (settlement IS NULL OR settlement != 'failed')"
    ):
        month = month_of(created_at)
        w = want.setdefault((user, currency), [0, 0, month, 0])
        w[0] += 1
        w[1] += amount
        if month > w[2]:
            w[2], w[3] = month, 0
        if month == w[2]:
            w[3] += 1
    have = {(r[0], r[1]): [int(x) for x in r[2:]] for r in await journal.query(
        "SELECT user_id, currency, recharges, amount_minor, month_start, month_recharges FROM user_recharge_totals")}
    v = []
    for key in sorted(set(want) | set(have)):
        if have.get(key) != want.get(key):
            v.append(f"totals of {key[0]} in {key[1]} are {have.get(key)}, its succeeded recharges say {want.get(key)}"
                     " (count, sum, newest month, created in it)")
    return v


class SqliteFile:
    """Read-only queries on a journal's SQLite file, from outside the process that writes
    it (the demo's summary, the end-to-end tests)."""

    def __init__(self, path: Any) -> None:
        self.path = path

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import sqlite3

        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
