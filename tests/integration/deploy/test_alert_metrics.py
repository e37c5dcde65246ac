"""The metrics the alert rules (deploy/prometheus/alerts.yml) read that the orchestrator
did not export before them, each at its source: every HTTP answer by route and status
(the API's error rate), each recharge's final status once, by market (approval over all
traffic and per market),
the channels routing may use per market (a market with none), and the store's open
recharges with how far past its deadline the most overdue is (money in doubt)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import asyncpg
import pytest
from harness import PgStore, SqliteStore, make_recharge
from prometheus_client.parser import text_string_to_metric_families
from promtools import SRE_KEY, running, traffic

from channels.memory import Action
from orchestrator.backlog import BacklogWatch
from orchestrator.clock import VirtualClock
from orchestrator.journal import MemoryJournal, postgres, sqlite
from orchestrator.metrics import Metrics
from orchestrator.model import Attempt, AttemptState, RechargeStatus, Step, TrailEntry


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """``name``'s samples in an exposition, by label set."""
    return {frozenset(s.labels.items()): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == name}


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text, name).get(frozenset(labels.items()))


# -- the API's answers and the recharges' outcomes ------------------------------------------


async def test_every_answer_is_counted_by_route_template_and_status(tmp_path):
    async with running(tmp_path) as app:
        await traffic(app)
        resp = await app.client.get("/no/such/route")
        assert resp.status == 404
        text = await app.scrape()
    got = samples(text, "orchestrator_http_requests_total")
    assert got[frozenset({"route": "/v1/recharges", "status": "201"}.items())] == 13
    assert got[frozenset({"route": "/v1/recharges", "status": "401"}.items())] == 1
    # The template, not the path: one series however many recharges are looked up.
    assert got[frozenset({"route": "/v1/recharges/{id}", "status": "404"}.items())] == 1
    assert got[frozenset({"route": "unmatched", "status": "404"}.items())] == 1


async def test_each_recharge_is_counted_once_by_its_final_status(tmp_path):
    async with running(tmp_path) as app:
        await traffic(app)  # 12 succeeded (two after a failover), 1 blocked by risk
        status, _ = await app.recharge("k0", user="u0")  # a replay: nothing new ends
        assert status == 201
        app.channels["a"].script = app.channels["b"].script = \
            lambda op, ref, n: Action.DECLINE_HARD if op == "authorize" else Action.OK
        status, body = await app.recharge("declined", user="u99")
        assert body["status"] == "declined", body
        text = await app.scrape()
    cn = {("currency", "CNY"), ("country", "CN")}
    assert samples(text, "orchestrator_recharges_total") == {
        frozenset({("status", "succeeded"), *cn}): 12, frozenset({("status", "blocked"), *cn}): 1,
        frozenset({("status", "declined"), *cn}): 1}


# -- markets ----------------------------------------------------------------------------


async def test_a_market_counts_the_channels_routing_may_use_drained_and_ejected_ones_not(tmp_path):
    admin = {"Authorization": f"Bearer {SRE_KEY}"}
    async with running(tmp_path) as app:
        text = await app.scrape()
        assert value(text, "orchestrator_market_routable_channels", currency="CNY", country="CN", method="ewallet") == 2
        assert value(text, "orchestrator_market_routable_channels", currency="PHP", country="PH", method="ewallet") == 1

        resp = await app.client.post("/v1/admin/channels/b/drain", headers=admin)
        assert resp.status == 200, await resp.text()
        text = await app.scrape()
        assert value(text, "orchestrator_market_routable_channels", currency="CNY", country="CN", method="ewallet") == 1
        assert value(text, "orchestrator_market_routable_channels", currency="PHP", country="PH", method="ewallet") == 0
        resp = await app.client.post("/v1/admin/channels/b/enable", headers=admin)
        assert resp.status == 200, await resp.text()

        # a fails every payment: after 5 in a row its breaker opens.
        app.channels["a"].script = lambda op, ref, n: Action.NOT_PROCESSED if op == "authorize" else Action.OK
        for i in range(6):
            status, body = await app.recharge(f"e{i}", user=f"e{i}")
            assert body["status"] == "succeeded", body  # on b
        text = await app.scrape()
    assert value(text, "orchestrator_breaker_state", channel="a") == 2
    assert value(text, "orchestrator_market_routable_channels", currency="CNY", country="CN", method="ewallet") == 1
    assert value(text, "orchestrator_market_routable_channels", currency="PHP", country="PH", method="ewallet") == 1


