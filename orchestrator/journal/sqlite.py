"""The embedded journal: SQLite in WAL mode with ``synchronous=FULL`` and group commit.

One writer owns the only writing connection, in a process of its own
(``_sqlite_writer``: why a process, and how the two talk). Callers hand it write ops;
it folds every op waiting into one transaction, commits once, and only then answers,
so a caller is answered only once its step is on disk and many recharges share each
fsync. Reads run in this process: a small pool of reader threads with their own
connections, and one inline connection for the small read on every recharge's path;
WAL lets them all run beside the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog

from orchestrator.journal import _wire
from orchestrator.journal._protocol import (
    PURGE_LIMIT,
    Account,
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
    fleet_blob,
    fleet_time,
)
from orchestrator.journal._rows import (
    ATTEMPT_COLUMNS,
    DISCREPANCY_COLUMNS,
    DISPUTE_COLUMNS,
    NOTICE_COLUMNS,
    RECON_COLUMNS,
    REFUND_COLUMNS,
    discrepancy_of,
    found_row,
    recon_run_of,
    attempt_of,
    dispute_of,
    dispute_row,
    notice_row_of,
    refund_of,
    refund_row,
    trail_entry_of,
    TRANSFER_COLUMNS,
    transfer_of,
    TEMPLATE_COLUMNS,
    template_of,
    template_row,
)
from orchestrator.journal._sqlite_fleet import RECENT_FLEET_STATS
from orchestrator.journal._sqlite_ops import OPEN, QUOTE_COLUMNS, connect, load, quote_of
from orchestrator.journal._sqlite_recon import MATCHES, UNREPORTED
from orchestrator.journal._sqlite_templates import OWN_TEMPLATES
from orchestrator.journal._sqlite_writer import ProcessWriter
from orchestrator.journal._totals import COUNT_SINCE, SUCCEEDED_OF, TOTALS_COLUMNS, counted, totals_since
from orchestrator.model import (
    Attempt,
    Discrepancy,
    Dispute,
    DisputeStatus,
    Fence,
    FirstRecharge,
    Notice,
    Recharge,
    ReconRun,
    Refund,
    RefundStatus,
    Step,
    Template,
    TrailEntry,
    Transfer,
    wallet_account,
)

__all__ = ["SqliteJournal", "path_from_url"]

_UNSETTLED = "SELECT 1 FROM recharges WHERE user_id = ? AND settlement IN ('pending', 'failed') LIMIT 1"

log = structlog.get_logger(__name__)
T = TypeVar("T")

# The reads of every reconcile pass and every recharge, each along an index (the partial
# ones named by their own literal condition): none grows with the whole table.
_OPEN_IDS = f"SELECT id FROM recharges WHERE {OPEN} ORDER BY created_at"
# Attempts of the recharges with work left (running, or with a follow-up), each set
# along its own index: bounded by the work in progress, never by the history.
_CHANNEL_BUSY = (
    "SELECT 1 FROM attempts WHERE channel = ? AND recharge_id IN "
    f"(SELECT id FROM recharges WHERE {OPEN} UNION SELECT recharge_id FROM follow_ups) LIMIT 1"
)
# The open recharges per status, with their deadlines as Recharge.deadline() reads them
# (a step-up's expiry extends it): for the metrics, every few seconds in every process.
_OPEN_STATS = (
    "SELECT status, COUNT(*), SUM(deadline < ?), MIN(deadline) FROM (SELECT r.status AS status, "
    "MAX(r.deadline_at, COALESCE((SELECT MAX(a.action_expires_at) FROM attempts a WHERE a.recharge_id = r.id), 0)) "
    f"AS deadline FROM recharges r WHERE r.{OPEN}) GROUP BY status"
)
_USER_TOTALS = f"SELECT {TOTALS_COLUMNS} FROM user_recharge_totals WHERE user_id = ?"
# A wallet's transfers, newest first, as entries: along each account index, never a scan.
_WALLET_ENTRIES = (
    "SELECT COALESCE(recharge_id, ''), coins, balance_after, at, kind, ref FROM ("
    "SELECT * FROM (SELECT seq, recharge_id, coins, credit_after AS balance_after, at, kind, ref FROM transfers "
    "WHERE credit = ? AND debit != ? ORDER BY seq DESC LIMIT ?) UNION ALL "
    "SELECT * FROM (SELECT seq, recharge_id, -coins, debit_after, at, kind, ref FROM transfers "
    "WHERE debit = ? AND credit != ? ORDER BY seq DESC LIMIT ?)) ORDER BY seq DESC LIMIT ?"
)



def path_from_url(url: str) -> str:
    """``sqlite:///data/x.db`` -> ``data/x.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    return url[len("sqlite:///"):]


