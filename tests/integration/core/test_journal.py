"""The journal contract, for every store (SQLite and PostgreSQL): durable before
acknowledged, group commit, and the guards that keep exactly-once in the store rather
than in process memory, also between two instances sharing one store."""

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
from orchestrator.model import Attempt, AttemptState, Credit, RechargeStatus, Step, TrailEntry

NONTERMINAL = frozenset({RechargeStatus.PROCESSING, RechargeStatus.PENDING})
INTEGRITY_ERROR = {"sqlite": sqlite3.IntegrityError, "postgres": asyncpg.UniqueViolationError}


@pytest.fixture
async def journal(store):
    batches: list[int] = []
    j = store.journal(on_commit=lambda n, s: batches.append(n))
    j.batches = batches  # type: ignore[attr-defined]
    await j.open()
    yield j
    await j.close()


async def test_create_is_idempotent_per_client_and_key(journal):
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    assert await journal.create(rec, trail) is None
    clock.advance(1)
    dup, trail2 = make_recharge(clock, "k1")
    existing = await journal.create(dup, trail2)
    assert existing is not None and existing.id == rec.id
    other, trail3 = make_recharge(clock, "k1", client="other")
    assert await journal.create(other, trail3) is None
    assert await journal.query("SELECT count(*) FROM recharges") == [(2,)]


async def test_a_credit_is_given_once_and_only_with_success(journal):
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    await journal.create(rec, trail)
    credit = Credit(rec.id, rec.user_id, 10, clock.now())
    ok = Step(rec.id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL, credit=credit)
    assert await journal.apply(ok) is True
    assert await journal.apply(ok) is False, "the guard refuses a second success"
    again = Step(rec.id, clock.now(), credit=credit)
    assert await journal.apply(again) is False, "the store refuses a second credit"
    wallet = await journal.wallet(rec.user_id)
    assert wallet.coins == 10 and len(wallet.entries) == 1
    assert (await journal.get(rec.id)).status == "succeeded"


async def test_a_rejected_step_writes_nothing_at_all(journal):
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    await journal.create(rec, trail)
    await journal.apply(Step(rec.id, clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL))
    att = Attempt(f"{rec.id}.1", rec.id, 1, "a", AttemptState.STARTED, clock.now(), clock.now())
    step = Step(rec.id, clock.now(), expect_status=NONTERMINAL, attempt=att, attempt_is_new=True,
                trail=(TrailEntry(rec.id, clock.now(), "attempt_started"),))
    assert await journal.apply(step) is False
    assert (await journal.get(rec.id)).attempts == []
    assert [e.event for e in await journal.trail(rec.id)] == ["created"]


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
    dup = Step(recs[0].id, clock.now(), attempt=att, attempt_is_new=True)  # same reference twice
    results = await asyncio.gather(*(journal.apply(s) for s in [*good, dup]), return_exceptions=True)
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


async def test_the_nonterminal_scan_finds_exactly_the_unfinished(journal):
    clock = VirtualClock()
    ids = []
    for i in range(4):
        rec, trail = make_recharge(clock, f"k{i}")
        await journal.create(rec, trail)
        ids.append(rec.id)
    await journal.apply(Step(ids[0], clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL))
    await journal.apply(Step(ids[1], clock.now(), status=RechargeStatus.PENDING, expect_status=NONTERMINAL,
                             reason="awaiting_provider"))
    assert sorted(r.id for r in await journal.nonterminal()) == sorted(ids[1:])


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
    for lite, pg in zip(_schema.MIGRATIONS, _schema_pg.MIGRATIONS, strict=True):
        # PostgreSQL alone needs the audit chain's head row: several instances append
        # to one chain there; SQLite's single writer reads the head off the last entry.
        pg = tuple(sql for sql in pg if "audit_head" not in sql)
        assert len(lite) == len(pg)
        for a, b in zip(lite, pg, strict=True):
            assert _names(a) == _names(b), (a, b)


