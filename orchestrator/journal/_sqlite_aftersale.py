"""The SQLite journal's writes after the sale (SPEC 19): refunds, disputes, and the
outbox of notifications. Ops like ``_sqlite_ops``'s, run by the same group commit; their
arguments arrive as plain rows (``sqlite.py`` encodes them), and each checks every guard
before it writes anything, so a refused op has nothing to roll back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.journal import _wire
from orchestrator.journal._rows import DISPUTE_COLUMNS, NOTICE_COLUMNS, REFUND_COLUMNS
from orchestrator.journal._sqlite_ledger import freeze, move, spendable
from orchestrator.journal._sqlite_trail import insert_trail
from orchestrator.model import Notice

__all__ = ["AFTERSALE_OPS", "add_notices"]

_REFUNDED = ("SELECT COALESCE(SUM(amount_minor), 0), COALESCE(SUM(coins), 0) FROM refunds "
             "WHERE recharge_id=? AND status != 'failed'")


def add_notices(conn: sqlite3.Connection, notices: Sequence[Notice] | Sequence[Sequence[Any]]) -> None:
    conn.executemany(
        "INSERT INTO outbox(id, client, key, type, created_at, body, state, attempts, next_at, window_start) "
        "VALUES (?,?,?,?,?,?,'pending',0,?,?)",
        [(n[0], n[1], n[2], n[3], n[4], n[5], n[4], n[4]) for n in (_wire.enc_notice(x) if isinstance(x, Notice)
                                                                    else x for x in notices)])


def _event_new(conn: sqlite3.Connection, event: Sequence[str] | None, reference: str | None, status: str,
               at: float) -> bool:
    if event is None:
        return True
    return conn.execute("INSERT OR IGNORE INTO provider_events(channel, event_id, reference, status, received_at) "
                        "VALUES (?,?,?,?,?)", (event[0], event[1], reference, status, at)).rowcount == 1


# -- refunds --------------------------------------------------------------------------------


def op_create_refund(conn: sqlite3.Connection, row: list[Any], trail: list[Any], guard: list[Any],
                     notices: list[list[Any]]) -> Any:
    """None: journaled. ``["held", id]``: the key is that refund's. Else the refusal code."""
    rid, recharge_id, client, key, user_id, coins = row[0], row[1], row[2], row[3], row[5], row[10]
    held = conn.execute("SELECT id FROM refunds WHERE client=? AND idempotency_key=?", (client, key)).fetchone()
    if held is not None:
        return ["held", held[0]]
    refunded_minor, refunded_coins, dispute, allow_negative = guard
    dispute_now = conn.execute("SELECT status FROM disputes WHERE recharge_id=?", (recharge_id,)).fetchone()
    if (list(conn.execute(_REFUNDED, (recharge_id,)).fetchone()) != [refunded_minor, refunded_coins]
            or (dispute_now[0] if dispute_now else None) != dispute):
        return "stale"
    if not allow_negative and spendable(conn, user_id) < coins:
        return "insufficient_coins"
    conn.execute(f"INSERT INTO refunds({REFUND_COLUMNS}) VALUES ({','.join('?' * 18)})", row)
    move(conn, user_id, recharge_id, -coins, row[13], "refund", rid)
    insert_trail(conn, (_wire.trail(trail),))
    add_notices(conn, notices)
    return None


def op_settle_refund(conn: sqlite3.Connection, refund_id: str, status: str, at: float, error: str | None,
                     event: list[str] | None, trail: list[list[Any]], notices: list[list[Any]]) -> bool:
    row = conn.execute("SELECT recharge_id, user_id, coins, reference FROM refunds WHERE id=? AND status='pending'",
                       (refund_id,)).fetchone()
    if row is None or not _event_new(conn, event, row[3], f"refund_{status}", at):
        return False
    recharge_id, user_id, coins, _ = row
    conn.execute("UPDATE refunds SET status=?, updated_at=?, error=?, next_at=NULL WHERE id=?",
                 (status, at, error, refund_id))
    if status == "failed":
        move(conn, user_id, recharge_id, coins, at, "refund_reversal", refund_id)
        dispute = conn.execute("SELECT status FROM disputes WHERE recharge_id=?", (recharge_id,)).fetchone()
        if dispute is not None and dispute[0] in ("open", "lost"):
            # The coins came back to a disputed recharge: held with the rest, or gone with it.
            conn.execute("UPDATE disputes SET coins=coins+?, updated_at=? WHERE recharge_id=?",
                         (coins, at, recharge_id))
            if dispute[0] == "open":
                freeze(conn, user_id, coins, at)
            else:
                move(conn, user_id, recharge_id, -coins, at, "clawback", refund_id)
    insert_trail(conn, [_wire.trail(t) for t in trail])
    add_notices(conn, notices)
    return True


def op_retry_refund(conn: sqlite3.Connection, refund_id: str, next_at: float, error: str | None) -> None:
    conn.execute("UPDATE refunds SET next_at=?, error=?, tries=tries+1 WHERE id=? AND status='pending'",
                 (next_at, error, refund_id))


