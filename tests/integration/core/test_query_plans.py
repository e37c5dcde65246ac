"""The journal's reads on a hot or periodic path (every recharge, every reconcile pass in
every process) go along an index, so they cost what they return, not what the store
holds. Checked on each store's own query plan: SQLite's ``EXPLAIN QUERY PLAN``, and
PostgreSQL's generic plan (the one a prepared statement settles on) over enough rows
that a scan would be the cheaper plan if it were the only one."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
import pytest_asyncio
from harness import PgStore

from orchestrator.journal import SqliteJournal
from orchestrator.journal import _schema, postgres, sqlite
from orchestrator.journal._sqlite_ops import _DUE, CLAIMABLE, NONTERMINAL, OPEN
from orchestrator.journal._sqlite_templates import _COUNT as TEMPLATES_COUNT
from orchestrator.journal._sqlite_templates import OWN_TEMPLATES
from orchestrator.journal._totals import SUCCEEDED_OF


def test_the_open_statuses_are_the_partial_index_condition_word_for_word():
    assert {s.strip("'") for s in OPEN.removeprefix("status IN (").removesuffix(")").split(", ")} == set(NONTERMINAL)
    assert postgres._OPEN == OPEN
    assert any(f"recharges(status) WHERE {OPEN}" in sql for m in _schema.MIGRATIONS for sql in m)


# -- SQLite -----------------------------------------------------------------------------

SQLITE_READS = {
    "follow_ups_due": (_DUE, (0.0, 500), "follow_ups_due"),
    "channel_busy": (sqlite._CHANNEL_BUSY, ("a",), "recharges_open"),
    "nonterminal": (sqlite._OPEN_IDS, (), "recharges_open"),
    "claim": (CLAIMABLE, ("owner", 0.0, 500), "recharges_open"),
    "user_totals": (sqlite._USER_TOTALS, ("u1",), "PRIMARY KEY"),
    "succeeded_recharges": (SUCCEEDED_OF, ("u1", 20), "recharges_user"),
    "templates_of": (OWN_TEMPLATES, ("c", "u1"), "templates_owner"),
    "templates_count": (TEMPLATES_COUNT, ("c", "u1"), "templates_owner"),
}


@pytest.fixture
async def sqlite_conn(tmp_path):
    j = SqliteJournal(tmp_path / "j.db")
    await j.open()  # every migration
    await j.close()
    conn = sqlite3.connect(tmp_path / "j.db")
    yield conn
    conn.close()


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


@pytest.mark.parametrize("name", SQLITE_READS)
def test_sqlite_reads_search_an_index_never_scan_a_table(sqlite_conn, name):
    sql, params, index = SQLITE_READS[name]
    plan = _plan(sqlite_conn, sql, params)
    assert any(index in step for step in plan), plan
    # The scans allowed are of what holds only work in progress: the partial index of
    # running recharges and the follow-ups.
    assert all(not step.startswith("SCAN") or "recharges_open" in step or "follow_ups" in step for step in plan), plan


def test_sqlite_uses_a_partial_index_only_when_the_query_names_its_condition(sqlite_conn):
    """Why the open statuses are literals: bound (as they were), the recovery scan and
    the claim read every recharge ever made."""
    assert _plan(sqlite_conn, "SELECT id FROM recharges WHERE status IN (?,?,?) ORDER BY created_at", NONTERMINAL)[0] \
        == "SCAN recharges"


# -- PostgreSQL -------------------------------------------------------------------------

# 30,000 recharges, almost all finished, a few refunds due: a store some days old.
_FILL = """
INSERT INTO recharges(id, client, idempotency_key, fingerprint, user_id, amount_minor, currency, country, method,
  instrument, coins, bonus_coins, status, config_version, created_at, updated_at, deadline_at)
SELECT 'rc' || g, 'c', 'k' || g, 'f', 'u' || (g % 3000), 100, 'CNY', 'CN', 'm', '{}', 1, 0,
  CASE WHEN g % 1000 = 0 THEN 'pending' WHEN g % 3 = 0 THEN 'declined' ELSE 'succeeded' END, 'v', g, g, g
