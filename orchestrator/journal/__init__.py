"""The journal (storage) of recharges, attempts, trail and wallet."""

from orchestrator.journal._protocol import Journal, JournalError, WalletEntry, WalletView
from orchestrator.journal.sqlite import SqliteJournal, path_from_url

__all__ = ["Journal", "JournalError", "SqliteJournal", "WalletEntry", "WalletView", "path_from_url", "open_journal"]


def open_journal(url: str, **kwargs: object) -> Journal:
    """The journal for a storage URL (not yet opened)."""
    if url.startswith("sqlite:///"):
        return SqliteJournal(path_from_url(url), **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unsupported storage URL {url!r}: only sqlite:/// is built so far")
