"""Quotes hold a price for quote_ttl_s, until the rate moves by max_rate_drift (0.3%):
exactly at the TTL or exactly 0.3% is expired; a hair before is not. The book keeps
them in a real journal (a SQLite file per test): what one process issued, any other on
the store redeems (tests/integration/core/test_quotes_shared.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from decimal import Decimal

import pytest
from pricing_builders import pricing

from orchestrator.clock import VirtualClock
from orchestrator.journal import SqliteJournal
from orchestrator.pricing import Price, PricingError, Promotion, UserHistory
from orchestrator.quotes import PricingService, QuoteBook, QuoteError, drifted, price_doc, price_of

RATE = Decimal("0.1404")
P = Price(coins=835, bonus_coins=125, rate=RATE)
T0 = 1_800_000_000.0


@pytest.fixture
async def journal(tmp_path):
    j = SqliteJournal(tmp_path / "j.db")
    await j.open()
    yield j
    await j.close()


async def code_of(aw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(QuoteError) as err:
        await aw
    assert err.value.field == "quote_id"
    return err.value.code


async def count(journal: SqliteJournal) -> int:
    return (await journal.query("SELECT count(*) FROM quotes"))[0][0]


async def test_a_quote_redeems_for_its_own_recharge(journal) -> None:
    book = QuoteBook(journal, ttl_s=300)
    q = await book.issue("u1", 8500, "CNY", P, T0)
    assert q.quote_id.startswith("q_") and len(q.quote_id) == 34
    int(q.quote_id[2:], 16)  # 32 hex digits: 128 random bits
    assert (q.coins, q.bonus_coins, q.rate, q.expires_at) == (835, 125, RATE, T0 + 300)
    assert await book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 10) == q
    assert await book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 11) == q  # not consumed: retries replay


async def test_expiry_by_time(journal) -> None:
    book = QuoteBook(journal, ttl_s=300)
    q = await book.issue("u1", 8500, "CNY", P, T0)
    assert await book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 299.999)
    assert await code_of(book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 300)) == "quote_expired"


@pytest.mark.parametrize(("current", "expired"), [
    (Decimal("0.1404"), False),
    (Decimal("0.1408212"), True),     # +0.3% exactly (0.1404 x 1.003)
    (Decimal("0.1399788"), True),     # -0.3% exactly
    (Decimal("0.1408211"), False),    # a hair under +0.3%
    (Decimal("0.1399789"), False),    # a hair under -0.3%
    (Decimal("0.15"), True),
])
async def test_expiry_by_drift(journal, current: Decimal, expired: bool) -> None:
    book = QuoteBook(journal, ttl_s=300, max_drift=Decimal("0.003"))
    q = await book.issue("u1", 8500, "CNY", P, T0)
    assert drifted(RATE, current, Decimal("0.003")) is expired
    if expired:
        assert await code_of(book.redeem(q.quote_id, "u1", 8500, "CNY", current, T0 + 1)) == "quote_expired"
    else:
        assert await book.redeem(q.quote_id, "u1", 8500, "CNY", current, T0 + 1) == q


@pytest.mark.parametrize("other", [("u2", 8500, "CNY"), ("u1", 8501, "CNY"), ("u1", 8500, "JPY")])
async def test_a_quote_is_for_one_user_amount_and_currency(journal, other: tuple[str, int, str]) -> None:
    book = QuoteBook(journal)
    q = await book.issue("u1", 8500, "CNY", P, T0)
    assert await code_of(book.redeem(q.quote_id, *other, RATE, T0)) == "quote_mismatch"
    # Someone else's quote says nothing about its age: mismatch before expiry.
    assert await code_of(book.redeem(q.quote_id, *other, RATE, T0 + 10_000)) == "quote_mismatch"


@pytest.mark.parametrize("quote_id", [
    "q_nope", "q_" + "0" * 32, "Q_" + "a" * 32, "q_" + "A" * 32, "q_" + "a" * 33, "", "q_' OR 1=1 --",
    "q_%", "q_\u00e9" + "a" * 31, "rc_" + "a" * 32,
])
async def test_an_unknown_or_malformed_quote_is_not_found(journal, quote_id: str) -> None:
    book = QuoteBook(journal)
    await book.issue("u1", 8500, "CNY", P, T0)
    assert await code_of(book.redeem(quote_id, "u1", 8500, "CNY", RATE, T0)) == "quote_not_found"


async def test_expired_quotes_answer_expired_for_one_more_ttl_then_go(journal) -> None:
    book = QuoteBook(journal, ttl_s=300, purge_every_s=0)
    q = await book.issue("u1", 8500, "CNY", P, T0)
    await book.issue("u2", 8500, "CNY", P, T0 + 599)
    assert await code_of(book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 599)) == "quote_expired"
    await book.issue("u3", 8500, "CNY", P, T0 + 600)  # carries the purge of what expired at T0 + 300
    assert await count(journal) == 2
    assert await code_of(book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 600)) == "quote_not_found"


async def test_a_purge_rides_on_a_quote_at_most_every_few_seconds(journal) -> None:
    book = QuoteBook(journal, ttl_s=10, purge_every_s=60)
    await book.issue("u1", 8500, "CNY", P, T0)  # the first quote purges (nothing yet)
    await book.issue("u1", 8500, "CNY", P, T0 + 1)
    await book.issue("u1", 8500, "CNY", P, T0 + 59.9)  # both before are purgeable, but it is too soon
    assert await count(journal) == 3
    await book.issue("u1", 8500, "CNY", P, T0 + 60)  # purges the two that expired by T0 + 50
    assert await count(journal) == 2
    await book.issue("u1", 8500, "CNY", P, T0 + 200)  # 140 s later: purges the two before
    assert await count(journal) == 1


async def test_a_backlog_is_purged_in_limited_steps_oldest_first(journal) -> None:
    book = QuoteBook(journal, ttl_s=10, purge_every_s=60, purge_limit=100)
    old = [(await book.issue("u1", 8500, "CNY", P, T0 + i / 100)).quote_id for i in range(250)]
    await book.issue("u1", 8500, "CNY", P, T0 + 100)  # purges 100, the soonest expired
    assert await count(journal) == 151
    assert await book.get(old[99]) is None and await book.get(old[100]) is not None
    await book.issue("u1", 8500, "CNY", P, T0 + 101)  # a full purge means a backlog: at once again
    await book.issue("u1", 8500, "CNY", P, T0 + 102)  # ... and again (50 left: not full)
    assert await count(journal) == 3
    assert [await book.get(q) for q in old] == [None] * 250
    await book.issue("u1", 8500, "CNY", P, T0 + 103)  # no backlog: the next purge waits its 60 s
    assert await count(journal) == 4


@pytest.mark.parametrize("p", [
    P,
    Price(coins=10**12, bonus_coins=3, rate=Decimal("1E+1"), base_amount=Decimal("0.140400")),
    Price(coins=835, bonus_coins=208, rate=Decimal("0.14040000000000000000000000001"),
          promotions=(Promotion("first_recharge", Decimal("15")), Promotion("membership_tier", Decimal("10.5"), 2)),
          bonus_percent=Decimal("25.0"), bonus_without_first_recharge=87,
          promotions_without_first_recharge=(Promotion("membership_tier", Decimal("10.5"), 2),),
          percent_without_first_recharge=Decimal("10.5"), base_amount=Decimal("11.93400")),
])
async def test_the_stored_price_is_exact(journal, p: Price) -> None:
    assert price_of(price_doc(p)) == p
    book = QuoteBook(journal)
    got = await book.get((await book.issue("u1", 8500, "CNY", p, T0)).quote_id)
    assert got is not None and got.price == p
    # Equal is not enough for money: the very digits and exponents come back.
    assert [str(x) for x in (got.rate, got.price.base_amount, got.price.bonus_percent)] == [
        str(x) for x in (p.rate, p.base_amount, p.bonus_percent)]
    assert got.promotions == p.promotions and [x.tier for x in got.promotions] == [x.tier for x in p.promotions]


async def test_a_stored_price_it_cannot_read_is_not_found(journal, tmp_path) -> None:
    book = QuoteBook(journal)
    q = await book.issue("u1", 8500, "CNY", P, T0)
    conn = sqlite3.connect(tmp_path / "j.db")
    conn.execute("UPDATE quotes SET price=? WHERE quote_id=?", ('{"coins": 835}', q.quote_id))
    conn.commit()
    conn.close()
    assert await code_of(book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0)) == "quote_not_found"


def service(journal, clock: VirtualClock, history: UserHistory | None = UserHistory(), **cfg: object):
    holder = {"cfg": pricing(**cfg)}

    async def load(user_id: str) -> UserHistory:
        assert history is not None
        return history

    svc = PricingService(lambda: holder["cfg"], clock, journal, history=load if history is not None else None)
    return svc, holder


async def test_the_service_quotes_with_the_users_history_and_honours_the_quote(journal) -> None:
    clock = VirtualClock(T0)
    svc, _ = service(journal, clock)
    q = await svc.quote("u1", 8500, "CNY")
    assert (q.coins, q.bonus_coins, [p.name for p in q.promotions]) == (835, 125, ["first_recharge"])
    assert q.expires_at == T0 + 300
    clock.advance(100)
    assert await svc.price_recharge("u1", 8500, "CNY", q.quote_id) == q.price
    unquoted = await svc.price_recharge("u1", 8500, "CNY", None)
    assert (unquoted.coins, unquoted.bonus_coins) == (835, 125)


async def test_the_service_refuses_a_quote_once_the_live_rate_moved(journal) -> None:
    clock = VirtualClock(T0)
    svc, _ = service(journal, clock, rate_source={"url": "http://fx.test", "refresh_s": 60, "max_age_s": 300})

    async def fetch(rate: str):  # type: ignore[no-untyped-def]
        async def go() -> dict[str, str]:
            return {"CNY": rate}
        return await svc.rates.refresh(go)

    await fetch("0.1404")
    q = await svc.quote("u1", 8500, "CNY")
    await fetch("0.1408")  # +0.285%: the quote holds
    assert await svc.price_recharge("u1", 8500, "CNY", q.quote_id) == q.price
    await fetch("0.1409")  # +0.356%
    with pytest.raises(QuoteError) as err:
        await svc.price_recharge("u1", 8500, "CNY", q.quote_id)
    assert err.value.code == "quote_expired"
    clock.advance(301)  # and with the live rate stale, nothing is priced in CNY
    with pytest.raises(PricingError) as perr:
        await svc.price_recharge("u1", 8500, "CNY", q.quote_id)
    assert perr.value.code == "rates_stale"


async def test_the_service_follows_a_config_reload(journal) -> None:
    clock = VirtualClock(T0)
    svc, holder = service(journal, clock, history=None)
    holder["cfg"] = pricing(quote_ttl_s=30, coins_per_unit=100, max_rate_drift="0.01", max_quotes=5)
    q = await svc.quote("u1", 8500, "CNY")
    assert (q.coins, q.bonus_coins, q.expires_at) == (1193, 0, T0 + 30)  # floor(85 x 0.1404 x 100) = floor(1193.4)
    assert svc.quotes.max_drift == Decimal("0.01")
    # max_quotes bounds nothing any more (the table is purged by age), and is still accepted.
    for _ in range(10):
        await svc.quote("u1", 8500, "CNY")
    assert await count(journal) == 11


async def test_two_simultaneous_first_recharges_get_the_bonus_once(journal) -> None:
    """The contract with the journal: both are priced as first recharges; the store grants
    the claim to one (here a set stands in for its unique constraint), the other is
    credited ``without_first_recharge()``."""
    clock = VirtualClock(T0)
    svc, _ = service(journal, clock, promotions={"monthly": {"after_recharges": 0}})
    claims: set[str] = set()

    async def recharge(user: str) -> Price:
        p = await svc.price_recharge(user, 8500, "CNY", None, UserHistory(recharges_this_month=1))
        if p.claims_first_recharge:
            if user in claims:
                return p.without_first_recharge()
            claims.add(user)
        return p

    a, b = await asyncio.gather(recharge("u1"), recharge("u1"))
    assert sorted([(a.bonus_coins, a.claims_first_recharge), (b.bonus_coins, b.claims_first_recharge)]) == [
        (66, False), (125, True)]  # the loser still gets its monthly cashback: floor(835 x 0.08)
