"""Denomination limits: 5 to 2,000 CNY-equivalent by default, in every currency, the
minimum rounded up and the maximum down to whole minor units."""

from __future__ import annotations

import pytest
from pricing_builders import example_pricing, pricing

from config import ConfigError, parse
from orchestrator.pricing import PricingError, denomination_limits, price
from orchestrator.pricing import _ConfigRates as ConfigRates

CFG = example_pricing()


def test_cny_limits_are_5_and_2000_yuan() -> None:
    assert denomination_limits(CFG, ConfigRates(CFG), "CNY") == (500, 200_000)


@pytest.mark.parametrize("currency", sorted(set(CFG.rates) | {CFG.base_currency}))
def test_limits_hold_at_their_edges_in_every_currency(currency: str) -> None:
    lo, hi = denomination_limits(CFG, ConfigRates(CFG), currency)  # type: ignore[misc]
    assert price(CFG, lo, currency).coins > 0
    assert price(CFG, hi, currency).coins > 0
    for outside in (lo - 1, hi + 1):
        with pytest.raises(PricingError) as err:
            price(CFG, outside, currency)
        assert err.value.code in ("amount_out_of_range", "amount_too_small")
        assert err.value.field == "amount_minor"
    with pytest.raises(PricingError) as err:
        price(CFG, hi + 1, currency)
    assert err.value.code == "amount_out_of_range"
    assert f"from {lo} to {hi} in {currency}" in str(err.value)


def test_jpy_minimum_is_rounded_up() -> None:
    # 5 CNY = 0.702 USD = 104.776... JPY: 104 yen is under 5 CNY, 105 is not.
    assert denomination_limits(CFG, ConfigRates(CFG), "JPY") == (105, 41_910)


def test_limits_are_configurable_in_another_currency() -> None:
    cfg = pricing(denomination={"currency": "USD", "min": 1, "max": 10})
    assert denomination_limits(cfg, ConfigRates(cfg), "USD") == (100, 1000)
    assert price(cfg, 1000, "USD").coins == 700
    with pytest.raises(PricingError, match="from 100 to 1000 in USD"):
        price(cfg, 1001, "USD")


def test_a_tiny_amount_is_too_small_before_it_is_out_of_range() -> None:
    with pytest.raises(PricingError) as err:
        price(pricing(), 1, "JPY")
    assert err.value.code == "amount_too_small"


def test_the_limit_currency_needs_a_rate() -> None:
    with pytest.raises(ConfigError) as err:
        parse({"pricing": {"rates": {"PHP": 0.0171}}})
    assert "denomination.currency CNY has no rate" in str(err.value)
    with pytest.raises(ConfigError):
        parse({"pricing": {"denomination": {"min": 10, "max": 5}}})
