"""What every SQLite write op shares: the refusal that rolls a step back, and the audit
chain's head as the writer extends it. Its own module, so the ops of each concern
(``_sqlite_ops``, ``_sqlite_aftersale``) import it without importing each other."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

from orchestrator.journal._rows import TRAIL_COLUMNS, trail_rows
from orchestrator.model import TrailEntry

__all__ = ["Rejected", "chain", "insert_trail"]


class Rejected(Exception):
    """A step's guard failed: roll back its savepoint and answer False."""


chain = threading.local()  # the writer's audit chain head


def insert_trail(conn: sqlite3.Connection, entries: Sequence[TrailEntry]) -> None:
    """Append to the trail, each entry chained to the one before (see orchestrator.audit).
    Only the writer appends, and it read the head under the write lock, so the head in
    memory is the head on disk."""
    rows, chain.head = trail_rows(chain.head, entries)
    conn.executemany(f"INSERT INTO trail({TRAIL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
