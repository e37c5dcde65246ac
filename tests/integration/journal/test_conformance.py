"""The journal contract, one suite for every store: in memory, SQLite and PostgreSQL.

Every test speaks only the ``Journal`` protocol, so the three answer alike or one of
them is wrong. Leases are timed by the journal's clock (a virtual one here); the guards
that keep exactly-once hold in the store, also between two instances on one store; and
whatever a store keeps of a recharge is what the state machine's reducer makes of it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest
from harness import PgStore, SqliteStore, make_recharge

from orchestrator import transitions as tr
from orchestrator.audit import verify_rows
from orchestrator.clock import VirtualClock
from orchestrator.journal import MemoryJournal, QuoteRecord
from orchestrator.model import KEEP, Attempt, AttemptState, Credit, RechargeStatus, Step, TrailEntry

NONTERMINAL = tr.NONTERMINAL


class _Memory:
    """One in-memory store: every ``journal()`` is the same data, as a second
    instance on one database would see it."""

    kind = "memory"

    def __init__(self, clock: VirtualClock) -> None:
        self._journal = MemoryJournal(clock=clock.now)

    def journal(self, **_: object) -> MemoryJournal:
        return self._journal

    def dispose(self) -> None:
        pass


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def cstore(request, kind, tmp_path, clock):
    if kind == "memory":
        made = _Memory(clock)
    elif kind == "sqlite":
        made = SqliteStore(tmp_path / "j.db")
    else:
        made = PgStore.fresh(request.getfixturevalue("pg_server"))
    yield made
    made.dispose()


@pytest.fixture
async def journal(cstore, clock):
    j = cstore.journal(clock=clock.now)
    await j.open()
    yield j
    await j.close()


@pytest.fixture
async def pair(cstore, clock):
    """Two instances on one store."""
    a, b = cstore.journal(clock=clock.now), cstore.journal(clock=clock.now)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def _made(journal, clock, n: int, **kw: object):
    recs = []
    for i in range(n):
        rec, trail = make_recharge(clock, f"k{i}", **kw)
        assert await journal.create(rec, trail) is None
        recs.append(rec)
        clock.advance(0.01)
    return recs


def _attempt(rec, seq: int = 1, state: AttemptState = AttemptState.STARTED, channel: str = "a", at: float = 0.0,
             **kw: object) -> Attempt:
    return Attempt(f"{rec.id}.{seq}", rec.id, seq, channel, state, at or rec.created_at, at or rec.created_at, **kw)


# -- creating -------------------------------------------------------------------------------


async def test_create_is_idempotent_per_client_and_key(journal, clock):
    rec, trail = make_recharge(clock, "k1")
    assert await journal.create(rec, trail) is None
    clock.advance(1)
    dup, trail2 = make_recharge(clock, "k1")
    existing = await journal.create(dup, trail2)
    assert existing is not None and existing.id == rec.id
    other, trail3 = make_recharge(clock, "k1", client="other")
    assert await journal.create(other, trail3) is None
    assert await journal.get(dup.id) is None
    assert (await journal.get(other.id)).client == "other"


async def test_a_recharge_is_created_with_its_first_attempt_and_both_trail_entries(journal, clock):
    rec, trail = make_recharge(clock, "k1")
    att = _attempt(rec)
    started = TrailEntry(rec.id, clock.now(), "attempt_started", "processing", att.reference, "a")
    assert await journal.create(rec, trail, started=(att, started)) is None
    got = await journal.get(rec.id)
    assert got.attempts == [att]
    assert await journal.attempt(att.reference) == att
    assert [e.event for e in await journal.trail(rec.id)] == ["created", "attempt_started"]


async def test_what_a_store_keeps_is_what_the_reducer_makes(journal, clock):
    """Random steps, guarded or not, applied to a store and to the reducer: each store
    keeps exactly the recharge the reducer computes, and refuses what it refuses."""
    rnd = random.Random(7)
    recs = await _made(journal, clock, 6)
    mirror = {r.id: await journal.get(r.id) for r in recs}
    for _ in range(120):
        rec = mirror[rnd.choice(recs).id]
        clock.advance(0.5)
        now = clock.now()
        existing = rec.attempts
        roll = rnd.random()
        if roll < 0.3 or not existing:
            seq = len(existing) + (1 if rnd.random() < 0.9 else 0)  # sometimes a number already taken
            step = tr.begin_attempt(rec, rnd.choice("ab"), now)
            step = replace(step, attempt=replace(step.attempt, seq=max(seq, 1), reference=f"{rec.id}.{max(seq, 1)}"))
        else:
            att = rnd.choice(existing)
            state = rnd.choice(list(AttemptState))
            expect = rnd.choice([None, frozenset({att.state}), frozenset({AttemptState.CAPTURED})])
            late = rnd.choice([None, now + 120])
            status = rnd.choice([None, None, RechargeStatus.PENDING, RechargeStatus.FAILED])
            step = Step(rec.id, now, status=status, expect_status=rnd.choice([None, NONTERMINAL]),
                        reason="why" if status else None, attempt=replace(att, state=state, updated_at=now,
                                                                          late_check_at=late, error="e"),
                        expect_attempt=expect, follow_up=rnd.choice([KEEP, None, now + 5]),
                        trail=(TrailEntry(rec.id, now, "x", None, att.reference, att.channel),))
        want = tr.admits(rec, step)
        assert await journal.apply(step) is want, step
        if want:
            tr.reduce(rec, step)
        assert await journal.get(rec.id) == rec


# -- guards ---------------------------------------------------------------------------------


async def test_a_credit_is_given_once_and_only_with_success(journal, clock):
    (rec,) = await _made(journal, clock, 1)
    credit = Credit(rec.id, rec.user_id, 10, clock.now())
    ok = Step(rec.id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL, credit=credit)
    assert await journal.apply(ok) is True
    assert await journal.apply(ok) is False, "the guard refuses a second success"
    again = Step(rec.id, clock.now(), credit=credit)
    assert await journal.apply(again) is False, "the store refuses a second credit"
    wallet = await journal.wallet(rec.user_id)
    assert wallet.coins == 10 and [(e.recharge_id, e.coins, e.balance_after) for e in wallet.entries] == [
        (rec.id, 10, 10)]
    assert (await journal.get(rec.id)).status == "succeeded"


async def test_a_refused_step_writes_nothing_at_all(journal, clock):
    (rec,) = await _made(journal, clock, 1)
    await journal.apply(Step(rec.id, clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL))
    step = tr.begin_attempt(rec, "a", clock.now())
    step = replace(step, follow_up=clock.now(), event=("a", "ev1"))
    assert await journal.apply(step) is False
    assert (await journal.get(rec.id)).attempts == []
    assert [e.event for e in await journal.trail(rec.id)] == ["created"]
    assert not await journal.event_seen("a", "ev1")
    assert await journal.claim_follow_ups(clock.now() + 1, clock.now() + 5) == []


async def test_an_attempt_update_needs_its_attempt_in_the_state_expected(journal, clock):
    (rec,) = await _made(journal, clock, 1)
    att = _attempt(rec)
    assert await journal.apply(Step(rec.id, clock.now(), attempt=att, attempt_is_new=True))
    captured = replace(att, state=AttemptState.CAPTURED)
    assert not await journal.apply(Step(rec.id, clock.now(), attempt=captured,
                                        expect_attempt=frozenset({AttemptState.UNKNOWN})))
    assert await journal.apply(Step(rec.id, clock.now(), attempt=captured,
                                    expect_attempt=frozenset({AttemptState.STARTED})))
    # An update of an attempt that does not exist is refused, guarded or not.
    ghost = _attempt(rec, seq=7)
    assert not await journal.apply(Step(rec.id, clock.now(), attempt=ghost))
    assert [a.state for a in (await journal.get(rec.id)).attempts] == [AttemptState.CAPTURED]


async def test_an_attempt_number_or_reference_is_taken_once(journal, clock):
    r1, r2 = await _made(journal, clock, 2)
    a1 = _attempt(r1)
    assert await journal.apply(Step(r1.id, clock.now(), attempt=a1, attempt_is_new=True))
    again = replace(a1, channel="b")
    assert not await journal.apply(Step(r1.id, clock.now(), attempt=again, attempt_is_new=True))
    same_seq = replace(a1, reference=f"{r1.id}.other")
    assert not await journal.apply(Step(r1.id, clock.now(), attempt=same_seq, attempt_is_new=True))
    assert [a.channel for a in (await journal.get(r1.id)).attempts] == ["a"]
    assert (await journal.get(r2.id)).attempts == []


async def test_an_event_is_applied_once(journal, clock):
    (rec,) = await _made(journal, clock, 1)
    step = Step(rec.id, clock.now(), event=("a", "ev1"), trail=(TrailEntry(rec.id, clock.now(), "webhook"),))
    assert await journal.apply(step)
    assert not await journal.apply(step)
    assert await journal.event_seen("a", "ev1") and not await journal.event_seen("b", "ev1")
    assert [e.event for e in await journal.trail(rec.id)] == ["created", "webhook"]


async def test_the_nonterminal_scan_finds_exactly_the_unfinished_oldest_first(journal, clock):
    recs = await _made(journal, clock, 4)
    await journal.apply(Step(recs[0].id, clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL))
    await journal.apply(Step(recs[1].id, clock.now(), status=RechargeStatus.PENDING, expect_status=NONTERMINAL,
                             reason="awaiting_provider"))
    assert [r.id for r in await journal.nonterminal()] == [r.id for r in recs[1:]]


# -- follow-ups -----------------------------------------------------------------------------


async def test_follow_ups_are_set_kept_cleared_and_claimed_with_a_retry_time(journal, clock):
    a, b, c = await _made(journal, clock, 3)
    now = clock.now()
    await journal.apply(Step(a.id, now, status=RechargeStatus.FAILED, expect_status=NONTERMINAL, follow_up=now + 10))
    await journal.apply(Step(b.id, now, status=RechargeStatus.FAILED, expect_status=NONTERMINAL, follow_up=now))
    await journal.apply(Step(b.id, now, trail=(TrailEntry(b.id, now, "note"),)))  # KEEP: unchanged
    await journal.apply(Step(c.id, now, follow_up=now))
    await journal.apply(Step(c.id, now, follow_up=None))
    assert [r.id for r in await journal.claim_follow_ups(now, now + 5)] == [b.id]
    assert await journal.claim_follow_ups(now + 4, now + 9) == [], "claimed: postponed to its retry time"
    assert sorted(r.id for r in await journal.claim_follow_ups(now + 10, now + 20)) == sorted([a.id, b.id])


async def test_a_late_capture_check_time_is_kept_with_its_attempt(journal, clock):
    (rec,) = await _made(journal, clock, 1)
    att = _attempt(rec, state=AttemptState.VOIDED, late_check_at=clock.now() + 120)
    await journal.apply(Step(rec.id, clock.now(), attempt=att, attempt_is_new=True))
    assert (await journal.get(rec.id)).attempts[0].late_check_at == clock.now() + 120
    assert (await journal.attempt(att.reference)).late_check_at == clock.now() + 120


# -- leases ---------------------------------------------------------------------------------


async def test_a_recharge_created_with_a_lease_is_held_from_birth(journal, clock):
    rec, trail = make_recharge(clock, "k1")
    assert await journal.create(rec, trail, lease=("A", 10)) is None
    assert await journal.lease_of(rec.id) == ("A", 1)
    clock.advance(9)
    assert await journal.claim("B", 10) == []
    clock.advance(1)
    assert [(r.id, t) for r, t in await journal.claim("B", 10)] == [(rec.id, 2)]


async def test_lease_takes_a_free_or_expired_lease_and_renews_its_own(journal, clock):
    (rec,) = await _made(journal, clock, 1)
    assert await journal.lease("A", rec.id, 10) == 1
    clock.advance(5)
    assert await journal.lease("B", rec.id, 10) is None
    assert await journal.lease("A", rec.id, 10) == 1  # renewed to +15, same token
    clock.advance(9)
    assert await journal.lease("B", rec.id, 10) is None
    clock.advance(1)
    assert await journal.lease("B", rec.id, 10) == 2, "a new holder, a new token"
    assert await journal.lease_of(rec.id) == ("B", 2)
    assert await journal.lease("A", "rc_nope", 10) is None


async def test_a_step_fenced_with_a_lease_that_moved_on_is_refused(journal, clock):
    (rec,) = await _made(journal, clock, 1)
    assert await journal.lease("A", rec.id, 10) == 1
    note = Step(rec.id, clock.now(), trail=(TrailEntry(rec.id, clock.now(), "note"),))
    assert await journal.apply(replace(note, lease=("A", 1)))
    clock.advance(11)
    assert await journal.lease("B", rec.id, 10) == 2
    assert not await journal.apply(replace(note, lease=("A", 1))), "A's lease moved on"
    assert not await journal.apply(replace(note, lease=("B", 1))), "an old token of the new holder"
    assert await journal.apply(replace(note, lease=("B", 2)))
    assert await journal.apply(note), "an unfenced step (a capture learned) is never refused for its lease"


async def test_renew_extends_only_the_leases_still_held_with_their_token(journal, clock):
    r0, r1 = await _made(journal, clock, 2)
    got = dict((r.id, t) for r, t in await journal.claim("A", 10))
    clock.advance(8)
    assert await journal.renew("A", {r0.id: got[r0.id]}, 10) == {r0.id}  # r0 until +18
    clock.advance(3)
    assert [r.id for r, _ in await journal.claim("B", 10)] == [r1.id]
    assert await journal.renew("A", got, 10) == {r0.id}, "r1 is B's now"
    assert await journal.renew("A", {r0.id: got[r0.id] + 1}, 10) == set(), "a wrong token renews nothing"


async def test_release_frees_only_the_owners_lease(journal, clock):
    r0, _ = await _made(journal, clock, 2)
    await journal.claim("A", 30)
    await journal.release("B", r0.id)
    assert await journal.claim("B", 30) == []
    await journal.release("A", r0.id)
    assert await journal.lease_of(r0.id) is None
    assert [(r.id, t) for r, t in await journal.claim("B", 30)] == [(r0.id, 2)]


async def test_claim_takes_unleased_nonterminal_recharges_oldest_first(journal, clock):
    recs = await _made(journal, clock, 5)
    await journal.apply(Step(recs[1].id, clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL))
    got = await journal.claim("A", 30, limit=3)
    assert [r.id for r, _ in got] == [recs[0].id, recs[2].id, recs[3].id]
    assert got[0][0].status == "processing" and got[0][0].attempts == []
    assert [r.id for r, _ in await journal.claim("B", 30)] == [recs[4].id], "live leases are not taken"
    assert [r.id for r, _ in await journal.claim("B", 30)] == [recs[4].id], "its own lease, renewed"
    assert await journal.claim("C", 30) == []
    clock.advance(31)
    assert [t for _, t in await journal.claim("C", 30)] == [2, 2, 2, 2]


async def test_two_claimers_never_get_the_same_recharge(pair, clock):
    a, b = pair
    recs = await _made(a, clock, 120)
    claims = []
    for i in range(6):
        claims += await asyncio.gather(a.claim(f"A{i}", 60, limit=15), b.claim(f"B{i}", 60, limit=15))
    got = [r.id for c in claims for r, _ in c]
    assert len(got) == len(set(got)), "a recharge was claimed twice while its lease was live"
    rest = [r.id for r, _ in await a.claim("Z", 60)]
    assert not set(rest) & set(got)
    assert set(got) | set(rest) == {r.id for r in recs}


async def test_two_instances_racing_for_one_lease_get_it_once(pair, clock):
    a, b = pair
    recs = await _made(a, clock, 20)
    got = await asyncio.gather(*(j.lease(o, r.id, 30) for r in recs for j, o in ((a, "A"), (b, "B"))))
    for i in range(len(recs)):
        assert sorted(got[2 * i:2 * i + 2], key=lambda t: t is None) == [1, None]


# -- two instances on one store -------------------------------------------------------------


async def test_two_instances_racing_on_one_key_make_one_recharge(pair):
    a, b = pair
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


async def test_two_instances_racing_to_finish_one_recharge_move_it_once(pair, clock):
    a, b = pair
    recs = await _made(a, clock, 30)

    def win(j, rec, status):
        credit = Credit(rec.id, rec.user_id, 5, clock.now()) if status is RechargeStatus.SUCCEEDED else None
        return j.apply(Step(rec.id, clock.now(), status=status, expect_status=NONTERMINAL, credit=credit))

    results = await asyncio.gather(*(
        x for rec in recs for x in (win(a, rec, RechargeStatus.SUCCEEDED), win(b, rec, RechargeStatus.FAILED))))
    for i, rec in enumerate(recs):
        assert sorted(results[2 * i:2 * i + 2]) == [False, True], rec.id
    succeeded = [r for r in recs if (await a.get(r.id)).status == "succeeded"]
    wallet = await a.wallet("u1")
    assert wallet.coins == 5 * len(succeeded) and len(wallet.entries) == len(succeeded)


async def test_credits_to_one_user_from_two_instances_stay_consistent(pair, clock):
    a, b = pair
    recs = await _made(a, clock, 40)
    steps = [Step(r.id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL,
                  credit=Credit(r.id, "u1", i + 1, clock.now())) for i, r in enumerate(recs)]
    results = await asyncio.gather(*(j.apply(s) for s in steps for j in (a, b)))
    assert results.count(True) == len(recs)
    wallet = await b.wallet("u1", limit=1000)
    total = sum(range(1, len(recs) + 1))
    assert wallet.coins == total
    balances = sorted(e.balance_after for e in wallet.entries)
    assert balances[-1] == total and len(set(balances)) == len(recs), "each credit saw the one before it"


async def test_an_event_applied_by_two_instances_counts_once(pair, clock):
    a, b = pair
    (rec,) = await _made(a, clock, 1)
    steps = [Step(rec.id, clock.now(), event=("a", f"ev{i}"), expect_status=NONTERMINAL) for i in range(10)]
    results = await asyncio.gather(*(j.apply(s) for s in steps for j in (a, b)))
    assert results.count(True) == 10
    assert await a.event_seen("a", "ev3") and not await b.event_seen("a", "ev99")


# -- what else a store keeps ----------------------------------------------------------------


async def test_the_user_totals_count_succeeded_recharges_per_currency(journal, clock):
    recs = await _made(journal, clock, 3, amount=1000)
    for r in recs[:2]:
        await journal.apply(Step(r.id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=NONTERMINAL,
                                 credit=Credit(r.id, r.user_id, 1, clock.now())))
    totals = await journal.user_totals("u1", recs[1].created_at)
    assert [(t.currency, t.recharges, t.amount_minor, t.this_month) for t in totals] == [("CNY", 2, 2000, 1)]
    assert await journal.user_totals("nobody", 0) == []


async def test_the_trail_keeps_order_and_its_audit_chain_verifies(journal, clock):
    recs = await _made(journal, clock, 3)
    for r in recs:
        await journal.apply(Step(r.id, clock.now(), trail=(TrailEntry(r.id, clock.now(), "a"),
                                                          TrailEntry(r.id, clock.now(), "b", detail={"x": 1}))))
    await journal.record(TrailEntry("", clock.now(), "config_applied", detail={"version": "v"}))
    assert [e.event for e in await journal.trail(recs[1].id)] == ["created", "a", "b"]
    rows = await journal.audit_rows()
    assert len(rows) == 10 and verify_rows(rows).ok


async def test_channels_are_kept_for_good(journal, clock):
    doc = {"name": "gone", "kind": "bank", "base_url": "http://127.0.0.1:1/gone"}
    await journal.keep_channel("gone", doc, None)
    await journal.keep_channel("live", doc, None)
    await journal.keep_channel("gone", {**doc, "kind": "direct_api"}, clock.now() + 1)  # the newer wins
    got = await journal.kept_channels()
    assert [(r.name, r.config["kind"], r.retired_at) for r in got] == [
        ("gone", "direct_api", clock.now() + 1), ("live", "bank", None)]


async def test_a_channel_is_busy_while_a_recharge_with_work_left_has_an_attempt_on_it(journal, clock):
    running, done, followed = await _made(journal, clock, 3)
    for r in (running, done, followed):
        await journal.apply(Step(r.id, clock.now(), attempt=_attempt(r, channel="x"), attempt_is_new=True))
    assert await journal.channel_busy("x") and not await journal.channel_busy("y")
    await journal.apply(Step(running.id, clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL))
    await journal.apply(Step(done.id, clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL))
    await journal.apply(Step(followed.id, clock.now(), status=RechargeStatus.FAILED, expect_status=NONTERMINAL,
                             follow_up=clock.now() + 120))
    assert await journal.channel_busy("x"), "a late-capture check still due"
    await journal.apply(Step(followed.id, clock.now(), follow_up=None))
    assert not await journal.channel_busy("x")


async def test_quotes_are_kept_and_purged_oldest_first(journal, clock):
    now = clock.now()
    for i in range(5):
        await journal.put_quote(QuoteRecord(f"q{i}", "u1", 100, "CNY", {"rate": "0.14"}, now, now + i))
    assert (await journal.get_quote("q3")).price == {"rate": "0.14"}
    assert await journal.put_quote(QuoteRecord("q9", "u1", 100, "CNY", {}, now, now + 60),
                                   purge_before=now + 2, purge_limit=2) == 2
    assert await journal.get_quote("q0") is None and await journal.get_quote("q1") is None
    assert await journal.get_quote("q2") is not None and await journal.get_quote("nope") is None
