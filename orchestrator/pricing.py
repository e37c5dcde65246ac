"""Pricing: how many coins a recharge buys, and the bonus its promotions add.

Every figure is computed in Decimal from integer minor units, so no float ever touches
money, and every rounding is down (the user never gets a fraction of a coin we did
not sell):

- ``base_amount = amount_minor x 10^-exponent(currency) x rate``, exact;
- ``coins = floor(base_amount x coins_per_unit)``;
- ``bonus_coins = floor(coins x bonus_percent / 100)``, where ``bonus_percent`` is the
  stacked promotions' percent, capped (see ``promotions``);
- denomination limits (``pricing.denomination``, 5 to 2,000 CNY by default) compare
  base amounts exactly: the recharge is in range iff
  ``min x rate(CNY) <= base_amount <= max x rate(CNY)``. In the currency's own minor
  units that is ``ceil(min equivalent) <= amount_minor <= floor(max equivalent)``,
  the figures the error message shows.

Rates come from a ``RateBook`` (config rates, optionally refreshed from a live source)
or, for the plain call ``price(cfg, amount_minor, currency)``, straight from the config.

Errors, one tree::

    PricingError (ValueError)          .code, .field; the API maps code -> status
    ├── unsupported_currency  422      no rate for the currency
    ├── rates_stale           503      the live rate is older than max_age_s
    ├── amount_too_small      422      buys no coin
    ├── amount_out_of_range   422      outside the denomination limits
    ├── RateSourceError                the rate source failed (never reaches a client)
    └── QuoteError (orchestrator.quotes): quote_expired 409, quote_not_found 422,
                                          quote_mismatch 422
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from types import MappingProxyType
from typing import Protocol

import structlog

from config import PricingConfig, PromotionsConfig, exponent, is_known
from orchestrator.clock import Clock, month_of
from orchestrator.errors import PricingError, RateSourceError
from orchestrator.model import FirstRecharge

__all__ = [
    "CurrencyTotals",
    "FirstRecharge",
    "Price",
    "PricingError",
    "Promotion",
    "RateBook",
    "RateLookup",
    "RateSourceError",
    "RefreshReport",
    "UserHistory",
    "denomination_limits",
    "history_from_totals",
    "month_start",
    "price",
    "stack_promotions",
]

log = structlog.get_logger("orchestrator.pricing")

# Wide enough that no product of an amount (<= 13 digits), a rate and coins_per_unit
# is ever rounded before the one rounding we mean (the floor).
_CTX = Context(prec=60)
_ZERO = Decimal(0)
_ONE = Decimal(1)
_HUNDRED = Decimal(100)

FIRST_RECHARGE = "first_recharge"
MEMBERSHIP_TIER = "membership_tier"
MONTHLY_CASHBACK = "monthly_cashback"


# -- rates --------------------------------------------------------------------------------


class RateLookup(Protocol):
    def rate(self, currency: str, now: float) -> Decimal:
        """Base units per one unit of ``currency``; PricingError if none or stale."""
        ...

    def latest(self, currency: str) -> Decimal | None:
        """The last known rate whatever its age (for coarse uses: limits, history)."""
        ...


class _ConfigRates:
    """The config's own rates, which never go stale. With a live source configured
    they are placeholders: nothing but the base currency is priced from them."""

    __slots__ = ("_cfg",)

    def __init__(self, cfg: PricingConfig) -> None:
        self._cfg = cfg

    def rate(self, currency: str, now: float) -> Decimal:
        rate = self._cfg.rate(currency)
        if rate is None:
            raise PricingError("unsupported_currency", f"no exchange rate for {currency}", "currency")
        if self._cfg.rate_source is not None and currency != self._cfg.base_currency:
            raise PricingError("rates_stale", f"no live exchange rate for {currency} (price through the RateBook)",
                               "currency")
        return rate

    def latest(self, currency: str) -> Decimal | None:
        return self._cfg.rate(currency)


@dataclass(frozen=True, slots=True)
class RefreshReport:
    updated: tuple[str, ...]
    # currency -> why its value was refused (the old rate stays, and ages)
    rejected: Mapping[str, str]


class RateBook:
    """Rates with the time each was fetched, swapped whole on every refresh or reload.

    Without ``pricing.rate_source`` the config rates are used as they are and never go
    stale. With one, the config lists which currencies are sold; their config values
    are only placeholders: a currency is refused (``rates_stale``, 503) until the
    source gave its rate, and again once that rate is older than ``max_age_s``. The
    source may not add currencies the config does not list. The base currency is
    always 1 and never stale.
    """

    def __init__(self, cfg: PricingConfig, clock: Clock) -> None:
        self._clock = clock
        self._cfg = cfg
        # currency -> (rate, fetched_at); fetched_at None: a config rate, never stale
        self._entries: Mapping[str, tuple[Decimal, float | None]] = self._seed(cfg, {})

    @staticmethod
    def _seed(cfg: PricingConfig, old: Mapping[str, tuple[Decimal, float | None]]
              ) -> Mapping[str, tuple[Decimal, float | None]]:
        if cfg.rate_source is None:
            entries = {code: (rate, None) for code, rate in cfg.rates.items()}
        else:
            # Keep what the source already told us; a newly listed currency waits for it.
            entries = {code: old[code] if code in old and old[code][1] is not None else (rate, -math.inf)
                       for code, rate in cfg.rates.items()}
        entries[cfg.base_currency] = (_ONE, None)
        return MappingProxyType(entries)

    @property
    def config(self) -> PricingConfig:
        return self._cfg

    def configure(self, cfg: PricingConfig) -> None:
        """Take a reloaded config: its rates and source settings, keeping fetched rates
        of the currencies still sold while a source is configured."""
        if cfg is self._cfg:
            return
        self._entries = self._seed(cfg, self._entries if cfg.rate_source is not None else {})
        self._cfg = cfg

    def rate(self, currency: str, now: float) -> Decimal:
        entry = self._entries.get(currency)
        if entry is None:
            raise PricingError("unsupported_currency", f"no exchange rate for {currency}", "currency")
        rate, fetched_at = entry
        source = self._cfg.rate_source
        if fetched_at is not None and source is not None and now - fetched_at > source.max_age_s:
            raise PricingError("rates_stale", f"the exchange rate for {currency} is out of date; retry shortly",
                               "currency")
        return rate

    def latest(self, currency: str) -> Decimal | None:
        entry = self._entries.get(currency)
        return None if entry is None else entry[0]

    def view(self) -> dict[str, dict[str, object]]:
        """Every rate with its fetch time (None: from config), for status pages."""
        return {code: {"rate": str(rate), "fetched_at": None if at is None or at == -math.inf else at}
                for code, (rate, at) in sorted(self._entries.items())}

    async def refresh(self, fetch: Callable[[], Awaitable[Mapping[str, object]]]) -> RefreshReport:
        """Fetch rates once and swap in the good ones, stamped with the clock's time when
        the answer arrived. Values that are not positive finite numbers, and currencies
        the config does not sell, are refused one by one; a failing fetch changes
        nothing and raises ``RateSourceError``."""
        try:
            fresh = await fetch()
        except RateSourceError:
            raise
        except Exception as exc:
            raise RateSourceError(f"the rate source failed: {exc!r}") from exc
        if not isinstance(fresh, Mapping):
            raise RateSourceError("the rate source answered something other than a mapping")
        now = self._clock.now()
        cfg = self._cfg
        entries = dict(self._entries)
        updated: list[str] = []
        rejected: dict[str, str] = {}
        for code, raw in fresh.items():
            if code == cfg.base_currency:
                continue
            if not isinstance(code, str) or code not in cfg.rates:
                rejected[str(code)] = "not a currency this config sells"
                continue
            rate = _as_rate(raw)
            if rate is None:
                rejected[code] = f"not a positive finite number: {raw!r}"
                continue
            entries[code] = (rate, now)
            updated.append(code)
        self._entries = MappingProxyType(entries)
        return RefreshReport(tuple(sorted(updated)), MappingProxyType(rejected))

    async def run(self, fetch: Callable[[], Awaitable[Mapping[str, object]]]) -> None:
        """Refresh every ``rate_source.refresh_s`` until cancelled (the app's cleanup_ctx
        owns the task). A failure is logged and retried on the next tick: the old rates
        keep serving until they pass ``max_age_s``."""
        while True:
            source = self._cfg.rate_source
            if source is not None:
                try:
                    report = await self.refresh(fetch)
                    if report.rejected:
                        log.warning("rates_rejected", rejected=dict(report.rejected))
                except RateSourceError as exc:
                    log.warning("rates_refresh_failed", error=str(exc))
            await self._clock.sleep(source.refresh_s if source is not None else 60.0)


def _as_rate(raw: object) -> Decimal | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, float):
        raw = repr(raw)
    try:
        rate = Decimal(raw) if isinstance(raw, (Decimal, int, str)) else None
    except ArithmeticError:
        return None
    if rate is None or not rate.is_finite() or rate <= 0:
        return None
    return rate


# -- promotions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserHistory:
    """What pricing and risk know about a user before this recharge: succeeded
    recharges only, amounts in base-currency units. ``UserHistory()`` is a new user."""

    lifetime_spend_base: Decimal = _ZERO
    recharges_this_month: int = 0  # calendar month, UTC
    has_succeeded_before: bool = False
    average_amount_base: Decimal | None = None
    count: int = 0


@dataclass(frozen=True, slots=True)
class CurrencyTotals:
    """One row of the journal's per-currency aggregate of a user's succeeded recharges."""

    currency: str
    count: int
    sum_minor: int
    count_this_month: int


def month_start(now: float) -> float:
    """Epoch seconds of the start of ``now``'s calendar month, UTC: the journal's own
    ``month_of``, the month its totals count a recharge in. Every recharge asks (its
    user's history), so the month answered last is kept: two comparisons until the
    month turns."""
    global _month
    start, end = _month
    if start <= now < end:
        return start
    start = float(month_of(now))
    _month = (start, float(month_of(start + 32 * 86400)))  # 32 days on: always the next month
    return start


_month = (0.0, 0.0)  # [start, end) of the month month_start answered last


def history_from_totals(rows: Iterable[CurrencyTotals], rates: RateLookup) -> UserHistory:
    """A user's history from per-currency totals, each converted at the latest known
    rate (today's rate, not the one of the day: tiers and averages are coarse). A
    currency no longer priced still counts, at no value."""
    count = month = 0
    spend = _ZERO
    for row in rows:
        count += row.count
        month += row.count_this_month
        rate = rates.latest(row.currency)
        if rate is not None and is_known(row.currency):
            spend += _CTX.multiply(Decimal(row.sum_minor).scaleb(-exponent(row.currency)), rate)
    return UserHistory(
        lifetime_spend_base=spend,
        recharges_this_month=month,
        has_succeeded_before=count > 0,
        average_amount_base=_CTX.divide(spend, Decimal(count)) if count else None,
        count=count,
    )


@dataclass(frozen=True, slots=True)
class Promotion:
    name: str  # first_recharge | membership_tier | monthly_cashback
    percent: Decimal
    tier: int | None = None  # 1-based, for membership_tier

    def to_api(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "percent": str(self.percent)}
        if self.tier is not None:
            out["tier"] = self.tier
        return out


def _eligible(cfg: PromotionsConfig, history: UserHistory) -> list[Promotion]:
    """Every promotion the user qualifies for, in a fixed order (ties go to the first)."""
    out: list[Promotion] = []
    first = cfg.first_recharge
    if first.enabled and not history.has_succeeded_before and first.bonus_percent > 0:
        out.append(Promotion(FIRST_RECHARGE, first.bonus_percent))
    for i in range(len(cfg.tiers) - 1, -1, -1):
        tier = cfg.tiers[i]
        if history.lifetime_spend_base >= tier.min_lifetime:
            if tier.bonus_percent > 0:
                out.append(Promotion(MEMBERSHIP_TIER, tier.bonus_percent, tier=i + 1))
            break
    monthly = cfg.monthly
    if monthly.enabled and history.recharges_this_month > monthly.after_recharges and monthly.bonus_percent > 0:
        out.append(Promotion(MONTHLY_CASHBACK, monthly.bonus_percent))
    return out


def stack_promotions(cfg: PromotionsConfig, eligible: list[Promotion]) -> tuple[Decimal, tuple[Promotion, ...]]:
    """(total percent, promotions applied). ``best_of`` applies the single largest
    (the first listed on a tie); ``additive`` applies all and sums them. Either way the
    total is capped at ``cap_percent``; the promotions keep their own percents."""
    if not eligible:
        return _ZERO, ()
    if cfg.stacking == "best_of":
        best = eligible[0]
        for promo in eligible[1:]:
            if promo.percent > best.percent:
                best = promo
        return min(best.percent, cfg.cap_percent), (best,)
    total = sum((p.percent for p in eligible), _ZERO)
    return min(total, cfg.cap_percent), tuple(eligible)


def _bonus(coins: int, percent: Decimal) -> int:
    if percent <= 0:
        return 0
    return int(_CTX.divide(_CTX.multiply(Decimal(coins), percent), _HUNDRED).to_integral_value(rounding=ROUND_FLOOR))


# -- the price ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Price:
    """What a recharge buys. ``bonus_without_first_recharge`` (and its promotions) is
    the price had the first-recharge promotion not been granted: the journal grants it
    to one recharge per user, and a loser of that race is credited this instead."""

    coins: int
    bonus_coins: int
    rate: Decimal
    promotions: tuple[Promotion, ...] = ()
    bonus_percent: Decimal = _ZERO
    bonus_without_first_recharge: int = 0
    promotions_without_first_recharge: tuple[Promotion, ...] = ()
    percent_without_first_recharge: Decimal = _ZERO
    base_amount: Decimal = _ZERO

    @property
    def claims_first_recharge(self) -> bool:
        """Whether this price counts on the user's one first-recharge bonus."""
        return any(p.name == FIRST_RECHARGE for p in self.promotions)

    def without_first_recharge(self) -> Price:
        """This price with the first-recharge promotion taken out (itself if it had none)."""
        if not self.claims_first_recharge:
            return self
        return replace(self, bonus_coins=self.bonus_without_first_recharge,
                       promotions=self.promotions_without_first_recharge,
                       bonus_percent=self.percent_without_first_recharge)

    def to_api(self) -> dict[str, object]:
        return {"coins": self.coins, "bonus_coins": self.bonus_coins, "rate": str(self.rate),
                "promotions": [p.to_api() for p in self.promotions]}

    def first_recharge_claim(self) -> FirstRecharge | None:
        """What the journal needs to grant this price's first-recharge bonus once per
        user, or None when the price does not count on it."""
        if not self.claims_first_recharge:
            return None
        without = self.without_first_recharge()
        return FirstRecharge(without.bonus_coins, {"bonus_coins": without.bonus_coins,
                                                   "promotions": [p.to_api() for p in without.promotions]})

    def promotions_given(self, bonus_coins: int) -> list[dict[str, object]]:
        """The promotions a recharge priced here was credited with: without the first-
        recharge one when the journal gave its bonus to another of the user's recharges."""
        without = self.without_first_recharge()
        denied = self.claims_first_recharge and bonus_coins == without.bonus_coins != self.bonus_coins
        return [p.to_api() for p in (without if denied else self).promotions]


def denomination_limits(cfg: PricingConfig, rates: RateLookup, currency: str) -> tuple[int, int] | None:
    """(min, max) accepted ``amount_minor`` in ``currency``: the limits converted through
    the rates, the minimum rounded up and the maximum down, so both are inside the
    exact range. None when the limit currency has no rate (a config selling only its
    base currency, limits written in another)."""
    span = _limit_span(cfg, rates)
    rate = rates.latest(currency)
    if span is None or rate is None:
        return None
    scale = Decimal(1).scaleb(exponent(currency))
    lo = _CTX.multiply(_CTX.divide(span[0], rate), scale).to_integral_value(rounding=ROUND_CEILING)
    hi = _CTX.multiply(_CTX.divide(span[1], rate), scale).to_integral_value(rounding=ROUND_FLOOR)
    return int(lo), int(hi)


def _limit_span(cfg: PricingConfig, rates: RateLookup) -> tuple[Decimal, Decimal] | None:
    d = cfg.denomination
    limit_rate = rates.latest(d.currency)
    if limit_rate is None:
        return None
    return _CTX.multiply(d.min, limit_rate), _CTX.multiply(d.max, limit_rate)


def price(
    cfg: PricingConfig,
    amount_minor: int,
    currency: str,
    history: UserHistory | None = None,
    *,
    rates: RateLookup | None = None,
    now: float = 0.0,
) -> Price:
    """Price ``amount_minor`` of ``currency`` (rounding: see the module docstring).

    ``rates`` is the live ``RateBook`` (``now`` is checked against its fetch times);
    without it the config rates are used. Without ``history`` no promotion applies
    (the user is unknown); ``UserHistory()`` is a new user.
    """
    book = rates if rates is not None else _ConfigRates(cfg)
    if not is_known(currency):
        raise PricingError("unsupported_currency", f"no exchange rate for {currency}", "currency")
    rate = book.rate(currency, now)
    base_amount = _CTX.multiply(Decimal(amount_minor).scaleb(-exponent(currency)), rate)
    coins = int(_CTX.multiply(base_amount, cfg.coins_per_unit).to_integral_value(rounding=ROUND_FLOOR))
    if coins <= 0:
        raise PricingError("amount_too_small", f"{amount_minor} minor units of {currency} buy no coins", "amount_minor")
    span = _limit_span(cfg, book)
    if span is not None and not span[0] <= base_amount <= span[1]:
        lo, hi = denomination_limits(cfg, book, currency) or (0, 0)
        d = cfg.denomination
        raise PricingError(
            "amount_out_of_range",
            f"amount_minor must be from {lo} to {hi} in {currency} ({d.min} to {d.max} {d.currency}-equivalent)",
            "amount_minor",
        )
    if history is None:
        return Price(coins=coins, bonus_coins=0, rate=rate, base_amount=base_amount)
    promos = cfg.promotions
    eligible = _eligible(promos, history)
    percent, applied = stack_promotions(promos, eligible)
    bonus = _bonus(coins, percent)
    if any(p.name == FIRST_RECHARGE for p in eligible):
        alt_percent, alt_applied = stack_promotions(promos, [p for p in eligible if p.name != FIRST_RECHARGE])
        alt_bonus = _bonus(coins, alt_percent)
    else:
        alt_percent, alt_applied, alt_bonus = percent, applied, bonus
    return Price(coins=coins, bonus_coins=bonus, rate=rate, promotions=applied, bonus_percent=percent,
                 bonus_without_first_recharge=alt_bonus, promotions_without_first_recharge=alt_applied,
                 percent_without_first_recharge=alt_percent, base_amount=base_amount)
