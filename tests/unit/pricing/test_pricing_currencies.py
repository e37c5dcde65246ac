"""Every currency of the example config: its ISO 4217 exponent, and coins rounded down
from the exact value (checked against Fraction arithmetic, independent of Decimal)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from pricing_builders import example_pricing

from config import exponent
from orchestrator.pricing import PricingError, denomination_limits, price
from orchestrator.pricing import _ConfigRates as ConfigRates

CFG = example_pricing()

# ISO 4217 minor units, written out here rather than read from config._currencies.
ISO_EXPONENTS = {
    "CNY": 2, "USD": 2, "PHP": 2, "MYR": 2, "IDR": 2, "VND": 0, "THB": 2, "SGD": 2, "INR": 2,
    "BRL": 2, "EUR": 2, "GBP": 2, "JPY": 0, "KRW": 0, "TWD": 2, "HKD": 2, "SAR": 2, "AED": 2,
    "CLP": 0, "BHD": 3, "OMR": 3,
}


def exact_coins(amount_minor: int, currency: str) -> Fraction:
    rate = Fraction(str(CFG.rate(currency)))
    return Fraction(amount_minor, 10 ** ISO_EXPONENTS[currency]) * rate * Fraction(str(CFG.coins_per_unit))


def test_the_example_sells_at_least_the_18_currencies_of_the_spec() -> None:
    sold = set(CFG.rates) | {CFG.base_currency}
    assert set(ISO_EXPONENTS) <= sold
    assert len(sold) >= 18


@pytest.mark.parametrize("currency", sorted(ISO_EXPONENTS))
def test_exponent_is_iso_4217(currency: str) -> None:
    assert exponent(currency) == ISO_EXPONENTS[currency]


@pytest.mark.parametrize("currency", sorted(ISO_EXPONENTS))
def test_coins_are_the_exact_value_rounded_down(currency: str) -> None:
    lo, hi = denomination_limits(CFG, ConfigRates(CFG), currency)  # type: ignore[misc]
    for amount in {lo, lo + 1, (lo + hi) // 2, hi - 1, hi, lo * 7 + 3}:
        if amount > hi:
            continue
        p = price(CFG, amount, currency)
        assert p.coins == math.floor(exact_coins(amount, currency)), (currency, amount)
        assert p.rate == CFG.rate(currency)
        assert Fraction(p.base_amount) == Fraction(amount, 10 ** ISO_EXPONENTS[currency]) * Fraction(str(p.rate))


@pytest.mark.parametrize(("amount_minor", "currency", "coins"), [
    (8500, "CNY", 835),        # 85.00 x 0.1404 x 70 = 835.38 (the spec's example)
    (1000, "JPY", 469),        # 1000 x 0.0067 x 70 = 469 exactly: no float 468.999...
    (10000, "KRW", 507),       # 10000 x 0.000725 x 70 = 507.5
    (100000, "VND", 275),      # 100000 x 0.0000393 x 70 = 275.1
    (1234, "BHD", 229),        # 1.234 BHD (3 decimals) x 2.6596 x 70 = 229.74
    (500, "OMR", 90),          # 0.500 OMR x 2.5974 x 70 = 90.909
    (10000, "USD", 7000),      # the base currency: rate 1
    (10000000, "IDR", 430),    # 100,000.00 IDR x 0.0000615 x 70 = 430.5
])
def test_hand_computed_examples(amount_minor: int, currency: str, coins: int) -> None:
    assert price(CFG, amount_minor, currency).coins == coins


def test_minor_units_mean_the_currency_exponent() -> None:
    # The same number of minor units is 100x more yen than yuan-fen: the exponent is respected.
    assert price(CFG, 5000, "JPY").base_amount == Decimal("33.5000")
    assert price(CFG, 5000, "CNY").base_amount == Decimal("7.020000")


def test_a_currency_without_rate_is_unsupported() -> None:
    with pytest.raises(PricingError) as err:
        price(CFG, 1000, "ZAR")
    assert (err.value.code, err.value.field) == ("unsupported_currency", "currency")
