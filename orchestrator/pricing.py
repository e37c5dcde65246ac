"""Pricing: how many coins a recharge buys.

``coins = floor(amount in base currency x coins_per_unit)``, computed in Decimal from
integer minor units, so no float ever touches money. Rounding is always down: the user
never gets a fraction of a coin we did not sell.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from config import PricingConfig, exponent

__all__ = ["Price", "PricingError", "price"]


class PricingError(ValueError):
    """The amount cannot be priced (no rate for the currency, or it buys no coin)."""

    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


@dataclass(frozen=True, slots=True)
class Price:
    coins: int
    bonus_coins: int
    rate: Decimal


def price(cfg: PricingConfig, amount_minor: int, currency: str) -> Price:
    rate = cfg.rate(currency)
    if rate is None:
        raise PricingError("unsupported_currency", f"no exchange rate for {currency}", "currency")
    units = Decimal(amount_minor).scaleb(-exponent(currency))
    coins = int((units * rate * cfg.coins_per_unit).to_integral_value(rounding=ROUND_FLOOR))
    if coins <= 0:
        raise PricingError("amount_too_small", f"{amount_minor} minor units of {currency} buy no coins", "amount_minor")
    return Price(coins=coins, bonus_coins=0, rate=rate)
