"""Promotions, alone and stacked: first recharge +15%, membership tiers by lifetime spend,
monthly cashback 8% past 5 recharges; best_of or additive with a cap."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pricing_builders import pricing

from orchestrator.pricing import Price, UserHistory, price

NEW = UserHistory()
REGULAR = UserHistory(lifetime_spend_base=Decimal(50), recharges_this_month=1, has_succeeded_before=True,
                      average_amount_base=Decimal(10), count=5)
TIERS = [{"min_lifetime": 100, "bonus_percent": 5}, {"min_lifetime": 1000, "bonus_percent": 10},
         {"min_lifetime": 20000, "bonus_percent": 25}]


def promos(p: Price) -> list[tuple[str, str]]:
    return [(x.name, str(x.percent)) for x in p.promotions]


def cfg(**promotions: object):
    return pricing(promotions={"tiers": TIERS, **promotions})


def returning(lifetime: str = "50", month: int = 1) -> UserHistory:
    return UserHistory(lifetime_spend_base=Decimal(lifetime), recharges_this_month=month, has_succeeded_before=True,
                       average_amount_base=Decimal(10), count=5)


def test_no_history_no_promotion() -> None:
    p = price(cfg(), 8500, "CNY")
    assert (p.coins, p.bonus_coins, p.promotions) == (835, 0, ())


def test_a_returning_user_below_every_threshold_gets_nothing() -> None:
    p = price(cfg(), 8500, "CNY", REGULAR)
    assert (p.bonus_coins, p.promotions, p.bonus_percent) == (0, (), 0)


def test_first_recharge_alone_gives_15_percent() -> None:
    p = price(cfg(), 8500, "CNY", NEW)
    assert (p.coins, p.bonus_coins) == (835, 125)  # floor(835 x 0.15) = floor(125.25): the spec's example
    assert promos(p) == [("first_recharge", "15")]
    assert p.claims_first_recharge
    assert p.bonus_without_first_recharge == 0
    assert p.without_first_recharge().bonus_coins == 0
    assert p.without_first_recharge().promotions == ()


def test_first_recharge_can_be_switched_off() -> None:
    p = price(cfg(first_recharge={"enabled": False}), 8500, "CNY", NEW)
    assert p.bonus_coins == 0 and not p.claims_first_recharge


@pytest.mark.parametrize(("lifetime", "tier", "percent"), [
    ("99.99", None, None), ("100", 1, "5"), ("999.999", 1, "5"), ("1000", 2, "10"), ("19999", 2, "10"),
    ("20000", 3, "25"), ("1e9", 3, "25"),
])
def test_membership_tier_by_lifetime_spend(lifetime: str, tier: int | None, percent: str | None) -> None:
    p = price(cfg(), 8500, "CNY", returning(lifetime))
    if tier is None:
        assert p.promotions == ()
    else:
        assert [(x.name, x.tier, str(x.percent)) for x in p.promotions] == [("membership_tier", tier, percent)]
        assert p.bonus_coins == 835 * int(percent) // 100


@pytest.mark.parametrize(("month", "applies"), [(0, False), (5, False), (6, True), (40, True)])
def test_monthly_cashback_after_more_than_5(month: int, applies: bool) -> None:
    p = price(cfg(), 8500, "CNY", returning(month=month))
    assert promos(p) == ([("monthly_cashback", "8")] if applies else [])
    assert p.bonus_coins == (66 if applies else 0)  # floor(835 x 0.08) = floor(66.8)


def test_best_of_takes_the_largest() -> None:
    first_and_monthly = UserHistory(recharges_this_month=6)  # odd but legal: no success before
    p = price(cfg(stacking="best_of"), 8500, "CNY", first_and_monthly)
    assert promos(p) == [("first_recharge", "15")]
    assert p.bonus_coins == 125
    # Had the first-recharge bonus gone to another recharge, the cashback would apply.
    assert p.bonus_without_first_recharge == 66
    alt = p.without_first_recharge()
    assert promos(alt) == [("monthly_cashback", "8")] and alt.bonus_coins == 66


def test_best_of_with_a_larger_tier_does_not_use_the_first_recharge() -> None:
    h = UserHistory(lifetime_spend_base=Decimal(20000))
    p = price(cfg(stacking="best_of"), 8500, "CNY", h)
    assert promos(p) == [("membership_tier", "25")]
    assert not p.claims_first_recharge
    assert p.bonus_without_first_recharge == p.bonus_coins == 208  # floor(835 x 0.25)


def test_best_of_ties_go_to_the_first_listed() -> None:
    p = price(cfg(stacking="best_of", monthly={"bonus_percent": 15}), 8500, "CNY", UserHistory(recharges_this_month=9))
    assert promos(p) == [("first_recharge", "15")]


def test_best_of_is_capped_too() -> None:
    p = price(cfg(stacking="best_of", cap_percent=20), 8500, "CNY", returning("20000"))
    assert p.bonus_percent == 20 and p.bonus_coins == 167  # floor(835 x 0.20)


def test_additive_sums_under_the_cap() -> None:
    h = UserHistory(lifetime_spend_base=Decimal(0), recharges_this_month=6)
    p = price(cfg(stacking="additive", cap_percent=25), 8500, "CNY", h)
    assert promos(p) == [("first_recharge", "15"), ("monthly_cashback", "8")]
    assert p.bonus_percent == 23 and p.bonus_coins == 192  # floor(835 x 0.23) = floor(192.05)
    assert p.bonus_without_first_recharge == 66


def test_additive_is_capped() -> None:
    h = UserHistory(lifetime_spend_base=Decimal(1000), recharges_this_month=6)
    p = price(cfg(stacking="additive", cap_percent=25), 8500, "CNY", h)
    assert [x for x, _ in promos(p)] == ["first_recharge", "membership_tier", "monthly_cashback"]
    assert p.bonus_percent == 25  # 15 + 10 + 8 = 33, capped
    assert p.bonus_coins == 208
    assert p.bonus_without_first_recharge == 150  # 10 + 8 = 18: floor(835 x 0.18) = floor(150.3)
    assert p.without_first_recharge().bonus_percent == 18


def test_fractional_percents_round_down() -> None:
    p = price(cfg(first_recharge={"bonus_percent": 12.5}), 8500, "CNY", NEW)
    assert p.bonus_percent == Decimal("12.5") and p.bonus_coins == 104  # floor(104.375)


def test_promotions_answer_in_api_form() -> None:
    p = price(cfg(stacking="additive"), 8500, "CNY", UserHistory(lifetime_spend_base=Decimal(100)))
    assert p.to_api()["promotions"] == [{"name": "first_recharge", "percent": "15"},
                                        {"name": "membership_tier", "percent": "5", "tier": 1}]
    assert p.to_api()["rate"] == "0.1404"
