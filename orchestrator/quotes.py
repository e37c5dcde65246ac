"""Quotes: a price held for ``pricing.quote_ttl_s``, and the service that issues them.

A quote fixes the rate, the coins and the bonus a user was shown. A recharge that
names it gets exactly that price, unless the quote has expired: past its TTL, or the
rate has since moved by ``pricing.max_rate_drift`` (0.3%) or more, either way.

Quotes live in this process's memory, bounded (``pricing.max_quotes``, oldest dropped
first). With several orchestrator instances behind one address a quote issued by one
is unknown to the others (``quote_not_found``): multi-instance deployments need the
quotes in the journal, or sticky routing by user.

Redeeming does not consume a quote: a client retrying its recharge (same
Idempotency-Key) redeems it again and gets the same price; the first-recharge bonus
is still granted once per user by the journal, whatever the quote says.

Errors (all ``QuoteError``, a ``PricingError``; the field is ``quote_id``)::

    quote_expired    409   past its TTL, or the rate moved >= max_rate_drift
    quote_not_found  422   unknown here (never issued, dropped, or another instance's)
    quote_mismatch   422   the recharge's user, amount or currency is not the quote's
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from config import PricingConfig
from orchestrator.clock import Clock
from orchestrator.pricing import Price, PricingError, Promotion, RateBook, UserHistory, price

__all__ = ["PricingService", "Quote", "QuoteBook", "QuoteError"]


class QuoteError(PricingError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, "quote_id")


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


class QuoteBook:
    """Issued quotes in memory, oldest first. Expired quotes are kept a further TTL so
    a late recharge hears ``quote_expired`` rather than ``quote_not_found``; past
    ``max_entries`` the oldest quote is dropped whatever its age."""

    def __init__(self, *, ttl_s: float = 300.0, max_drift: Decimal = Decimal("0.003"),
                 max_entries: int = 100_000) -> None:
        self._quotes: OrderedDict[str, Quote] = OrderedDict()
        self.configure(ttl_s=ttl_s, max_drift=max_drift, max_entries=max_entries)

    @classmethod
    def from_config(cls, cfg: PricingConfig) -> QuoteBook:
        return cls(ttl_s=cfg.quote_ttl_s, max_drift=cfg.max_rate_drift, max_entries=cfg.max_quotes)

    def configure(self, *, ttl_s: float, max_drift: Decimal, max_entries: int) -> None:
        """New settings apply to quotes issued from now on (TTL) and to every redemption
        from now on (drift); quotes already issued keep their expiry."""
        self.ttl_s = ttl_s
        self.max_drift = max_drift
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._quotes)

    def issue(self, user_id: str, amount_minor: int, currency: str, price: Price, now: float) -> Quote:
        self._purge(now)
        quote = Quote(new_quote_id(), user_id, amount_minor, currency, price, now, now + self.ttl_s)
        self._quotes[quote.quote_id] = quote
        while len(self._quotes) > self.max_entries:
            self._quotes.popitem(last=False)
        return quote

    def get(self, quote_id: str) -> Quote | None:
        return self._quotes.get(quote_id)

    def redeem(self, quote_id: str, user_id: str, amount_minor: int, currency: str, current_rate: Decimal,
               now: float) -> Quote:
        """The quote, if it still holds for this recharge (see the module docstring for
        the errors). The mismatch check comes first: someone else's quote says nothing
        about its age."""
        quote = self._quotes.get(quote_id)
        if quote is None:
            raise QuoteError("quote_not_found", "no such quote (quotes last quote_ttl_s); ask for a new one")
        if (quote.user_id, quote.amount_minor, quote.currency) != (user_id, amount_minor, currency):
            raise QuoteError("quote_mismatch", "the quote was issued for another user, amount or currency")
        if now >= quote.expires_at:
            raise QuoteError("quote_expired", "the quote has expired; ask for a new one")
        if drifted(quote.rate, current_rate, self.max_drift):
            raise QuoteError("quote_expired",
                             f"the {currency} exchange rate has moved since the quote; ask for a new one")
        return quote

    def _purge(self, now: float) -> None:
        quotes = self._quotes
        while quotes:
            oldest = next(iter(quotes.values()))
            if now < oldest.expires_at + self.ttl_s:
                break
            quotes.popitem(last=False)


History = Callable[[str], Awaitable[UserHistory]]


class PricingService:
    """Pricing for the API: the live rate book, the quote book and the user's history,
    following config reloads (a new ``PricingConfig`` object is picked up on the next
    call; fetched rates and issued quotes are kept).

    ``config`` returns the current pricing config (e.g. ``lambda: svc.config.pricing``);
    ``history`` loads a user's history from the journal (None: promotions never apply).
    """

    def __init__(self, config: Callable[[], PricingConfig], clock: Clock, *, history: History | None = None) -> None:
        self._config = config
        self._clock = clock
        self._history = history
        cfg = config()
        self._cfg = cfg
        self.rates = RateBook(cfg, clock)
        self.quotes = QuoteBook.from_config(cfg)

    def _current(self) -> PricingConfig:
        cfg = self._config()
        if cfg is not self._cfg:
            self.rates.configure(cfg)
            self.quotes.configure(ttl_s=cfg.quote_ttl_s, max_drift=cfg.max_rate_drift, max_entries=cfg.max_quotes)
            self._cfg = cfg
        return cfg

    async def history(self, user_id: str) -> UserHistory | None:
        return None if self._history is None else await self._history(user_id)

    def price_now(self, amount_minor: int, currency: str, history: UserHistory | None) -> Price:
        """Price at the current rate (no quote); pure apart from the clock read."""
        return price(self._current(), amount_minor, currency, history, rates=self.rates, now=self._clock.now())

    async def quote(self, user_id: str, amount_minor: int, currency: str) -> Quote:
        history = await self.history(user_id)
        p = self.price_now(amount_minor, currency, history)
        return self.quotes.issue(user_id, amount_minor, currency, p, self._clock.now())

    async def price_recharge(self, user_id: str, amount_minor: int, currency: str, quote_id: str | None,
                             history: UserHistory | None = None) -> Price:
        """The price a recharge is credited at: its quote's, if it names one that still
        holds, else the current one. A stale current rate (503 ``rates_stale``) also
        refuses a quoted recharge: the drift cannot be checked without it."""
        cfg = self._current()
        now = self._clock.now()
        if quote_id is not None:
            current = self.rates.rate(currency, now)
            return self.quotes.redeem(quote_id, user_id, amount_minor, currency, current, now).price
        if history is None:
            history = await self.history(user_id)
        return price(cfg, amount_minor, currency, history, rates=self.rates, now=now)
