"""The SQLite journal's writes, as plain functions over a connection, and the group
commit that runs a batch of them in one transaction.

Whoever runs them (the writer process, or a writer thread for ``:memory:``) hands
``run_batch`` a list of ``(op name, args)``; each op is one of ``WRITE_OPS``. Nothing
here knows which process it runs in: this module imports only the model, the audit
chain and ``sqlite3``, so the writer process starts fast
(docs/performance.md#writer-start-up).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from orchestrator.audit import GENESIS
from orchestrator.journal._protocol import JournalError, QuoteRecord
from orchestrator.journal._rows import ATTEMPT_COLUMNS, RECHARGE_COLUMNS, attempt_of, attempt_row, recharge_of, \
    recharge_row
from orchestrator.journal import _sqlite_ledger as ledger
from orchestrator.journal._sqlite_aftersale import AFTERSALE_OPS, add_notices
from orchestrator.journal._sqlite_fleet import FLEET_OPS
from orchestrator.journal._sqlite_recon import RECON_OPS
from orchestrator.journal._sqlite_templates import TEMPLATE_OPS
from orchestrator.journal._totals import KEPT_OF, recount
from orchestrator.journal._sqlite_trail import Rejected
from orchestrator.journal._sqlite_trail import chain as _chain
from orchestrator.journal._sqlite_trail import insert_trail as _insert_trail
from orchestrator.clock import month_of
from orchestrator.model import KEEP, TERMINAL, Attempt, FirstRecharge, Notice, Recharge, RechargeStatus, Step, \
    TrailEntry

__all__ = ["ATTEMPT_COLUMNS", "WRITE_OPS", "Checkpointer", "attempt_of", "catch_up", "connect", "load", "migrate", "run_batch"]

NONTERMINAL = tuple(s.value for s in RechargeStatus if s not in TERMINAL)
# The non-terminal recharges in recharges_open's own WHERE term: SQLite uses a partial index
# only for a query repeating it (a bound parameter proves nothing), else scans every recharge.
OPEN = "status IN ('processing', 'requires_action', 'pending')"

# The writer leaves checkpoints to the checkpointer; it checkpoints itself (stalling its
# commits) only if the WAL reaches this many pages (4 KiB each) anyway.
WRITER_AUTOCHECKPOINT_PAGES = 20000


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    from orchestrator.journal._schema import MIGRATIONS

    (current,) = conn.execute("PRAGMA user_version").fetchone()
    for version, statements in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        for sql in statements:
            conn.execute(sql)
        conn.execute(f"PRAGMA user_version={version}")
        conn.execute("COMMIT")


class Checkpointer(threading.Thread):
    """Copies committed WAL pages into the database file beside the writer: a PASSIVE
    checkpoint on its own connection takes no lock the writer needs, so no commit waits
    for a checkpoint's copy and fsync (docs/performance.md#wal-checkpoints).

    The WAL starts over only once every frame is copied, so a pass that copied anything is
    followed at once by another (up to ``CATCH_UP_PASSES``) until one copies nothing new."""

    CATCH_UP_PASSES = 6

    def __init__(self, path: str, min_interval_s: float = 0.2, on_error: Callable[[str], None] | None = None) -> None:
        super().__init__(name="journal-checkpointer", daemon=True)
        self._path = path
        self._min_interval_s = min_interval_s
        self._wake = threading.Event()
        self._stopping = False
        self._on_error = on_error

    def nudge(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def run(self) -> None:
        conn = connect(self._path)
        try:
            while True:
                self._wake.wait()
                if self._stopping:
                    return
                self._wake.clear()
                try:
                    catch_up(conn, self.CATCH_UP_PASSES)
                except sqlite3.Error as exc:  # the writer's own checkpoint is the fallback
                    if self._on_error is not None:
                        self._on_error(str(exc))
                time.sleep(self._min_interval_s)
        finally:
            conn.close()


def catch_up(conn: sqlite3.Connection, passes: int) -> int:
    """PASSIVE checkpoints, one after another, until one finds no frame it had not
    already copied (all of the WAL is in the database file: the writer's next
    transaction may start the WAL over), the WAL has started over, a reader holds
    frames back, or ``passes`` have run. Returns how many ran."""
    seen = -1
    for ran in range(1, passes + 1):
        busy, log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy or log <= 0 or copied < log or log <= seen:
            return ran
        seen = log
    return passes


# -- the group commit ---------------------------------------------------------------------

Result = tuple[bool, Any]
"""``(True, value)`` or ``(False, exception)``: one op's outcome in a batch."""


