"""The SQLite journal's fleet view (issue 26): each instance's channel statistics, one blob
per instance. The writes are one statement each, run by the writer like every op
(``_sqlite_ops``); the read is the journal's (``sqlite.py``), on a reader beside the writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

__all__ = ["FLEET_OPS", "RECENT_FLEET_STATS"]

# Along fleet_stats_at; a tie in time read in instance order, as every store answers.
RECENT_FLEET_STATS = ("SELECT instance, at, blob FROM fleet_stats WHERE at >= ? "
                      "ORDER BY at DESC, instance LIMIT ?")


def op_put_fleet_stats(conn: sqlite3.Connection, instance: str, blob: bytes, at: float) -> None:
    conn.execute("INSERT INTO fleet_stats(instance, at, blob) VALUES (?,?,?) "
                 "ON CONFLICT(instance) DO UPDATE SET at=excluded.at, blob=excluded.blob",
                 (instance, at, blob))


def op_purge_fleet_stats(conn: sqlite3.Connection, before: float) -> int:
    return int(conn.execute("DELETE FROM fleet_stats WHERE at < ?", (before,)).rowcount)


FLEET_OPS: dict[str, Callable[..., Any]] = {
    "put_fleet_stats": op_put_fleet_stats,
    "purge_fleet_stats": op_purge_fleet_stats,
}
