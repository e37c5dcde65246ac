"""The scale-out journal: PostgreSQL through an asyncpg pool, with group commit.

Writes go through a writer coroutine that owns one connection. It folds every step
waiting in its queue into one transaction (each step in its own savepoint, so one failure
does not sink its neighbours), commits once (``synchronous_commit`` on: the commit is
flushed to the WAL before it returns), and only then answers the callers. Reads use the
rest of the pool.

Several orchestrator instances may share one database: every guard of ``apply`` is a
constraint or a row lock in the database (the status guard is an ``UPDATE ... WHERE
status = ANY(...)``, re-checked by PostgreSQL on the newest row version; a guard without
an update locks the row), never a check in process memory. So are the guards of the
refunds, disputes and outbox (SPEC 19): they lock the recharge's row, and claims take
rows with ``FOR UPDATE SKIP LOCKED``. And so are the ledger's (SPEC 20): a second credit of
a recharge is refused by a unique index, a deposit's reference by another, and every
transfer takes its two accounts' rows in the order of their names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog

from orchestrator.audit import GENESIS
from orchestrator.journal._ledger import SETTLEMENT_FAILED, choose_pool
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
    TRANSFER_COLUMNS,
    transfer_of,
    ATTEMPT_COLUMNS,
    DISPUTE_COLUMNS,
    NOTICE_COLUMNS,
    RECHARGE_COLUMNS,
    REFUND_COLUMNS,
    TRAIL_COLUMNS,
    attempt_of,
    attempt_row,
    dispute_of,
    dispute_row,
    notice_row_of,
    recharge_of,
    recharge_row,
    refund_of,
    refund_row,
    trail_entry_of,
    trail_rows,
    DISCREPANCY_COLUMNS,
    RECON_COLUMNS,
    discrepancy_of,
    found_row,
    recon_run_of,
    TEMPLATE_COLUMNS,
    template_of,
    template_row,
)
from orchestrator.journal._schema_pg import MIGRATIONS
from orchestrator.clock import month_of
from orchestrator.journal._totals import (COUNT_SINCE, KEPT_OF, SUCCEEDED_OF, TOTALS_COLUMNS, counted, recount,
                                          totals_since)
from orchestrator.model import (
    DEFAULT_POOL,
    ISSUANCE,
    KEEP,
    Attempt,
    Credit,
    Discrepancy,
    Dispute,
    DisputeStatus,
    Fence,
    FirstRecharge,
    Notice,
    Recharge,
    RechargeStatus,
    ReconRun,
    Refund,
    RefundStatus,
    Step,
    Template,
    TrailEntry,
    Transfer,
    pool_account,
    wallet_account,
)

__all__ = ["PostgresJournal"]

log = structlog.get_logger(__name__)
T = TypeVar("T")

# The non-terminal recharges as a literal the planner matches to the recharges_open partial
# index: a generic plan over ``status = ANY($1)`` cannot use it, and scans every recharge.
_OPEN = "status IN ('processing', 'requires_action', 'pending')"
# Any key will do, as long as nothing else on the database takes it.
_MIGRATION_LOCK = 0x6A6F75726E616C  # "journal"
# A step that hits one of these lost a lock race with another transaction, not a rule:
# it is run again in the next batch.
_TRANSIENT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_MAX_TRIES = 5
# The connection or the server failed, not the statement.
_STORE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

Op = Callable[[asyncpg.Connection], Awaitable[Any]]


class _Rejected(Exception):
    """A step's guard failed: roll back its savepoint and answer ``answer`` (False)."""

    def __init__(self, answer: Any = False) -> None:
        super().__init__()
        self.answer = answer


class _Item:
    __slots__ = ("op", "fut", "tries")

    def __init__(self, op: Op, fut: asyncio.Future[Any]) -> None:
        self.op = op
        self.fut = fut
        self.tries = 0


