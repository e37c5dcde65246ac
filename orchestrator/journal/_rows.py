"""Rows of the SQL stores, written once for both: the column lists, a model object to its
row and back, and the audit chain's trail rows. Dialect differences stay in each store
(placeholders, types); what a row holds and how it reads back is here.

Every time is written as a float (PostgreSQL's DOUBLE PRECISION refuses an int), and a
row reads back into the same object the row was made from, whichever store held it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from orchestrator.audit import entry_hash
from orchestrator.model import (
    Attempt,
    AttemptState,
    Discrepancy,
    DiscrepancyKind,
    Dispute,
    DisputeStatus,
    Notice,
    Recharge,
    RechargeStatus,
    ReconRun,
    Refund,
    RefundStatus,
    Settlement,
    Template,
    TrailEntry,
    Transfer,
)

__all__ = [
    "ATTEMPT_COLUMNS",
    "DISPUTE_COLUMNS",
    "NOTICE_COLUMNS",
    "REFUND_COLUMNS",
    "TEMPLATE_COLUMNS",
    "dispute_of",
    "dispute_row",
    "notice_row_of",
    "refund_of",
    "refund_row",
    "TRANSFER_COLUMNS",
    "transfer_of",
    "DISCREPANCY_COLUMNS",
    "RECHARGE_COLUMNS",
    "RECON_COLUMNS",
    "discrepancy_of",
    "found_row",
    "recon_run_of",
    "template_of",
    "template_row",
    "TRAIL_COLUMNS",
    "attempt_of",
    "attempt_row",
    "recharge_of",
    "recharge_row",
    "trail_entry_of",
    "trail_rows",
]

RECHARGE_COLUMNS = (
    "id, client, idempotency_key, fingerprint, user_id, amount_minor, currency, country, method, "
    "instrument, metadata, coins, bonus_coins, status, channel, decline_code, reason, config_version, "
    "created_at, updated_at, deadline_at, instant, settlement, step_up"
)
ATTEMPT_COLUMNS = (
    "reference, recharge_id, seq, channel, state, provider_ref, decline_code, error, latency_ms, created_at, "
    "updated_at, late_check_at, action_url, action_expires_at"
)
TRAIL_COLUMNS = "recharge_id, at, event, status, reference, channel, detail, prev_hash, hash"


def _float(x: float | None) -> float | None:
    return None if x is None else float(x)


def recharge_row(r: Recharge) -> tuple[Any, ...]:
    return (
        r.id, r.client, r.idempotency_key, r.fingerprint, r.user_id, r.amount_minor, r.currency,
        r.country, r.method, orjson.dumps(r.instrument).decode(),
        None if r.metadata is None else orjson.dumps(r.metadata).decode(),
        r.coins, r.bonus_coins, r.status.value, r.channel, r.decline_code, r.reason, r.config_version,
        float(r.created_at), float(r.updated_at), float(r.deadline_at), int(r.instant),
        None if r.settlement is None else r.settlement.value, int(r.step_up),
    )


def recharge_of(row: Sequence[Any], attempts: list[Attempt]) -> Recharge:
    return Recharge(
        id=row[0], client=row[1], idempotency_key=row[2], fingerprint=row[3], user_id=row[4],
        amount_minor=row[5], currency=row[6], country=row[7], method=row[8],
        instrument=orjson.loads(row[9]), metadata=None if row[10] is None else orjson.loads(row[10]),
        coins=row[11], bonus_coins=row[12], status=RechargeStatus(row[13]), channel=row[14],
        decline_code=row[15], reason=row[16], config_version=row[17], created_at=row[18],
        updated_at=row[19], deadline_at=row[20], attempts=attempts, instant=bool(row[21]),
        settlement=None if row[22] is None else Settlement(row[22]), step_up=bool(row[23]),
    )


def attempt_row(a: Attempt) -> tuple[Any, ...]:
    return (a.reference, a.recharge_id, a.seq, a.channel, a.state.value, a.provider_ref, a.decline_code, a.error,
            _float(a.latency_ms), float(a.created_at), float(a.updated_at), _float(a.late_check_at), a.action_url,
            _float(a.action_expires_at))


def attempt_of(a: Sequence[Any]) -> Attempt:
    return Attempt(
        reference=a[0], recharge_id=a[1], seq=a[2], channel=a[3], state=AttemptState(a[4]),
        provider_ref=a[5], decline_code=a[6], error=a[7], latency_ms=a[8], created_at=a[9], updated_at=a[10],
        late_check_at=a[11], action_url=a[12], action_expires_at=a[13],
    )


def trail_rows(head: str, entries: Sequence[TrailEntry]) -> tuple[list[tuple[Any, ...]], str]:
    """The rows of ``entries``, each chained to the one before it (``orchestrator.audit``),
    starting from ``head``; and the new head."""
    rows = []
    for e in entries:
        detail = None if e.detail is None else orjson.dumps(e.detail).decode()
        at = float(e.at)
        h = entry_hash(head, e.recharge_id, at, e.event, e.status, e.reference, e.channel, detail)
        rows.append((e.recharge_id, at, e.event, e.status, e.reference, e.channel, detail, head, h))
        head = h
    return rows, head


def trail_entry_of(r: Sequence[Any]) -> TrailEntry:
    """A trail entry from ``recharge_id, at, event, status, reference, channel, detail``."""
    return TrailEntry(r[0], r[1], r[2], r[3], r[4], r[5], orjson.loads(r[6]) if r[6] else None)


REFUND_COLUMNS = (
    "id, recharge_id, client, idempotency_key, fingerprint, user_id, channel, reference, amount_minor, currency, "
    "coins, status, reason, created_at, updated_at, error, next_at, tries"
)
DISPUTE_COLUMNS = "recharge_id, user_id, status, coins, opened_at, updated_at"
# An outbox row as ``NoticeRow`` reads it: the notice, then where its delivery stands.
NOTICE_COLUMNS = "id, client, key, type, created_at, body, state, attempts, next_at, window_start, last_error, delivered_at"


def refund_row(r: Refund) -> tuple[Any, ...]:
    return (r.id, r.recharge_id, r.client, r.idempotency_key, r.fingerprint, r.user_id, r.channel, r.reference,
            r.amount_minor, r.currency, r.coins, r.status.value, r.reason, float(r.created_at), float(r.updated_at),
            r.error, _float(r.next_at), r.tries)


def refund_of(row: Sequence[Any]) -> Refund:
    return Refund(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], int(row[8]), row[9], int(row[10]),
                  RefundStatus(row[11]), row[12], row[13], row[14], row[15], row[16], int(row[17]))


def dispute_row(d: Dispute) -> tuple[Any, ...]:
    return (d.recharge_id, d.user_id, d.status.value, d.coins, float(d.opened_at), float(d.updated_at))


def dispute_of(row: Sequence[Any]) -> Dispute:
    return Dispute(row[0], row[1], DisputeStatus(row[2]), int(row[3]), row[4], row[5])


def notice_row_of(row: Sequence[Any]) -> tuple[Notice, str, int, float, float, str | None, float | None]:
    """The fields of a ``NoticeRow`` (the journal's protocol module builds it)."""
    body = row[5] if isinstance(row[5], str) else bytes(row[5]).decode()
    return (Notice(row[0], row[1], row[2], row[3], row[4], body), row[6], int(row[7]), row[8], row[9], row[10],
            row[11])


TRANSFER_COLUMNS = "seq, debit, credit, coins, kind, at, recharge_id, ref, note"


def transfer_of(row: Sequence[Any]) -> Transfer:
    """A ledger transfer; its id is its place in the ledger (``tr_<seq>``)."""
    return Transfer(f"tr_{row[0]}", row[1], row[2], int(row[3]), row[4], row[5], row[6], row[7], row[8], int(row[0]))


# -- settlement reconciliation (SPEC 21) -------------------------------------------------------

RECON_COLUMNS = "id, channel, date, trigger, status, started_at, finished_at, reason, report_items, summary"
DISCREPANCY_COLUMNS = ("reference, kind, recharge_id, amount_minor, currency, expected, reported, status, resolution, "
                       "channel, date, run_id, seq, created_at, updated_at")


def recon_run_of(row: Sequence[Any]) -> ReconRun:
    return ReconRun(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                    None if row[9] is None else orjson.loads(row[9]))


def discrepancy_of(row: Sequence[Any]) -> Discrepancy:
    return Discrepancy(row[0], DiscrepancyKind(row[1]), row[2], row[3], row[4],
                       None if row[5] is None else orjson.loads(row[5]),
                       None if row[6] is None else orjson.loads(row[6]), row[7], row[8], row[9], row[10], row[11],
                       row[12], row[13], row[14])


def found_row(run_id: str, d: Discrepancy) -> tuple[Any, ...]:
    """A finding as ``recon_found`` stages it."""
    return (run_id, d.reference, d.kind.value, d.recharge_id, d.amount_minor, d.currency,
            None if d.expected is None else orjson.dumps(d.expected).decode(),
            None if d.reported is None else orjson.dumps(d.reported).decode(), d.status, d.resolution)


TEMPLATE_COLUMNS = "id, client, user_id, name, amount_minor, currency, country, method, instrument, created_at"


def template_row(t: Template) -> tuple[Any, ...]:
    return (t.id, t.client, t.user_id, t.name, t.amount_minor, t.currency, t.country, t.method,
            orjson.dumps(t.instrument).decode(), float(t.created_at))


def template_of(row: Sequence[Any]) -> Template:
    return Template(row[0], row[1], row[2], row[3], int(row[4]), row[5], row[6], row[7], orjson.loads(row[8]),
                    float(row[9]))
