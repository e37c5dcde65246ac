"""The journal (storage) of recharges, attempts, trail, wallet and quotes.

The stores are imported when first named, so the SQLite writer process (which imports
``orchestrator.journal._sqlite_writer``) starts without loading asyncpg.
"""

from typing import TYPE_CHECKING, Any

from orchestrator.journal._protocol import (
    FLEET_BLOB_LIMIT,
    PURGE_LIMIT,
    Account,
    Journal,
    JournalError,
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
)

if TYPE_CHECKING:
    from orchestrator.journal.memory import MemoryJournal
    from orchestrator.journal.postgres import PostgresJournal
    from orchestrator.journal.sqlite import SqliteJournal, path_from_url

__all__ = [
    "FLEET_BLOB_LIMIT",
    "PURGE_LIMIT",
    "Account",
    "Journal",
    "JournalError",
    "KeptChannel",
    "MatchRow",
    "NoticeRow",
    "OpenRecharges",
    "OutboxStats",
    "PastRecharge",
    "PostgresJournal",
    "MemoryJournal",
    "QuoteRecord",
    "RefundGuard",
    "ReportRow",
    "SqliteJournal",
    "UserTotals",
    "WalletEntry",
    "WalletView",
    "open_journal",
    "path_from_url",
]


def __getattr__(name: str) -> Any:
    if name == "MemoryJournal":
        from orchestrator.journal.memory import MemoryJournal

        return MemoryJournal
    if name == "PostgresJournal":
        from orchestrator.journal.postgres import PostgresJournal

        return PostgresJournal
    if name in ("SqliteJournal", "path_from_url"):
        from orchestrator.journal import sqlite

        return getattr(sqlite, name)
    if name in ("spawn_writer", "wait_writer_ready"):  # the SQLite writer process (supervisor)
        from orchestrator.journal import _sqlite_writer

        return _sqlite_writer.spawn if name == "spawn_writer" else _sqlite_writer.wait_ready
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_journal(url: str, **kwargs: object) -> Journal:
    """The journal for a storage URL (not yet opened)."""
    if url.startswith("sqlite:///"):
        from orchestrator.journal.sqlite import SqliteJournal, path_from_url

        return SqliteJournal(path_from_url(url), **kwargs)  # type: ignore[arg-type]
    if url.startswith(("postgresql://", "postgres://")):
        from orchestrator.journal.postgres import PostgresJournal

        return PostgresJournal(url, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unsupported storage URL {url!r}: use sqlite:///PATH or postgresql://...")