class _Writer:
    """One writer coroutine and its connection. Batches whatever is queued into one
    transaction per commit."""

    def __init__(self, pool: asyncpg.Pool, queue: asyncio.Queue[_Item | None], max_batch: int,
                 on_commit: Callable[[int, float], None] | None) -> None:
        self._pool = pool
        self._queue = queue
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._conn: asyncpg.Connection | None = None
        self._retry: list[_Item] = []

    async def run(self) -> None:
        try:
            while True:
                batch, stop = await self._next_batch()
                if batch:
                    await self._run_batch(batch)
                if stop:
                    break
            # Steps that lost a lock race get one more go before the writer stops.
            while self._retry:
                batch, self._retry = self._retry, []
                await self._run_batch(batch)
        finally:
            await self._drop_connection(terminate=False)

    async def _next_batch(self) -> tuple[list[_Item], bool]:
        batch, self._retry = self._retry, []
        if not batch:
            item = await self._queue.get()
            if item is None:
                return [], True
            batch.append(item)
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        results: list[tuple[_Item, Any, BaseException | None]] = []
        try:
            conn = await self._connection()
            # Savepoints by hand rather than nested conn.transaction(): the release of
            # one step and the savepoint of the next then share a round trip.
            await conn.execute("BEGIN")
            # The audit chain's head, locked until commit: instances append one batch
            # after another, each extending the chain where it really ends.
            _HEADS[id(conn)] = await conn.fetchval("SELECT hash FROM audit_head FOR UPDATE")
            await conn.execute("SAVEPOINT step")
            for i, item in enumerate(batch):
                outcome, kept = await self._run_step(conn, item)
                if outcome is not None:
                    results.append(outcome)
                if kept and i + 1 < len(batch):
                    # Fold the step's writes into the transaction and open the next one's.
                    await conn.execute("RELEASE SAVEPOINT step; SAVEPOINT step")
            await conn.execute("UPDATE audit_head SET hash=$1", _HEADS[id(conn)])
            await conn.execute("COMMIT")
        except asyncio.CancelledError:
            await self._drop_connection(terminate=True)
            _deliver([(item, None, JournalError("journal writer cancelled")) for item in batch])
            raise
        except Exception as exc:
            # The transaction failed as a whole (server gone, disk full, connection lost); the
            # connection may be broken or stuck mid-transaction: start afresh.
            await self._drop_connection(terminate=True)
            self._retry = []
            # Nothing in it is known to be durable, so every caller hears so.
            err = JournalError(f"commit failed: {exc}")
            err.__cause__ = exc
            results = [(item, None, err) for item in batch]
        elapsed = time.perf_counter() - started
        if self._on_commit is not None:
            try:
                self._on_commit(len(batch), elapsed)
            except Exception:  # metrics must never stop the writer
                log.exception("journal_on_commit_failed")
        _deliver(results)

    async def _run_step(self, conn: asyncpg.Connection,
                        item: _Item) -> tuple[tuple[_Item, Any, BaseException | None] | None, bool]:
        """Run one step inside the open savepoint ``step``: its answer (None when it is
        to be retried) and whether it kept its writes. On any failure roll back to the
        savepoint, which stays open for the next step."""
        head = _HEADS.get(id(conn), GENESIS)
        try:
            value = await item.op(conn)
        except _Rejected as exc:
            await conn.execute("ROLLBACK TO SAVEPOINT step")
            _HEADS[id(conn)] = head
            return (item, exc.answer, None), False
        except _TRANSIENT as exc:
            await conn.execute("ROLLBACK TO SAVEPOINT step")
            _HEADS[id(conn)] = head
            item.tries += 1
            if item.tries >= _MAX_TRIES:
                return (item, None, JournalError(f"step kept losing lock races: {exc}")), False
            self._retry.append(item)  # after this commit has released our locks
            return None, False
        except Exception as exc:  # one step's failure stays that step's
            if conn.is_closed():
                raise
            await conn.execute("ROLLBACK TO SAVEPOINT step")  # if even this fails, the whole batch does
            _HEADS[id(conn)] = head
            return (item, None, exc), False
        return (item, value, None), True

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is not None and _is_dead(self._conn):
            # Lost while idle (the server restarted, an admin killed it): replace it
            # before a batch is sent into it.
            await self._drop_connection(terminate=True)
        if self._conn is None:
            self._conn = await self._pool.acquire()
        return self._conn

    async def _drop_connection(self, *, terminate: bool) -> None:
        """Give the connection back; never raises, so the writer outlives any loss."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if terminate:
                conn.terminate()
            await asyncio.shield(self._pool.release(conn))
        except Exception:  # already broken or detached: the pool replaces it
            pass


def _is_dead(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # the pool detached it when the connection was lost
        return True


def _deliver(results: list[tuple[_Item, Any, BaseException | None]]) -> None:
    for item, value, exc in results:
        if item.fut.done():
            continue
        if exc is not None:
            item.fut.set_exception(exc)
        else:
            item.fut.set_result(value)


class PostgresJournal:
    """Journal on one PostgreSQL database. ``on_commit(batch_size, seconds)`` feeds
    metrics. ``writers`` writer coroutines (one connection each) share the queue."""

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 2,
        pool_max: int = 10,
        max_batch: int = 512,
        writers: int = 1,
        on_commit: Callable[[int, float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if writers < 1 or pool_max < writers + 1:
            raise ValueError("pool_max must leave at least one connection beside the writers")
        self.url = url
        self._pool_min = min(pool_min, pool_max)
        self._pool_max = pool_max
        self._max_batch = max_batch
        self._writers_n = writers
        self._on_commit = on_commit
        # The leases' clock: None is the database server's, one clock for every
        # instance whatever their hosts' clocks say (tests hand in a virtual one).
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- life ---------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(self.url, min_size=self._pool_min, max_size=self._pool_max)
        except (*_STORE_ERRORS, ValueError) as exc:
            raise JournalError(f"cannot open journal {self.url}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await _migrate(conn)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, _STORE_ERRORS):
                raise JournalError(f"cannot migrate journal {self.url}: {exc}") from exc
            raise
        self._pool = pool
        self._queue = asyncio.Queue()
        self._tasks = [
            asyncio.get_running_loop().create_task(
                _Writer(pool, self._queue, self._max_batch, self._on_commit).run(), name=f"journal-writer-{i}")
            for i in range(self._writers_n)
        ]

    async def close(self) -> None:
        pool, queue, tasks = self._pool, self._queue, self._tasks
        self._pool, self._queue, self._tasks = None, None, []
        if queue is not None:
            for _ in tasks:
                queue.put_nowait(None)
            await asyncio.gather(*tasks, return_exceptions=True)
            while not queue.empty():  # queued behind the stop: never written
                item = queue.get_nowait()
                if item is not None and not item.fut.done():
                    item.fut.set_exception(JournalError("journal is closed"))
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (TimeoutError, *_STORE_ERRORS):
                pool.terminate()

    # -- plumbing -----------------------------------------------------------------------

    async def _write(self, op: Op) -> Any:
        if self._queue is None:
            raise JournalError("journal is closed")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(op, fut))
        return await fut

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, snapshot: bool = False) -> T:
        """``fn`` on a pooled connection; ``snapshot``: all its statements see one
        snapshot (a read-only repeatable-read transaction)."""
        if self._pool is None:
            raise JournalError("journal is closed")
        try:
            async with self._pool.acquire() as conn:
                if not snapshot:
                    return await fn(conn)
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await fn(conn)
        except _STORE_ERRORS as exc:
            raise JournalError(f"read failed: {exc}") from exc

    async def _direct(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """A write outside the group commit (lease bookkeeping), in its own transaction."""
        if self._pool is None:
            raise JournalError("journal is closed")
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    return await fn(conn)
        except _STORE_ERRORS as exc:
            raise JournalError(f"write failed: {exc}") from exc

    # -- writes -------------------------------------------------------------------------

    async def record(self, entry: TrailEntry) -> None:
        """Append one entry that belongs to no recharge step (a config change)."""
        await self._write(lambda conn: _insert_trail(conn, (entry,)))

    async def query_small(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The user-history read of every recharge (SQLite answers it inline)."""
        return await self.query(sql, params)

    async def audit_rows(self) -> list[tuple[Any, ...]]:
        return await self.query(
            "SELECT id, recharge_id, at, event, status, reference, channel, detail, prev_hash, hash FROM trail "
            "ORDER BY id")

    async def create(self, recharge: Recharge, trail: TrailEntry,
                     lease: tuple[str, float] | None = None,
                     first: FirstRecharge | None = None,
                     started: tuple[Attempt, TrailEntry] | None = None,
                     notices: tuple[Notice, ...] = ()) -> Recharge | None:
        async def op(conn: asyncpg.Connection) -> str | None:
            entry = trail
            if first is not None and await conn.fetchval(
                "SELECT 1 FROM recharges WHERE user_id=$1 AND status IN ('processing', 'requires_action', 'pending', 'succeeded') "
                "LIMIT 1", recharge.user_id,
            ):
                # Within one instance the writer serialises this; across instances two
                # "firsts" racing in one instant may both keep the bonus (coins only).
                entry = first.deny(recharge, trail)
            # ON CONFLICT waits for another instance inserting the same key, so exactly one makes
            # the recharge; it and its trail entry are inserted only when the key was free.
            head = _HEADS.get(id(conn), GENESIS)
            made = await conn.fetchval(_CREATE, *recharge_row(recharge), *_trail_rows(conn, (entry,))[0])
            if made is None:
                _HEADS[id(conn)] = head  # no trail entry was written
                holder: str = await conn.fetchval(
                    "SELECT id FROM recharges WHERE client=$1 AND idempotency_key=$2",
                    recharge.client, recharge.idempotency_key,
                )
                return holder
            if lease is not None:
                await conn.execute(
                    f"INSERT INTO leases(recharge_id, owner, expires_at, token) VALUES ($1, $2, {_now(4)} + $3, 1)",
                    recharge.id, lease[0], float(lease[1]), self._now())
            if started is not None:
                await conn.execute(_INSERT_ATTEMPT, *attempt_row(started[0]))
                await _insert_trail(conn, (started[1],))
            await _add_notices(conn, notices)
            return None

        existing_id = await self._write(op)
        if existing_id is None:
            return None
        existing = await self.get(existing_id)
        if existing is None:  # cannot happen: the row is committed before we read
            raise JournalError(f"idempotency key held by missing recharge {existing_id}")
        return existing

    async def apply(self, step: Step) -> bool:
        result: bool = await self._write(lambda conn: _apply(conn, step))
        return result

    async def ping(self) -> None:
        await self._write(lambda conn: conn.fetchval("SELECT 1"))

    # -- recovery leases ----------------------------------------------------------------

    def _now(self) -> float | None:
        return None if self._clock is None else float(self._clock())

    async def claim(self, owner: str, lease_s: float, limit: int = 500) -> list[tuple[Recharge, int]]:
        async def ensure_rows(conn: asyncpg.Connection) -> None:
            # Every candidate needs a lease row to lock. Made in id order (and committed
            # at once), so two claimers making them together wait instead of deadlocking.
            await conn.execute(_LEASE_ROWS)

        async def take(conn: asyncpg.Connection) -> list[tuple[Recharge, int]]:
            # SKIP LOCKED: a lease another claimer is taking right now is not ours; one
            # it took since our snapshot is re-checked on its new row version and dropped.
            rows = await conn.fetch(_TAKE_LEASES, owner, float(lease_s), self._now(), limit)
            tokens = {r[0]: int(r[1]) for r in rows}
            recs = await _load_many(conn, list(tokens))
            return sorted(((r, tokens[r.id]) for r in recs if not r.terminal),
                          key=lambda rt: (rt[0].created_at, rt[0].id))

        await self._direct(ensure_rows)
        return await self._direct(take)

    async def lease(self, owner: str, recharge_id: str, lease_s: float) -> int | None:
        # ON CONFLICT DO UPDATE locks the existing lease and checks the WHERE on its
        # newest version: of two instances racing for one recharge, one gets it.
        async def op(conn: asyncpg.Connection) -> int | None:
            if await conn.fetchval("SELECT 1 FROM recharges WHERE id=$1", recharge_id) is None:
                return None
            token = await conn.fetchval(_TAKE, recharge_id, owner, float(lease_s), self._now())
            return None if token is None else int(token)

        return await self._direct(op)

    async def release(self, owner: str, recharge_id: str) -> None:
        await self._direct(lambda conn: conn.execute(
            "UPDATE leases SET owner = NULL, expires_at = 0 WHERE recharge_id = $1 AND owner = $2", recharge_id, owner))

    async def renew(self, owner: str, held: dict[str, int], lease_s: float) -> set[str]:
        if not held:
            return set()
        ids, tokens = list(held), [held[r] for r in held]
        rows = await self._direct(lambda conn: conn.fetch(
            f"UPDATE leases l SET expires_at = {_now(5)} + $4 FROM unnest($2::text[], $3::bigint[]) AS h(id, token) "
            "WHERE l.recharge_id = h.id AND l.token = h.token AND l.owner = $1 RETURNING l.recharge_id",
            owner, ids, tokens, float(lease_s), self._now()))
        return {r[0] for r in rows}

    async def lease_of(self, recharge_id: str) -> Fence | None:
        row = await self._read(lambda conn: conn.fetchrow(
            "SELECT owner, token FROM leases WHERE recharge_id = $1 AND owner IS NOT NULL", recharge_id))
        return None if row is None else (row[0], int(row[1]))

    async def claim_follow_ups(self, now: float, retry_at: float, limit: int = 500) -> list[Recharge]:
        async def op(conn: asyncpg.Connection) -> list[Recharge]:
            rows = await conn.fetch(_CLAIM_FOLLOW_UPS, float(now), float(retry_at), limit)
            return await _load_many(conn, [r[0] for r in rows])

        return await self._direct(op)

    # -- kept channels ------------------------------------------------------------------

    async def keep_channel(self, name: str, config: dict[str, Any], retired_at: float | None) -> None:
        doc = orjson.dumps(config).decode()
        await self._direct(lambda conn: conn.execute(
            "INSERT INTO channels(name, config, retired_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET config = excluded.config, retired_at = excluded.retired_at",
            name, doc, None if retired_at is None else float(retired_at)))

    async def kept_channels(self) -> list[KeptChannel]:
        rows = await self.query("SELECT name, config, retired_at FROM channels ORDER BY name")
        return [KeptChannel(r[0], orjson.loads(r[1]), r[2]) for r in rows]

    async def channel_busy(self, name: str) -> bool:
        return bool(await self._read(lambda conn: conn.fetchval(_CHANNEL_BUSY, name)))

    # -- reads --------------------------------------------------------------------------

    async def event_seen(self, channel: str, event_id: str) -> bool:
        return bool(await self._read(lambda conn: conn.fetchval(
            "SELECT 1 FROM provider_events WHERE channel=$1 AND event_id=$2", channel, event_id)))

    async def attempt(self, reference: str) -> Attempt | None:
        async def fn(conn: asyncpg.Connection) -> Attempt | None:
            a = await conn.fetchrow(f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE reference=$1", reference)
            return None if a is None else attempt_of(a)

        return await self._read(fn)

    async def get(self, recharge_id: str) -> Recharge | None:
        async def fn(conn: asyncpg.Connection) -> Recharge | None:
            recs = await _load_many(conn, [recharge_id])
            return recs[0] if recs else None

        return await self._read(fn, snapshot=True)

    async def find(self, client: str, idempotency_key: str) -> Recharge | None:
        async def fn(conn: asyncpg.Connection) -> Recharge | None:
            rid = await conn.fetchval("SELECT id FROM recharges WHERE client=$1 AND idempotency_key=$2",
                                      client, idempotency_key)
            recs = [] if rid is None else await _load_many(conn, [rid])
            return recs[0] if recs else None

        return await self._read(fn, snapshot=True)

    async def trail(self, recharge_id: str) -> list[TrailEntry]:
        rows = await self.query("SELECT recharge_id, at, event, status, reference, channel, detail FROM trail "
                                "WHERE recharge_id=$1 ORDER BY id", (recharge_id,))
        return [trail_entry_of(r) for r in rows]

    async def wallet(self, user_id: str, limit: int = 100) -> WalletView:
        async def fn(conn: asyncpg.Connection) -> WalletView:
            account = wallet_account(user_id)
            row = await conn.fetchrow("SELECT balance, frozen FROM accounts WHERE account=$1", account)
            entries = await conn.fetch(_WALLET_ENTRIES, account, limit)
            return WalletView(user_id, row[0] if row else 0, tuple(WalletEntry(*e) for e in entries),
                              row[1] if row else 0)

        return await self._read(fn, snapshot=True)

    async def succeeded_recharges(self, user_id: str, limit: int) -> list[PastRecharge]:
        rows = await self._read(lambda conn: conn.fetch(_SUCCEEDED_OF, user_id, limit))
        return [PastRecharge(int(r[0]), r[1], r[2], float(r[3])) for r in rows]

    async def has_unsettled_credit(self, user_id: str) -> bool:
        # Only for a recharge instant credit would take: along the user's recharges (recharges_user).
        return bool(await self._read(lambda conn: conn.fetchval(_UNSETTLED, user_id)))

    async def user_totals(self, user_id: str, since: float) -> list[UserTotals]:
        async def fn(conn: asyncpg.Connection) -> list[UserTotals]:
            totals = totals_since(await conn.fetch(_USER_TOTALS, user_id), since)
            if totals is None:  # rare: see _totals
                totals = counted(await conn.fetch(_COUNT_SINCE, float(since), user_id))
            return totals

        return await self._read(fn)

    async def nonterminal(self) -> list[Recharge]:
        async def fn(conn: asyncpg.Connection) -> list[Recharge]:
            ids = await conn.fetch(_OPEN_IDS)
            return await _load_many(conn, [r[0] for r in ids])

        return await self._read(fn, snapshot=True)

    # -- for tests and the invariant checks --------------------------------------------

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL, for the invariant checks of tests, the demo and the CLI. ``?``
        placeholders (as for SQLite) are accepted beside PostgreSQL's ``$1``."""
        if params and "$1" not in sql:
            sql = _numbered(sql)

        async def fn(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in await conn.fetch(sql, *params)]

        return await self._read(fn, snapshot=True)

    # -- quotes -------------------------------------------------------------------------

    async def put_quote(self, quote: QuoteRecord, purge_before: float | None = None,
                        purge_limit: int = PURGE_LIMIT) -> int:
        price = orjson.dumps(quote.price).decode()

        async def op(conn: asyncpg.Connection) -> int:
            await conn.execute(_INSERT_QUOTE, quote.quote_id, quote.user_id, quote.amount_minor, quote.currency,
                               price, float(quote.issued_at), float(quote.expires_at))
            if purge_before is None:
                return 0
            done: str = await conn.execute(_PURGE_QUOTES, float(purge_before), purge_limit)
            return int(done.rsplit(" ", 1)[-1])  # "DELETE n"

        return int(await self._write(op))

    async def get_quote(self, quote_id: str) -> QuoteRecord | None:
        row = await self._read(lambda conn: conn.fetchrow(
            f"SELECT {_QUOTE_COLUMNS} FROM quotes WHERE quote_id=$1", quote_id))
        if row is None:
            return None
        return QuoteRecord(row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5], row[6])

    # -- the ledger's own operations (SPEC 20; the ops are below, after the SQL) --------

    async def open_pools(self, pools: Sequence[str], at: float) -> None:
        await self._write(lambda conn: conn.execute(_OPEN_POOLS, sorted(pool_account(p) for p in pools), float(at)))

    async def deposit(self, pool: str, coins: int, reference: str, at: float,
                      trail: TrailEntry) -> tuple[str, Transfer | None]:
        kind, row = await self._write(lambda conn: _deposit(conn, pool, coins, reference, float(at), trail))
        return kind, None if row is None else transfer_of(row)

    async def accounts(self, prefix: str = "") -> list[Account]:
        sql, args = _accounts_of(prefix)
        rows = await self._read(lambda conn: conn.fetch(sql + _BY_NAME, *args))
        return [Account(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def transfers(self, account: str | None = None, after: int = 0, limit: int = 100) -> list[Transfer]:
        if account is None:
            rows = await self._read(lambda conn: conn.fetch(_TRANSFERS, after, limit))
        else:
            rows = await self._read(lambda conn: conn.fetch(_TRANSFERS_OF, account, after, limit))
        return [transfer_of(r) for r in rows]

    async def rebalance(self, expect: Mapping[str, int], moves: Sequence[tuple[str, str, int]], at: float,
                        trail: TrailEntry | None) -> bool:
        return bool(await self._write(lambda conn: _rebalance(conn, dict(expect), list(moves), float(at), trail)))

    async def pool_demand(self) -> dict[str, int]:
        rows = await self._read(lambda conn: conn.fetch(_POOL_DEMAND, *_POOLS))
        return {r[0]: int(r[1]) for r in rows}

    # -- refunds and disputes (SPEC 19; the ops are below, after the SQL) ---------------

    async def create_refund(self, refund: Refund, trail: TrailEntry, guard: RefundGuard,
                            notices: tuple[Notice, ...] = ()) -> Refund | str | None:
        answer: Refund | str | None = await self._write(
            lambda conn: _create_refund(conn, refund, trail, guard, notices))
        return answer

    async def settle_refund(self, refund_id: str, status: RefundStatus, at: float, *, error: str | None = None,
                            event: tuple[str, str] | None = None, trail: tuple[TrailEntry, ...] = (),
                            notices: tuple[Notice, ...] = ()) -> bool:
        return bool(await self._write(
            lambda conn: _settle_refund(conn, refund_id, status, float(at), error, event, trail, notices)))

    async def retry_refund(self, refund_id: str, next_at: float, error: str | None) -> None:
        await self._write(lambda conn: conn.execute(_RETRY_REFUND, float(next_at), error, refund_id))

    async def claim_refunds(self, now: float, retry_at: float, limit: int = 100) -> list[Refund]:
        # Its own transaction, as claim_follow_ups: SKIP LOCKED locks are let go at once.
        rows = await self._direct(lambda conn: conn.fetch(_CLAIM_REFUNDS, float(now), float(retry_at), limit))
        return [refund_of(r) for r in rows]

    async def get_refund(self, refund_id: str) -> Refund | None:
        row = await self._read(lambda conn: conn.fetchrow(f"SELECT {REFUND_COLUMNS} FROM refunds WHERE id=$1",
                                                          refund_id))
        return None if row is None else refund_of(row)

    async def find_refund(self, client: str, idempotency_key: str) -> Refund | None:
        row = await self._read(lambda conn: conn.fetchrow(_REFUND_BY_KEY, client, idempotency_key))
        return None if row is None else refund_of(row)

    async def refunds_of(self, recharge_id: str) -> list[Refund]:
        rows = await self._read(lambda conn: conn.fetch(
            f"SELECT {REFUND_COLUMNS} FROM refunds WHERE recharge_id=$1 ORDER BY created_at, id", recharge_id))
        return [refund_of(r) for r in rows]

    async def dispute_of(self, recharge_id: str) -> Dispute | None:
        row = await self._read(lambda conn: conn.fetchrow(
            f"SELECT {DISPUTE_COLUMNS} FROM disputes WHERE recharge_id=$1", recharge_id))
        return None if row is None else dispute_of(row)

    async def apply_dispute(self, dispute: Dispute, expect: DisputeStatus | None, refunded_coins: int,
                            event: tuple[str, str], trail: tuple[TrailEntry, ...] = (),
                            notices: tuple[Notice, ...] = ()) -> bool:
        return bool(await self._write(
            lambda conn: _apply_dispute(conn, dispute, expect, refunded_coins, event, trail, notices)))

    async def record_event(self, event: tuple[str, str], recharge_id: str, trail: tuple[TrailEntry, ...]) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            if not await _event_new(conn, event, None, "recorded", trail[0].at if trail else 0.0):
                return False
            await _insert_trail(conn, trail)
            return True

        return bool(await self._write(op))

    # -- the outbox ---------------------------------------------------------------------

    async def add_notices(self, notices: tuple[Notice, ...]) -> None:
        if notices:
            await self._write(lambda conn: _add_notices(conn, notices))

    async def claim_notices(self, owner: str, now: float, lease_s: float, limit: int = 100) -> list[NoticeRow]:
        rows = await self._direct(lambda conn: conn.fetch(
            _CLAIM_NOTICES, float(now), owner, float(now) + float(lease_s), limit))
        return [NoticeRow(*notice_row_of(r)) for r in rows]

    async def notice_delivered(self, notice_id: str, owner: str, at: float) -> bool:
        done = await self._write(lambda conn: conn.execute(_NOTICE_DELIVERED, float(at), notice_id, owner))
        return bool(done == "UPDATE 1")

    async def notice_failed(self, notice_id: str, owner: str, next_at: float | None, error: str) -> bool:
        done = await self._write(lambda conn: conn.execute(
            _NOTICE_FAILED, error[:500], None if next_at is None else float(next_at), notice_id, owner))
        return bool(done == "UPDATE 1")

    async def notices(self, state: str, limit: int = 100, after: str | None = None) -> list[NoticeRow]:
        rows = await self._read(lambda conn: conn.fetch(_NOTICES, state, after, limit))
        return [NoticeRow(*notice_row_of(r)) for r in rows]

    async def notice(self, notice_id: str) -> NoticeRow | None:
        row = await self._read(lambda conn: conn.fetchrow(_NOTICE, notice_id))
        return None if row is None else NoticeRow(*notice_row_of(row))

    async def redeliver(self, notice_id: str, now: float) -> NoticeRow | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            await conn.execute(_REDELIVER, notice_id, float(now))
            return await conn.fetchrow(_NOTICE, notice_id)

        row = await self._write(op)
        return None if row is None else NoticeRow(*notice_row_of(row))

    async def outbox_stats(self) -> OutboxStats:
        row = await self._read(lambda conn: conn.fetchrow(_OUTBOX_STATS))
        return OutboxStats(int(row[0]), int(row[1]), row[2])

    async def open_recharges(self, now: float) -> OpenRecharges:
        rows = await self._read(lambda conn: conn.fetch(_OPEN_STATS, float(now)))
        return OpenRecharges.of_rows(rows)

    # -- settlement reconciliation (SPEC 21; the ops are below, after the SQL) ----------

    async def recon_start(self, run: ReconRun) -> bool:
        # ON CONFLICT waits for another instance taking the day's scheduled run, then skips.
        done = await self._write(lambda conn: conn.execute(
            _RECON_START, run.id, run.channel, run.date, run.trigger, float(run.started_at)))
        return bool(done == "INSERT 0 1")

    async def recon_stage(self, run_id: str, items: Sequence[ReportRow]) -> int:
        if not items:
            return 0
        columns = (
            [i.reference for i in items], [i.provider_ref for i in items], [i.status for i in items],
            [int(i.amount_minor) for i in items], [i.currency for i in items], [int(i.fee_minor) for i in items],
            [i.settled_at for i in items],
        )
        done: str = await self._write(lambda conn: conn.execute(_RECON_STAGE, run_id, *columns))
        return int(done.rsplit(" ", 1)[-1])  # "INSERT 0 n"

    async def recon_matches(self, run_id: str, after: str, limit: int) -> list[MatchRow]:
        rows = await self._read(lambda conn: conn.fetch(_RECON_MATCHES, run_id, after, limit))
        return [MatchRow(*r) for r in rows]

    async def recon_unreported(self, run_id: str, channel: str, start: float, end: float, after: str,
                               limit: int) -> list[tuple[str, str, int, str]]:
        rows = await self._read(lambda conn: conn.fetch(
            _RECON_UNREPORTED, after, channel, float(start), float(end), run_id, limit))
        return [(r[0], r[1], int(r[2]), r[3]) for r in rows]

    async def recon_found(self, run_id: str, found: Sequence[Discrepancy]) -> None:
        # One row per reference and kind, the last one found (as SQLite's INSERT OR REPLACE):
        # one statement may not update a row twice.
        rows = list({(d.reference, d.kind): found_row(run_id, d) for d in found}.values())
        if rows:
            columns = [list(c) for c in zip(*rows)][1:]
            await self._write(lambda conn: conn.execute(_RECON_FOUND, run_id, *columns))

    async def recon_finish(self, run_id: str, status: str, reason: str | None, at: float, report_items: int,
                           summary: dict[str, Any] | None) -> ReconRun | None:
        doc = None if summary is None else orjson.dumps(summary).decode()
        row = await self._write(lambda conn: _recon_finish(conn, run_id, status, reason, float(at), report_items,
                                                           doc))
        return None if row is None else recon_run_of(row)

    async def recon_purge(self, run_id: str, limit: int) -> int:
        status = await self._write(lambda conn: conn.execute(_RECON_PURGE, run_id, limit))
        return int(status.split()[-1])  # "DELETE n"

    async def recon_runs(self, channel: str | None = None, limit: int = 50) -> list[ReconRun]:
        rows = await self._read(lambda conn: conn.fetch(_RECON_RUNS, channel, limit))
        return [recon_run_of(r) for r in rows]

    async def recon_run(self, run_id: str) -> ReconRun | None:
        row = await self._read(lambda conn: conn.fetchrow(
            f"SELECT {RECON_COLUMNS} FROM reconciliations WHERE id = $1", run_id))
        return None if row is None else recon_run_of(row)

    async def discrepancies(self, channel: str, date: str, status: str | None = None, after: int = 0,
                            limit: int = 100) -> list[Discrepancy]:
        rows = await self._read(lambda conn: conn.fetch(_DISCREPANCIES, channel, date, after, status, limit))
        return [discrepancy_of(r) for r in rows]

    async def open_discrepancies(self) -> dict[str, int]:
        rows = await self._read(lambda conn: conn.fetch(_OPEN_DISCREPANCIES))
        return {r[0]: int(r[1]) for r in rows}

    async def resolve_discrepancy(self, seq: int, status: str, resolution: str, at: float) -> bool:
        done = await self._write(lambda conn: conn.execute(_RESOLVE_DISCREPANCY, status, resolution, float(at), seq))
        return bool(done == "UPDATE 1")


    # -- recharge templates (SPEC 22) ----------------------------------------------------

    async def create_template(self, template: Template, max_per_user: int) -> bool:
        row = template_row(template)

        async def op(conn: asyncpg.Connection) -> bool:
            # One user's creates take turns (on every instance), so the count each one
            # reads includes the others' inserts: the cap holds in the store.
            await conn.execute(_LOCK_TEMPLATES, f"{template.client}/{template.user_id}")
            if await conn.fetchval(_COUNT_TEMPLATES, template.client, template.user_id) >= max_per_user:
                return False
            await conn.execute(_INSERT_TEMPLATE, *row)
            return True

        return bool(await self._write(op))

    async def templates_of(self, client: str, user_id: str) -> list[Template]:
        rows = await self._read(lambda conn: conn.fetch(_OWN_TEMPLATES, client, user_id))
        return [template_of(r) for r in rows]

    async def get_template(self, template_id: str) -> Template | None:
        row = await self._read(lambda conn: conn.fetchrow(_TEMPLATE, template_id))
        return None if row is None else template_of(row)

    async def delete_template(self, client: str, user_id: str, template_id: str) -> bool:
        done = await self._write(lambda conn: conn.execute(_DELETE_TEMPLATE, template_id, client, user_id))
        return bool(done == "DELETE 1")

    # -- the fleet view -------------------------------------------------------------------
    # Outside the group commit, on a pooled connection (as lease bookkeeping): a megabyte
    # published every second or two by every instance must not ride in the recharges' batches.

    async def put_fleet_stats(self, instance: str, blob: bytes, at: float) -> None:
        kept = fleet_blob(instance, blob, at)
        await self._direct(lambda conn: conn.execute(_PUT_FLEET_STATS, instance, float(at), kept))

    async def fleet_stats(self, since: float, limit: int = 256) -> list[tuple[str, float, bytes]]:
        bound = fleet_time(since)
        if limit < 0:
            raise ValueError(f"limit {limit} < 0")
        rows = await self._read(lambda conn: conn.fetch(_RECENT_FLEET_STATS, bound, limit))
        return [(r[0], r[1], r[2]) for r in rows]

    async def purge_fleet_stats(self, before: float) -> int:
        bound = fleet_time(before)
        done: str = await self._direct(lambda conn: conn.execute(_PURGE_FLEET_STATS, bound))
        return int(done.rsplit(" ", 1)[-1])  # "DELETE n"


# -- migrations -------------------------------------------------------------------------


async def _migrate(conn: asyncpg.Connection) -> None:
    """Apply what ``schema_migrations`` lacks, in one transaction under an advisory lock:
    instances starting together take turns, and the later ones find nothing to do."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            for sql in statements:
                await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations(version, applied_at) VALUES ($1, $2)",
                               version, time.time())
            log.info("journal_migrated", version=version)


# -- SQL --------------------------------------------------------------------------------

# The store's clock, or the journal's: parameter ``$n`` when the journal has a clock.
def _now(n: int) -> str:
    return f"COALESCE(${n}::float8, EXTRACT(EPOCH FROM clock_timestamp()))"


# $1..$24 the recharge row, $25..$33 the trail entry.
_CREATE = (
    f"WITH rec AS (INSERT INTO recharges({RECHARGE_COLUMNS}) "
    f"VALUES ({','.join(f'${i}' for i in range(1, 25))}) "
    "ON CONFLICT (client, idempotency_key) DO NOTHING RETURNING id) "
    f"INSERT INTO trail({TRAIL_COLUMNS}) "
    "SELECT $25, $26, $27, $28, $29, $30, $31, $32, $33 FROM rec RETURNING 1"
)
_INSERT_ATTEMPT = f"INSERT INTO attempts({ATTEMPT_COLUMNS}) VALUES ({','.join(f'${i}' for i in range(1, 15))})"
_INSERT_TRAIL = f"INSERT INTO trail({TRAIL_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
# channel and decline_code change only when the step names them, as in SQLite.
_UPDATE_STATUS = (
    "UPDATE recharges SET status=$1, updated_at=$2, reason=$3, channel=COALESCE($4, channel), "
    "decline_code=COALESCE($5, decline_code), settlement=COALESCE($8, settlement) "
    "WHERE id=$6 AND ($7::text[] IS NULL OR status = ANY($7::text[]))"
)
_TOUCH = ("UPDATE recharges SET updated_at=$1, settlement=COALESCE($4, settlement) "
          "WHERE id=$2 AND ($3::text[] IS NULL OR status = ANY($3::text[]))")
# A success that credits: the row says whose totals it joins (see _ADD_TO_TOTALS).
_UPDATE_STATUS_SUCCEEDED = _UPDATE_STATUS + " RETURNING user_id, currency, amount_minor, created_at"
# One more success in its user's totals (``_totals``): its creation month's tally grows if newest,
# restarts if newer, stays if older; the upsert's row lock makes two instances add in turn.
_ADD_TO_TOTALS = (
    "INSERT INTO user_recharge_totals AS t(user_id, currency, recharges, amount_minor, month_start, month_recharges) "
    "VALUES ($1, $2, 1, $3, $4, 1) ON CONFLICT (user_id, currency) DO UPDATE SET "
    "recharges = t.recharges + 1, amount_minor = t.amount_minor + excluded.amount_minor, "
    "month_recharges = CASE WHEN excluded.month_start > t.month_start THEN 1 "
    "WHEN excluded.month_start = t.month_start THEN t.month_recharges + 1 ELSE t.month_recharges END, "
    "month_start = GREATEST(t.month_start, excluded.month_start)"
)
# The reads of every reconcile pass and every recharge, each along an index (the partial
# ones named by their own literal condition): none grows with the whole table.
_OPEN_IDS = f"SELECT id FROM recharges WHERE {_OPEN} ORDER BY created_at"
_LEASE_ROWS = (
    "INSERT INTO leases(recharge_id, owner, expires_at, token) "
    f"SELECT r.id, NULL, 0, 0 FROM recharges r WHERE r.{_OPEN} "
    "AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.recharge_id = r.id) ORDER BY r.id "
    "ON CONFLICT (recharge_id) DO NOTHING"
)
# A new owner bumps the token: a step fenced with the old one is refused.
_TAKE_LEASES = (
    f"WITH t AS (SELECT {_now(3)} AS now) "
    "UPDATE leases SET token = CASE WHEN leases.owner IS NOT DISTINCT FROM $1 THEN leases.token ELSE leases.token + 1 "
    "END, owner = $1, expires_at = t.now + $2 FROM t WHERE recharge_id IN ("
    " SELECT l.recharge_id FROM leases l JOIN recharges r ON r.id = l.recharge_id"
    f" WHERE r.{_OPEN} AND (l.owner IS NULL OR l.owner = $1 OR l.expires_at <= (SELECT now FROM t))"
    " ORDER BY r.created_at, r.id LIMIT $4 FOR UPDATE OF l SKIP LOCKED"
    ") RETURNING recharge_id, token"
)
_TAKE = (
    f"WITH t AS (SELECT {_now(4)} AS now) "
    "INSERT INTO leases AS l (recharge_id, owner, expires_at, token) SELECT $1, $2, t.now + $3, 1 FROM t "
    "ON CONFLICT (recharge_id) DO UPDATE SET "
    "token = CASE WHEN l.owner IS NOT DISTINCT FROM excluded.owner THEN l.token ELSE l.token + 1 END, "
    "owner = excluded.owner, expires_at = excluded.expires_at "
    "WHERE l.owner = excluded.owner OR l.owner IS NULL OR l.expires_at <= (SELECT now FROM t) "
    "RETURNING token"
)
# Along follow_ups_due; SKIP LOCKED: instances claiming at once take different ones.
_CLAIM_FOLLOW_UPS = (
    "UPDATE follow_ups SET due_at = $2 WHERE recharge_id IN (SELECT recharge_id FROM follow_ups "
    "WHERE due_at <= $1 ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING recharge_id"
)
_CHANNEL_BUSY = (
    "SELECT 1 FROM attempts WHERE channel = $1 AND recharge_id IN "
    f"(SELECT id FROM recharges WHERE {_OPEN} UNION SELECT recharge_id FROM follow_ups) LIMIT 1"
)
_SET_FOLLOW_UP = ("INSERT INTO follow_ups(recharge_id, due_at) VALUES ($1, $2) "
                  "ON CONFLICT (recharge_id) DO UPDATE SET due_at = excluded.due_at")
_USER_TOTALS = f"SELECT {TOTALS_COLUMNS} FROM user_recharge_totals WHERE user_id = $1"
_UPDATE_ATTEMPT = (
    "UPDATE attempts SET state=$1, provider_ref=COALESCE($2, provider_ref), decline_code=$3, error=$4, "
    "latency_ms=COALESCE($5, latency_ms), updated_at=$6, late_check_at=$9, action_url=$10, action_expires_at=$11 "
    "WHERE reference=$7 AND ($8::text[] IS NULL OR state = ANY($8::text[]))"
)
async def _load_many(conn: asyncpg.Connection, ids: list[str]) -> list[Recharge]:
    """The recharges ``ids`` with their attempts, in the order given (missing ones left out)."""
    if not ids:
        return []
    rows = await conn.fetch(f"SELECT {RECHARGE_COLUMNS} FROM recharges WHERE id = ANY($1::text[])", ids)
    attempts: dict[str, list[Attempt]] = {}
    for a in await conn.fetch(
        f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE recharge_id = ANY($1::text[]) ORDER BY recharge_id, seq", ids
    ):
        attempts.setdefault(a[1], []).append(attempt_of(a))
    by_id = {row[0]: row for row in rows}
    return [recharge_of(by_id[rid], attempts.get(rid, [])) for rid in ids if rid in by_id]


# The audit chain's head per writer connection, during its batch (see _run_batch).
_HEADS: dict[int, str] = {}


def _trail_rows(conn: asyncpg.Connection, entries: Sequence[TrailEntry]) -> list[tuple[Any, ...]]:
    rows, _HEADS[id(conn)] = trail_rows(_HEADS.get(id(conn), GENESIS), entries)
    return rows


async def _insert_trail(conn: asyncpg.Connection, entries: Sequence[TrailEntry]) -> None:
    rows = _trail_rows(conn, entries)
    if len(rows) == 1:
        await conn.execute(_INSERT_TRAIL, *rows[0])
    elif rows:
        await conn.executemany(_INSERT_TRAIL, rows)


def _values(states: frozenset[Any] | None) -> list[str] | None:
    return None if states is None else sorted(s.value for s in states)


def _value(state: Any) -> str | None:
    return None if state is None else state.value


async def _apply(conn: asyncpg.Connection, step: Step) -> bool:
    # A step that marks its recharge succeeded and credits it adds it to the user's
    # totals; who, what currency, how much and when created come from the row it updates.
    succeeded: asyncpg.Record | None = None
    if step.lease is not None:
        # Locked until commit: a takeover waits for this step, then bumps the token.
        held = await conn.fetchrow("SELECT owner, token FROM leases WHERE recharge_id=$1 FOR SHARE", step.recharge_id)
        if held is None or (held[0], held[1]) != tuple(step.lease):
            raise _Rejected
    if step.status is not None:
        args = (step.status.value, float(step.at), step.reason, step.channel, step.decline_code,
                step.recharge_id, _values(step.expect_status), _value(step.settlement))
        if step.status is RechargeStatus.SUCCEEDED and step.credit is not None:
            succeeded = await conn.fetchrow(_UPDATE_STATUS_SUCCEEDED, *args)
            if succeeded is None:
                raise _Rejected
        elif await conn.execute(_UPDATE_STATUS, *args) != "UPDATE 1":
            raise _Rejected
    elif step.attempt is not None:
        # An attempt's change is the recharge's change: its updated_at moves too (and the
        # row is locked, so the status guard still holds when we commit).
        if await conn.execute(_TOUCH, float(step.at), step.recharge_id, _values(step.expect_status),
                              _value(step.settlement)) != "UPDATE 1":
            raise _Rejected
    elif step.expect_status is not None:
        # Lock the row as the UPDATE above would: the guard must still hold when we
        # commit, whatever another instance does to this recharge meanwhile.
        status = await conn.fetchval(
            "SELECT status FROM recharges WHERE id=$1 FOR NO KEY UPDATE", step.recharge_id)
        if status is None or RechargeStatus(status) not in step.expect_status:
            raise _Rejected
    if not await _event_new(
        conn, step.event, step.attempt.reference if step.attempt else None,
        step.status.value if step.status else (step.attempt.state.value if step.attempt else "recorded"),
        float(step.at),
    ):
        raise _Rejected
    if step.attempt is not None:
        await _write_attempt(conn, step)
    if step.credit is not None:
        # The credit index refuses a second credit of the recharge: the step rolls back whole.
        if not await _credit(conn, step.credit):
            raise _Rejected
        if succeeded is not None:
            await conn.execute(_ADD_TO_TOTALS, succeeded[0], succeeded[1], succeeded[2], month_of(succeeded[3]))
    if step.clawback is not None:
        await _claw_back(conn, step.clawback)
        user_id = step.clawback.user_id
        currency = await conn.fetchval("SELECT currency FROM recharges WHERE id=$1", step.recharge_id)
        await conn.execute("DELETE FROM user_recharge_totals WHERE user_id=$1 AND currency=$2", user_id, currency)
        row = recount(await conn.fetch(_KEPT_OF, user_id, currency))
        if row is not None:
            await conn.execute("INSERT INTO user_recharge_totals(user_id, currency, recharges, amount_minor, "
                               "month_start, month_recharges) VALUES ($1,$2,$3,$4,$5,$6)", user_id, currency, *row)
    if step.follow_up is not KEEP:
        if step.follow_up is None:
            await conn.execute("DELETE FROM follow_ups WHERE recharge_id=$1", step.recharge_id)
        else:
            await conn.execute(_SET_FOLLOW_UP, step.recharge_id, float(step.follow_up))
    if step.trail:
        await _insert_trail(conn, step.trail)
    await _add_notices(conn, step.notices)
    return True


async def _write_attempt(conn: asyncpg.Connection, step: Step) -> None:
    a = step.attempt
    assert a is not None
    if step.attempt_is_new:
        try:
            await conn.execute(_INSERT_ATTEMPT, *attempt_row(a))
        except asyncpg.UniqueViolationError:  # its number or reference is taken: a race lost
            raise _Rejected from None
        return
    done = await conn.execute(
        _UPDATE_ATTEMPT, a.state.value, a.provider_ref, a.decline_code, a.error,
        None if a.latency_ms is None else float(a.latency_ms), float(a.updated_at), a.reference,
        _values(step.expect_attempt), None if a.late_check_at is None else float(a.late_check_at),
        a.action_url, None if a.action_expires_at is None else float(a.action_expires_at),
    )
    # An attempt that is not there (or not in the state expected) is a rejection, as in SQLite.
    if done != "UPDATE 1":
        raise _Rejected


def _numbered(sql: str) -> str:
    """``?`` placeholders -> ``$1, $2, ...``, leaving quoted text alone."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


_COUNT_SINCE = _numbered(COUNT_SINCE)
_SUCCEEDED_OF = _numbered(SUCCEEDED_OF)
_UNSETTLED = "SELECT 1 FROM recharges WHERE user_id = $1 AND settlement IN ('pending', 'failed') LIMIT 1"
_KEPT_OF = _numbered(KEPT_OF)


_QUOTE_COLUMNS = "quote_id, user_id, amount_minor, currency, price, issued_at, expires_at"
_INSERT_QUOTE = f"INSERT INTO quotes({_QUOTE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7)"
# Along the expires_at index, the soonest expired first. SKIP LOCKED: instances purging
# at once each take rows the other has not, so neither waits on (or deadlocks with) it.
_PURGE_QUOTES = (
    "DELETE FROM quotes WHERE quote_id IN "
    "(SELECT quote_id FROM quotes WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
)


# -- recharge templates (SPEC 22) -------------------------------------------------------

# A transaction-scoped lock per (client, user), in a two-key space of its own (the first
# key names it), apart from the migrations' one-key lock.
_TEMPLATES_LOCK_SPACE = 0x74706C  # "tpl"
_LOCK_TEMPLATES = f"SELECT pg_advisory_xact_lock({_TEMPLATES_LOCK_SPACE}, hashtext($1))"
_COUNT_TEMPLATES = "SELECT COUNT(*) FROM templates WHERE client = $1 AND user_id = $2"
_INSERT_TEMPLATE = f"INSERT INTO templates({TEMPLATE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"
_OWN_TEMPLATES = (f"SELECT {TEMPLATE_COLUMNS} FROM templates WHERE client = $1 AND user_id = $2 "
                  "ORDER BY created_at, id")
_TEMPLATE = f"SELECT {TEMPLATE_COLUMNS} FROM templates WHERE id = $1"
_DELETE_TEMPLATE = "DELETE FROM templates WHERE id = $1 AND client = $2 AND user_id = $3"


# -- the fleet view (issue 26) ------------------------------------------------------------

_PUT_FLEET_STATS = ("INSERT INTO fleet_stats(instance, at, blob) VALUES ($1, $2, $3) "
                    "ON CONFLICT (instance) DO UPDATE SET at = excluded.at, blob = excluded.blob")
# Along fleet_stats_at; a tie in time read in instance order, as every store answers.
_RECENT_FLEET_STATS = ("SELECT instance, at, blob FROM fleet_stats WHERE at >= $1 "
                       'ORDER BY at DESC, instance COLLATE "C" LIMIT $2')
_PURGE_FLEET_STATS = "DELETE FROM fleet_stats WHERE at < $1"


# -- the double-entry ledger (SPEC 20) ------------------------------------------------
#
# A transfer is one statement: one upsert moves both accounts' balances (making a missing
# account), taking their rows in the order of their names, and the row is appended with both
# balances after it. Every op that moves coins locks accounts in that one order (a pool's
# name sorts before a wallet's), so transactions crediting one pool wait for each other and
# never deadlock. (Each batch first locks the audit head too, so instances' batches already
# run one after another, and a transfer's seq is in commit order.)

_MOVE = (
    "WITH moved AS (INSERT INTO accounts AS a(account, balance, updated_at) SELECT account, delta, $8::float8 "
    "FROM (VALUES ($1::text, -$3::bigint), ($2::text, $3::bigint)) v(account, delta) ORDER BY account ON CONFLICT (account) DO UPDATE SET balance = a.balance + excluded.balance, "
    "updated_at = excluded.updated_at RETURNING account, balance) "
    "INSERT INTO transfers(debit, credit, coins, kind, recharge_id, ref, note, at, debit_after, credit_after) "
    "SELECT $1, $2, $3, $4::text, $5::text, $6::text, $7::text, $8, d.balance, c.balance FROM moved d, moved c "
    "WHERE d.account = $1 AND c.account = $2 "
)
_TRANSFER = _MOVE + "RETURNING seq"
# A second credit of a recharge, or deposit of a reference, inserts nothing (another instance's
# is waited for): the savepoint takes the balances' move back.
_CREDIT = _MOVE + "ON CONFLICT (recharge_id) WHERE kind = 'credit' DO NOTHING RETURNING seq"
_DEPOSIT = _MOVE + f"ON CONFLICT (kind, ref) WHERE ref IS NOT NULL DO NOTHING RETURNING {TRANSFER_COLUMNS}"
_DEPOSIT_HELD = f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE kind = 'deposit' AND ref = $1"
# The pool a recharge's credit drew on (along transfers_one_credit).
_CREDIT_POOL = "SELECT debit FROM transfers WHERE kind = 'credit' AND recharge_id = $1"
# Accounts by name prefix: along the primary key between two bounds ($2, $3), starts_with
# keeping exactly the prefix's. The bounds are made of letters, because punctuation sorts
# differently by collation (ICU puts ';' before ':'), letters the same in every one.
_ACCOUNTS = "SELECT account, balance, frozen, lost, shortfalls FROM accounts WHERE starts_with(account, $1)"
_BETWEEN = " AND account >= $2 AND account < $3"
_BY_NAME = ' ORDER BY account COLLATE "C"'  # as Python sorts them (the memory store)
_POOLS = ("pool:", "pool", "poom")
_LOCK_ACCOUNTS = ("SELECT account, balance - frozen FROM accounts WHERE account = ANY($1::text[]) ORDER BY account "
                  "FOR NO KEY UPDATE")
# A wallet's frozen coins. A wallet not yet made is made holding them: not by one upsert,
# whose CHECK judges the row it proposes too (frozen minus what is freed, below zero).
_FREEZE = "UPDATE accounts SET frozen = frozen + $2 WHERE account = $1"
_FREEZE_NEW = ("INSERT INTO accounts AS a(account, balance, frozen, updated_at) VALUES ($1, 0, $2, $3) "
               "ON CONFLICT (account) DO UPDATE SET frozen = a.frozen + excluded.frozen")
_OPEN_POOLS = ("INSERT INTO accounts(account, balance, updated_at) SELECT account, 0, $2::float8 "
               "FROM unnest($1::text[]) AS p(account) ORDER BY account ON CONFLICT (account) DO NOTHING")
# A wallet's transfers, newest first, as entries: along each account index, never a scan.
_WALLET_ENTRIES = (
    "SELECT COALESCE(recharge_id, ''), coins, balance_after, at, kind, ref FROM ("
    "(SELECT seq, recharge_id, coins, credit_after AS balance_after, at, kind, ref FROM transfers "
    "WHERE credit = $1 ORDER BY seq DESC LIMIT $2) UNION ALL "
    "(SELECT seq, recharge_id, -coins, debit_after, at, kind, ref FROM transfers "
    "WHERE debit = $1 ORDER BY seq DESC LIMIT $2)) moves ORDER BY seq DESC LIMIT $2"
)
_TRANSFERS = f"SELECT {TRANSFER_COLUMNS} FROM transfers WHERE seq > $1 ORDER BY seq LIMIT $2"
# An account is one side of a transfer, never both (its CHECK): each side read along its index.
_TRANSFERS_OF = (
    f"SELECT {TRANSFER_COLUMNS} FROM ("
    f"(SELECT {TRANSFER_COLUMNS} FROM transfers WHERE debit = $1 AND seq > $2 ORDER BY seq LIMIT $3) UNION ALL "
    f"(SELECT {TRANSFER_COLUMNS} FROM transfers WHERE credit = $1 AND seq > $2 ORDER BY seq LIMIT $3)) moves "
    "ORDER BY seq LIMIT $3"
)
# Each pool's credits since the last rebalancing pass: counted on its account with each credit.
_COUNT_DEMAND = "UPDATE accounts SET credited = credited + $2 WHERE account = $1"
_RESET_DEMAND = ("UPDATE accounts SET credited_mark = credited WHERE starts_with(account, $1) AND account >= $2 "
                 "AND account < $3")
_POOL_DEMAND = ("SELECT account, credited - credited_mark FROM accounts WHERE starts_with(account, $1) "
                "AND account >= $2 AND account < $3 AND credited != credited_mark")


def _accounts_of(prefix: str) -> tuple[str, tuple[str, ...]]:
    """The query of the accounts starting with ``prefix``, and its arguments: bounded by the
    letters it starts with when it starts with one (``pool:`` -> from ``pool`` to ``poom``)."""
    letters = ""
    for ch in prefix:
        if not "a" <= ch <= "z":
            break
        letters += ch
    if not letters or letters[-1] == "z":
        return _ACCOUNTS, (prefix,)
    return _ACCOUNTS + _BETWEEN, (prefix, letters, letters[:-1] + chr(ord(letters[-1]) + 1))


async def _pools(conn: asyncpg.Connection, lock: str = "") -> dict[str, int]:
    return {r[0]: int(r[1]) for r in await conn.fetch(_ACCOUNTS + _BETWEEN + lock, *_POOLS)}


async def _credit(conn: asyncpg.Connection, c: Credit) -> bool:
    """A succeeded recharge's coins, from its pool to the wallet; False if it was credited.
    The pools are read unlocked: the chosen one is locked by its transfer, and a pool that
    moved meanwhile changes only which pool pays, never a balance."""
    pool, note = choose_pool(c, await _pools(conn))
    seq = await conn.fetchval(_CREDIT, pool, wallet_account(c.user_id), c.coins, "credit", c.recharge_id, None, note,
                              float(c.at))
    if seq is None:
        return False
    await conn.execute(_COUNT_DEMAND, pool, c.coins)
    if note is not None and c.pool is not None:
        await conn.execute("UPDATE accounts SET shortfalls = shortfalls + 1 WHERE account = $1", pool_account(c.pool))
    return True


async def _claw_back(conn: asyncpg.Connection, c: Credit) -> None:
    """An instant credit whose payment failed: its coins back from the wallet (which may
    go negative: a debt) to its pool, and booked as the pool's loss."""
    pool = await _credit_pool(conn, c.recharge_id)
    await conn.execute(_TRANSFER, wallet_account(c.user_id), pool, c.coins, "clawback", c.recharge_id, None,
                       SETTLEMENT_FAILED, float(c.at))
    await conn.execute("UPDATE accounts SET lost = lost + $2 WHERE account = $1", pool, c.coins)


async def _credit_pool(conn: asyncpg.Connection, recharge_id: str) -> str:
    return await conn.fetchval(_CREDIT_POOL, recharge_id) or pool_account(DEFAULT_POOL)


async def _move(conn: asyncpg.Connection, user_id: str, recharge_id: str, coins: int, at: float, kind: str,
                ref: str | None, pool: str | None = None) -> None:
    """Coins into (> 0) or out of the wallet, against the pool the recharge's credit drew on."""
    if coins == 0:
        return
    pool = pool or await _credit_pool(conn, recharge_id)
    wallet = wallet_account(user_id)
    debit, credit = (pool, wallet) if coins > 0 else (wallet, pool)
    await conn.execute(_TRANSFER, debit, credit, abs(coins), kind, recharge_id, ref, None, float(at))


async def _freeze(conn: asyncpg.Connection, user_id: str, coins: int, at: float) -> None:
    """Hold (> 0) or free the wallet's coins."""
    account = wallet_account(user_id)
    if await conn.execute(_FREEZE, account, coins) == "UPDATE 0":
        await conn.execute(_FREEZE_NEW, account, coins, float(at))


def _deposit_answer(held: asyncpg.Record, account: str, coins: int) -> tuple[str, asyncpg.Record | None]:
    return ("held", held) if (held[2], held[3]) == (account, coins) else ("conflict", None)


async def _deposit(conn: asyncpg.Connection, pool: str, coins: int, reference: str, at: float,
                   trail: TrailEntry) -> tuple[str, asyncpg.Record | None]:
    """("made" | "held", the transfer's row), or ("conflict", None): see ``Journal.deposit``."""
    account = pool_account(pool)
    held = await conn.fetchrow(_DEPOSIT_HELD, reference)
    if held is not None:
        return _deposit_answer(held, account, coins)
    made = await conn.fetchrow(_DEPOSIT, ISSUANCE, account, coins, "deposit", None, reference, None, at)
    if made is None:
        # Another instance's deposit of the reference committed meanwhile: it is the answer,
        # and this one's move of the balances goes back with the savepoint.
        raise _Rejected(_deposit_answer(await conn.fetchrow(_DEPOSIT_HELD, reference), account, coins))
    await _insert_trail(conn, (trail,))
    return "made", made


async def _rebalance(conn: asyncpg.Connection, expect: dict[str, int], moves: list[tuple[str, str, int]], at: float,
                     trail: TrailEntry | None) -> bool:
    """The moves, if every pool still holds what the plan read (the pools locked first), and
    the pools' demand counts started again."""
    if await _pools(conn, " ORDER BY account FOR NO KEY UPDATE") != expect:
        return False
    await conn.executemany(_TRANSFER, [(pool_account(source), pool_account(target), coins, "rebalance", None, None,
                                        None, at) for source, target, coins in moves])
    await conn.execute(_RESET_DEMAND, *_POOLS)
    if trail is not None:
        await _insert_trail(conn, (trail,))
    return True


# -- after the sale (SPEC 19): refunds, disputes, the outbox ----------------------------
#
# Each op checks every guard before it writes anything, so a refusal has nothing to roll
# back. An op on a recharge's refunds or dispute first locks the recharge's row (as an
# update of its status would): two instances refunding or disputing one recharge take
# turns, and the second checks its guard on what the first committed. Locks are taken
# in one order, recharge, refund, accounts (by name), dispute, as ``_apply`` takes recharge
# then accounts.

_LOCK_RECHARGE = "SELECT 1 FROM recharges WHERE id=$1 FOR NO KEY UPDATE"
_REFUNDED = ("SELECT COALESCE(SUM(amount_minor), 0)::bigint, COALESCE(SUM(coins), 0)::bigint FROM refunds "
             "WHERE recharge_id=$1 AND status != 'failed'")
_DISPUTE_STATUS = "SELECT status FROM disputes WHERE recharge_id=$1"
_INSERT_EVENT = ("INSERT INTO provider_events(channel, event_id, reference, status, received_at) "
                 "VALUES ($1,$2,$3,$4,$5) ON CONFLICT (channel, event_id) DO NOTHING")
_REFUND_BY_KEY = f"SELECT {REFUND_COLUMNS} FROM refunds WHERE client=$1 AND idempotency_key=$2"
_INSERT_REFUND = (f"INSERT INTO refunds({REFUND_COLUMNS}) VALUES ({','.join(f'${i}' for i in range(1, 19))}) "
                  "ON CONFLICT (client, idempotency_key) DO NOTHING")
_PENDING_REFUND = "SELECT user_id, coins, reference FROM refunds WHERE id=$1 AND status='pending' FOR NO KEY UPDATE"
_SETTLE_REFUND = "UPDATE refunds SET status=$1, updated_at=$2, error=$3, next_at=NULL WHERE id=$4"
_RETRY_REFUND = "UPDATE refunds SET next_at=$1, error=$2, tries=tries+1 WHERE id=$3 AND status='pending'"
# Along refunds_due; SKIP LOCKED: instances claiming at once take different ones. Answered
# in the order due, each with its new next_at.
_CLAIM_REFUNDS = (
    "WITH due AS (SELECT id AS due_id, next_at AS due_at FROM refunds WHERE status = 'pending' AND next_at <= $1 "
    " ORDER BY next_at, id LIMIT $3 FOR UPDATE SKIP LOCKED), "
    f"claimed AS (UPDATE refunds SET next_at = $2 FROM due WHERE id = due_id RETURNING {REFUND_COLUMNS}, due_at) "
    f"SELECT {REFUND_COLUMNS} FROM claimed ORDER BY due_at, id"
)
_UPSERT_DISPUTE = (
    f"INSERT INTO disputes({DISPUTE_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (recharge_id) DO UPDATE "
    "SET status = excluded.status, coins = excluded.coins, updated_at = excluded.updated_at"
)
_INSERT_NOTICE = ("INSERT INTO outbox(id, client, key, type, created_at, body, state, attempts, next_at, "
                  "window_start) VALUES ($1,$2,$3,$4,$5,$6,'pending',0,$5,$5)")
# Due, not held by a live claim, and the oldest pending notice of its key (in order), along
# outbox_due and outbox_key. SKIP LOCKED: a notice another claimer is taking is not ours, and
# the one behind it is not the oldest of its key. Outbox rows are written only by the group
# commit, under the audit head's lock, so ``seq`` order is commit order: no older notice of a
# key can appear after a newer one was claimed.
_CLAIM_NOTICES = (
    "WITH due AS (SELECT o.seq AS due_seq FROM outbox o WHERE o.state = 'pending' AND o.next_at <= $1 "
    " AND o.claimed_until <= $1 AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' "
    " AND p.key = o.key AND p.client = o.client AND p.seq < o.seq) ORDER BY o.next_at, o.seq LIMIT $4 FOR UPDATE OF o SKIP LOCKED), "
    "claimed AS (UPDATE outbox SET claimed_by = $2, claimed_until = $3 FROM due WHERE seq = due_seq "
    f"RETURNING seq, {NOTICE_COLUMNS}) "
    f"SELECT {NOTICE_COLUMNS} FROM claimed ORDER BY next_at, seq"
)
_NOTICE_DELIVERED = ("UPDATE outbox SET state='delivered', delivered_at=$1, attempts=attempts+1, claimed_by=NULL "
                     "WHERE id=$2 AND state='pending' AND claimed_by=$3")
_NOTICE_FAILED = (
    "UPDATE outbox SET attempts=attempts+1, last_error=$1, claimed_by=NULL, claimed_until=0, "
    "state=CASE WHEN $2::float8 IS NULL THEN 'dead' ELSE 'pending' END, next_at=COALESCE($2::float8, next_at) "
    "WHERE id=$3 AND state='pending' AND claimed_by=$4"
)
# A notice a dispatcher holds right now is left to it (it is being delivered).
_REDELIVER = ("UPDATE outbox SET state='pending', next_at=$2, window_start=$2, claimed_by=NULL, claimed_until=0 "
              "WHERE id=$1 AND NOT (state='pending' AND claimed_until > $2)")
_NOTICE = f"SELECT {NOTICE_COLUMNS} FROM outbox WHERE id=$1"
_NOTICES = (f"SELECT {NOTICE_COLUMNS} FROM outbox WHERE state=$1 "
            "AND ($2::text IS NULL OR seq > COALESCE((SELECT seq FROM outbox WHERE id=$2), 0)) ORDER BY seq LIMIT $3")
# As SQLite's _OPEN_STATS (GREATEST skips a NULL where SQLite's MAX(a, b) would answer it).
_OPEN_STATS = (
    "SELECT status, COUNT(*), COUNT(*) FILTER (WHERE deadline < $1), MIN(deadline) FROM (SELECT r.status AS status, "
    "GREATEST(r.deadline_at, (SELECT MAX(a.action_expires_at) FROM attempts a WHERE a.recharge_id = r.id)) "
    f"AS deadline FROM recharges r WHERE r.{_OPEN}) o GROUP BY status"
)
_OUTBOX_STATS = ("SELECT (SELECT COUNT(*) FROM outbox WHERE state='pending'), "
                 "(SELECT COUNT(*) FROM outbox WHERE state='dead'), "
                 "(SELECT MIN(created_at) FROM outbox WHERE state='pending')")


async def _event_new(conn: asyncpg.Connection, event: Sequence[str] | None, reference: str | None, status: str,
                     at: float) -> bool:
    """Record a provider event; False when it was already applied (None: there is none)."""
    if event is None:
        return True
    return bool(await conn.execute(_INSERT_EVENT, event[0], event[1], reference, status, float(at)) == "INSERT 0 1")


async def _add_notices(conn: asyncpg.Connection, notices: Sequence[Notice]) -> None:
    rows = [(n.id, n.client, n.key, n.type, float(n.created_at), n.body) for n in notices]
    if len(rows) == 1:
        await conn.execute(_INSERT_NOTICE, *rows[0])
    elif rows:
        await conn.executemany(_INSERT_NOTICE, rows)


async def _create_refund(conn: asyncpg.Connection, refund: Refund, trail: TrailEntry, guard: RefundGuard,
                         notices: Sequence[Notice]) -> Refund | str | None:
    """None: journaled. Else nothing written: the refund holding its key, or the refusal."""
    await conn.execute(_LOCK_RECHARGE, refund.recharge_id)
    held = await conn.fetchrow(_REFUND_BY_KEY, refund.client, refund.idempotency_key)
    if held is not None:
        return refund_of(held)
    if (tuple(await conn.fetchrow(_REFUNDED, refund.recharge_id)) != (guard.refunded_minor, guard.refunded_coins)
            or await conn.fetchval(_DISPUTE_STATUS, refund.recharge_id) != guard.dispute):
        return "stale"
    pool, wallet = await _credit_pool(conn, refund.recharge_id), wallet_account(refund.user_id)
    spendable = dict(await conn.fetch(_LOCK_ACCOUNTS, [pool, wallet])).get(wallet, 0)
    if not guard.allow_negative and spendable < refund.coins:
        return "insufficient_coins"
    if await conn.execute(_INSERT_REFUND, *refund_row(refund)) != "INSERT 0 1":
        # Another instance took the key for another recharge meanwhile (ON CONFLICT waited
        # for its commit): the key is that refund's, and nothing is written yet.
        return refund_of(await conn.fetchrow(_REFUND_BY_KEY, refund.client, refund.idempotency_key))
    await _move(conn, refund.user_id, refund.recharge_id, -refund.coins, refund.created_at, "refund", refund.id, pool)
    await _insert_trail(conn, (trail,))
    await _add_notices(conn, notices)
    return None


async def _settle_refund(conn: asyncpg.Connection, refund_id: str, status: RefundStatus, at: float,
                         error: str | None, event: tuple[str, str] | None, trail: Sequence[TrailEntry],
                         notices: Sequence[Notice]) -> bool:
    recharge_id = await conn.fetchval("SELECT recharge_id FROM refunds WHERE id=$1", refund_id)
    if recharge_id is None:
        return False
    await conn.execute(_LOCK_RECHARGE, recharge_id)
    row = await conn.fetchrow(_PENDING_REFUND, refund_id)
    if row is None or not await _event_new(conn, event, row[2], f"refund_{status.value}", at):
        return False
    user_id, coins = row[0], int(row[1])
    await conn.execute(_SETTLE_REFUND, status.value, at, error, refund_id)
    if status is RefundStatus.FAILED:
        await _move(conn, user_id, recharge_id, coins, at, "refund_reversal", refund_id)
        dispute = await conn.fetchval(_DISPUTE_STATUS, recharge_id)
        if dispute in (DisputeStatus.OPEN, DisputeStatus.LOST):
            # The coins came back to a disputed recharge: held with the rest, or gone with it.
            await conn.execute("UPDATE disputes SET coins=coins+$1, updated_at=$2 WHERE recharge_id=$3",
                               coins, at, recharge_id)
            if dispute == DisputeStatus.OPEN:
                await _freeze(conn, user_id, coins, at)
            else:
                await _move(conn, user_id, recharge_id, -coins, at, "clawback", refund_id)
    await _insert_trail(conn, trail)
    await _add_notices(conn, notices)
    return True


async def _apply_dispute(conn: asyncpg.Connection, d: Dispute, expect: DisputeStatus | None, refunded_coins: int,
                         event: tuple[str, str], trail: Sequence[TrailEntry], notices: Sequence[Notice]) -> bool:
    await conn.execute(_LOCK_RECHARGE, d.recharge_id)
    current = await conn.fetchval(_DISPUTE_STATUS, d.recharge_id)
    if (current != expect or (await conn.fetchrow(_REFUNDED, d.recharge_id))[1] != refunded_coins
            or not await _event_new(conn, event, None, f"dispute_{d.status.value}", d.updated_at)):
        return False
    if d.status is DisputeStatus.LOST:  # before the wallet alone is locked: pool, then wallet
        await _move(conn, d.user_id, d.recharge_id, -d.coins, d.updated_at, "clawback", None)
    if d.status is DisputeStatus.OPEN:
        await _freeze(conn, d.user_id, d.coins, d.updated_at)
    elif current is not None:  # open -> won or lost: what it froze is free, or gone
        await _freeze(conn, d.user_id, -d.coins, d.updated_at)
    await conn.execute(_UPSERT_DISPUTE, *dispute_row(d))
    await _insert_trail(conn, trail)
    await _add_notices(conn, notices)
    return True


# -- settlement reconciliation (SPEC 21) ------------------------------------------------
#
# References are compared and ordered as Python and SQLite compare them (byte order, COLLATE
# "C"), so the keyset pages and the discrepancies' order agree across the stores.

_RECON_START = ("INSERT INTO reconciliations(id, channel, date, trigger, status, started_at) "
                "VALUES ($1, $2, $3, $4, 'running', $5) ON CONFLICT DO NOTHING")
# A reference the report repeats is staged once (the first time).
_RECON_STAGE = (
    "INSERT INTO recon_report(run_id, reference, provider_ref, status, amount_minor, currency, fee_minor, "
    "settled_at) SELECT $1::text, i.* FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], "
    "$7::bigint[], $8::text[]) AS i ON CONFLICT (run_id, reference) DO NOTHING"
)
_RECON_FOUND = (
    "INSERT INTO recon_found(run_id, reference, kind, recharge_id, amount_minor, currency, expected, reported, "
    "status, resolution) SELECT $1::text, f.* FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], "
    "$6::text[], $7::text[], $8::text[], $9::text[], $10::text[]) AS f "
    "ON CONFLICT (run_id, reference, kind) DO UPDATE SET recharge_id = excluded.recharge_id, "
    "amount_minor = excluded.amount_minor, currency = excluded.currency, expected = excluded.expected, "
    "reported = excluded.reported, status = excluded.status, resolution = excluded.resolution"
)
# A staged item and what the journal holds under its reference (MatchRow's fields). Pages walk
# the database's own order of references (its indexes'), whatever its collation.
_RECON_MATCHES = (
    "SELECT s.reference, s.provider_ref, s.status, s.amount_minor, s.currency, s.fee_minor, s.settled_at, a.channel, "
    "a.state, a.recharge_id, r.status, r.channel, r.amount_minor, r.currency, r.settlement, "
    "(SELECT COALESCE(SUM(f.amount_minor), 0) FROM refunds f WHERE f.recharge_id = r.id AND f.status != 'failed') FROM recon_report s "
    "LEFT JOIN attempts a ON a.reference = s.reference LEFT JOIN recharges r ON r.id = a.recharge_id "
    "WHERE s.run_id = $1 AND s.reference > $2 ORDER BY s.reference LIMIT $3"
)
# Kept captures of a channel journaled in a window and absent from the staged report.
_RECON_UNREPORTED = (
    "SELECT a.reference, a.recharge_id, r.amount_minor, r.currency FROM attempts a JOIN recharges r "
    "ON r.id = a.recharge_id WHERE a.reference > $1 "
    "AND a.channel = $2 AND a.state = 'captured' AND a.updated_at >= $3 AND a.updated_at < $4 "
    "AND r.status = 'succeeded' AND r.channel = a.channel "
    "AND NOT EXISTS (SELECT 1 FROM recon_report s WHERE s.run_id = $5 AND s.reference = a.reference) "
    "ORDER BY a.reference LIMIT $6"
)
# A finding joins the day's discrepancies once per reference and kind, in the order of their
# references: a repeat refreshes its evidence and run; one resolved before is open again (or
# resolving, as the run decided).
_PROMOTE = (
    "INSERT INTO discrepancies AS d (channel, date, reference, kind, status, recharge_id, amount_minor, currency, "
    "expected, reported, resolution, run_id, created_at, updated_at) SELECT $1::text, $2::text, reference, kind, "
    "status, recharge_id, amount_minor, currency, expected, reported, resolution, run_id, $3::float8, $3::float8 "
    'FROM recon_found WHERE run_id = $4 ORDER BY reference COLLATE "C", kind COLLATE "C" '
    "ON CONFLICT (channel, date, reference, kind) DO UPDATE SET run_id = excluded.run_id, "
    "updated_at = excluded.updated_at, expected = excluded.expected, reported = excluded.reported, "
    "amount_minor = excluded.amount_minor, currency = excluded.currency, "
    "resolution = CASE WHEN d.status = 'resolved' THEN excluded.resolution ELSE d.resolution END, "
    "status = CASE WHEN d.status = 'resolved' THEN excluded.status ELSE d.status END"
)
_NOT_FOUND_AGAIN = (
    "UPDATE discrepancies SET status = 'resolved', resolution = 'not found again by ' || $1::text, updated_at = $2 "
    "WHERE channel = $3 AND date = $4 AND run_id != $1 AND status != 'resolved'"
)
_RECON_RUNS = (f"SELECT {RECON_COLUMNS} FROM reconciliations WHERE ($1::text IS NULL OR channel = $1) "
               'ORDER BY started_at DESC, id COLLATE "C" DESC LIMIT $2')
_DISCREPANCIES = (f"SELECT {DISCREPANCY_COLUMNS} FROM discrepancies WHERE channel = $1 AND date = $2 AND seq > $3 "
                  "AND ($4::text IS NULL OR status = $4) ORDER BY seq LIMIT $5")
_OPEN_DISCREPANCIES = "SELECT channel, COUNT(*) FROM discrepancies WHERE status != 'resolved' GROUP BY channel"
_RESOLVE_DISCREPANCY = "UPDATE discrepancies SET status = $1, resolution = $2, updated_at = $3 WHERE seq = $4"
_RECON_PURGE = (
    "DELETE FROM recon_report WHERE run_id = $1 AND reference IN (SELECT reference FROM recon_report "
    "WHERE run_id = $1 LIMIT $2) AND NOT EXISTS (SELECT 1 FROM reconciliations WHERE id = $1 AND status = 'running')"
)


async def _recon_finish(conn: asyncpg.Connection, run_id: str, status: str, reason: str | None, at: float,
                        report_items: int, summary: str | None) -> asyncpg.Record | None:
    """End a running run (locked: of two instances ending it, one does); completed, its
    findings join the day's discrepancies. Its staged rows go either way."""
    row = await conn.fetchrow("SELECT channel, date FROM reconciliations WHERE id = $1 AND status = 'running' "
                              "FOR UPDATE", run_id)
    if row is None:
        return None
    channel, date = row[0], row[1]
    if status == "completed":
        await conn.execute(_PROMOTE, channel, date, at, run_id)
        await conn.execute(_NOT_FOUND_AGAIN, run_id, at, channel, date)
    await conn.execute("DELETE FROM recon_found WHERE run_id = $1", run_id)
    return await conn.fetchrow(
        "UPDATE reconciliations SET status = $1, reason = $2, finished_at = $3, report_items = $4, summary = $5 "
        f"WHERE id = $6 RETURNING {RECON_COLUMNS}", status, reason, at, report_items, summary, run_id)
