"""Quotes hold a price for quote_ttl_s, until the rate moves by max_rate_drift (0.3%):
exactly at the TTL or exactly 0.3% is expired; a hair before is not."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from pricing_builders import pricing

from orchestrator.clock import VirtualClock
from orchestrator.pricing import Price, PricingError, UserHistory
from orchestrator.quotes import PricingService, QuoteBook, QuoteError, drifted

RATE = Decimal("0.1404")
P = Price(coins=835, bonus_coins=125, rate=RATE)
T0 = 1_800_000_000.0


def code_of(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(QuoteError) as err:
        fn()
    assert err.value.field == "quote_id"
    return err.value.code


def test_a_quote_redeems_for_its_own_recharge() -> None:
    book = QuoteBook(ttl_s=300)
    q = book.issue("u1", 8500, "CNY", P, T0)
    assert q.quote_id.startswith("q_") and len(q.quote_id) == 34
    assert (q.coins, q.bonus_coins, q.rate, q.expires_at) == (835, 125, RATE, T0 + 300)
    assert book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 10) is q
    assert book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 11) is q  # not consumed: retries replay


def test_expiry_by_time() -> None:
    book = QuoteBook(ttl_s=300)
    q = book.issue("u1", 8500, "CNY", P, T0)
    assert book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 299.999)
    assert code_of(lambda: book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 300)) == "quote_expired"


@pytest.mark.parametrize(("current", "expired"), [
    (Decimal("0.1404"), False),
    (Decimal("0.1408212"), True),     # +0.3% exactly (0.1404 x 1.003)
    (Decimal("0.1399788"), True),     # -0.3% exactly
    (Decimal("0.1408211"), False),    # a hair under +0.3%
    (Decimal("0.1399789"), False),    # a hair under -0.3%
    (Decimal("0.15"), True),
])
def test_expiry_by_drift(current: Decimal, expired: bool) -> None:
    book = QuoteBook(ttl_s=300, max_drift=Decimal("0.003"))
    q = book.issue("u1", 8500, "CNY", P, T0)
    assert drifted(RATE, current, Decimal("0.003")) is expired
    if expired:
        assert code_of(lambda: book.redeem(q.quote_id, "u1", 8500, "CNY", current, T0 + 1)) == "quote_expired"
    else:
        assert book.redeem(q.quote_id, "u1", 8500, "CNY", current, T0 + 1) is q


@pytest.mark.parametrize("other", [("u2", 8500, "CNY"), ("u1", 8501, "CNY"), ("u1", 8500, "JPY")])
def test_a_quote_is_for_one_user_amount_and_currency(other: tuple[str, int, str]) -> None:
    book = QuoteBook()
    q = book.issue("u1", 8500, "CNY", P, T0)
    assert code_of(lambda: book.redeem(q.quote_id, *other, RATE, T0)) == "quote_mismatch"


def test_an_unknown_quote_is_not_found() -> None:
    assert code_of(lambda: QuoteBook().redeem("q_nope", "u1", 8500, "CNY", RATE, T0)) == "quote_not_found"


def test_the_book_is_bounded_oldest_first() -> None:
    book = QuoteBook(max_entries=100)
    ids = [book.issue("u1", 8500, "CNY", P, T0).quote_id for _ in range(250)]
    assert len(book) == 100
    assert book.get(ids[149]) is None and book.get(ids[150]) is not None


def test_expired_quotes_answer_expired_for_one_more_ttl_then_go() -> None:
    book = QuoteBook(ttl_s=300)
    q = book.issue("u1", 8500, "CNY", P, T0)
    book.issue("u2", 8500, "CNY", P, T0 + 599)
    assert code_of(lambda: book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 599)) == "quote_expired"
    book.issue("u3", 8500, "CNY", P, T0 + 600)
    assert len(book) == 2
    assert code_of(lambda: book.redeem(q.quote_id, "u1", 8500, "CNY", RATE, T0 + 600)) == "quote_not_found"


def service(clock: VirtualClock, history: UserHistory | None = UserHistory(), **cfg: object):
    holder = {"cfg": pricing(**cfg)}

    async def load(user_id: str) -> UserHistory:
        assert history is not None
        return history

    svc = PricingService(lambda: holder["cfg"], clock, history=load if history is not None else None)
    return svc, holder


async def test_the_service_quotes_with_the_users_history_and_honours_the_quote() -> None:
    clock = VirtualClock(T0)
    svc, _ = service(clock)
    q = await svc.quote("u1", 8500, "CNY")
    assert (q.coins, q.bonus_coins, [p.name for p in q.promotions]) == (835, 125, ["first_recharge"])
    assert q.expires_at == T0 + 300
    clock.advance(100)
    assert await svc.price_recharge("u1", 8500, "CNY", q.quote_id) is q.price
    unquoted = await svc.price_recharge("u1", 8500, "CNY", None)
    assert (unquoted.coins, unquoted.bonus_coins) == (835, 125)


async def test_the_service_refuses_a_quote_once_the_live_rate_moved() -> None:
    clock = VirtualClock(T0)
    svc, _ = service(clock, rate_source={"url": "http://fx.test", "refresh_s": 60, "max_age_s": 300})

    async def fetch(rate: str):  # type: ignore[no-untyped-def]
        async def go() -> dict[str, str]:
            return {"CNY": rate}
        return await svc.rates.refresh(go)

    await fetch("0.1404")
    q = await svc.quote("u1", 8500, "CNY")
    await fetch("0.1408")  # +0.285%: the quote holds
    assert await svc.price_recharge("u1", 8500, "CNY", q.quote_id) is q.price
    await fetch("0.1409")  # +0.356%
    with pytest.raises(QuoteError) as err:
        await svc.price_recharge("u1", 8500, "CNY", q.quote_id)
    assert err.value.code == "quote_expired"
    clock.advance(301)  # and with the live rate stale, nothing is priced in CNY
    with pytest.raises(PricingError) as perr:
        await svc.price_recharge("u1", 8500, "CNY", q.quote_id)
    assert perr.value.code == "rates_stale"


async def test_the_service_follows_a_config_reload() -> None:
    clock = VirtualClock(T0)
    svc, holder = service(clock, history=None)
    holder["cfg"] = pricing(quote_ttl_s=30, coins_per_unit=100, max_quotes=5)
    q = await svc.quote("u1", 8500, "CNY")
    assert (q.coins, q.bonus_coins, q.expires_at) == (1193, 0, T0 + 30)  # floor(85 x 0.1404 x 100) = floor(1193.4)
    assert svc.quotes.max_entries == 5


async def test_two_simultaneous_first_recharges_get_the_bonus_once() -> None:
    """The contract with the journal: both are priced as first recharges; the store grants
    the claim to one (here a set stands in for its unique constraint), the other is
    credited ``without_first_recharge()``."""
    clock = VirtualClock(T0)
    svc, _ = service(clock, promotions={"monthly": {"after_recharges": 0}})
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
