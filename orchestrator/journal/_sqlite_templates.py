"""The SQLite journal's recharge templates (SPEC 22): the writes, run by the writer like
every op (``_sqlite_ops``), so a user's count and the insert it allows are one
transaction; the reads are the journal's (``sqlite.py``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from orchestrator.journal._rows import TEMPLATE_COLUMNS

__all__ = ["OWN_TEMPLATES", "TEMPLATE_OPS"]

# A user's templates of one client, oldest first, along templates_owner.
OWN_TEMPLATES = (f"SELECT {TEMPLATE_COLUMNS} FROM templates WHERE client = ? AND user_id = ? "
                 "ORDER BY created_at, id")
_COUNT = "SELECT COUNT(*) FROM templates WHERE client = ? AND user_id = ?"


def op_create_template(conn: sqlite3.Connection, row: list[Any], max_per_user: int) -> bool:
    """Insert the template (``template_row``) unless its user already has ``max_per_user``
    of its client's."""
    (held,) = conn.execute(_COUNT, (row[1], row[2])).fetchone()
    if held >= max_per_user:
        return False
    conn.execute(f"INSERT INTO templates({TEMPLATE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
    return True


def op_delete_template(conn: sqlite3.Connection, client: str, user_id: str, template_id: str) -> bool:
    return conn.execute("DELETE FROM templates WHERE id = ? AND client = ? AND user_id = ?",
                        (template_id, client, user_id)).rowcount == 1


TEMPLATE_OPS: dict[str, Callable[..., Any]] = {
    "create_template": op_create_template,
    "delete_template": op_delete_template,
}
