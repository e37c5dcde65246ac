"""The rate book: config rates never go stale; a live source's rates do, past max_age_s
(503 rates_stale); refreshes swap only good values; reloads keep fetched rates."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pricing_builders import pricing

from orchestrator.clock import VirtualClock
from orchestrator.pricing import (
    CurrencyTotals,
    PricingError,
    RateBook,
    RateSourceError,
    history_from_totals,
    month_start,
    price,
)

SOURCE = {"url": "http://fx.test/rates", "refresh_s": 60, "max_age_s": 300}


def stale(book: RateBook, currency: str, now: float) -> bool:
    try:
        book.rate(currency, now)
    except PricingError as exc:
        assert (exc.code, exc.field) == ("rates_stale", "currency")
        return True
    return False


def fetcher(rates: dict[str, object]):
    async def fetch() -> dict[str, object]:
        return rates
    return fetch


def test_config_rates_never_go_stale() -> None:
    clock = VirtualClock()
    book = RateBook(pricing(), clock)
    assert book.rate("CNY", clock.now() + 10 * 365 * 86400) == Decimal("0.1404")
    assert book.rate("USD", 0) == 1


async def test_a_sourced_rate_is_stale_until_fetched_and_after_max_age() -> None:
    clock = VirtualClock()
    book = RateBook(pricing(rate_source=SOURCE), clock)
    t0 = clock.now()
    assert stale(book, "CNY", t0)
    assert not stale(book, "USD", t0)  # the base is always 1
    report = await book.refresh(fetcher({"CNY": Decimal("0.1410"), "JPY": "0.0068"}))
    assert report.updated == ("CNY", "JPY") and not report.rejected
    assert book.rate("CNY", t0) == Decimal("0.1410")
    assert book.rate("JPY", t0 + 300) == Decimal("0.0068")  # exactly max_age_s old: still good
    assert stale(book, "JPY", t0 + 300.001)
    assert stale(book, "BHD", t0)  # the source never gave it


async def test_a_stale_rate_refuses_pricing_with_rates_stale() -> None:
    clock = VirtualClock()
    cfg = pricing(rate_source=SOURCE)
    book = RateBook(cfg, clock)
    await book.refresh(fetcher({"CNY": "0.1404"}))
    assert price(cfg, 8500, "CNY", rates=book, now=clock.now() + 10).coins == 835
    with pytest.raises(PricingError) as err:
        price(cfg, 8500, "CNY", rates=book, now=clock.now() + 301)
    assert err.value.code == "rates_stale"


async def test_bad_values_and_unsold_currencies_are_refused_one_by_one() -> None:
    clock = VirtualClock()
    book = RateBook(pricing(rate_source=SOURCE), clock)
    report = await book.refresh(fetcher({"CNY": "0.15", "JPY": -1, "BHD": "NaN", "ZAR": "0.05", "USD": "2"}))
    assert report.updated == ("CNY",)
    assert set(report.rejected) == {"JPY", "BHD", "ZAR"}
    assert book.rate("USD", clock.now()) == 1  # the base cannot be moved


async def test_a_failing_source_changes_nothing() -> None:
    clock = VirtualClock()
    book = RateBook(pricing(rate_source=SOURCE), clock)
    await book.refresh(fetcher({"CNY": "0.15"}))

    async def broken() -> dict[str, object]:
        raise OSError("connection refused")

    with pytest.raises(RateSourceError) as err:
        await book.refresh(broken)
    assert isinstance(err.value.__cause__, OSError)
    assert book.rate("CNY", clock.now()) == Decimal("0.15")
    with pytest.raises(RateSourceError):
        await book.refresh(fetcher(["not", "a", "mapping"]))  # type: ignore[arg-type]


async def test_run_refreshes_every_refresh_s() -> None:
    clock = VirtualClock()
    book = RateBook(pricing(rate_source=SOURCE), clock)
    calls: list[float] = []

    async def fetch() -> dict[str, object]:
        calls.append(clock.now())
        if len(calls) == 2:
            raise OSError("blip")  # logged, retried next tick
        return {"CNY": str(Decimal("0.14") + len(calls) * Decimal("0.001"))}

    task = asyncio.create_task(book.run(fetch))
    while len(calls) < 3:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [t - calls[0] for t in calls] == [0, 60, 120]
    assert book.rate("CNY", clock.now()) == Decimal("0.143")


async def test_reload_keeps_fetched_rates_and_drops_unsold_currencies() -> None:
    clock = VirtualClock()
    book = RateBook(pricing(rate_source=SOURCE), clock)
    await book.refresh(fetcher({"CNY": "0.15", "JPY": "0.007"}))
    book.configure(pricing(rate_source=SOURCE, rates={"CNY": 0.1404, "PHP": 0.0171}))
    assert book.rate("CNY", clock.now()) == Decimal("0.15")
    assert stale(book, "PHP", clock.now())
    with pytest.raises(PricingError) as err:
        book.rate("JPY", clock.now())
    assert err.value.code == "unsupported_currency"
    # Dropping the source: the config's values again, never stale.
    book.configure(pricing())
    assert book.rate("CNY", clock.now() + 10**6) == Decimal("0.1404")


def test_without_the_book_a_sourced_configs_placeholders_never_price() -> None:
    cfg = pricing(rate_source=SOURCE)
    with pytest.raises(PricingError) as err:
        price(cfg, 8500, "CNY")
    assert err.value.code == "rates_stale"
    assert price(cfg, 1000, "USD").coins == 700


def test_view_shows_rates_and_fetch_times() -> None:
    view = RateBook(pricing(), VirtualClock()).view()
    assert view["CNY"] == {"rate": "0.1404", "fetched_at": None}


def test_month_start_is_the_utc_calendar_month() -> None:
    assert month_start(1_700_000_000.0) == 1_698_796_800.0  # 2023-11-14 -> 2023-11-01T00:00Z
    assert month_start(1_698_796_800.0) == 1_698_796_800.0
    assert month_start(1_698_796_799.0) == 1_696_118_400.0  # one second before: October


# Instants anywhere in 1970-2096, and the edges of months (the remembered month's ends),
# down to a hair under half a microsecond before one (where datetime would round up).
_EDGES = [datetime(y, m, 1, tzinfo=UTC).timestamp() for y in (1999, 2023, 2024) for m in range(1, 13)]
_INSTANTS = st.one_of(st.floats(0, 4e9), st.sampled_from(_EDGES).flatmap(
    lambda edge: st.sampled_from([edge, edge - 3e-7, edge - 1e-6, edge - 0.5, edge + 1e-6])))


@given(st.lists(_INSTANTS, min_size=1, max_size=30))
def test_month_start_remembering_its_month_answers_as_if_computed_afresh(instants: list[float]) -> None:
    for now in instants:  # in any order: the month remembered from the one before must not leak
        t = datetime.fromtimestamp(math.floor(now), UTC)  # the true month: edges are whole seconds
        assert month_start(now) == datetime(t.year, t.month, 1, tzinfo=UTC).timestamp()


def test_history_from_per_currency_totals() -> None:
    book = RateBook(pricing(), VirtualClock())
    h = history_from_totals([CurrencyTotals("CNY", 3, 30000, 2), CurrencyTotals("JPY", 1, 10000, 1),
                             CurrencyTotals("ZAR", 1, 5000, 0)], book)
    # 300.00 CNY x 0.1404 + 10000 JPY x 0.0067 = 42.12 + 67; ZAR has no rate: counted, no value
    assert h.lifetime_spend_base == Decimal("109.12")
    assert (h.count, h.recharges_this_month, h.has_succeeded_before) == (5, 3, True)
    assert h.average_amount_base == Decimal("21.824")
    empty = history_from_totals([], book)
    assert (empty.count, empty.has_succeeded_before, empty.average_amount_base) == (0, False, None)
