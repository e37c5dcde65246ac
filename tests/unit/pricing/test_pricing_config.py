"""The pricing section of the config: defaults from the spec, exact decimals from YAML,
and every bad value refused with its path."""

from __future__ import annotations

from decimal import Decimal

import pytest

from config import ConfigError, load_text, parse


def test_defaults_are_the_specs() -> None:
    p = parse({}).config.pricing
    assert (p.quote_ttl_s, p.max_rate_drift, p.rate_source) == (300.0, Decimal("0.003"), None)
    assert (p.denomination.currency, p.denomination.min, p.denomination.max) == ("CNY", 5, 2000)
    promo = p.promotions
    assert (promo.stacking, promo.cap_percent, promo.first_recharge.bonus_percent) == ("best_of", 25, 15)
    assert (promo.monthly.after_recharges, promo.monthly.bonus_percent, promo.tiers) == (5, 8, [])


def test_yaml_floats_become_exact_decimals() -> None:
    cfg = load_text("pricing: {rates: {CNY: 0.1404}, max_rate_drift: 0.003, "
                    "promotions: {first_recharge: {bonus_percent: 12.3}}}").config.pricing
    assert cfg.max_rate_drift == Decimal("0.003")
    assert cfg.promotions.first_recharge.bonus_percent == Decimal("12.3")


@pytest.mark.parametrize(("pricing", "line"), [
    ({"max_rate_drift": 0}, "pricing.max_rate_drift: must be > 0"),
    ({"quote_ttl_s": -1}, "pricing.quote_ttl_s: must be > 0"),
    ({"promotions": {"cap_percent": 101}}, "pricing.promotions.cap_percent: must be <= 100"),
    ({"promotions": {"stacking": "max"}}, "pricing.promotions.stacking"),
    ({"promotions": {"tiers": [{"min_lifetime": 10, "bonus_percent": 5}, {"min_lifetime": 10, "bonus_percent": 9}]}},
     "pricing.promotions.tiers: tiers must be in strictly increasing order"),
    ({"rate_source": {"url": "ftp://x", "refresh_s": 60}}, "pricing.rate_source.url"),
    ({"rate_source": {"url": "http://x", "refresh_s": 600, "max_age_s": 60}},
     "pricing.rate_source: max_age_s must be >= refresh_s"),
    ({"denomination": {"currency": "XYZ"}}, "unknown currency 'XYZ'"),
])
def test_bad_pricing_is_refused_with_its_path(pricing: dict[str, object], line: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse({"pricing": {"rates": {"CNY": 0.1404}, **pricing}})
    assert any(line in text for text in err.value.lines()), err.value.lines()