class SqliteJournal:
    """Journal on one SQLite file. ``on_commit(batch_size, seconds)`` feeds metrics."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_batch: int = 512,
        readers: int = 2,
        on_commit: Callable[[int, float], None] | None = None,
        commit_interval_ms: float = 0.0,
        writer_socket: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        # The leases' clock: every process on one SQLite file is on one machine.
        self._clock = clock
        # Where an orchestrator's supervisor runs the one writer of all its workers;
        # None: this journal starts a writer process of its own.
        self._writer_socket = writer_socket
        self._commit_interval_s = commit_interval_ms / 1000
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._readers = readers
        self._writer: ProcessWriter | None = None
        self._respawn: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._inline: sqlite3.Connection | None = None
        self._conns_lock = threading.Lock()

    # -- life ---------------------------------------------------------------------------

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._start_writer()
        self._pool = ThreadPoolExecutor(max_workers=self._readers, thread_name_prefix="journal-reader")

    async def _start_writer(self) -> ProcessWriter:
        writer = ProcessWriter(self.path, self._max_batch, self._on_commit, self._commit_interval_s,
                               on_lost=self._writer_lost, connect=self._writer_socket)
        await writer.start()
        return writer

    def _writer_lost(self, writer: ProcessWriter) -> None:
        """The writer process died under us: start another, or reconnect to the
        supervisor's once it has started another (what it was committing is durable or
        not, as after a crash; the reconciler resumes what it left)."""
        if self._writer is writer and self._respawn is None:
            log.error("journal_writer_lost", path=self.path, pid=writer.pid)
            self._respawn = asyncio.get_running_loop().create_task(self._restart_writer(writer))

    async def _restart_writer(self, dead: ProcessWriter) -> None:
        delay = 0.2
        try:
            await dead.stop()
            while self._writer is dead:
                try:
                    fresh = await self._start_writer()
                except JournalError as exc:
                    log.error("journal_writer_restart_failed", error=str(exc), retry_in_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if self._writer is dead:
                    self._writer = fresh
                    log.warning("journal_writer_restarted", pid=fresh.pid)
                else:  # closed meanwhile
                    await fresh.stop()
        finally:
            self._respawn = None

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        respawn, self._respawn = self._respawn, None
        if respawn is not None:
            respawn.cancel()
            await asyncio.gather(respawn, return_exceptions=True)
        if writer is not None:
            await writer.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        with self._conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    @property
    def writer_pid(self) -> int | None:
        """The writer process (None while closed)."""
        return None if self._writer is None else self._writer.pid

    # -- plumbing -----------------------------------------------------------------------

    async def _write(self, op: str, *args: Any) -> Any:
        if self._writer is None:
            raise JournalError("journal is closed")
        return await self._writer.submit(op, args)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._pool is None:
            raise JournalError("journal is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(self._reader()))
        except sqlite3.Error as exc:
            raise JournalError(f"read failed: {exc}") from exc

    # -- writes (each one op in the writer process: ``_sqlite_ops.WRITE_OPS``) ----------

    async def create(self, recharge: Recharge, trail: TrailEntry,
                     lease: tuple[str, float] | None = None,
                     first: FirstRecharge | None = None,
                     started: tuple[Attempt, TrailEntry] | None = None,
                     notices: tuple[Notice, ...] = ()) -> Recharge | None:
        timed = None if lease is None else (lease[0], self._clock() + lease[1])
        existing_id, denied = await self._write("create", recharge, trail, timed, first, started, notices)
        if existing_id is None:
            if denied and first is not None:
                # The writer denied the first-recharge bonus inside the transaction: the
                # caller's recharge shows the price it was stored with.
                first.deny(recharge, trail)
            return None
        existing = await self._read(lambda conn: load(conn, existing_id))
        if existing is None:  # cannot happen: the row is committed before we read
            raise JournalError(f"idempotency key held by missing recharge {existing_id}")
        return existing

    async def apply(self, step: Step) -> bool:
        return bool(await self._write("apply", step))

    async def ping(self) -> None:
        await self._write("ping")

    async def record(self, entry: TrailEntry) -> None:
        """Append one entry that belongs to no recharge step (a config change)."""
        await self._write("record", entry)

    async def audit_rows(self) -> list[tuple[Any, ...]]:
        return await self._read(lambda conn: conn.execute(
            "SELECT id, recharge_id, at, event, status, reference, channel, detail, prev_hash, hash FROM trail "
            "ORDER BY id").fetchall())

    async def event_seen(self, channel: str, event_id: str) -> bool:
        return bool(await self._read(lambda conn: conn.execute(
            "SELECT 1 FROM provider_events WHERE channel=? AND event_id=?", (channel, event_id)).fetchone()))

    async def attempt(self, reference: str) -> Attempt | None:
        def fn(conn: sqlite3.Connection) -> Attempt | None:
            a = conn.execute(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE reference=?", (reference,)).fetchone()
            return None if a is None else attempt_of(a)

        return await self._read(fn)

    # -- recovery leases ----------------------------------------------------------------

    async def claim(self, owner: str, lease_s: float, limit: int = 500) -> list[tuple[Recharge, int]]:
        return list(await self._write("claim", owner, lease_s, self._clock(), limit))

    async def lease(self, owner: str, recharge_id: str, lease_s: float) -> int | None:
        token = await self._write("lease", owner, recharge_id, lease_s, self._clock())
        return None if token is None else int(token)

    async def release(self, owner: str, recharge_id: str) -> None:
        await self._write("release", owner, recharge_id)

    async def renew(self, owner: str, held: dict[str, int], lease_s: float) -> set[str]:
        if not held:
            return set()
        return set(await self._write("renew", owner, dict(held), lease_s, self._clock()))

    async def lease_of(self, recharge_id: str) -> Fence | None:
        rows = await self.query("SELECT owner, token FROM leases WHERE recharge_id=? AND owner IS NOT NULL",
                                (recharge_id,))
        return (rows[0][0], int(rows[0][1])) if rows else None

    async def claim_follow_ups(self, now: float, retry_at: float, limit: int = 500) -> list[Recharge]:
        return list(await self._write("claim_follow_ups", now, retry_at, limit))

    # -- kept channels ------------------------------------------------------------------

    async def keep_channel(self, name: str, config: dict[str, Any], retired_at: float | None) -> None:
        await self._write("keep_channel", name, orjson.dumps(config).decode(), retired_at)

    async def kept_channels(self) -> list[KeptChannel]:
        rows = await self.query("SELECT name, config, retired_at FROM channels ORDER BY name")
        return [KeptChannel(r[0], orjson.loads(r[1]), r[2]) for r in rows]

    async def channel_busy(self, name: str) -> bool:
        return bool(await self.query(_CHANNEL_BUSY, (name,)))

    # -- reads --------------------------------------------------------------------------

    async def get(self, recharge_id: str) -> Recharge | None:
        return await self._read(lambda conn: load(conn, recharge_id))

    async def find(self, client: str, idempotency_key: str) -> Recharge | None:
        def fn(conn: sqlite3.Connection) -> Recharge | None:
            row = conn.execute("SELECT id FROM recharges WHERE client=? AND idempotency_key=?",
                               (client, idempotency_key)).fetchone()
            return None if row is None else load(conn, row[0])

        return await self._read(fn)

    async def trail(self, recharge_id: str) -> list[TrailEntry]:
        return await self._read(lambda conn: [trail_entry_of(r) for r in conn.execute(
            "SELECT recharge_id, at, event, status, reference, channel, detail FROM trail "
            "WHERE recharge_id=? ORDER BY id", (recharge_id,)).fetchall()])

    async def wallet(self, user_id: str, limit: int = 100) -> WalletView:
        def fn(conn: sqlite3.Connection) -> WalletView:
            account = wallet_account(user_id)
            row = conn.execute("SELECT balance, frozen FROM accounts WHERE account=?", (account,)).fetchone()
            entries = conn.execute(_WALLET_ENTRIES, (account, account, limit, account, account, limit, limit)).fetchall()
            return WalletView(user_id, row[0] if row else 0, tuple(WalletEntry(*e) for e in entries),
                              row[1] if row else 0)

        return await self._read(fn)

    async def user_totals(self, user_id: str, since: float) -> list[UserTotals]:
        # On every recharge's path: a primary-key range read, inline like a quote's.
        totals = totals_since(await self.query_small(_USER_TOTALS, (user_id,)), since)
        if totals is None:  # rare: see _totals
            totals = counted(await self.query_small(COUNT_SINCE, (since, user_id)))
        return totals

    async def succeeded_recharges(self, user_id: str, limit: int) -> list[PastRecharge]:
        rows = await self.query(SUCCEEDED_OF, (user_id, limit))
        return [PastRecharge(int(r[0]), r[1], r[2], float(r[3])) for r in rows]

    async def has_unsettled_credit(self, user_id: str) -> bool:
        # Only for a recharge instant credit would take: along the user's recharges (recharges_user).
        return bool(await self.query_small(_UNSETTLED, (user_id,)))

    async def nonterminal(self) -> list[Recharge]:
        def fn(conn: sqlite3.Connection) -> list[Recharge]:
            ids = conn.execute(_OPEN_IDS).fetchall()
            out = []
            for (rid,) in ids:
                rec = load(conn, rid)
                if rec is not None:
                    out.append(rec)
            return out

        return await self._read(fn)

    # -- for tests and the invariant checks --------------------------------------------

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL, for the invariant checks of tests, the demo and the CLI."""
        return await self._read(lambda conn: conn.execute(sql, params).fetchall())

    async def query_small(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A small indexed read on every recharge's path (the user's history), answered
        inline on the event loop's thread: SQLite answers it faster than the hop to a reader
        thread (docs/performance.md#inline-reads). If the file is busy it does not wait
        here; a reader thread does."""
        if self._pool is None:
            raise JournalError("journal is closed")
        if self._inline is None:
            self._inline = connect(self.path)
            self._inline.execute("PRAGMA query_only=ON")
            self._inline.execute("PRAGMA busy_timeout=0")
        try:
            return self._inline.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return await self.query(sql, params)

    # -- the ledger's own operations (ops in ``_sqlite_ledger``) --------------------------

    async def open_pools(self, pools: Sequence[str], at: float) -> None:
        await self._write("open_pools", list(pools), at)

    async def deposit(self, pool: str, coins: int, reference: str, at: float,
                      trail: TrailEntry) -> tuple[str, Transfer | None]:
        answer = await self._write("deposit", pool, coins, reference, at, _wire.enc_trail(trail))
        if answer[0] == "conflict":
            return "conflict", None
        rows = await self.query(f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq=?", (answer[1],))
        return answer[0], transfer_of(rows[0])

    async def accounts(self, prefix: str = "") -> list[Account]:
        rows = await self.query("SELECT account, balance, frozen, lost, shortfalls FROM accounts WHERE account >= ? AND account < ? "
                                "ORDER BY account", (prefix, prefix + "\U0010ffff"))
        return [Account(*r) for r in rows]

    async def transfers(self, account: str | None = None, after: int = 0, limit: int = 100) -> list[Transfer]:
        if account is None:
            rows = await self.query(f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (after, limit))
        else:
            rows = await self.query(
                f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq IN (SELECT seq FROM transfers WHERE debit = ? "
                "AND seq > ? UNION SELECT seq FROM transfers WHERE credit = ? AND seq > ?) ORDER BY seq LIMIT ?",
                (account, after, account, after, limit))
        return [transfer_of(r) for r in rows]

    async def rebalance(self, expect: Mapping[str, int], moves: Sequence[tuple[str, str, int]], at: float,
                        trail: TrailEntry | None) -> bool:
        return bool(await self._write("rebalance", dict(expect), [list(m) for m in moves], at,
                                      None if trail is None else _wire.enc_trail(trail)))

    async def pool_demand(self) -> dict[str, int]:
        rows = await self.query("SELECT account, credited - credited_mark FROM accounts WHERE account >= 'pool:' "
                                "AND account < 'pool;' AND credited != credited_mark")
        return {r[0]: int(r[1]) for r in rows}

    # -- refunds and disputes (ops in ``_sqlite_aftersale``) ----------------------------

    async def create_refund(self, refund: Refund, trail: TrailEntry, guard: RefundGuard,
                            notices: tuple[Notice, ...] = ()) -> Refund | str | None:
        answer = await self._write(
            "create_refund", refund_row(refund), _wire.enc_trail(trail),
            [guard.refunded_minor, guard.refunded_coins, guard.dispute, guard.allow_negative],
            [_wire.enc_notice(n) for n in notices])
        if isinstance(answer, list):
            held = await self.get_refund(answer[1])
            if held is None:  # cannot happen: the row is committed before we read
                raise JournalError(f"refund key held by missing refund {answer[1]}")
            return held
        return answer  # type: ignore[no-any-return]

    async def settle_refund(self, refund_id: str, status: RefundStatus, at: float, *, error: str | None = None,
                            event: tuple[str, str] | None = None, trail: tuple[TrailEntry, ...] = (),
                            notices: tuple[Notice, ...] = ()) -> bool:
        return bool(await self._write("settle_refund", refund_id, status.value, at, error, event,
                                      [_wire.enc_trail(t) for t in trail], [_wire.enc_notice(n) for n in notices]))

    async def retry_refund(self, refund_id: str, next_at: float, error: str | None) -> None:
        await self._write("retry_refund", refund_id, next_at, error)

    async def claim_refunds(self, now: float, retry_at: float, limit: int = 100) -> list[Refund]:
        return [refund_of(r) for r in await self._write("claim_refunds", now, retry_at, limit)]

    async def get_refund(self, refund_id: str) -> Refund | None:
        rows = await self.query(f"SELECT {REFUND_COLUMNS} FROM refunds WHERE id=?", (refund_id,))
        return refund_of(rows[0]) if rows else None

    async def find_refund(self, client: str, idempotency_key: str) -> Refund | None:
        rows = await self.query(f"SELECT {REFUND_COLUMNS} FROM refunds WHERE client=? AND idempotency_key=?",
                                (client, idempotency_key))
        return refund_of(rows[0]) if rows else None

    async def refunds_of(self, recharge_id: str) -> list[Refund]:
        rows = await self.query(f"SELECT {REFUND_COLUMNS} FROM refunds WHERE recharge_id=? ORDER BY created_at, id",
                                (recharge_id,))
        return [refund_of(r) for r in rows]

    async def dispute_of(self, recharge_id: str) -> Dispute | None:
        rows = await self.query(f"SELECT {DISPUTE_COLUMNS} FROM disputes WHERE recharge_id=?", (recharge_id,))
        return dispute_of(rows[0]) if rows else None

    async def apply_dispute(self, dispute: Dispute, expect: DisputeStatus | None, refunded_coins: int,
                            event: tuple[str, str], trail: tuple[TrailEntry, ...] = (),
                            notices: tuple[Notice, ...] = ()) -> bool:
        return bool(await self._write("apply_dispute", list(dispute_row(dispute)), expect, refunded_coins, event,
                                      [_wire.enc_trail(t) for t in trail], [_wire.enc_notice(n) for n in notices]))

    async def record_event(self, event: tuple[str, str], recharge_id: str, trail: tuple[TrailEntry, ...]) -> bool:
        return bool(await self._write("record_event", event, recharge_id, [_wire.enc_trail(t) for t in trail]))

    # -- the outbox ---------------------------------------------------------------------

    async def add_notices(self, notices: tuple[Notice, ...]) -> None:
        await self._write("add_notices", [_wire.enc_notice(n) for n in notices])

    async def claim_notices(self, owner: str, now: float, lease_s: float, limit: int = 100) -> list[NoticeRow]:
        return [NoticeRow(*notice_row_of(r)) for r in await self._write("claim_notices", owner, now, lease_s, limit)]

    async def notice_delivered(self, notice_id: str, owner: str, at: float) -> bool:
        return bool(await self._write("notice_delivered", notice_id, owner, at))

    async def notice_failed(self, notice_id: str, owner: str, next_at: float | None, error: str) -> bool:
        return bool(await self._write("notice_failed", notice_id, owner, next_at, error))

    async def notices(self, state: str, limit: int = 100, after: str | None = None) -> list[NoticeRow]:
        sql = f"SELECT {NOTICE_COLUMNS} FROM outbox WHERE state=?"
        params: tuple[Any, ...] = (state,)
        if after is not None:
            sql += " AND seq > COALESCE((SELECT seq FROM outbox WHERE id=?), 0)"
            params += (after,)
        return [NoticeRow(*notice_row_of(r)) for r in await self.query(sql + " ORDER BY seq LIMIT ?",
                                                                        (*params, limit))]

    async def notice(self, notice_id: str) -> NoticeRow | None:
        rows = await self.query(f"SELECT {NOTICE_COLUMNS} FROM outbox WHERE id=?", (notice_id,))
        return NoticeRow(*notice_row_of(rows[0])) if rows else None

    async def redeliver(self, notice_id: str, now: float) -> NoticeRow | None:
        row = await self._write("redeliver", notice_id, now)
        return None if row is None else NoticeRow(*notice_row_of(row))

    async def outbox_stats(self) -> OutboxStats:
        rows = await self.query("SELECT (SELECT COUNT(*) FROM outbox WHERE state='pending'), "
                                "(SELECT COUNT(*) FROM outbox WHERE state='dead'), "
                                "(SELECT MIN(created_at) FROM outbox WHERE state='pending')")
        pending, dead, oldest = rows[0]
        return OutboxStats(int(pending), int(dead), oldest)

    async def open_recharges(self, now: float) -> OpenRecharges:
        return OpenRecharges.of_rows(await self.query(_OPEN_STATS, (now,)))

    # -- settlement reconciliation (SPEC 21) -------------------------------------------

    async def recon_start(self, run: ReconRun) -> bool:
        return bool(await self._write("recon_start", run.id, run.channel, run.date, run.trigger, run.started_at))

    async def recon_stage(self, run_id: str, items: Sequence[ReportRow]) -> int:
        return int(await self._write("recon_stage", run_id, [list(i) for i in items]))

    async def recon_matches(self, run_id: str, after: str, limit: int) -> list[MatchRow]:
        return [MatchRow(*r) for r in await self.query(MATCHES, (run_id, after, limit))]

    async def recon_unreported(self, run_id: str, channel: str, start: float, end: float, after: str,
                               limit: int) -> list[tuple[str, str, int, str]]:
        return [tuple(r) for r in await self.query(UNREPORTED, (after, channel, start, end, run_id, limit))]  # type: ignore[misc]

    async def recon_found(self, run_id: str, found: Sequence[Discrepancy]) -> None:
        if found:
            await self._write("recon_found", [list(found_row(run_id, d)) for d in found])

    async def recon_finish(self, run_id: str, status: str, reason: str | None, at: float, report_items: int,
                           summary: dict[str, Any] | None) -> ReconRun | None:
        row = await self._write("recon_finish", run_id, status, reason, at, report_items, summary)
        return None if row is None else recon_run_of(row)

    async def recon_purge(self, run_id: str, limit: int) -> int:
        return int(await self._write("recon_purge", run_id, limit))

    async def recon_runs(self, channel: str | None = None, limit: int = 50) -> list[ReconRun]:
        if channel is None:
            rows = await self.query(f"SELECT {RECON_COLUMNS} FROM reconciliations ORDER BY started_at DESC, id DESC "
                                    "LIMIT ?", (limit,))
        else:
            rows = await self.query(f"SELECT {RECON_COLUMNS} FROM reconciliations WHERE channel = ? "
                                    "ORDER BY started_at DESC, id DESC LIMIT ?", (channel, limit))
        return [recon_run_of(r) for r in rows]

    async def recon_run(self, run_id: str) -> ReconRun | None:
        rows = await self.query(f"SELECT {RECON_COLUMNS} FROM reconciliations WHERE id = ?", (run_id,))
        return recon_run_of(rows[0]) if rows else None

    async def discrepancies(self, channel: str, date: str, status: str | None = None, after: int = 0,
                            limit: int = 100) -> list[Discrepancy]:
        sql = f"SELECT {DISCREPANCY_COLUMNS} FROM discrepancies WHERE channel = ? AND date = ? AND seq > ?"
        params: list[Any] = [channel, date, after]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        rows = await self.query(sql + " ORDER BY seq LIMIT ?", (*params, limit))
        return [discrepancy_of(r) for r in rows]

    async def open_discrepancies(self) -> dict[str, int]:
        rows = await self.query("SELECT channel, COUNT(*) FROM discrepancies WHERE status != 'resolved' "
                                "GROUP BY channel")
        return {r[0]: int(r[1]) for r in rows}

    async def resolve_discrepancy(self, seq: int, status: str, resolution: str, at: float) -> bool:
        return bool(await self._write("resolve_discrepancy", seq, status, resolution, at))

    # -- recharge templates (ops in ``_sqlite_templates``) -------------------------------

    async def create_template(self, template: Template, max_per_user: int) -> bool:
        return bool(await self._write("create_template", list(template_row(template)), max_per_user))

    async def templates_of(self, client: str, user_id: str) -> list[Template]:
        return [template_of(r) for r in await self.query(OWN_TEMPLATES, (client, user_id))]

    async def get_template(self, template_id: str) -> Template | None:
        # On a recharge's path (one from a template): a primary-key read, inline like a quote's.
        rows = await self.query_small(f"SELECT {TEMPLATE_COLUMNS} FROM templates WHERE id=?", (template_id,))
        return template_of(rows[0]) if rows else None

    async def delete_template(self, client: str, user_id: str, template_id: str) -> bool:
        return bool(await self._write("delete_template", client, user_id, template_id))

    # -- the fleet view (ops in ``_sqlite_fleet``) ---------------------------------------

    async def put_fleet_stats(self, instance: str, blob: bytes, at: float) -> None:
        await self._write("put_fleet_stats", instance, fleet_blob(instance, blob, at), float(at))

    async def fleet_stats(self, since: float, limit: int = 256) -> list[tuple[str, float, bytes]]:
        bound = fleet_time(since)
        if limit < 0:
            raise ValueError(f"limit {limit} < 0")
        return [(r[0], r[1], r[2]) for r in await self.query(RECENT_FLEET_STATS, (bound, limit))]

    async def purge_fleet_stats(self, before: float) -> int:
        # JSON has no infinity (orjson writes null): the largest double is after every time kept.
        bound = min(max(fleet_time(before), -sys.float_info.max), sys.float_info.max)
        return int(await self._write("purge_fleet_stats", bound))

    # -- quotes -------------------------------------------------------------------------

    async def put_quote(self, quote: QuoteRecord, purge_before: float | None = None,
                        purge_limit: int = PURGE_LIMIT) -> int:
        # The price goes as its JSON text: plain values cross to the writer unchanged.
        return int(await self._write(
            "put_quote", quote.quote_id, quote.user_id, quote.amount_minor, quote.currency,
            orjson.dumps(quote.price).decode(), quote.issued_at, quote.expires_at, purge_before, purge_limit))

    async def get_quote(self, quote_id: str) -> QuoteRecord | None:
        # On a recharge's path: a primary-key read, inline like the user's history.
        rows = await self.query_small(f"SELECT {QUOTE_COLUMNS} FROM quotes WHERE quote_id=?", (quote_id,))
        return quote_of(rows[0]) if rows else None
