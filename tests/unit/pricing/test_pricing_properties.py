"""Properties over random amounts, currencies, histories and promotion configs: coins are
never negative, the bonus never passes the cap, and the same input prices the same."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from pricing_builders import example_pricing

from config import parse
from orchestrator.pricing import PricingError, UserHistory, price

BASE = example_pricing()
CURRENCIES = sorted(set(BASE.rates) | {BASE.base_currency})

histories = st.builds(
    UserHistory,
    lifetime_spend_base=st.decimals(min_value=0, max_value=10**7, places=4, allow_nan=False, allow_infinity=False),
    recharges_this_month=st.integers(0, 100),
    has_succeeded_before=st.booleans(),
    average_amount_base=st.none() | st.decimals(min_value=0, max_value=10**5, places=4),
    count=st.integers(0, 10_000),
)
percents = st.decimals(min_value=0, max_value=100, places=2)


@st.composite
def configs(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    tiers, floor_ = [], 0
    for _ in range(draw(st.integers(0, 4))):
        floor_ += draw(st.integers(1, 5000))
        tiers.append({"min_lifetime": floor_, "bonus_percent": str(draw(percents))})
    doc = BASE.model_dump(mode="json")
    doc["promotions"] = {
        "stacking": draw(st.sampled_from(["best_of", "additive"])),
        "cap_percent": str(draw(percents)),
        "first_recharge": {"enabled": draw(st.booleans()), "bonus_percent": str(draw(percents))},
        "tiers": tiers,
        "monthly": {"enabled": draw(st.booleans()), "after_recharges": draw(st.integers(0, 10)),
                    "bonus_percent": str(draw(percents))},
    }
    return parse({"pricing": doc}).config.pricing


@settings(max_examples=300, deadline=None)
@given(cfg=configs(), currency=st.sampled_from(CURRENCIES), amount=st.integers(1, 10**12),
       history=st.none() | histories)
def test_coins_nonnegative_bonus_capped_and_deterministic(  # type: ignore[no-untyped-def]
        cfg, currency, amount, history) -> None:
    try:
        p = price(cfg, amount, currency, history)
    except PricingError as exc:
        assert exc.code in ("amount_too_small", "amount_out_of_range")
        return
    assert p.coins > 0 and p.bonus_coins >= 0 and p.bonus_without_first_recharge >= 0
    cap = cfg.promotions.cap_percent
    assert p.bonus_percent <= cap
    assert p.bonus_coins <= math.floor(Fraction(p.coins) * Fraction(cap) / 100)
    assert p.bonus_without_first_recharge <= p.bonus_coins or not p.claims_first_recharge
    assert p.bonus_coins == math.floor(Fraction(p.coins) * Fraction(p.bonus_percent) / 100)
    assert price(cfg, amount, currency, history) == p


@settings(max_examples=300, deadline=None)
@given(currency=st.sampled_from(CURRENCIES), amount=st.integers(1, 10**12))
def test_more_money_never_buys_fewer_coins(currency: str, amount: int) -> None:
    try:
        a, b = price(BASE, amount, currency), price(BASE, amount + 1, currency)
    except PricingError:
        return
    assert b.coins >= a.coins


@given(rate=st.decimals(min_value=Decimal("1e-8"), max_value=Decimal("1e4"), places=8))
def test_coins_are_the_floor_whatever_the_rate(rate: Decimal) -> None:
    cfg = parse({"pricing": {"rates": {"CNY": "0.1404", "JPY": str(rate)},
                             "denomination": {"currency": "USD", "min": "0.00000001", "max": "1e20"}}}).config.pricing
    try:
        p = price(cfg, 12345, "JPY")
    except PricingError as exc:
        assert exc.code == "amount_too_small"
        assert Fraction(12345) * Fraction(rate) * 70 < 1
        return
    assert p.coins == math.floor(Fraction(12345) * Fraction(rate) * 70)
