"""The double-entry ledger's contract (SPEC 20), for every store: each coin movement is one
transfer between two accounts, written with the change it belongs to; balances are what
their transfers sum to and the ledger sums to zero; a credit draws on its user's pool, or
the fullest when that one is short; deposits are idempotent by reference; a rebalance
lands whole or, planned on stale balances, not at all."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from harness import SETTINGS, make_recharge
from test_conformance import clock, cstore, journal, kind, pair  # noqa: F401  (fixtures)

from channels import AttemptOutcome, ChannelResult
from orchestrator import transitions as tr
from orchestrator.invariants import ledger_violations
from orchestrator.journal import RefundGuard
from orchestrator.model import AttemptState, Credit, RechargeStatus, Refund, RefundStatus, Settlement, Step, \
    TrailEntry


async def _credit(journal, clock, key: str, coins: int, pool: str | None, user: str = "u1"):
    rec, trail = make_recharge(clock, key, user=user)
    assert await journal.create(rec, trail) is None
    step = Step(rec.id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=tr.NONTERMINAL, channel="a",
                credit=Credit(rec.id, rec.user_id, coins, clock.now(), pool))
    assert await journal.apply(step)
    return rec


def _note(clock, what: str) -> TrailEntry:
    return TrailEntry("", clock.now(), what)


async def _balances(journal) -> dict[str, int]:
    return {a.account: a.balance for a in await journal.accounts()}


async def _consistent(journal) -> None:
    accounts = await journal.accounts()
    summed = {a.account: 0 for a in accounts}
    for t in await journal.transfers(limit=100_000):
        summed[t.debit] = summed.get(t.debit, 0) - t.coins
        summed[t.credit] = summed.get(t.credit, 0) + t.coins
    assert ledger_violations([(a.account, a.balance, summed[a.account]) for a in accounts]) == []


async def test_a_deposit_is_idempotent_by_its_reference(journal, clock):
    await journal.open_pools(["cn", "ph"], clock.now())
    kind, made = await journal.deposit("cn", 5000, "wire-1", clock.now(), _note(clock, "pool_deposit"))
    assert kind == "made" and (made.debit, made.credit, made.coins, made.kind, made.ref) == (
        "issuance", "pool:cn", 5000, "deposit", "wire-1")
    again = await journal.deposit("cn", 5000, "wire-1", clock.now(), _note(clock, "pool_deposit"))
    assert again == ("held", made)
    assert await journal.deposit("ph", 5000, "wire-1", clock.now(), _note(clock, "pool_deposit")) == ("conflict", None)
    assert await journal.deposit("cn", 4000, "wire-1", clock.now(), _note(clock, "pool_deposit")) == ("conflict", None)
    assert await _balances(journal) == {"issuance": -5000, "pool:cn": 5000, "pool:ph": 0}
    assert [e.event for e in await journal.trail("")].count("pool_deposit") == 1
    await _consistent(journal)


async def test_a_credit_draws_on_its_pool_or_the_fullest_when_short_and_the_ledger_balances(journal, clock):
    await journal.open_pools(["cn", "ph"], clock.now())
    await journal.deposit("cn", 1000, "d1", clock.now(), _note(clock, "pool_deposit"))
    await journal.deposit("ph", 3000, "d2", clock.now(), _note(clock, "pool_deposit"))
    a = await _credit(journal, clock, "k1", 800, "cn")
    b = await _credit(journal, clock, "k2", 800, "cn", user="u2")  # cn holds 200: ph, the fullest, pays
    c = await _credit(journal, clock, "k3", 5000, "ph", user="u3")  # nobody holds it: the fullest, into debt
    credits = [t for t in await journal.transfers() if t.kind == "credit"]
    assert [(t.recharge_id, t.debit, t.credit, t.coins, t.note) for t in credits] == [
        (a.id, "pool:cn", "wallet:u1", 800, None),
        (b.id, "pool:ph", "wallet:u2", 800, "short:cn"),
        (c.id, "pool:ph", "wallet:u3", 5000, "short:ph")]
    assert await _balances(journal) == {"issuance": -4000, "pool:cn": 200, "pool:ph": -2800, "wallet:u1": 800,
                                        "wallet:u2": 800, "wallet:u3": 5000}
    wallet = await journal.wallet("u2")
    assert wallet.coins == 800 and [(e.recharge_id, e.coins, e.balance_after, e.kind) for e in wallet.entries] == [
        (b.id, 800, 800, "credit")]
    assert await journal.pool_demand() == {"pool:cn": 800, "pool:ph": 5800}
    assert [t.kind for t in await journal.transfers("pool:cn")] == ["deposit", "credit"]
    assert [t.seq for t in await journal.transfers(after=3, limit=2)] == [4, 5]
    await _consistent(journal)


async def test_refunds_and_their_reversals_go_back_to_the_pool_the_credit_came_from(journal, clock):
    await journal.open_pools(["cn", "ph"], clock.now())
    await journal.deposit("ph", 3000, "d1", clock.now(), _note(clock, "pool_deposit"))
    rec = await _credit(journal, clock, "k1", 900, "cn")  # cn is empty: drawn on ph
    now = clock.now()
    rf = Refund("rf_1", rec.id, rec.client, "r1", "fp", rec.user_id, "a", f"{rec.id}.1", 1000, "CNY", 300,
                RefundStatus.PENDING, None, now, now, next_at=now)
    assert await journal.create_refund(rf, TrailEntry(rec.id, now, "refund_requested"),
                                       RefundGuard(0, 0, None, False)) is None
    assert await journal.settle_refund("rf_1", RefundStatus.FAILED, now)
    moves = [(t.kind, t.debit, t.credit, t.coins, t.ref) for t in await journal.transfers() if t.recharge_id == rec.id]
    assert moves == [("credit", "pool:ph", "wallet:u1", 900, None), ("refund", "wallet:u1", "pool:ph", 300, "rf_1"),
                     ("refund_reversal", "pool:ph", "wallet:u1", 300, "rf_1")]
    assert (await journal.wallet("u1")).coins == 900
    await _consistent(journal)


async def test_a_rebalance_lands_whole_or_not_at_all(journal, clock):
    await journal.open_pools(["cn", "ph"], clock.now())
    await journal.deposit("cn", 9000, "d1", clock.now(), _note(clock, "pool_deposit"))
    read = {"pool:cn": 9000, "pool:ph": 0}
    assert await journal.rebalance(read, [("cn", "ph", 4000)], clock.now(), _note(clock, "pools_rebalanced"))
    assert await journal.pool_demand() == {}, "each pass starts the demand count again"
    assert await _balances(journal) == {"issuance": -9000, "pool:cn": 5000, "pool:ph": 4000}
    # Planned on balances that have moved since: refused, nothing written.
    assert not await journal.rebalance(read, [("cn", "ph", 4000)], clock.now(), _note(clock, "pools_rebalanced"))
    assert await _balances(journal) == {"issuance": -9000, "pool:cn": 5000, "pool:ph": 4000}
    assert [t.kind for t in await journal.transfers()] == ["deposit", "rebalance"]
    assert [e.event for e in await journal.trail("")].count("pools_rebalanced") == 1
    await _consistent(journal)


async def test_two_instances_crediting_from_one_pool_lose_and_duplicate_nothing(pair, clock):
    a, b = pair
    await a.open_pools(["cn"], clock.now())
    await a.deposit("cn", 100_000, "d1", clock.now(), _note(clock, "pool_deposit"))
    recs = []
    for i in range(40):
        rec, trail = make_recharge(clock, f"k{i}", user=f"u{i % 7}")
        assert await a.create(rec, trail) is None
        recs.append(rec)
    steps = [Step(r.id, clock.now(), status=RechargeStatus.SUCCEEDED, expect_status=tr.NONTERMINAL, channel="a",
                  credit=Credit(r.id, r.user_id, 100 + i, clock.now(), "cn")) for i, r in enumerate(recs)]
    # Each credit sent by both instances at once: one lands, one is refused.
    results = await asyncio.gather(*(j.apply(s) for s in steps for j in (a, b)))
    assert sum(results) == len(recs)
    assert (await _balances(a))["pool:cn"] == 100_000 - sum(100 + i for i in range(40))
    assert len([t for t in await b.transfers(limit=1000) if t.kind == "credit"]) == len(recs)
    await _consistent(b)


async def _instant(journal, clock, key: str, settings, user: str = "u1"):
    """A recharge allowed instant credit, its first attempt journaled and answered pending."""
    rec, trail = make_recharge(clock, key, user=user)
    rec.instant = True
    assert await journal.create(rec, trail) is None
    step = tr.begin_attempt(rec, "a", clock.now())
    assert await journal.apply(step)
    tr.reduce(rec, step)
    step = tr.on_answer(rec, rec.attempts[0], ChannelResult(AttemptOutcome.PENDING, "pr_1"), clock.now(), settings,
                        tr.Source.ATTEMPT)
    assert step.credit is not None and step.settlement is Settlement.PENDING
    assert await journal.apply(step)
    tr.reduce(rec, step)
    return rec


async def test_an_instant_credit_settles_once_or_is_clawed_back_into_its_pool_as_its_loss(journal, clock):
    settings = replace(SETTINGS, pools=(("CN", "cn"),))
    await journal.open_pools(["cn", "ph"], clock.now())
    await journal.deposit("cn", 10_000, "d1", clock.now(), _note(clock, "pool_deposit"))
    good, bad = await _instant(journal, clock, "k1", settings), await _instant(journal, clock, "k2", settings)
    coins = good.coins + good.bonus_coins
    stored = await journal.get(bad.id)
    assert (stored.status, stored.settlement, stored.instant) == (RechargeStatus.SUCCEEDED, Settlement.PENDING, True)
    assert (await journal.wallet("u1")).coins == 2 * coins
    assert await journal.has_unsettled_credit("u1") and not await journal.has_unsettled_credit("u2")

    settled = tr.on_answer(good, good.attempts[0], ChannelResult(AttemptOutcome.CAPTURED, "pr_1"), clock.now(),
                           settings, tr.Source.WEBHOOK, ("a", "evt_1"))
    assert settled.credit is None and settled.clawback is None and settled.settlement is Settlement.SETTLED
    assert await journal.apply(settled)
    failed = tr.on_answer(bad, bad.attempts[0], ChannelResult(AttemptOutcome.DECLINED, "pr_1", "insufficient_funds"),
                          clock.now(), settings, tr.Source.INQUIRY)
    assert await journal.apply(failed)
    assert not await journal.apply(failed), "its payment failed once: clawed back once"

    assert (await journal.get(good.id)).settlement is Settlement.SETTLED
    after = await journal.get(bad.id)
    assert (after.status, after.settlement, after.attempts[0].state) == (
        RechargeStatus.SUCCEEDED, Settlement.FAILED, AttemptState.DECLINED)
    moves = [(t.kind, t.debit, t.credit, t.coins, t.note) for t in await journal.transfers() if t.recharge_id == bad.id]
    assert moves == [("credit", "pool:cn", "wallet:u1", coins, None),
                     ("clawback", "wallet:u1", "pool:cn", coins, "settlement_failed")]
    pools = {a.account: a for a in await journal.accounts("pool:")}
    assert (pools["pool:cn"].balance, pools["pool:cn"].lost, pools["pool:ph"].lost) == (10_000 - coins, coins, 0)
    assert (await journal.wallet("u1")).coins == coins
    assert await journal.has_unsettled_credit("u1"), "a clawed-back user gets no more instant credit"
    assert [(t.currency, t.recharges) for t in await journal.user_totals("u1", 0)] == [("CNY", 1)], \
        "the failed one left the user's totals"
    # A user whose only success was an instant credit that failed: no totals left at all.
    only = await _instant(journal, clock, "k3", settings, user="u9")
    assert [t.recharges for t in await journal.user_totals("u9", 0)] == [1]
    assert await journal.apply(tr.on_answer(only, only.attempts[0], ChannelResult(AttemptOutcome.VOIDED, "pr_1"),
                                            clock.now(), settings, tr.Source.WEBHOOK, ("a", "evt_9")))
    assert await journal.user_totals("u9", 0) == [] and (await journal.wallet("u9")).coins == 0
    if hasattr(journal, "query"):
        assert await journal.query("SELECT * FROM user_recharge_totals WHERE user_id = 'u9'") == []
    await _consistent(journal)


async def test_a_credit_its_pool_cannot_pay_is_counted_as_that_pools_shortfall(journal, clock):
    await journal.open_pools(["cn", "ph"], clock.now())
    await journal.deposit("ph", 3000, "d1", clock.now(), _note(clock, "pool_deposit"))
    await _credit(journal, clock, "k1", 800, "cn")
    await _credit(journal, clock, "k2", 800, "ph")
    pools = {a.account: a.shortfalls for a in await journal.accounts("pool:")}
    assert pools == {"pool:cn": 1, "pool:ph": 0}
