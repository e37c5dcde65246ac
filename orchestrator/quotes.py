"""Quotes: a price held for ``pricing.quote_ttl_s``, and the service that issues them.

A quote fixes the rate, the coins and the bonus a user was shown. A recharge that
names it gets exactly that price, unless the quote has expired: past its TTL, or the
rate has since moved by ``pricing.max_rate_drift`` (0.3%) or more, either way.

Quotes live in the journal (its ``quotes`` table), durable before the client hears of
them, so every orchestrator process on the store (workers on one SQLite file,
instances on one PostgreSQL database) redeems a quote any of them issued. The price is
kept as a JSON document with every Decimal as its exact string (``price_doc``); a
redemption is one primary-key read, and a recharge without a quote reads nothing.

Expired quotes are kept a further TTL, so a late recharge hears ``quote_expired``
rather than ``quote_not_found``, and are then deleted: at most every ``PURGE_EVERY_S``
a process's next quote carries a purge of up to ``PURGE_LIMIT`` of them (a range of the
``expires_at`` index) in its own write; a purge that fills its limit means a backlog,
and the next quote purges again. The table so holds about two TTLs of quotes;
``pricing.max_quotes`` bounds nothing (docs/history.md#quote-book).

Redeeming does not consume a quote: a client retrying its recharge (same
Idempotency-Key) redeems it again and gets the same price; the first-recharge bonus
is still granted once per user by the journal, whatever the quote says.

Errors (all ``QuoteError``, a ``PricingError``; the field is ``quote_id``)::

    quote_expired    409   past its TTL, or the rate moved >= max_rate_drift
    quote_not_found  422   unknown (never issued, not a quote id, or purged)
    quote_mismatch   422   the recharge's user, amount or currency is not the quote's
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import structlog

from config import PricingConfig
from orchestrator.clock import Clock
from orchestrator.errors import QuoteError
from orchestrator.journal import PURGE_LIMIT, QuoteRecord, UserTotals
from orchestrator.pricing import (
    CurrencyTotals,
    Price,
    Promotion,
    RateBook,
    UserHistory,
    history_from_totals,
    month_start,
    price,
)

__all__ = ["PURGE_EVERY_S", "PricingService", "Quote", "QuoteBook", "QuoteError", "QuoteStore", "price_doc",
           "price_of"]

log = structlog.get_logger("orchestrator.quotes")

# How often one process's quotes carry a purge (each process purges on its own).
PURGE_EVERY_S = 5.0

_QUOTE_ID = re.compile(r"q_[0-9a-f]{32}")


def _not_found() -> QuoteError:
    return QuoteError("quote_not_found", "no such quote (quotes last quote_ttl_s); ask for a new one")


@dataclass(frozen=True, slots=True)
class Quote:
    quote_id: str
    user_id: str
    amount_minor: int
    currency: str
    price: Price
    issued_at: float
    expires_at: float  # valid while now < expires_at

    @property
    def coins(self) -> int:
        return self.price.coins

    @property
    def bonus_coins(self) -> int:
        return self.price.bonus_coins

    @property
    def rate(self) -> Decimal:
        return self.price.rate

    @property
    def promotions(self) -> tuple[Promotion, ...]:
        return self.price.promotions


def new_quote_id() -> str:
    return "q_" + secrets.token_hex(16)


def drifted(quoted: Decimal, current: Decimal, max_drift: Decimal) -> bool:
    """Whether the rate moved by ``max_drift`` (a fraction) or more since the quote:
    ``|current - quoted| >= quoted x max_drift``, exact in Decimal (0.3% exactly is
    expired; a hair under is not)."""
    return abs(current - quoted) >= quoted * max_drift


# -- the price as the journal keeps it ----------------------------------------------------


def _promotion_doc(p: Promotion) -> dict[str, Any]:
    return {"name": p.name, "percent": str(p.percent), "tier": p.tier}


def _promotion_of(doc: dict[str, Any]) -> Promotion:
    return Promotion(doc["name"], Decimal(doc["percent"]), doc.get("tier"))


def price_doc(p: Price) -> dict[str, Any]:
    """``p`` as plain JSON values; every Decimal as its string, which reads back exact
    (digits and exponent alike)."""
    return {
        "coins": p.coins,
        "bonus_coins": p.bonus_coins,
        "rate": str(p.rate),
        "promotions": [_promotion_doc(x) for x in p.promotions],
        "bonus_percent": str(p.bonus_percent),
        "bonus_without_first_recharge": p.bonus_without_first_recharge,
        "promotions_without_first_recharge": [_promotion_doc(x) for x in p.promotions_without_first_recharge],
        "percent_without_first_recharge": str(p.percent_without_first_recharge),
        "base_amount": str(p.base_amount),
    }


def price_of(doc: dict[str, Any]) -> Price:
    """The inverse of ``price_doc``."""
    return Price(
        coins=doc["coins"],
        bonus_coins=doc["bonus_coins"],
        rate=Decimal(doc["rate"]),
        promotions=tuple(_promotion_of(x) for x in doc["promotions"]),
        bonus_percent=Decimal(doc["bonus_percent"]),
        bonus_without_first_recharge=doc["bonus_without_first_recharge"],
        promotions_without_first_recharge=tuple(_promotion_of(x) for x in doc["promotions_without_first_recharge"]),
        percent_without_first_recharge=Decimal(doc["percent_without_first_recharge"]),
        base_amount=Decimal(doc["base_amount"]),
    )


# -- the book -----------------------------------------------------------------------------


class QuoteStore(Protocol):
    """Where quotes live: the journal (every ``orchestrator.journal.Journal`` is one)."""

    async def put_quote(self, quote: QuoteRecord, purge_before: float | None = None,
                        purge_limit: int = PURGE_LIMIT) -> int: ...

    async def get_quote(self, quote_id: str) -> QuoteRecord | None: ...


class QuoteBook:
    """Issued quotes, in the journal: any process on the store redeems any process's.
    Expired quotes are kept a further TTL so a late recharge hears ``quote_expired``
    rather than ``quote_not_found``, then purged (see the module docstring)."""

    def __init__(self, store: QuoteStore, *, ttl_s: float = 300.0, max_drift: Decimal = Decimal("0.003"),
                 purge_every_s: float = PURGE_EVERY_S, purge_limit: int = PURGE_LIMIT) -> None:
        self._store = store
        self.purge_every_s = purge_every_s
        self.purge_limit = purge_limit
        self._next_purge = -math.inf
        self.configure(ttl_s=ttl_s, max_drift=max_drift)

    @classmethod
    def from_config(cls, store: QuoteStore, cfg: PricingConfig) -> QuoteBook:
        return cls(store, ttl_s=cfg.quote_ttl_s, max_drift=cfg.max_rate_drift)

    def configure(self, *, ttl_s: float, max_drift: Decimal) -> None:
        """New settings apply to quotes issued from now on (TTL) and to every redemption
        from now on (drift); quotes already issued keep their expiry."""
        self.ttl_s = ttl_s
        self.max_drift = max_drift

    async def issue(self, user_id: str, amount_minor: int, currency: str, price: Price, now: float) -> Quote:
        """Make a quote and store it; it is redeemable everywhere once this returns."""
        quote = Quote(new_quote_id(), user_id, amount_minor, currency, price, now, now + self.ttl_s)
        purge_before = None
        if now >= self._next_purge:
            # Set before the write: quotes issued meanwhile do not purge as well.
            self._next_purge = now + self.purge_every_s
            purge_before = now - self.ttl_s  # expired a whole TTL ago
        record = QuoteRecord(quote.quote_id, user_id, amount_minor, currency, price_doc(price), now, quote.expires_at)
        purged = await self._store.put_quote(record, purge_before, self.purge_limit)
        if purge_before is not None and purged >= self.purge_limit:
            self._next_purge = -math.inf  # a backlog: the next quote purges on
        return quote

    async def get(self, quote_id: str) -> Quote | None:
        """The quote, if it is in the store; a string that is no quote id costs no read."""
        if not _QUOTE_ID.fullmatch(quote_id):
            return None
        record = await self._store.get_quote(quote_id)
        if record is None:
            return None
        try:
            p = price_of(record.price)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            # Written by something else than this module's price_doc (a newer version
            # mid-upgrade, a hand edit): the client can always ask for a new quote.
            log.error("quote_unreadable", quote_id=quote_id, error=repr(exc))
            return None
        return Quote(record.quote_id, record.user_id, record.amount_minor, record.currency, p, record.issued_at,
                     record.expires_at)

    async def redeem(self, quote_id: str, user_id: str, amount_minor: int, currency: str, current_rate: Decimal,
                     now: float) -> Quote:
        """The quote, if it still holds for this recharge (see the module docstring for
        the errors). The mismatch check comes first: someone else's quote says nothing
        about its age."""
        quote = await self.get(quote_id)
        if quote is None:
            raise _not_found()
        return self.check(quote, user_id, amount_minor, currency, current_rate, now)

    def check(self, quote: Quote, user_id: str, amount_minor: int, currency: str, current_rate: Decimal,
              now: float) -> Quote:
        """The rules of redemption, over a quote already read (pure)."""
        if (quote.user_id, quote.amount_minor, quote.currency) != (user_id, amount_minor, currency):
            raise QuoteError("quote_mismatch", "the quote was issued for another user, amount or currency")
        if now >= quote.expires_at:
            raise QuoteError("quote_expired", "the quote has expired; ask for a new one")
        if drifted(quote.rate, current_rate, self.max_drift):
            raise QuoteError("quote_expired",
                             f"the {currency} exchange rate has moved since the quote; ask for a new one")
        return quote


History = Callable[[str], Awaitable[UserHistory]]


class TotalsStore(Protocol):
    """Where a user's succeeded recharges are totalled: the journal."""

    async def user_totals(self, user_id: str, since: float) -> list[UserTotals]: ...


