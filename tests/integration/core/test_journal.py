"""The journal contract: durable before acknowledged, group commit, and the guards that
keep exactly-once in the store rather than in process memory."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace

import pytest
from harness import make_recharge

from orchestrator.clock import VirtualClock
from orchestrator.journal import SqliteJournal
from orchestrator.model import Attempt, AttemptState, Credit, RechargeStatus, Step, TrailEntry

NONTERMINAL = frozenset({RechargeStatus.PROCESSING, RechargeStatus.PENDING})


@pytest.fixture
async def journal(tmp_path):
    batches: list[int] = []
    j = SqliteJournal(tmp_path / "j.db", on_commit=lambda n, s: batches.append(n))
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


async def test_one_failing_step_does_not_sink_its_batch(journal):
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
    assert isinstance(results[20], sqlite3.IntegrityError)
    assert await journal.query("SELECT count(*) FROM attempts") == [(20,)]


async def test_concurrent_steps_share_commits(journal):
    clock = VirtualClock()
    made = [make_recharge(clock, f"k{i}") for i in range(300)]
    journal.batches.clear()
    await asyncio.gather(*(journal.create(r, t) for r, t in made))
    assert sum(journal.batches) == 300
    assert len(journal.batches) < 300, "many steps must share one transaction and fsync"
    assert max(journal.batches) > 1


async def test_an_acknowledged_step_is_on_disk(tmp_path):
    """Acknowledged means committed: another connection (another process after a crash)
    sees it the moment the caller is answered."""
    j = SqliteJournal(tmp_path / "j.db")
    await j.open()
    try:
        clock = VirtualClock()
        rec, trail = make_recharge(clock, "k1")
        await j.create(rec, trail)
        conn = sqlite3.connect(tmp_path / "j.db")
        assert conn.execute("SELECT id FROM recharges").fetchall() == [(rec.id,)]
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


async def test_schema_migrations_are_recorded_and_not_reapplied(tmp_path):
    for _ in range(2):
        j = SqliteJournal(tmp_path / "j.db")
        await j.open()
        await j.close()
    conn = sqlite3.connect(tmp_path / "j.db")
    from orchestrator.journal._schema import MIGRATIONS

    assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    conn.close()