def test_a_market_the_config_no_longer_serves_leaves_the_gauge():
    from routing import ChannelSpec, ChannelState

    m = Metrics()
    wide = ChannelSpec("a", "direct_api", frozenset({"CNY"}), frozenset({"CN", "MY"}), frozenset({"ewallet"}))
    m.routable({"a": wide}, {"a": ChannelState(breaker="half_open")})
    text = m.render().decode()
    assert value(text, "orchestrator_market_routable_channels", currency="CNY", country="MY", method="ewallet") == 1
    m.routable({"a": replace(wide, countries=frozenset({"CN"}))}, {"a": ChannelState(drained=True)})
    text = m.render().decode()
    assert samples(text, "orchestrator_market_routable_channels") == {
        frozenset({("currency", "CNY"), ("country", "CN"), ("method", "ewallet")}): 0}


# -- recharges past their deadline: every store --------------------------------------------


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def journal(request, tmp_path, clock):
    if request.param == "memory":
        j, store = MemoryJournal(clock=clock.now), None
    elif request.param == "sqlite":
        store = SqliteStore(tmp_path / "j.db")
        j = store.journal(clock=clock.now)
    else:
        store = PgStore.fresh(request.getfixturevalue("pg_server"))
        j = store.journal(clock=clock.now)
    await j.open()
    yield j
    await j.close()
    if store is not None:
        store.dispose()


async def _open_recharges(journal, clock):
    """One recharge in each open status and one finished: ``late`` (processing, past its
    deadline), ``parked`` (pending, within it), ``challenged`` (requires_action past its
    deadline_at, but its step-up expires later: that is its deadline)."""
    t0 = clock.now()
    late, trail = make_recharge(clock, "late")  # deadline t0 + 15
    assert await journal.create(late, trail) is None
    clock.advance(10)
    made = {"late": late}
    for key in ("parked", "challenged", "declined"):
        rec, trail = make_recharge(clock, key, user=key)  # deadline t0 + 25
        att = Attempt(f"{rec.id}.1", rec.id, 1, "a", AttemptState.STARTED, clock.now(), clock.now())
        started = TrailEntry(rec.id, clock.now(), "attempt_started", "processing", att.reference, "a")
        assert await journal.create(rec, trail, started=(att, started)) is None
        made[key] = rec
    processing = frozenset({RechargeStatus.PROCESSING})
    now = clock.now()
    parked = made["parked"]
    assert await journal.apply(Step(parked.id, now, status=RechargeStatus.PENDING, expect_status=processing))
    rec = made["challenged"]
    att = Attempt(f"{rec.id}.1", rec.id, 1, "a", AttemptState.REQUIRES_ACTION, rec.created_at, now,
                  action_url="https://pay.example/3ds", action_expires_at=t0 + 600)
    assert await journal.apply(Step(rec.id, now, status=RechargeStatus.REQUIRES_ACTION, expect_status=processing,
                                    attempt=att, expect_attempt=frozenset({AttemptState.STARTED})))
    rec = made["declined"]
    att = Attempt(f"{rec.id}.1", rec.id, 1, "a", AttemptState.DECLINED, rec.created_at, now, decline_code="x")
    assert await journal.apply(Step(rec.id, now, status=RechargeStatus.DECLINED, expect_status=processing,
                                    attempt=att, expect_attempt=frozenset({AttemptState.STARTED})))
    return t0


