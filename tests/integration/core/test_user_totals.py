"""The user's history read on every recharge (``Journal.user_totals``), on SQLite and on
PostgreSQL: it answers exactly what the old query over the user's recharges answered,
after any mix of steps, across the turn of a month, from two instances, and on a
database migrated from the schema before the totals existed."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest
from harness import Core, make_recharge
from test_api import BODY, running_api

from channels import AttemptOutcome
from channels.memory import Action, MemoryChannel, Payment
from orchestrator.clock import VirtualClock
from orchestrator.invariants import _totals_violations
from orchestrator.journal import _schema, _schema_pg
from orchestrator.clock import month_of
from orchestrator.journal.postgres import _numbered
from orchestrator.model import Attempt, AttemptState, Credit, Recharge, RechargeStatus, Step, TrailEntry
from orchestrator.pricing import CurrencyTotals, history_from_totals, month_start

NONTERMINAL = frozenset({RechargeStatus.PROCESSING, RechargeStatus.PENDING})
# What PricingService.history ran before the totals: the oracle.
OLD_QUERY = (
    "SELECT currency, COUNT(*), SUM(amount_minor), SUM(CASE WHEN created_at >= ? THEN 1 ELSE 0 END) FROM recharges "
    "WHERE user_id = ? AND status = 'succeeded' GROUP BY currency"
)
CURRENCIES = ("CNY", "JPY", "KWD")


def utc(*ymd: int) -> float:
    return datetime(*ymd, tzinfo=UTC).timestamp()  # type: ignore[arg-type, misc]


JAN_2027 = utc(2027, 1, 1)
DEC_2026 = utc(2026, 12, 1)
FEB_2027 = utc(2027, 2, 1)


async def old_answer(journal, user: str, since: float) -> list[tuple[str, int, int, int]]:
    rows = await journal.query(OLD_QUERY, (since, user))
    return sorted((r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows)


async def new_answer(journal, user: str, since: float) -> list[tuple[str, int, int, int]]:
    return sorted((t.currency, t.recharges, t.amount_minor, t.this_month) for t in await journal.user_totals(user, since))


async def assert_same(journal, users, moments) -> None:
    """For every user, at the start of the month of every moment (and at the moments
    themselves, which the totals leave to the old query), both reads agree."""
    for user in users:
        for at in moments:
            for since in (month_start(at), at):
                assert await new_answer(journal, user, since) == await old_answer(journal, user, since), (user, at)


def succeed(rec: Recharge, at: float, expect: frozenset[RechargeStatus] = NONTERMINAL) -> Step:
    return Step(rec.id, at, status=RechargeStatus.SUCCEEDED, expect_status=expect, channel="a",
                credit=Credit(rec.id, rec.user_id, rec.coins + rec.bonus_coins, at),
                trail=(TrailEntry(rec.id, at, "credited", "succeeded"),))


def end(rec: Recharge, at: float, status: RechargeStatus) -> Step:
    return Step(rec.id, at, status=status, expect_status=NONTERMINAL, reason=status.value)


async def finish(j, rec: Recharge, clock: VirtualClock, rng: random.Random) -> None:
    """Take a recharge to its end the way the engine may: directly, through pending,
    after refused or repeated steps, or beside a step that fails its batch."""
    now = clock.now()
    kind = rng.choice(["succeed"] * 4 + ["pend_then_succeed", "retried", "rejected_first", "beside_a_failure",
                                         "declined", "failed", "blocked", "pend_then_fail"])
    if kind in ("pend_then_succeed", "pend_then_fail"):
        assert await j.apply(Step(rec.id, now, status=RechargeStatus.PENDING, expect_status=NONTERMINAL,
                                  reason="awaiting_provider"))
        status = RechargeStatus.SUCCEEDED if kind == "pend_then_succeed" else RechargeStatus.FAILED
        step = succeed(rec, now) if status is RechargeStatus.SUCCEEDED else end(rec, now, status)
        assert await j.apply(step)
    elif kind == "retried":
        assert await j.apply(succeed(rec, now))
        assert not await j.apply(succeed(rec, now)), "the status guard refuses the second"
        assert not await j.apply(Step(rec.id, now, credit=Credit(rec.id, rec.user_id, 1, now))), "and the credit"
    elif kind == "rejected_first":
        # A step whose guard no longer holds (a webhook moved it first) writes nothing.
        assert not await j.apply(succeed(rec, now, frozenset({RechargeStatus.PENDING})))
        assert await j.apply(succeed(rec, now))
    elif kind == "beside_a_failure":
        # The same attempt reference twice: the second is refused, which makes SQLite run
        # its batch again step by step; the success beside it must still count once.
        att = Attempt(f"{rec.id}.9", rec.id, 9, "a", AttemptState.STARTED, now, now)
        new = Step(rec.id, now, attempt=att, attempt_is_new=True)
        assert await j.apply(new)
        got = await asyncio.gather(j.apply(succeed(rec, now)), j.apply(new), j.apply(succeed(rec, now)),
                                   return_exceptions=True)
        assert sorted(map(repr, got[::2])) == ["False", "True"] and got[1] is False, got
    elif kind == "succeed":
        assert await j.apply(succeed(rec, now))
    else:
        assert await j.apply(end(rec, now, RechargeStatus(kind)))


async def refund_a_late_capture(j, rec: Recharge, at: float) -> None:
    """A capture on another channel after the recharge succeeded: refunded, recorded on
    its attempt, and no business of the totals."""
    att = Attempt(f"{rec.id}.7", rec.id, 7, "b", AttemptState.REFUND_REQUESTED, at, at)
    assert await j.apply(Step(rec.id, at, attempt=att, attempt_is_new=True))
    assert (await j.get(rec.id)).attempts[-1].state is AttemptState.REFUND_REQUESTED
    assert await j.apply(Step(rec.id, at, attempt=replace(att, state=AttemptState.REFUNDED),
                              expect_attempt=frozenset({AttemptState.REFUND_REQUESTED})))


async def random_mix(j, clock: VirtualClock, rng: random.Random, n: int, users: list[str]) -> None:
    """``n`` recharges of ``users`` in several currencies, finished in random order, some
    created before the turn of the month the clock crosses and finished after it."""
    waiting: list[Recharge] = []
    succeeded: list[Recharge] = []
    for i in range(n):
        clock.advance(rng.uniform(0, 3 * 3600 / n))
        rec, trail = make_recharge(clock, f"k{i}", user=rng.choice(users), amount=rng.randint(1, 99_999))
        rec.currency = rng.choice(CURRENCIES)
        assert await j.create(rec, trail) is None
        waiting.append(rec)
        while waiting and rng.random() < 0.5:
            rec = waiting.pop(rng.randrange(len(waiting)))
            await finish(j, rec, clock, rng)
            if (await j.get(rec.id)).status == "succeeded":
                succeeded.append(rec)
        if i % 40 == 39:
            await assert_same(j, users, (clock.now(), DEC_2026, FEB_2027))
    for rec in waiting:
        await finish(j, rec, clock, rng)
    await refund_a_late_capture(j, rng.choice(succeeded), clock.now())


async def test_the_totals_answer_as_the_old_query_after_a_random_mix_of_steps(store):
    clock = VirtualClock(JAN_2027 - 3600)  # an hour before the turn of the year
    users = [f"u{i}" for i in range(8)]
    j = store.journal()
    await j.open()
    try:
        await random_mix(j, clock, random.Random(20270101), 240, users)
        assert clock.now() > JAN_2027
        await assert_same(j, [*users, "nobody"], (DEC_2026, JAN_2027, FEB_2027, utc(2027, 3, 1), 0.0))
        counted = 0
        for user in users:
            counted += sum(t.recharges for t in await j.user_totals(user, JAN_2027))
        assert await j.query("SELECT count(*) FROM recharges WHERE status = 'succeeded'") == [(counted,)]
    finally:
        await j.close()


async def test_the_month_counts_recharges_by_when_they_were_created(store):
    j = store.journal()
    await j.open()
    try:
        made = {}
        for key, at in [("late_dec", JAN_2027 - 1), ("hair_before", JAN_2027 - 1e-6), ("jan", JAN_2027 + 5),
                        ("also_dec", JAN_2027 - 0.5)]:
            rec, trail = make_recharge(VirtualClock(at), key, user="u_m")
            await j.create(rec, trail)
            made[key] = rec

        async def month(since: float) -> int:
            (got,) = await j.user_totals("u_m", since) or [None]
            assert await new_answer(j, "u_m", since) == await old_answer(j, "u_m", since)
            return got.this_month if got else 0

        # Created late in December, succeeded in January: it is December's.
        assert await j.apply(succeed(made["late_dec"], JAN_2027 + 10))
        assert await month(JAN_2027) == 0 and await month(DEC_2026) == 1
        assert await j.apply(succeed(made["jan"], JAN_2027 + 11))
        assert await month(JAN_2027) == 1
        # Older than the newest month: it joins the count and sum, not January's tally.
        assert await j.apply(succeed(made["hair_before"], JAN_2027 + 12))
        assert await month(JAN_2027) == 1
        # A reader whose clock is still in December (another instance's): counted as before.
        assert await month(DEC_2026) == 3
        # A new month, before any success in it.
        assert await month(FEB_2027) == 0
        assert not await j.apply(succeed(made["also_dec"], JAN_2027 + 13, frozenset({RechargeStatus.PENDING})))
        (totals,) = await j.user_totals("u_m", JAN_2027)
        assert (totals.recharges, totals.amount_minor) == (3, 3 * 8500)
    finally:
        await j.close()


async def test_two_instances_crediting_one_user_count_each_success_once(store):
    a, b = store.journal(), store.journal()
    await a.open()
    await b.open()
    try:
        clock = VirtualClock(JAN_2027 - 20)
        recs = []
        for i in range(30):
            clock.advance(1)
            rec, trail = make_recharge(clock, f"k{i}", user="u_two", amount=100 + i)
            rec.currency = CURRENCIES[i % 2]
            await a.create(rec, trail)
            recs.append(rec)
        # Every success is sent by both instances: each lands once, and so does its count.
        results = await asyncio.gather(*(j.apply(succeed(r, clock.now())) for r in recs for j in (a, b)))
        assert results.count(True) == len(recs)
        for j in (a, b):
            await assert_same(j, ["u_two"], (DEC_2026, JAN_2027))
        assert sum(t.recharges for t in await b.user_totals("u_two", JAN_2027)) == 30
    finally:
        await a.close()
        await b.close()


# -- through the engine ------------------------------------------------------------------

BEHAVIOURS = [Action.CAPTURE] * 4 + [Action.DECLINE_HARD, Action.DECLINE_SOFT, Action.NOT_PROCESSED,
                                     Action.LOST_AFTER, Action.LOST_BEFORE]


async def test_the_totals_agree_with_the_old_query_after_real_recharges_across_a_month(store):
    rng = random.Random(7)
    chosen: dict[tuple[str, str], Action] = {}
    forced: dict[str, Action] = {}

    def channel(name: str) -> MemoryChannel:
        def script(op: str, ref: str, n: int) -> Action:
            if op != "authorize":
                return Action.OK
            return forced.get(name) or chosen.setdefault((name, ref), rng.choice(BEHAVIOURS))

        return MemoryChannel(name, script)

    a, b = channel("a"), channel("b")
    users = [f"u{i}" for i in range(5)]
    async with Core(store, [a, b], clock=VirtualClock(JAN_2027 - 4)) as core:
        for i in range(60):
            core.clock.advance(rng.uniform(0, 0.15))
            await core.run(f"k{i}", user=rng.choice(users), amount=rng.randint(100, 9999))
        # A late capture on a, after the recharge failed over to b: refunded.
        forced.update(a=Action.LOST_BEFORE, b=Action.CAPTURE)
        rec = await core.run("late", user="u0")
        assert rec.status == "succeeded" and rec.channel == "b"
        ref = rec.attempts[0].reference
        a.ledger[ref] = Payment(ref, rec.amount_minor, rec.currency, "captured", "pr_late", history=["captured"])
        assert await core.driver.on_event("a", "ev-late", ref, AttemptOutcome.CAPTURED) == "late_capture_refunding"
        await core.idle()
        assert (await core.journal.get(rec.id)).attempts[0].state == "refunded"
        await core.settle_all()
        assert core.clock.now() > JAN_2027
        by_status = dict(await core.journal.query("SELECT status, count(*) FROM recharges GROUP BY status"))
        assert by_status.get("succeeded", 0) > 20 and by_status.get("declined", 0) > 0, by_status
        await assert_same(core.journal, users, (DEC_2026, JAN_2027, FEB_2027))
        report = await core.check()
        assert report.ok, report.violations


async def test_service_history_and_the_promotions_it_gives_are_what_the_old_query_gave(tmp_path):
    async with running_api(tmp_path) as api:
        api.service.user_limits.reconfigure(1000, 1000)
        promotions = []
        for i in range(7):
            resp, body = await api.post({**BODY, "user_id": "u_hist", "currency": ["CNY", "JPY"][i % 2]},
                                        key=f"h-{i}")
            assert resp.status == 201 and body["status"] == "succeeded", body
            promotions.append([p["name"] for p in body["promotions"]])
        assert promotions == [["first_recharge"], [], [], [], [], [], ["monthly_cashback"]], promotions
        svc = api.service
        since = month_start(svc.clock.now())
        rows = await svc.journal.query(OLD_QUERY, (since, "u_hist"))  # type: ignore[attr-defined]
        old = history_from_totals([CurrencyTotals(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows],
                                  svc.pricing.rates)
        assert await svc.pricing.history("u_hist") == old
        assert old.count == 7 and old.recharges_this_month == 7


# -- migrating a database from before the totals -----------------------------------------

_COLUMNS = ("id, client, idempotency_key, fingerprint, user_id, amount_minor, currency, country, method, instrument, "
            "coins, bonus_coins, status, config_version, created_at, updated_at, deadline_at")
_INSERT = f"INSERT INTO recharges({_COLUMNS}) VALUES ({','.join('?' * 17)})"


def _edges() -> list[float]:
    """Times around the turns of months the calendar makes hard: leap days, centuries,
    the turn of a year, and a hair, half a second and a second before midnight."""
    out = []
    for y, m in [(1999, 12), (2000, 1), (2000, 2), (2000, 3), (2023, 3), (2024, 2), (2024, 3), (2026, 12),
                 (2027, 1), (2038, 1), (2100, 2), (2100, 3), (2400, 2), (2400, 3)]:
        b = utc(y, m, 1)
        out += [b, b - 1e-6, b - 0.4, b - 0.5, b - 0.6, b - 1, b + 0.5, b + 86_399.5]
    return out


def _old_rows(rng: random.Random) -> tuple[list[tuple[object, ...]], list[str]]:
    """Recharges as a store at schema 6 holds them: one user per tricky time, and users
    with many recharges over many months, currencies and statuses."""
    rows: list[tuple[object, ...]] = []
    users = []

    def add(user: str, at: float, status: str, currency: str = "CNY") -> None:
        n = len(rows)
        rows.append((f"rc_{n}", "front", f"k{n}", "fp", user, rng.randint(1, 10**9), currency, "CN", "ewallet", "{}",
                     1, 0, status, "v1", at, at, at + 15))

    for i, at in enumerate(_edges() + [rng.uniform(utc(2000, 1, 1), utc(2100, 1, 1)) for _ in range(150)]):
        users.append(f"t{i}")
        add(users[-1], at, "succeeded")
    for i in range(12):
        users.append(f"m{i}")
        start = rng.uniform(utc(2025, 1, 1), utc(2027, 1, 1))
        for _ in range(rng.randint(1, 40)):
            add(users[-1], start + rng.uniform(0, 120 * 86_400), rng.choice(["succeeded"] * 3 + ["declined", "failed"]),
                rng.choice(CURRENCIES))
    users.append("only_declined")
    add("only_declined", JAN_2027, "declined")
    return rows, users


async def _store_at_schema_6(store, rows: list[tuple[object, ...]]) -> None:
    """The store as the release before the totals made it: migrations 1 to 6 only."""
    if store.kind == "sqlite":
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            for statements in _schema.MIGRATIONS[:6]:
                for sql in statements:
                    conn.execute(sql)
            conn.execute("PRAGMA user_version=6")
            conn.executemany(_INSERT, rows)
        finally:
            conn.close()
        return
    conn = await asyncpg.connect(store.url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                           "applied_at DOUBLE PRECISION NOT NULL)")
        for version, statements in enumerate(_schema_pg.MIGRATIONS[:6], start=1):
            for sql in statements:
                await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", version)
        await conn.executemany(_numbered(_INSERT), rows)
    finally:
        await conn.close()


def _moments(rows: list[tuple[object, ...]], user: str) -> list[float]:
    created = [float(r[14]) for r in rows if r[4] == user]  # type: ignore[arg-type]
    return [*created, min(created) - 40 * 86_400, max(created) + 40 * 86_400]


async def test_a_store_from_before_the_totals_is_backfilled_to_the_same_answers(store):
    rng = random.Random(6)
    rows, users = _old_rows(rng)
    await _store_at_schema_6(store, rows)
    j = store.journal()
    await j.open()  # migrations 7 and 8
    try:
        for user in users:
            await assert_same(j, [user], _moments(rows, user))
        # Each row as the journal would have kept it: the backfill's month arithmetic in
        # SQL agrees with the calendar everywhere (the invariant recomputes it in Python).
        assert await _totals_violations(j) == []
        newest = {u: max(float(r[14]) for r in rows if r[4] == u and r[12] == "succeeded")  # type: ignore[arg-type]
                  for u in users if u.startswith("t")}
        stored = dict(await j.query("SELECT user_id, month_start FROM user_recharge_totals WHERE user_id LIKE 't%'"))
        assert stored == {u: month_of(at) for u, at in newest.items()}
    finally:
        await j.close()


async def test_the_backfill_rebuilds_exactly_the_totals_kept_live(store):
    j = store.journal()
    await j.open()
    await random_mix(j, VirtualClock(JAN_2027 - 3600), random.Random(8), 120, [f"u{i}" for i in range(6)])
    kept = sorted(await j.query("SELECT * FROM user_recharge_totals"))
    await j.close()
    # Back to the schema before the totals, the data left as it is: migrate again.
    # Migrations 16 to 10 undone first: the fleet view, step-up's columns, templates, reconciliation, instant
    # credit's columns and the ledger go, and the wallet tables are made again (empty) as migration 1 made
    # them, for 10 to change and 11 to move.
    first = (_schema if store.kind == "sqlite" else _schema_pg).MIGRATIONS[0]
    undo_15 = ("DROP INDEX recharges_open", next(sql for sql in first if "INDEX recharges_open" in sql),
               "ALTER TABLE recharges DROP COLUMN step_up", "ALTER TABLE attempts DROP COLUMN action_url",
               "ALTER TABLE attempts DROP COLUMN action_expires_at")
    undo_16 = ("DROP TABLE fleet_stats",)
    undo_14 = ("DROP TABLE templates",)
    undo_11 = ("DROP TABLE transfers", "DROP TABLE accounts", *(sql for sql in first if "wallet" in sql))
    undo_10 = ("DROP TABLE outbox", "DROP TABLE disputes", "DROP TABLE refunds")
    undo_13 = tuple(f"DROP TABLE {t}" for t in ("reconciliations", "recon_report", "recon_found", "discrepancies"))
    undo_12 = ("ALTER TABLE recharges DROP COLUMN instant", "ALTER TABLE recharges DROP COLUMN settlement")
    undo = (*undo_16, *undo_15, *undo_14, *undo_13, *undo_12, *undo_11, *undo_10, "DROP TABLE follow_ups",
            "DROP TABLE channels", "ALTER TABLE attempts DROP COLUMN late_check_at",
            "ALTER TABLE leases DROP COLUMN token", "DROP TABLE user_recharge_totals")
    if store.kind == "sqlite":
        conn = sqlite3.connect(store.path, isolation_level=None)
        conn.executescript("; ".join(undo) + "; PRAGMA user_version=6;")
        conn.close()
    else:
        for sql in (*undo, "DELETE FROM schema_migrations WHERE version > 6"):
            store.peek(sql)
    j = store.journal()
    await j.open()
    try:
        assert sorted(await j.query("SELECT * FROM user_recharge_totals")) == kept
        assert len(kept) > 10
    finally:
        await j.close()


@pytest.mark.parametrize("since", [JAN_2027, JAN_2027 + 0.5])
async def test_a_user_without_successes_has_no_totals(store, since):
    j = store.journal()
    await j.open()
    try:
        rec, trail = make_recharge(VirtualClock(JAN_2027 + 1), "k1", user="u_none")
        await j.create(rec, trail)
        await j.apply(end(rec, JAN_2027 + 2, RechargeStatus.DECLINED))
        assert await j.user_totals("u_none", since) == []
        assert await j.user_totals("never_seen", since) == []
    finally:
        await j.close()
