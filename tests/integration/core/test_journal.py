"""What only the SQL stores promise (the contract all stores share is in
``tests/integration/journal/test_conformance.py``): durable before acknowledged, group
commit, migrations, one schema for both, and recovery from a lost connection."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace

import asyncpg
import pytest
from harness import PgStore, make_recharge

from orchestrator.clock import VirtualClock
from orchestrator.journal import JournalError, PostgresJournal, SqliteJournal, open_journal
from orchestrator.journal.pgserver import database_of
from orchestrator.model import Attempt, AttemptState, Credit, RechargeStatus, Step

NONTERMINAL = frozenset({RechargeStatus.PROCESSING, RechargeStatus.PENDING})
INTEGRITY_ERROR = {"sqlite": sqlite3.IntegrityError, "postgres": asyncpg.CheckViolationError}


@pytest.fixture
async def journal(store):
    batches: list[int] = []
    j = store.journal(on_commit=lambda n, s: batches.append(n))
    j.batches = batches  # type: ignore[attr-defined]
    await j.open()
    yield j
    await j.close()


async def test_one_failing_step_does_not_sink_its_batch(journal, store):
    clock = VirtualClock()
    recs = []
    for i in range(20):
        rec, trail = make_recharge(clock, f"k{i}")
        await journal.create(rec, trail)
        recs.append(rec)
    att = Attempt(f"{recs[0].id}.1", recs[0].id, 1, "a", AttemptState.STARTED, clock.now(), clock.now())
    good = [Step(r.id, clock.now(), attempt=replace(att, reference=f"{r.id}.1", recharge_id=r.id), attempt_is_new=True)
            for r in recs]
    # A step a constraint refuses (a bug: a credit of no coins) fails alone.
    bad = Step(recs[0].id, clock.now(), credit=Credit(recs[0].id, "u1", 0, clock.now()))
    results = await asyncio.gather(*(journal.apply(s) for s in [*good, bad]), return_exceptions=True)
    assert results[:20] == [True] * 20
    assert isinstance(results[20], INTEGRITY_ERROR[store.kind])
    assert await journal.query("SELECT count(*) FROM attempts") == [(20,)]


async def test_concurrent_steps_share_commits(journal):
    clock = VirtualClock()
    made = [make_recharge(clock, f"k{i}") for i in range(300)]
    journal.batches.clear()
    await asyncio.gather(*(journal.create(r, t) for r, t in made))
    assert sum(journal.batches) == 300
    assert len(journal.batches) < 300, "many steps must share one transaction and fsync"
    assert max(journal.batches) > 1


async def test_an_acknowledged_step_is_committed(journal, store):
    """Acknowledged means committed: another connection (another process after a crash)
    sees it the moment the caller is answered."""
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    await journal.create(rec, trail)
    assert store.peek("SELECT id FROM recharges") == [(rec.id,)]
    att = Attempt(f"{rec.id}.1", rec.id, 1, "a", AttemptState.STARTED, clock.now(), clock.now())
    await journal.apply(Step(rec.id, clock.now(), attempt=att, attempt_is_new=True))
    assert store.peek("SELECT state FROM attempts WHERE reference=?", att.reference) == [("started",)]


async def test_sqlite_runs_in_wal_mode(tmp_path):
    j = SqliteJournal(tmp_path / "j.db")
    await j.open()
    try:
        conn = sqlite3.connect(tmp_path / "j.db")
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()
    finally:
        await j.close()


async def test_schema_migrations_are_recorded_and_not_reapplied(store):
    for _ in range(2):
        j = store.journal()
        await j.open()
        await j.close()
    if store.kind == "sqlite":
        from orchestrator.journal._schema import MIGRATIONS

        assert store.peek("PRAGMA user_version") == [(len(MIGRATIONS),)]
    else:
        from orchestrator.journal._schema_pg import MIGRATIONS

        versions = store.peek("SELECT version FROM schema_migrations ORDER BY version")
        assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


def test_both_stores_have_the_same_tables_and_columns():
    from orchestrator.journal import _schema, _schema_pg

    assert len(_schema.MIGRATIONS) == len(_schema_pg.MIGRATIONS)
    for version, (lite, pg) in enumerate(zip(_schema.MIGRATIONS, _schema_pg.MIGRATIONS, strict=True), start=1):
        if version in _ALTERED_IN_PLACE:
            continue
        # PostgreSQL alone needs the audit chain's head row: several instances append
        # to one chain there; SQLite's single writer reads the head off the last entry.
        pg = tuple(sql for sql in pg if "audit_head" not in sql)
        assert len(lite) == len(pg)
        for a, b in zip(lite, pg, strict=True):
            assert _names(a) == _names(b), (a, b)


# Migrations PostgreSQL makes with ALTER TABLE where SQLite must copy a table (it cannot
# drop a CHECK or a UNIQUE): compared as the schemas they leave, below.
_ALTERED_IN_PLACE = {10}


async def test_both_migrated_stores_have_the_same_tables_columns_and_indexes(tmp_path, pg_server):
    lite = SqliteJournal(tmp_path / "j.db")
    await lite.open()
    await lite.close()
    conn = sqlite3.connect(tmp_path / "j.db")
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE "
                                             "'sqlite_%'")]
        lite_columns = {(t, c[1]) for t in tables for c in conn.execute(f"PRAGMA table_info({t})")}
        lite_indexes = {i for (i,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    finally:
        conn.close()
    store = PgStore.fresh(pg_server)
    try:
        journal = store.journal()
        await journal.open()
        await journal.close()
        pg_columns = set(store.peek("SELECT table_name, column_name FROM information_schema.columns "
                                    "WHERE table_schema = current_schema()"))
        pg_indexes = {i for (i,) in store.peek("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    finally:
        store.dispose()
    pg_only = {"audit_head", "schema_migrations"}  # see the test above; PostgreSQL counts its migrations in a table
    assert {c for c in pg_columns if c[0] not in pg_only} == lite_columns
    assert lite_indexes <= pg_indexes, lite_indexes - pg_indexes


def _names(sql: str) -> list[str]:
    """The identifiers of a DDL statement, without its types."""
    words = sql.replace("(", " ").replace(")", " ").replace(",", " ").split()
    types = {"TEXT", "INTEGER", "REAL", "BIGINT", "DOUBLE", "PRECISION", "GENERATED", "ALWAYS", "AS", "IDENTITY",
             "AUTOINCREMENT", "BLOB", "BYTEA",
             # SQLite's storage clause (the row in its primary key's B-tree; PostgreSQL has no such choice)
             "WITHOUT", "ROWID"}
    return [w for w in words if w not in types]


async def test_postgres_instances_opening_a_new_database_together_migrate_it_once(pg_server):
    store = PgStore.fresh(pg_server)
    journals = [store.journal() for _ in range(4)]
    await asyncio.gather(*(j.open() for j in journals))
    try:
        from orchestrator.journal._schema_pg import MIGRATIONS

        assert store.peek("SELECT count(*) FROM schema_migrations") == [(len(MIGRATIONS),)]
    finally:
        await asyncio.gather(*(j.close() for j in journals))
        store.dispose()


async def test_open_journal_picks_the_store_from_the_url(tmp_path):
    assert isinstance(open_journal(f"sqlite:///{tmp_path}/j.db"), SqliteJournal)
    assert isinstance(open_journal("postgresql://postgres@/orchestrator?host=/tmp/pgsock"), PostgresJournal)
    with pytest.raises(ValueError):
        open_journal("mysql://x")


async def test_an_unreachable_postgres_is_a_journal_error(tmp_path):
    j = PostgresJournal(f"postgresql://postgres@/nope?host={tmp_path}", pool_min=1, pool_max=2)
    with pytest.raises(JournalError):
        await j.open()


async def test_a_closed_journal_refuses_work(store):
    j = store.journal()
    await j.open()
    await j.ping()
    await j.close()
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    with pytest.raises(JournalError):
        await j.create(rec, trail)
    with pytest.raises(JournalError):
        await j.get(rec.id)


async def test_query_takes_plain_sql_and_question_mark_params(journal):
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    await journal.create(rec, trail)
    assert await journal.query("SELECT id, status FROM recharges") == [(rec.id, "processing")]
    assert await journal.query("SELECT count(*) FROM recharges WHERE id=? AND status='processing'", (rec.id,)) == [(1,)]


async def test_postgres_a_lost_connection_fails_only_its_batch_and_the_journal_reconnects(pg_server):
    store = PgStore.fresh(pg_server)
    j = store.journal()
    await j.open()
    try:
        clock = VirtualClock()
        rec, trail = make_recharge(clock, "k1")
        await j.create(rec, trail)
        # The database drops every connection of ours (a failover, an admin's kill).
        pg_server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            database_of(store.url),
        )
        await asyncio.sleep(0.05)
        att = Attempt(f"{rec.id}.1", rec.id, 1, "a", AttemptState.STARTED, clock.now(), clock.now())
        step = Step(rec.id, clock.now(), expect_status=NONTERMINAL, attempt=att, attempt_is_new=True)
        for _ in range(3):  # a write in flight on a dead connection is a JournalError, never a hang
            try:
                assert await j.apply(step) is True
                break
            except JournalError:
                continue
        else:
            pytest.fail("the journal never reconnected")
        assert [a.reference for a in (await j.get(rec.id)).attempts] == [att.reference]
    finally:
        await j.close()
        store.dispose()