def run_batch(conn: sqlite3.Connection, batch: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Result]:
    """Run every op of ``batch`` in one transaction and commit it once.

    The fast path runs them back to back (no savepoint each: two statements fewer per
    step). If one is refused or fails, its writes may be half done, so the batch starts
    over with each op in its own savepoint (rare: a race lost to a webhook, a bug). If
    the transaction as a whole fails (disk full, I/O error), nothing in it is durable
    and every op's caller hears so."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        results = _run_ops(conn, batch, isolated=False)
        if results is None:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            results = _run_ops(conn, batch, isolated=True)
            assert results is not None
        conn.execute("COMMIT")
        return results
    except sqlite3.Error as exc:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        return [(False, JournalError(f"commit failed: {exc}"))] * len(batch)


def _run_ops(conn: sqlite3.Connection, batch: Sequence[tuple[str, tuple[Any, ...]]], *,
             isolated: bool) -> list[Result] | None:
    # The chain head is read under the write lock, so any writer on the file (one in
    # production) extends the chain where it really ends.
    row = conn.execute("SELECT hash FROM trail ORDER BY id DESC LIMIT 1").fetchone()
    _chain.head = row[0] if row and row[0] else GENESIS
    results: list[Result] = []
    if not isolated:
        try:
            for name, args in batch:
                results.append((True, WRITE_OPS[name](conn, *args)))
        except Exception:
            return None
        return results
    for name, args in batch:
        conn.execute("SAVEPOINT step")
        step_head = _chain.head
        try:
            value = WRITE_OPS[name](conn, *args)
        except Rejected:
            conn.execute("ROLLBACK TO step")
            _chain.head = step_head
            results.append((True, False))
        except Exception as exc:  # one step's failure stays that step's
            conn.execute("ROLLBACK TO step")
            _chain.head = step_head
            results.append((False, exc))
        else:
            results.append((True, value))
        conn.execute("RELEASE step")
    return results


# -- the write ops ------------------------------------------------------------------------

# Another recharge of the user that is running or succeeded: the first-recharge bonus is
# that one's (checked inside the creating transaction, so two "firsts" get it once).
_HAS_OPEN_OR_DONE = (
    "SELECT 1 FROM recharges WHERE user_id=? AND status IN ('processing', 'requires_action', 'pending', 'succeeded') LIMIT 1"
)

# A key already held leaves the row alone (rowcount 0): the holder answers instead.
_INSERT_RECHARGE = (
    f"INSERT INTO recharges({RECHARGE_COLUMNS}) VALUES ({','.join('?' * 24)}) "
    "ON CONFLICT (client, idempotency_key) DO NOTHING"
)


def op_create(conn: sqlite3.Connection, recharge: Recharge, trail: TrailEntry, lease: tuple[str, float] | None,
              first: FirstRecharge | None, started: tuple[Attempt, TrailEntry] | None,
              notices: Sequence[Notice] = ()) -> tuple[str | None, bool]:
    """Insert a new recharge. Answers ``(holder, denied)``: the id of the recharge holding
    its key if the key is taken (and nothing written), and whether the first-recharge
    bonus was denied (the user has another running or succeeded recharge)."""
    entry = trail
    denied = first is not None and conn.execute(_HAS_OPEN_OR_DONE, (recharge.user_id,)).fetchone() is not None
    if denied:
        assert first is not None
        entry = first.deny(recharge, trail)
    if conn.execute(_INSERT_RECHARGE, recharge_row(recharge)).rowcount == 0:
        (holder,) = conn.execute("SELECT id FROM recharges WHERE client=? AND idempotency_key=?",
                                 (recharge.client, recharge.idempotency_key)).fetchone()
        return str(holder), False
    if lease is not None:
        conn.execute("INSERT INTO leases(recharge_id, owner, expires_at, token) VALUES (?,?,?,1)",
                     (recharge.id, lease[0], lease[1]))
    if started is None:
        _insert_trail(conn, (entry,))
    else:
        _insert_attempt(conn, started[0])
        _insert_trail(conn, (entry, started[1]))
    if notices:
        add_notices(conn, notices)
    return None, denied


# One more success in its user's totals (see ``_totals``): its creation month's tally grows if
# that is the newest month, restarts if newer, stays if older (count and sum grow always).
_ADD_TO_TOTALS = (
    "INSERT INTO user_recharge_totals(user_id, currency, recharges, amount_minor, month_start, month_recharges) "
    "VALUES (?,?,1,?,?,1) ON CONFLICT (user_id, currency) DO UPDATE SET "
    "recharges=recharges+1, amount_minor=amount_minor+excluded.amount_minor, "
    "month_recharges=CASE WHEN excluded.month_start > month_start THEN 1 "
    "WHEN excluded.month_start = month_start THEN month_recharges+1 ELSE month_recharges END, "
    "month_start=MAX(month_start, excluded.month_start)"
)


_UPDATE_ATTEMPT = ("UPDATE attempts SET state=?, provider_ref=COALESCE(?, provider_ref), decline_code=?, error=?, "
                   "latency_ms=COALESCE(?, latency_ms), updated_at=?, late_check_at=?, action_url=?, "
                   "action_expires_at=? WHERE reference=?")
_SET_FOLLOW_UP = ("INSERT INTO follow_ups(recharge_id, due_at) VALUES (?,?) "
                  "ON CONFLICT(recharge_id) DO UPDATE SET due_at=excluded.due_at")


def op_apply(conn: sqlite3.Connection, step: Step) -> bool:
    # A step that marks its recharge succeeded and credits it adds it to the user's
    # totals; who, what currency, how much and when created come from the row it updates.
    succeeded: tuple[Any, ...] | None = None
    if step.lease is not None:
        held = conn.execute("SELECT owner, token FROM leases WHERE recharge_id=?", (step.recharge_id,)).fetchone()
        if held is None or (held[0], held[1]) != tuple(step.lease):
            raise Rejected
    if step.status is not None:
        sets = "status=?, updated_at=?, reason=?"
        params: list[Any] = [step.status.value, step.at, step.reason]
        if step.channel is not None:
            sets += ", channel=?"
            params.append(step.channel)
        if step.decline_code is not None:
            sets += ", decline_code=?"
            params.append(step.decline_code)
        if step.settlement is not None:
            sets += ", settlement=?"
            params.append(step.settlement.value)
        where = "id=?"
        params.append(step.recharge_id)
        if step.expect_status is not None:
            where += f" AND status IN ({','.join('?' * len(step.expect_status))})"
            params.extend(sorted(s.value for s in step.expect_status))
        sql = f"UPDATE recharges SET {sets} WHERE {where}"
        if step.status is RechargeStatus.SUCCEEDED and step.credit is not None:
            succeeded = conn.execute(sql + " RETURNING user_id, currency, amount_minor, created_at", params).fetchone()
            if succeeded is None:
                raise Rejected
        elif conn.execute(sql, params).rowcount != 1:
            raise Rejected
    elif step.attempt is not None:
        # An attempt's change is the recharge's change: its updated_at moves too.
        sql, params = "UPDATE recharges SET updated_at=?, settlement=COALESCE(?, settlement) WHERE id=?", [
            step.at, None if step.settlement is None else step.settlement.value, step.recharge_id]
        if step.expect_status is not None:
            sql += f" AND status IN ({','.join('?' * len(step.expect_status))})"
            params.extend(sorted(s.value for s in step.expect_status))
        if conn.execute(sql, params).rowcount != 1:
            raise Rejected
    elif step.expect_status is not None:
        row = conn.execute("SELECT status FROM recharges WHERE id=?", (step.recharge_id,)).fetchone()
        if row is None or RechargeStatus(row[0]) not in step.expect_status:
            raise Rejected
    if step.event is not None:
        inserted = conn.execute(
            "INSERT OR IGNORE INTO provider_events(channel, event_id, reference, status, received_at) "
            "VALUES (?,?,?,?,?)",
            (step.event[0], step.event[1], step.attempt.reference if step.attempt else None,
             step.status.value if step.status else (step.attempt.state.value if step.attempt else "recorded"),
             step.at),
        ).rowcount
        if not inserted:
            raise Rejected
    if step.attempt is not None:
        a = step.attempt
        if step.attempt_is_new:
            try:
                _insert_attempt(conn, a)
            except sqlite3.IntegrityError:  # its number or reference is taken: a race lost
                raise Rejected from None
        else:
            params = [a.state.value, a.provider_ref, a.decline_code, a.error, a.latency_ms, a.updated_at,
                      a.late_check_at, a.action_url, a.action_expires_at, a.reference]
            sql = _UPDATE_ATTEMPT
            if step.expect_attempt is not None:
                sql += f" AND state IN ({','.join('?' * len(step.expect_attempt))})"
                params.extend(sorted(s.value for s in step.expect_attempt))
            if conn.execute(sql, params).rowcount != 1:
                raise Rejected
    if step.credit is not None:
        # The credit index refuses a second credit of the recharge: the step rolls back whole.
        if not ledger.credit(conn, step.credit):
            raise Rejected
        if succeeded is not None:
            user_id, currency, amount_minor, created_at = succeeded
            conn.execute(_ADD_TO_TOTALS, (user_id, currency, amount_minor, month_of(created_at)))
    if step.clawback is not None:
        ledger.claw_back(conn, step.clawback)
        user_id = step.clawback.user_id
        (currency,) = conn.execute("SELECT currency FROM recharges WHERE id=?", (step.recharge_id,)).fetchone()
        conn.execute("DELETE FROM user_recharge_totals WHERE user_id=? AND currency=?", (user_id, currency))
        row = recount(conn.execute(KEPT_OF, (user_id, currency)).fetchall())
        if row is not None:
            conn.execute("INSERT INTO user_recharge_totals(user_id, currency, recharges, amount_minor, month_start, "
                         "month_recharges) VALUES (?,?,?,?,?,?)", (user_id, currency, *row))
    if step.follow_up is not KEEP:
        if step.follow_up is None:
            conn.execute("DELETE FROM follow_ups WHERE recharge_id=?", (step.recharge_id,))
        else:
            conn.execute(_SET_FOLLOW_UP, (step.recharge_id, step.follow_up))
    if step.trail:
        _insert_trail(conn, step.trail)
    if step.notices:
        add_notices(conn, step.notices)
    return True


def op_record(conn: sqlite3.Connection, entry: TrailEntry) -> None:
    _insert_trail(conn, (entry,))


def op_ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


# Along recharges_open, then each one's lease by primary key: never a scan of recharges.
CLAIMABLE = (
    "SELECT r.id FROM recharges r LEFT JOIN leases l ON l.recharge_id = r.id "
    f"WHERE r.{OPEN} AND (l.owner IS NULL OR l.owner = ? OR l.expires_at <= ?) "
    "ORDER BY r.created_at, r.id LIMIT ?"
)


# Take the lease unless another owner's is live; a new owner bumps the token.
_TAKE = (
    "INSERT INTO leases(recharge_id, owner, expires_at, token) VALUES (?,?,?,1) "
    "ON CONFLICT(recharge_id) DO UPDATE SET "
    "token=CASE WHEN leases.owner IS excluded.owner THEN leases.token ELSE leases.token + 1 END, "
    "owner=excluded.owner, expires_at=excluded.expires_at "
    "WHERE leases.owner IS excluded.owner OR leases.owner IS NULL OR leases.expires_at <= ? "
    "RETURNING token"
)


def _take(conn: sqlite3.Connection, owner: str, recharge_id: str, expires_at: float, now: float) -> int | None:
    row = conn.execute(_TAKE, (recharge_id, owner, expires_at, now)).fetchone()
    return None if row is None else int(row[0])


def op_claim(conn: sqlite3.Connection, owner: str, lease_s: float, now: float,
             limit: int) -> list[tuple[Recharge, int]]:
    # One writer: the select and the lease writes share its transaction, so no other
    # claim can come between them.
    ids = [rid for (rid,) in conn.execute(CLAIMABLE, (owner, now, limit)).fetchall()]
    out = []
    for rid in ids:
        token = _take(conn, owner, rid, now + lease_s, now)
        rec = load(conn, rid)
        if token is not None and rec is not None:
            out.append((rec, token))
    return out


def op_lease(conn: sqlite3.Connection, owner: str, recharge_id: str, lease_s: float, now: float) -> int | None:
    if conn.execute("SELECT 1 FROM recharges WHERE id=?", (recharge_id,)).fetchone() is None:
        return None
    return _take(conn, owner, recharge_id, now + lease_s, now)


def op_release(conn: sqlite3.Connection, owner: str, recharge_id: str) -> None:
    conn.execute("UPDATE leases SET owner=NULL, expires_at=0 WHERE recharge_id=? AND owner=?", (recharge_id, owner))


def op_renew(conn: sqlite3.Connection, owner: str, held: dict[str, int], lease_s: float, now: float) -> list[str]:
    kept = []
    for rid, token in held.items():
        if conn.execute("UPDATE leases SET expires_at=? WHERE recharge_id=? AND owner=? AND token=?",
                        (now + lease_s, rid, owner, token)).rowcount == 1:
            kept.append(rid)
    return kept


# Along follow_ups_due: only what is due, never a scan.
_DUE = "SELECT recharge_id FROM follow_ups WHERE due_at <= ? ORDER BY due_at LIMIT ?"


def op_claim_follow_ups(conn: sqlite3.Connection, now: float, retry_at: float, limit: int) -> list[Recharge]:
    ids = [rid for (rid,) in conn.execute(_DUE, (now, limit)).fetchall()]
    conn.executemany("UPDATE follow_ups SET due_at=? WHERE recharge_id=?", [(retry_at, rid) for rid in ids])
    return [r for rid in ids if (r := load(conn, rid)) is not None]


def op_keep_channel(conn: sqlite3.Connection, name: str, config: str, retired_at: float | None) -> None:
    conn.execute("INSERT INTO channels(name, config, retired_at) VALUES (?,?,?) "
                 "ON CONFLICT(name) DO UPDATE SET config=excluded.config, retired_at=excluded.retired_at",
                 (name, config, retired_at))


# -- quotes -------------------------------------------------------------------------------

QUOTE_COLUMNS = "quote_id, user_id, amount_minor, currency, price, issued_at, expires_at"
# Along the expires_at index, the soonest expired first: a bounded range, never a scan.
_PURGE_QUOTES = (
    "DELETE FROM quotes WHERE quote_id IN "
    "(SELECT quote_id FROM quotes WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)"
)


def op_put_quote(conn: sqlite3.Connection, quote_id: str, user_id: str, amount_minor: int, currency: str,
                 price: str, issued_at: float, expires_at: float, purge_before: float | None,
                 purge_limit: int) -> int:
    """Insert a quote (``price``: its JSON document, as text). With ``purge_before``,
    also delete up to ``purge_limit`` quotes that expired at or before it; answers how
    many went."""
    conn.execute(f"INSERT INTO quotes({QUOTE_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                 (quote_id, user_id, amount_minor, currency, price, issued_at, expires_at))
    if purge_before is None:
        return 0
    return int(conn.execute(_PURGE_QUOTES, (purge_before, purge_limit)).rowcount)


def quote_of(row: Sequence[Any]) -> QuoteRecord:
    return QuoteRecord(row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5], row[6])


WRITE_OPS: dict[str, Callable[..., Any]] = {
    "create": op_create,
    "apply": op_apply,
    "record": op_record,
    "ping": op_ping,
    "claim": op_claim,
    "lease": op_lease,
    "release": op_release,
    "renew": op_renew,
    "claim_follow_ups": op_claim_follow_ups,
    "keep_channel": op_keep_channel,
    "put_quote": op_put_quote,
    **AFTERSALE_OPS,
    **ledger.LEDGER_OPS,
    **RECON_OPS,
    **TEMPLATE_OPS,
    **FLEET_OPS,
}


# -- rows ---------------------------------------------------------------------------------


def load(conn: sqlite3.Connection, recharge_id: str) -> Recharge | None:
    row = conn.execute(f"SELECT {RECHARGE_COLUMNS} FROM recharges WHERE id=?", (recharge_id,)).fetchone()
    if row is None:
        return None
    attempts = [attempt_of(a) for a in conn.execute(
        f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE recharge_id=? ORDER BY seq", (recharge_id,)).fetchall()]
    return recharge_of(row, attempts)


def _insert_attempt(conn: sqlite3.Connection, a: Attempt) -> None:
    conn.execute(f"INSERT INTO attempts({ATTEMPT_COLUMNS}) VALUES ({','.join('?' * 14)})", attempt_row(a))