def _names(sql: str) -> list[str]:
    """The identifiers of a DDL statement, without its types."""
    words = sql.replace("(", " ").replace(")", " ").replace(",", " ").split()
    types = {"TEXT", "INTEGER", "REAL", "BIGINT", "DOUBLE", "PRECISION", "GENERATED", "ALWAYS", "AS", "IDENTITY",
             "AUTOINCREMENT",
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


# -- two instances on one store ----------------------------------------------------------


async def test_two_instances_racing_on_one_key_make_one_recharge(two):
    a, b = two
    for round_ in range(20):
        clock_a, clock_b = VirtualClock(), VirtualClock()
        clock_b.advance(0.5)  # different recharge ids for the same key
        ra, ta = make_recharge(clock_a, f"k{round_}")
        rb, tb = make_recharge(clock_b, f"k{round_}")
        got = await asyncio.gather(a.create(ra, ta), b.create(rb, tb))
        winners = [r for r, res in zip((ra, rb), got, strict=True) if res is None]
        assert len(winners) == 1, got
        loser = got[0] if got[0] is not None else got[1]
        assert loser.id == winners[0].id
    assert await a.query("SELECT count(*) FROM recharges") == [(20,)]


async def test_two_instances_racing_to_finish_one_recharge_move_it_once(two):
    a, b = two
    clock = VirtualClock()
    recs = []
    for i in range(30):
        rec, trail = make_recharge(clock, f"k{i}")
        await a.create(rec, trail)
        recs.append(rec)

    def win(j, rec, status):
        credit = Credit(rec.id, rec.user_id, 5, clock.now()) if status is RechargeStatus.SUCCEEDED else None
        return j.apply(Step(rec.id, clock.now(), status=status, expect_status=NONTERMINAL, credit=credit))

    results = await asyncio.gather(*(
        x for rec in recs for x in (win(a, rec, RechargeStatus.SUCCEEDED), win(b, rec, RechargeStatus.FAILED))
    ))
    for i, rec in enumerate(recs):
        assert sorted(results[2 * i:2 * i + 2]) == [False, True], rec.id
    succeeded = [r for r in recs if (await a.get(r.id)).status == "succeeded"]
    wallet = await a.wallet("u1")
    assert wallet.coins == 5 * len(succeeded) and len(wallet.entries) == len(succeeded)


async def test_credits_to_one_user_from_two_instances_stay_consistent(two):
    a, b = two
    clock = VirtualClock()
    recs = []
    for i in range(40):
        rec, trail = make_recharge(clock, f"k{i}")
        await a.create(rec, trail)
        recs.append(rec)
    steps = [Step(r.id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL,
                  credit=Credit(r.id, "u1", i + 1, clock.now())) for i, r in enumerate(recs)]
    # Every credit is sent by both instances: each must land exactly once.
    results = await asyncio.gather(*(j.apply(s) for s in steps for j in (a, b)))
    assert results.count(True) == len(recs)
    wallet = await b.wallet("u1", limit=1000)
    total = sum(range(1, len(recs) + 1))
    assert wallet.coins == total
    balances = sorted(e.balance_after for e in wallet.entries)
    assert balances[-1] == total and len(set(balances)) == len(recs), "each credit saw the one before it"


async def test_an_event_applied_by_two_instances_counts_once(two):
    a, b = two
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    await a.create(rec, trail)
    steps = [Step(rec.id, clock.now(), event=("a", f"ev{i}"), expect_status=NONTERMINAL) for i in range(10)]
    results = await asyncio.gather(*(j.apply(s) for s in steps for j in (a, b)))
    assert results.count(True) == 10
    assert await a.event_seen("a", "ev3") and not await b.event_seen("a", "ev99")


# -- recovery leases ---------------------------------------------------------------------


async def _open_recharges(journal, clock, n):
    recs = []
    for i in range(n):
        rec, trail = make_recharge(clock, f"k{i}")
        await journal.create(rec, trail)
        recs.append(rec)
        clock.advance(0.01)
    return recs


async def test_claim_takes_unleased_nonterminal_recharges_oldest_first(journal):
    clock = VirtualClock()
    recs = await _open_recharges(journal, clock, 5)
    await journal.apply(Step(recs[1].id, clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL))
    now = clock.now()
    got = await journal.claim("A", 30, now, limit=3)
    assert [r.id for r in got] == [recs[0].id, recs[2].id, recs[3].id]
    assert got[0].status == "processing" and got[0].attempts == []
    assert [r.id for r in await journal.claim("B", 30, now)] == [recs[4].id], "live leases are not taken"
    assert [r.id for r in await journal.claim("B", 30, now)] == [recs[4].id], "its own lease, renewed"
    assert await journal.claim("C", 30, now) == []


async def test_claim_renews_the_owners_own_leases_and_takes_expired_ones(journal):
    clock = VirtualClock()
    recs = await _open_recharges(journal, clock, 2)
    now = clock.now()
    assert len(await journal.claim("A", 10, now)) == 2
    # A claims again: its own leases come back (renewed to now + 10).
    assert len(await journal.claim("A", 10, now + 5)) == 2
    assert await journal.claim("B", 10, now + 14) == [], "renewed at now+5, so live until now+15"
    taken = await journal.claim("B", 10, now + 15)
    assert sorted(r.id for r in taken) == sorted(r.id for r in recs)
    assert await journal.claim("A", 10, now + 16) == []


async def test_release_frees_only_the_owners_lease(journal):
    clock = VirtualClock()
    recs = await _open_recharges(journal, clock, 2)
    now = clock.now()
    await journal.claim("A", 30, now)
    await journal.release("B", recs[0].id)  # not B's: nothing happens
    assert await journal.claim("B", 30, now) == []
    await journal.release("A", recs[0].id)
    assert [r.id for r in await journal.claim("B", 30, now)] == [recs[0].id]


async def test_renew_extends_only_leases_still_held(journal):
    clock = VirtualClock()
    recs = await _open_recharges(journal, clock, 2)
    now = clock.now()
    await journal.claim("A", 10, now)
    await journal.renew("A", [recs[0].id], 10, now + 8)  # recs[0] live until now+18
    taken = await journal.claim("B", 10, now + 11)
    assert [r.id for r in taken] == [recs[1].id]
    await journal.renew("A", [r.id for r in recs], 10, now + 12)  # recs[1] is B's now
    assert [r.id for r in await journal.claim("B", 10, now + 12)] == [recs[1].id]
    assert await journal.claim("C", 10, now + 21) == [], "A's renewal of recs[0] held; B renewed its own"
    assert [r.id for r in await journal.claim("C", 10, now + 23)] == [recs[0].id, recs[1].id]


async def test_terminal_recharges_are_never_claimed(journal):
    clock = VirtualClock()
    recs = await _open_recharges(journal, clock, 2)
    now = clock.now()
    await journal.claim("A", 10, now)
    await journal.apply(Step(recs[0].id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL))
    assert [r.id for r in await journal.claim("B", 10, now + 20)] == [recs[1].id]


async def test_two_claimers_never_get_the_same_recharge(two):
    a, b = two
    clock = VirtualClock()
    recs = await _open_recharges(a, clock, 120)
    now = clock.now()
    # Twelve claims, six from each instance, racing in pairs; every claim a new owner
    # (an owner's own leases would come back to it, renewed).
    claims = []
    for i in range(6):
        claims += await asyncio.gather(a.claim(f"A{i}", 60, now, limit=15), b.claim(f"B{i}", 60, now, limit=15))
    got = [r.id for c in claims for r in c]
    assert len(got) == len(set(got)), "a recharge was claimed twice while its lease was live"
    rest = [r.id for r in await a.claim("Z", 60, now)]
    assert not set(rest) & set(got)
    assert set(got) | set(rest) == {r.id for r in recs}


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


async def test_a_recharge_created_with_a_lease_is_held_from_birth(journal):
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    now = clock.now()
    assert await journal.create(rec, trail, lease=("A", now + 10)) is None
    assert await journal.claim("B", 10, now + 9) == []
    assert [r.id for r in await journal.claim("B", 10, now + 10)] == [rec.id]


async def test_lease_takes_a_free_or_expired_lease_and_renews_its_own(journal):
    clock = VirtualClock()
    rec, trail = make_recharge(clock, "k1")
    now = clock.now()
    await journal.create(rec, trail)
    assert await journal.lease("A", rec.id, 10, now) is True
    assert await journal.lease("B", rec.id, 10, now + 5) is False
    assert await journal.lease("A", rec.id, 10, now + 5) is True  # renewed to now+15
    assert await journal.lease("B", rec.id, 10, now + 14) is False
    assert await journal.lease("B", rec.id, 10, now + 15) is True


async def test_two_instances_racing_for_one_lease_get_it_once(two):
    a, b = two
    clock = VirtualClock()
    recs = await _open_recharges(a, clock, 20)
    now = clock.now()
    got = await asyncio.gather(*(j.lease(o, r.id, 30, now) for r in recs for j, o in ((a, "A"), (b, "B"))))
    for i in range(len(recs)):
        assert sorted(got[2 * i:2 * i + 2]) == [False, True]
