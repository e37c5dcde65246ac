"""The journal's reads and writes for SPEC 22, for every store: a user's newest succeeded
recharges (what amount suggestions learn from), and recharge templates, kept per (client,
user) under a cap that holds however many create at once."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from harness import SETTINGS, make_recharge
from test_conformance import clock, cstore, journal, kind, pair  # noqa: F401  (fixtures)
from test_ledger_conformance import _instant

from channels import AttemptOutcome, ChannelResult
from orchestrator import transitions as tr
from orchestrator.journal import PastRecharge
from orchestrator.model import Credit, RechargeStatus, Step, Template

# -- succeeded recharges --------------------------------------------------------------------


async def _ended(journal, clock, key: str, status: RechargeStatus, *, user: str = "u1", amount: int = 1000,
                 currency: str = "CNY", country: str = "CN"):
    rec, trail = make_recharge(clock, key, user=user, amount=amount)
    rec = replace(rec, currency=currency, country=country)
    assert await journal.create(rec, trail) is None
    credit = Credit(rec.id, user, 1, clock.now()) if status is RechargeStatus.SUCCEEDED else None
    assert await journal.apply(Step(rec.id, clock.now(), status=status, expect_status=tr.NONTERMINAL, credit=credit))
    clock.advance(1)
    return rec


async def test_succeeded_recharges_are_the_users_newest_successes_newest_first(journal, clock):
    a = await _ended(journal, clock, "k1", RechargeStatus.SUCCEEDED, amount=600)
    await _ended(journal, clock, "k2", RechargeStatus.DECLINED, amount=9999)
    b = await _ended(journal, clock, "k3", RechargeStatus.SUCCEEDED, amount=3000, currency="JPY", country="JP")
    await _ended(journal, clock, "k4", RechargeStatus.SUCCEEDED, user="u2", amount=7)
    c = await _ended(journal, clock, "k5", RechargeStatus.SUCCEEDED, amount=1200)
    running, trail = make_recharge(clock, "k6", amount=5)
    assert await journal.create(running, trail) is None

    got = await journal.succeeded_recharges("u1", 10)
    assert got == [PastRecharge(1200, "CNY", "CN", c.created_at), PastRecharge(3000, "JPY", "JP", b.created_at),
                   PastRecharge(600, "CNY", "CN", a.created_at)]
    assert [p.amount_minor for p in await journal.succeeded_recharges("u1", 2)] == [1200, 3000]
    assert await journal.succeeded_recharges("u1", 0) == []
    assert await journal.succeeded_recharges("nobody", 5) == []
    assert isinstance(got[0].created_at, float) and isinstance(got[0].amount_minor, int)


async def test_an_instant_credit_whose_payment_failed_is_no_success_to_learn_from(journal, clock):
    settings = replace(SETTINGS, pools=(("CN", "cn"),))
    await journal.open_pools(["cn"], clock.now())
    paid = await _ended(journal, clock, "k0", RechargeStatus.SUCCEEDED, amount=600)
    bad = await _instant(journal, clock, "k1", settings)
    assert [p.created_at for p in await journal.succeeded_recharges("u1", 5)] == [bad.created_at, paid.created_at], \
        "credited while its payment is pending: a success for now"
    failed = tr.on_answer(bad, bad.attempts[0], ChannelResult(AttemptOutcome.DECLINED, "pr_1", "insufficient_funds"),
                          clock.now(), settings, tr.Source.INQUIRY)
    assert await journal.apply(failed)
    assert [p.created_at for p in await journal.succeeded_recharges("u1", 5)] == [paid.created_at]


# -- templates ------------------------------------------------------------------------------


def _template(n: int, at: float, *, client: str = "front", user: str = "u1",
              instrument: dict[str, str] | None = None) -> Template:
    return Template(f"tpl_{n:024x}", client, user, f"monthly {n}", 100 * (n + 1), "CNY", "CN", "ewallet",
                    instrument or {"token": f"tok_{n}"}, at)


async def test_templates_are_kept_listed_oldest_first_and_read_back_whole(journal, clock):
    masked = {"account_number_masked": "622202******1234"}
    made = [_template(i, clock.now() + i, instrument=masked if i == 1 else None) for i in range(3)]
    for t in reversed(made):  # created out of order: listed by created_at all the same
        assert await journal.create_template(t, 10)
    assert await journal.templates_of("front", "u1") == made
    assert await journal.get_template(made[1].id) == made[1]
    assert (await journal.get_template(made[1].id)).instrument == masked
    assert await journal.get_template("tpl_nothing") is None
    assert await journal.templates_of("front", "nobody") == []


async def test_a_template_belongs_to_its_client_and_user_only(journal, clock):
    mine = _template(1, clock.now())
    theirs = _template(2, clock.now(), user="u2")
    other_client = _template(3, clock.now(), client="shop")
    for t in (mine, theirs, other_client):
        assert await journal.create_template(t, 10)
    assert await journal.templates_of("front", "u1") == [mine]
    assert await journal.templates_of("shop", "u1") == [other_client]
    assert not await journal.delete_template("front", "u2", mine.id), "another user's"
    assert not await journal.delete_template("shop", "u1", mine.id), "another client's"
    assert await journal.get_template(mine.id) == mine
    assert await journal.delete_template("front", "u1", mine.id)
    assert not await journal.delete_template("front", "u1", mine.id), "deleted once"
    assert await journal.get_template(mine.id) is None
    assert await journal.templates_of("front", "u1") == []
    assert await journal.templates_of("front", "u2") == [theirs]


async def test_the_cap_is_per_client_and_user_and_a_delete_frees_a_place(journal, clock):
    for i in range(3):
        assert await journal.create_template(_template(i, clock.now()), 3)
    assert not await journal.create_template(_template(9, clock.now()), 3)
    assert await journal.get_template(_template(9, 0).id) is None, "refused: nothing written"
    assert await journal.create_template(_template(10, clock.now(), user="u2"), 3)
    assert await journal.create_template(_template(11, clock.now(), client="shop"), 3)
    assert await journal.delete_template("front", "u1", _template(0, 0).id)
    assert await journal.create_template(_template(12, clock.now()), 3)
    assert len(await journal.templates_of("front", "u1")) == 3


async def test_twenty_creates_at_once_under_a_cap_of_ten_make_exactly_ten(journal, clock):
    made = await asyncio.gather(*(journal.create_template(_template(i, clock.now()), 10) for i in range(20)))
    assert made.count(True) == 10
    assert len(await journal.templates_of("front", "u1")) == 10


async def test_two_instances_creating_at_once_share_one_cap(pair, clock):
    a, b = pair
    made = await asyncio.gather(*(j.create_template(_template(2 * i + k, clock.now()), 10)
                                  for i in range(12) for k, j in enumerate((a, b))))
    assert made.count(True) == 10
    assert len(await a.templates_of("front", "u1")) == len(await b.templates_of("front", "u1")) == 10
