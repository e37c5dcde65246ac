"""The SQLite journal's double-entry ledger (SPEC 20): transfers between accounts, each
one row appended with both balances after it, in the transaction of the change it belongs
to. Run by the writer like every op (``_sqlite_ops``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from orchestrator.journal._ledger import POOLS_FROM, POOLS_TO, SETTLEMENT_FAILED, choose_pool
from orchestrator.journal._sqlite_trail import insert_trail
from orchestrator.journal import _wire
from orchestrator.model import DEFAULT_POOL, ISSUANCE, Credit, pool_account, wallet_account

__all__ = ["LEDGER_OPS", "claw_back", "credit", "freeze", "move", "spendable"]

_ADD = ("INSERT INTO accounts(account, balance, updated_at) VALUES (?,?,?) ON CONFLICT(account) DO UPDATE SET "
        "balance=balance+excluded.balance, updated_at=excluded.updated_at RETURNING balance")


def transfer(conn: sqlite3.Connection, debit: str, credit_to: str, coins: int, kind: str, at: float,
             recharge_id: str | None = None, ref: str | None = None, note: str | None = None) -> int:
    """Move ``coins`` (> 0) from ``debit`` to ``credit_to``; answers the transfer's seq."""
    (debit_after,) = conn.execute(_ADD, (debit, -coins, at)).fetchone()
    (credit_after,) = conn.execute(_ADD, (credit_to, coins, at)).fetchone()
    return int(conn.execute(
        "INSERT INTO transfers(debit, credit, coins, kind, recharge_id, ref, note, at, debit_after, credit_after) "
        "VALUES (?,?,?,?,?,?,?,?,?,?)",
        (debit, credit_to, coins, kind, recharge_id, ref, note, at, debit_after, credit_after)).lastrowid)


def _pools(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT account, balance FROM accounts WHERE account >= ? AND account < ?",
                             (POOLS_FROM, POOLS_TO)).fetchall())


def credit(conn: sqlite3.Connection, c: Credit) -> bool:
    """A succeeded recharge's coins, from its pool to the wallet; False if it was credited."""
    if conn.execute("SELECT 1 FROM transfers WHERE kind = 'credit' AND recharge_id = ?",
                    (c.recharge_id,)).fetchone() is not None:
        return False
    pool, note = choose_pool(c, _pools(conn))
    transfer(conn, pool, wallet_account(c.user_id), c.coins, "credit", c.at, c.recharge_id, None, note)
    conn.execute("UPDATE accounts SET credited = credited + ? WHERE account = ?", (c.coins, pool))
    if note is not None and c.pool is not None:
        conn.execute("UPDATE accounts SET shortfalls = shortfalls + 1 WHERE account = ?", (pool_account(c.pool),))
    return True


def move(conn: sqlite3.Connection, user_id: str, recharge_id: str, coins: int, at: float, kind: str,
         ref: str | None) -> None:
    """Coins into (> 0) or out of the wallet, against the pool the recharge's credit drew on."""
    if coins == 0:
        return
    row = conn.execute("SELECT debit FROM transfers WHERE kind = 'credit' AND recharge_id = ?",
                       (recharge_id,)).fetchone()
    pool = row[0] if row else pool_account(DEFAULT_POOL)
    wallet = wallet_account(user_id)
    if coins > 0:
        transfer(conn, pool, wallet, coins, kind, at, recharge_id, ref)
    else:
        transfer(conn, wallet, pool, -coins, kind, at, recharge_id, ref)


def claw_back(conn: sqlite3.Connection, c: Credit) -> None:
    """An instant credit whose payment failed: its coins back from the wallet (which may
    go negative: a debt) to its pool, and booked as the pool's loss."""
    row = conn.execute("SELECT debit FROM transfers WHERE kind = 'credit' AND recharge_id = ?",
                       (c.recharge_id,)).fetchone()
    pool = row[0] if row else pool_account(DEFAULT_POOL)
    transfer(conn, wallet_account(c.user_id), pool, c.coins, "clawback", c.at, c.recharge_id, None,
             SETTLEMENT_FAILED)
    conn.execute("UPDATE accounts SET lost = lost + ? WHERE account = ?", (c.coins, pool))


def freeze(conn: sqlite3.Connection, user_id: str, coins: int, at: float) -> None:
    """Hold (> 0) or free the wallet's coins (the CHECK on frozen judges the inserted row too)."""
    account = wallet_account(user_id)
    conn.execute("INSERT INTO accounts(account, balance, updated_at) VALUES (?,0,?) ON CONFLICT(account) DO NOTHING",
                 (account, at))
    conn.execute("UPDATE accounts SET frozen = frozen + ? WHERE account = ?", (coins, account))


def spendable(conn: sqlite3.Connection, user_id: str) -> int:
    row = conn.execute("SELECT balance - frozen FROM accounts WHERE account = ?", (wallet_account(user_id),)).fetchone()
    return int(row[0]) if row else 0


# -- ops of their own --------------------------------------------------------------------------


def op_deposit(conn: sqlite3.Connection, pool: str, coins: int, reference: str, at: float,
               trail: list[Any]) -> Any:
    """``["made" | "held", seq]``, or ``["conflict", pool, coins]`` when the reference made another deposit."""
    row = conn.execute("SELECT seq, credit, coins FROM transfers WHERE kind = 'deposit' AND ref = ?",
                       (reference,)).fetchone()
    if row is not None:
        same = (row[1], row[2]) == (pool_account(pool), coins)
        return ["held", row[0]] if same else ["conflict", row[1], row[2]]
    seq = transfer(conn, ISSUANCE, pool_account(pool), coins, "deposit", at, None, reference)
    insert_trail(conn, (_wire.trail(trail),))
    return ["made", seq]


def op_open_pools(conn: sqlite3.Connection, pools: list[str], at: float) -> None:
    conn.executemany("INSERT INTO accounts(account, balance, updated_at) VALUES (?,0,?) ON CONFLICT(account) DO NOTHING",
                     [(pool_account(p), at) for p in pools])


def op_rebalance(conn: sqlite3.Connection, expect: dict[str, int], moves: list[list[Any]], at: float,
                 trail: list[Any] | None) -> bool:
    """Apply ``moves`` ([from pool, to pool, coins]) if every pool still holds what the plan read,
    and start the pools' demand counts again."""
    if _pools(conn) != expect:
        return False
    for source, target, coins in moves:
        transfer(conn, pool_account(source), pool_account(target), coins, "rebalance", at)
    conn.execute("UPDATE accounts SET credited_mark = credited WHERE account >= ? AND account < ?",
                 (POOLS_FROM, POOLS_TO))
    if trail is not None:
        insert_trail(conn, (_wire.trail(trail),))
    return True


LEDGER_OPS: dict[str, Callable[..., Any]] = {
    "deposit": op_deposit,
    "open_pools": op_open_pools,
    "rebalance": op_rebalance,
}
