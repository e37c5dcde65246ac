"""``orchestrator ledger verify``: the books of a journal, checked from its tables (SPEC 20).

Replays every transfer in order from zero: each one's balances after it must be what the
replay reaches, each account's balance what its transfers sum to, and the ledger must sum
to zero; then the audit chain. Names the first transfer or account that disagrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.audit import verify_rows

__all__ = ["LedgerReport", "verify_ledger"]

_PAGE = 50_000  # transfers read at a time: a long ledger never sits in memory whole


class _Queryable(Protocol):
    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]: ...

    async def audit_rows(self) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True, slots=True)
class LedgerReport:
    transfers: int
    accounts: int
    problem: str | None  # the first disagreement, or None
    audit_entries: int
    audit_problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.audit_problem is None


async def verify_ledger(journal: _Queryable) -> LedgerReport:
    running: dict[str, int] = {}
    after, count, problem = 0, 0, None
    while problem is None:
        page = await journal.query(
            "SELECT seq, debit, credit, coins, debit_after, credit_after FROM transfers WHERE seq > ? ORDER BY seq "
            "LIMIT ?", (after, _PAGE))
        for seq, debit, credit, coins, debit_after, credit_after in page:
            count += 1
            running[debit] = running.get(debit, 0) - coins
            running[credit] = running.get(credit, 0) + coins
            if coins <= 0 or debit == credit:
                problem = f"transfer {seq}: {coins} coins from {debit} to {credit}"
            elif (running[debit], running[credit]) != (debit_after, credit_after):
                problem = (f"transfer {seq}: after it {debit} and {credit} should hold {running[debit]} and "
                           f"{running[credit]} coins, it says {debit_after} and {credit_after}")
            if problem is not None:
                break
        if len(page) < _PAGE:
            break
        after = page[-1][0]
    accounts = await journal.query("SELECT account, balance FROM accounts ORDER BY account")
    if problem is None:
        for account, balance in accounts:
            if balance != running.get(account, 0):
                problem = f"account {account} holds {balance} coins, its transfers sum to {running.get(account, 0)}"
                break
        else:
            missing = sorted(set(running) - {a for a, _ in accounts})
            total = sum(b for _, b in accounts)
            if missing:
                problem = f"account {missing[0]} has transfers but no balance"
            elif total != 0:
                problem = f"the ledger sums to {total} coins, not 0"
    audit = verify_rows(await journal.audit_rows())
    audit_problem = None if audit.ok else f"entry {audit.broken_at}: {audit.reason}"
    return LedgerReport(count, len(accounts), problem, audit.entries, audit_problem)