def op_claim_refunds(conn: sqlite3.Connection, now: float, retry_at: float, limit: int) -> list[list[Any]]:
    rows = conn.execute(f"SELECT {REFUND_COLUMNS} FROM refunds WHERE status='pending' AND next_at <= ? "
                        "ORDER BY next_at LIMIT ?", (now, limit)).fetchall()
    conn.executemany("UPDATE refunds SET next_at=? WHERE id=?", [(retry_at, r[0]) for r in rows])
    return [[*r[:16], retry_at, r[17]] for r in rows]


# -- disputes -------------------------------------------------------------------------------


def op_apply_dispute(conn: sqlite3.Connection, row: list[Any], expect: str | None, refunded_coins: int,
                     event: list[str], trail: list[list[Any]], notices: list[list[Any]]) -> bool:
    recharge_id, user_id, status, coins, _, at = row
    current = conn.execute("SELECT status FROM disputes WHERE recharge_id=?", (recharge_id,)).fetchone()
    if ((current[0] if current else None) != expect
            or conn.execute(_REFUNDED, (recharge_id,)).fetchone()[1] != refunded_coins):
        return False
    if not _event_new(conn, event, None, f"dispute_{status}", at):
        return False
    if status == "open":
        freeze(conn, user_id, coins, at)
    elif current is not None:  # open -> won or lost: what it froze is free, or gone
        freeze(conn, user_id, -coins, at)
    if status == "lost":
        move(conn, user_id, recharge_id, -coins, at, "clawback", None)
    conn.execute(f"INSERT INTO disputes({DISPUTE_COLUMNS}) VALUES (?,?,?,?,?,?) ON CONFLICT(recharge_id) DO UPDATE "
                 "SET status=excluded.status, coins=excluded.coins, updated_at=excluded.updated_at", row)
    insert_trail(conn, [_wire.trail(t) for t in trail])
    add_notices(conn, notices)
    return True


def op_record_event(conn: sqlite3.Connection, event: list[str], recharge_id: str, trail: list[list[Any]]) -> bool:
    entries = [_wire.trail(t) for t in trail]
    if not _event_new(conn, event, None, "recorded", entries[0].at if entries else 0.0):
        return False
    insert_trail(conn, entries)
    return True


# -- the outbox -----------------------------------------------------------------------------

# Due, not held by a live claim, and the oldest pending notice of its client's key (in order).
_CLAIMABLE_NOTICES = (
    "SELECT o.seq FROM outbox o WHERE o.state = 'pending' AND o.next_at <= ? AND o.claimed_until <= ? "
    "AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' AND p.key = o.key AND "
    "p.client = o.client AND p.seq < o.seq) ORDER BY o.next_at, o.seq LIMIT ?"
)


def op_claim_notices(conn: sqlite3.Connection, owner: str, now: float, lease_s: float,
                     limit: int) -> list[list[Any]]:
    seqs = [s for (s,) in conn.execute(_CLAIMABLE_NOTICES, (now, now, limit)).fetchall()]
    conn.executemany("UPDATE outbox SET claimed_by=?, claimed_until=? WHERE seq=?",
                     [(owner, now + lease_s, s) for s in seqs])
    return [list(conn.execute(f"SELECT {NOTICE_COLUMNS} FROM outbox WHERE seq=?", (s,)).fetchone()) for s in seqs]


def op_notice_delivered(conn: sqlite3.Connection, notice_id: str, owner: str, at: float) -> bool:
    return conn.execute("UPDATE outbox SET state='delivered', delivered_at=?, attempts=attempts+1, claimed_by=NULL "
                        "WHERE id=? AND state='pending' AND claimed_by=?", (at, notice_id, owner)).rowcount == 1


def op_notice_failed(conn: sqlite3.Connection, notice_id: str, owner: str, next_at: float | None, error: str) -> bool:
    return conn.execute(
        "UPDATE outbox SET attempts=attempts+1, last_error=?, claimed_by=NULL, claimed_until=0, "
        "state=CASE WHEN ? IS NULL THEN 'dead' ELSE 'pending' END, next_at=COALESCE(?, next_at) "
        "WHERE id=? AND state='pending' AND claimed_by=?",
        (error[:500], next_at, next_at, notice_id, owner)).rowcount == 1


def op_redeliver(conn: sqlite3.Connection, notice_id: str, now: float) -> list[Any] | None:
    # A notice a dispatcher holds right now is left to it (it is being delivered).
    conn.execute("UPDATE outbox SET state='pending', next_at=?, window_start=?, claimed_by=NULL, claimed_until=0 "
                 "WHERE id=? AND NOT (state='pending' AND claimed_until > ?)", (now, now, notice_id, now))
    row = conn.execute(f"SELECT {NOTICE_COLUMNS} FROM outbox WHERE id=?", (notice_id,)).fetchone()
    return None if row is None else list(row)


AFTERSALE_OPS: dict[str, Callable[..., Any]] = {
    "create_refund": op_create_refund,
    "settle_refund": op_settle_refund,
    "retry_refund": op_retry_refund,
    "claim_refunds": op_claim_refunds,
    "apply_dispute": op_apply_dispute,
    "record_event": op_record_event,
    "add_notices": lambda conn, notices: add_notices(conn, notices),
    "claim_notices": op_claim_notices,
    "notice_delivered": op_notice_delivered,
    "notice_failed": op_notice_failed,
    "redeliver": op_redeliver,
}
