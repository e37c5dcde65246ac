"""The journal (storage) of recharges, attempts, trail and wallet."""

from orchestrator.journal._protocol import FirstRecharge, Journal, JournalError, WalletEntry, WalletView
from orchestrator.journal.postgres import PostgresJournal
from orchestrator.journal.sqlite import SqliteJournal, path_from_url

__all__ = [
    "FirstRecharge",
    "Journal",
    "JournalError",
    "PostgresJournal",
    "SqliteJournal",
    "WalletEntry",
    "WalletView",
    "open_journal",
    "path_from_url",
]


def open_journal(url: str, **kwargs: object) -> Journal:
    """The journal for a storage URL (not yet opened)."""
    if url.startswith("sqlite:///"):
        return SqliteJournal(path_from_url(url), **kwargs)  # type: ignore[arg-type]
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresJournal(url, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unsupported storage URL {url!r}: use sqlite:///PATH or postgresql://...")
