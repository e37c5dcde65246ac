"""The SQLite journal's settlement reconciliation (SPEC 21): a run's report and findings
staged while it reads, then kept or dropped in one transaction. Run by the writer like
every op (``_sqlite_ops``); the reads are the journal's (``sqlite.py``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from orchestrator.journal._rows import RECON_COLUMNS

__all__ = ["MATCHES", "RECON_OPS", "UNREPORTED"]

# A staged item and what the journal holds under its reference (MatchRow's fields).
MATCHES = (
    "SELECT s.reference, s.provider_ref, s.status, s.amount_minor, s.currency, s.fee_minor, s.settled_at, a.channel, "
    "a.state, a.recharge_id, r.status, r.channel, r.amount_minor, r.currency, r.settlement, "
    "(SELECT COALESCE(SUM(f.amount_minor), 0) FROM refunds f WHERE f.recharge_id = r.id AND f.status != 'failed') FROM recon_report s "
    "LEFT JOIN attempts a ON a.reference = s.reference LEFT JOIN recharges r ON r.id = a.recharge_id "
    "WHERE s.run_id = ? AND s.reference > ? ORDER BY s.reference LIMIT ?"
)
# Kept captures of a channel journaled in a window and absent from the staged report, walked
# along the attempts' primary key (all pages together read the attempts once).
UNREPORTED = (
    "SELECT a.reference, a.recharge_id, r.amount_minor, r.currency FROM attempts a JOIN recharges r "
    "ON r.id = a.recharge_id WHERE a.reference > ? AND a.channel = ? AND a.state = 'captured' AND "
    "a.updated_at >= ? AND a.updated_at < ? AND r.status = 'succeeded' AND r.channel = a.channel AND NOT EXISTS "
    "(SELECT 1 FROM recon_report s WHERE s.run_id = ? AND s.reference = a.reference) ORDER BY a.reference LIMIT ?"
)
# A finding joins the day's discrepancies once per reference and kind: a repeat refreshes its
# evidence and run; one resolved before is open again (or resolving, as the run decided).
_PROMOTE = (
    "INSERT INTO discrepancies(channel, date, reference, kind, status, recharge_id, amount_minor, currency, expected, "
    "reported, resolution, run_id, created_at, updated_at) SELECT ?, ?, reference, kind, status, recharge_id, "
    "amount_minor, currency, expected, reported, resolution, run_id, ?, ? FROM recon_found WHERE run_id = ? "
    "ORDER BY reference, kind "
    "ON CONFLICT(channel, date, reference, kind) DO UPDATE SET run_id = excluded.run_id, "
    "updated_at = excluded.updated_at, expected = excluded.expected, reported = excluded.reported, "
    "amount_minor = excluded.amount_minor, currency = excluded.currency, "
    "resolution = CASE WHEN discrepancies.status = 'resolved' THEN excluded.resolution ELSE discrepancies.resolution END, "
    "status = CASE WHEN discrepancies.status = 'resolved' THEN excluded.status ELSE discrepancies.status END"
)
_NOT_FOUND_AGAIN = (
    "UPDATE discrepancies SET status = 'resolved', resolution = 'not found again by ' || ?, updated_at = ? "
    "WHERE channel = ? AND date = ? AND run_id != ? AND status != 'resolved'"
)


def op_recon_start(conn: sqlite3.Connection, run_id: str, channel: str, date: str, trigger: str,
                   started_at: float) -> bool:
    try:
        conn.execute("INSERT INTO reconciliations(id, channel, date, trigger, status, started_at) "
                     "VALUES (?,?,?,?, 'running', ?)", (run_id, channel, date, trigger, started_at))
    except sqlite3.IntegrityError:  # the day's scheduled run exists: another instance took it
        return False
    return True


def op_recon_stage(conn: sqlite3.Connection, run_id: str, items: list[list[Any]]) -> int:
    before = conn.total_changes
    conn.executemany("INSERT OR IGNORE INTO recon_report(run_id, reference, provider_ref, status, amount_minor, "
                     "currency, fee_minor, settled_at) VALUES (?,?,?,?,?,?,?,?)", [(run_id, *i) for i in items])
    return conn.total_changes - before


def op_recon_found(conn: sqlite3.Connection, rows: list[list[Any]]) -> None:
    conn.executemany("INSERT OR REPLACE INTO recon_found(run_id, reference, kind, recharge_id, amount_minor, currency, "
                     "expected, reported, status, resolution) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)


def op_recon_finish(conn: sqlite3.Connection, run_id: str, status: str, reason: str | None, at: float,
                    report_items: int, summary: dict[str, Any] | None) -> list[Any] | None:
    row = conn.execute("SELECT channel, date FROM reconciliations WHERE id = ? AND status = 'running'",
                       (run_id,)).fetchone()
    if row is None:
        return None
    channel, date = row
    if status == "completed":
        conn.execute(_PROMOTE, (channel, date, at, at, run_id))
        conn.execute(_NOT_FOUND_AGAIN, (run_id, at, channel, date, run_id))
    conn.execute("DELETE FROM recon_found WHERE run_id = ?", (run_id,))
    conn.execute("UPDATE reconciliations SET status = ?, reason = ?, finished_at = ?, report_items = ?, summary = ? "
                 "WHERE id = ?", (status, reason, at, report_items,
                                  None if summary is None else orjson.dumps(summary).decode(), run_id))
    return list(conn.execute(f"SELECT {RECON_COLUMNS} FROM reconciliations WHERE id = ?", (run_id,)).fetchone())


def op_recon_purge(conn: sqlite3.Connection, run_id: str, limit: int) -> int:
    if conn.execute("SELECT 1 FROM reconciliations WHERE id = ? AND status = 'running'", (run_id,)).fetchone():
        return 0
    return int(conn.execute("DELETE FROM recon_report WHERE run_id = ? AND reference IN (SELECT reference FROM "
                            "recon_report WHERE run_id = ? LIMIT ?)", (run_id, run_id, limit)).rowcount)


def op_resolve_discrepancy(conn: sqlite3.Connection, seq: int, status: str, resolution: str, at: float) -> bool:
    return conn.execute("UPDATE discrepancies SET status = ?, resolution = ?, updated_at = ? WHERE seq = ?",
                        (status, resolution, at, seq)).rowcount == 1


RECON_OPS: dict[str, Callable[..., Any]] = {
    "recon_start": op_recon_start,
    "recon_stage": op_recon_stage,
    "recon_found": op_recon_found,
    "recon_finish": op_recon_finish,
    "recon_purge": op_recon_purge,
    "resolve_discrepancy": op_resolve_discrepancy,
}
