"""The tamper-evident audit log: every trail entry (state transition, attempt, webhook,
config change) carries the hash of the one before it, so changing, removing or
reordering any entry breaks the chain from that entry on.

    hash = sha256(prev_hash || canonical(recharge_id, at, event, status, reference, channel, detail))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["GENESIS", "AuditReport", "entry_hash", "verify_rows"]

GENESIS = "0" * 64


def entry_hash(prev: str, recharge_id: str, at: float, event: str, status: str | None, reference: str | None,
               channel: str | None, detail: str | None) -> str:
    canonical = orjson.dumps([recharge_id, format(at, ".6f"), event, status, reference, channel, detail])
    return hashlib.sha256(prev.encode() + canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditReport:
    entries: int
    broken_at: int | None  # the id of the first entry that does not verify
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_rows(rows: Iterable[tuple[Any, ...]]) -> AuditReport:
    """``rows``: (id, recharge_id, at, event, status, reference, channel, detail,
    prev_hash, hash) in id order."""
    prev = GENESIS
    n = 0
    for row in rows:
        n += 1
        rid, recharge_id, at, event, status, reference, channel, detail, prev_hash, stored = row
        if prev_hash != prev:
            return AuditReport(n, rid, f"entry {rid} does not follow the entry before it (prev_hash mismatch)")
        expected = entry_hash(prev, recharge_id, at, event, status, reference, channel, detail)
        if stored != expected:
            return AuditReport(n, rid, f"entry {rid} was altered (hash mismatch)")
        prev = stored
    return AuditReport(n, None, None)