FROM generate_series(1, 30000) g;
INSERT INTO attempts(reference, recharge_id, seq, channel, state, created_at, updated_at)
SELECT 'rc' || g || '.1', 'rc' || g, 1, 'a', CASE WHEN g % 5000 = 0 THEN 'refund_requested' ELSE 'captured' END, g, g
FROM generate_series(1, 30000) g;
INSERT INTO leases(recharge_id, owner, expires_at) SELECT 'rc' || g, 'o', g FROM generate_series(1, 30000) g;
INSERT INTO follow_ups(recharge_id, due_at) SELECT 'rc' || g, g FROM generate_series(1, 30000) g WHERE g % 5000 = 0;
INSERT INTO user_recharge_totals(user_id, currency, recharges, amount_minor, month_start, month_recharges)
SELECT 'u' || g, c, 7, 700, 0, 1 FROM generate_series(0, 2999) g, unnest(ARRAY['CNY', 'JPY']) c;
INSERT INTO templates(id, client, user_id, name, amount_minor, currency, country, method, instrument, created_at)
SELECT 'tpl' || g, 'c', 'u' || (g % 3000), 'n', 100, 'CNY', 'CN', 'm', '{}', g FROM generate_series(1, 30000) g;
ANALYZE;
"""

PG_READS = {
    # follow_ups holds only recharges with work left: a scan of it is bounded by that.
    "follow_ups_due": (postgres._CLAIM_FOLLOW_UPS, "(100.0, 200.0, 500)", "follow_ups"),
    "channel_busy": (postgres._CHANNEL_BUSY, "('a')", "recharges_open"),
    "nonterminal": (postgres._OPEN_IDS, "", "recharges_open"),
    "claim_lease_rows": (postgres._LEASE_ROWS, "", "recharges_open"),
    "claim_take": (postgres._TAKE_LEASES, "('owner', 30.0, 0.0, 500)", "recharges_open"),
    "lease": (postgres._TAKE, "('rc7', 'owner', 30.0, 0.0)", "leases_pkey"),
    "user_totals": (postgres._USER_TOTALS, "('u7')", "user_recharge_totals_pkey"),
    "succeeded_recharges": (postgres._SUCCEEDED_OF, "('u7', 20)", "recharges_user"),
    "templates_of": (postgres._OWN_TEMPLATES, "('c', 'u7')", "templates_owner"),
    "templates_count": (postgres._COUNT_TEMPLATES, "('c', 'u7')", "templates_owner"),
    "get_template": (postgres._TEMPLATE, "('tpl7')", "templates_pkey"),
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pg_plans(pg_server):
    """Each read's generic plan, on one filled store."""
    store = PgStore.fresh(pg_server)
    j = store.journal()
    await j.open()  # every migration
    await j.close()
    conn = await asyncpg.connect(store.url)
    try:
        await conn.execute(_FILL)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        plans = {}
        for i, (name, (sql, args, _)) in enumerate({**PG_READS, **_PG_OLD}.items()):
            await conn.execute(f"PREPARE q{i} AS {sql}")
            plans[name] = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE q{i}{args}"))
        yield plans
    finally:
        await conn.close()
        store.dispose()


# The same reads as they were, with bound statuses.
_PG_OLD = {
    "old_refunds_due": ("SELECT DISTINCT recharge_id FROM attempts WHERE state=$1", "('refund_requested')", ""),
    "old_nonterminal": ("SELECT id FROM recharges WHERE status = ANY($1::text[]) ORDER BY created_at",
                        "('{processing,pending}')", ""),
}


@pytest.mark.parametrize("name", PG_READS)
def test_postgres_reads_search_an_index_never_scan_a_table(pg_plans, name):
    plan = pg_plans[name]
    assert PG_READS[name][2] in plan, plan
    assert all("Seq Scan" not in line or "Seq Scan on follow_ups" in line for line in plan.splitlines()), plan


def test_postgres_generic_plans_over_bound_statuses_scan_the_whole_table(pg_plans):
    assert "Seq Scan on attempts" in pg_plans["old_refunds_due"]
    assert "Seq Scan on recharges" in pg_plans["old_nonterminal"]