class PricingService:
    """Pricing for the API: the live rate book, the quote book and the user's history,
    following config reloads (a new ``PricingConfig`` object is picked up on the next
    call; fetched rates and issued quotes are kept).

    ``config`` returns the current pricing config (e.g. ``lambda: svc.config.pricing``);
    ``journal`` keeps the quotes (any ``QuoteStore``: the service's journal);
    ``totals`` (the journal) gives a user's history, or ``history`` loads it another way;
    with neither, promotions never apply.
    """

    def __init__(self, config: Callable[[], PricingConfig], clock: Clock, journal: QuoteStore, *,
                 history: History | None = None, totals: TotalsStore | None = None) -> None:
        self._config = config
        self._clock = clock
        self._history = history
        self._totals = totals
        cfg = config()
        self._cfg = cfg
        self.rates = RateBook(cfg, clock)
        self.quotes = QuoteBook.from_config(journal, cfg)

    def _current(self) -> PricingConfig:
        cfg = self._config()
        if cfg is not self._cfg:
            self.rates.configure(cfg)
            self.quotes.configure(ttl_s=cfg.quote_ttl_s, max_drift=cfg.max_rate_drift)
            self._cfg = cfg
        return cfg

    async def history(self, user_id: str) -> UserHistory | None:
        """The user's succeeded recharges, per currency (promotions and risk read it)."""
        if self._history is not None:
            return await self._history(user_id)
        if self._totals is None:
            return None
        totals = await self._totals.user_totals(user_id, month_start(self._clock.now()))
        return history_from_totals([CurrencyTotals(t.currency, t.recharges, t.amount_minor, t.this_month)
                                    for t in totals], self.rates)

    def price_now(self, amount_minor: int, currency: str, history: UserHistory | None) -> Price:
        """Price at the current rate (no quote); pure apart from the clock read."""
        return price(self._current(), amount_minor, currency, history, rates=self.rates, now=self._clock.now())

    async def quote(self, user_id: str, amount_minor: int, currency: str) -> Quote:
        history = await self.history(user_id)
        p = self.price_now(amount_minor, currency, history)
        return await self.quotes.issue(user_id, amount_minor, currency, p, self._clock.now())

    async def price_recharge(self, user_id: str, amount_minor: int, currency: str, quote_id: str | None,
                             history: UserHistory | None = None) -> Price:
        """The price a recharge is credited at: its quote's, if it names one that still
        holds, else the current one. A stale current rate (503 ``rates_stale``) also
        refuses a quoted recharge: the drift cannot be checked without it."""
        cfg = self._current()
        now = self._clock.now()
        if quote_id is not None:
            current = self.rates.rate(currency, now)
            return (await self.quotes.redeem(quote_id, user_id, amount_minor, currency, current, now)).price
        if history is None:
            history = await self.history(user_id)
        return price(cfg, amount_minor, currency, history, rates=self.rates, now=now)