async def test_a_store_counts_its_open_recharges_and_those_past_their_deadline(journal, clock):
    t0 = await _open_recharges(journal, clock)
    found = await journal.open_recharges(t0 + 20)
    assert dict(found.by_status) == {"processing": 1, "pending": 1, "requires_action": 1}
    assert found.past_deadline == 1 and found.earliest_deadline == pytest.approx(t0 + 15)
    later = await journal.open_recharges(t0 + 30)
    assert later.past_deadline == 2, "the challenged one's deadline is its step-up's expiry, not deadline_at"
    empty = await MemoryJournal(clock=clock.now).open_recharges(t0)
    assert (dict(empty.by_status), empty.past_deadline, empty.earliest_deadline) == ({}, 0, None)


async def test_the_backlog_gauges_say_how_long_ago_the_most_overdue_deadline_passed(clock):
    journal, metrics = MemoryJournal(clock=clock.now), Metrics()
    watch = BacklogWatch(journal, metrics, clock)
    await watch.once()
    text = metrics.render().decode()
    assert value(text, "orchestrator_recharges_open", status="pending") == 0, "a status with none is 0, not absent"
    assert value(text, "orchestrator_recharges_oldest_past_deadline_seconds") == 0
    t0 = await _open_recharges(journal, clock)
    clock.advance(t0 + 75 - clock.now())
    await watch.once()
    text = metrics.render().decode()
    assert value(text, "orchestrator_recharges_open", status="processing") == 1
    assert value(text, "orchestrator_recharges_open", status="requires_action") == 1
    assert value(text, "orchestrator_recharges_past_deadline") == 2
    assert value(text, "orchestrator_recharges_oldest_past_deadline_seconds") == pytest.approx(60)


async def test_sqlite_counts_open_recharges_along_their_index(tmp_path):
    """Every few seconds in every process: it must cost what is open, never the history."""
    j = sqlite.SqliteJournal(tmp_path / "j.db")
    await j.open()  # every migration
    await j.close()
    conn = sqlite3.connect(tmp_path / "j.db")
    try:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sqlite._OPEN_STATS}", (0.0,))]
    finally:
        conn.close()
    assert any("recharges_open" in step for step in plan), plan
    assert all(not step.startswith("SCAN") or "recharges_open" in step for step in plan), plan


async def test_postgres_counts_open_recharges_along_their_index(pg_server):
    store = PgStore.fresh(pg_server)
    j = store.journal()
    await j.open()
    await j.close()
    conn = await asyncpg.connect(store.url)
    try:
        # 30,000 recharges, 30 of them open: a scan would be the cheaper plan if it were the only one.
        await conn.execute("""
            INSERT INTO recharges(id, client, idempotency_key, fingerprint, user_id, amount_minor, currency, country,
              method, instrument, coins, bonus_coins, status, config_version, created_at, updated_at, deadline_at)
            SELECT 'rc' || g, 'c', 'k' || g, 'f', 'u' || g, 100, 'CNY', 'CN', 'm', '{}', 1, 0,
              CASE WHEN g % 1000 = 0 THEN 'pending' ELSE 'succeeded' END, 'v', g, g, g
            FROM generate_series(1, 30000) g;
            INSERT INTO attempts(reference, recharge_id, seq, channel, state, created_at, updated_at)
            SELECT 'rc' || g || '.1', 'rc' || g, 1, 'a', 'captured', g, g FROM generate_series(1, 30000) g;
            ANALYZE;""")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE q AS {postgres._OPEN_STATS}")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE q(0.0)"))
        assert "recharges_open" in plan and "Seq Scan" not in plan, plan
        rows = await conn.fetch(postgres._OPEN_STATS, 15000.0)
        assert [tuple(r) for r in rows] == [("pending", 30, 14, 1000.0)]
    finally:
        await conn.close()
        store.dispose()
