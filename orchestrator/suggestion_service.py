"""Amount suggestions, the use case (SPEC 22): ``GET /v1/users/{user_id}/suggestions``.

Each process keeps its own ``SuggestionModel`` (orchestrator/suggestions.py), fed two ways:

- a user it does not know is read from the journal once (``succeeded_recharges``, the
  newest ``history_limit``), and read again on a request more than ``refresh_s`` after,
  so workers and instances that did not see a recharge succeed catch up;
- every recharge this process sees succeed is observed at once (``succeeded``, called by
  the driver after the credit is durable), for users it knows, and for the cohorts.

The answer holds only amounts the user can buy (``pricing.denomination``'s limits), in a
currency that is sold (else 422 ``unsupported_currency``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from config import Config, SuggestionsConfig, is_known
from orchestrator.clock import Clock
from orchestrator.errors import PricingError
from orchestrator.journal import PastRecharge
from orchestrator.model import Recharge
from orchestrator.pricing import RateLookup, denomination_limits
from orchestrator.suggestions import Settings, SuggestionModel, Suggestions, Weights

__all__ = ["History", "SuggestionService", "settings_of"]

log = structlog.get_logger("orchestrator.suggestions")

_DAY = 86_400.0


class History(Protocol):
    async def succeeded_recharges(self, user_id: str, limit: int) -> list[PastRecharge]: ...


def settings_of(cfg: SuggestionsConfig) -> Settings:
    return Settings(max_users=cfg.max_users, max_amounts=cfg.max_amounts_per_user,
                    cohort_half_life_s=cfg.cohort_half_life_days * _DAY, cohort_min=cfg.cohort_min_recharges,
                    defaults={c: tuple(a) for c, a in cfg.defaults.items()},
                    weights=Weights(half_life_s=cfg.half_life_days * _DAY))


class SuggestionService:
    def __init__(self, config: Callable[[], Config], history: History, clock: Clock, rates: RateLookup) -> None:
        self._config = config
        self._history = history
        self._clock = clock
        self._rates = rates
        self._applied = config().suggestions
        self.model = SuggestionModel(settings_of(self._applied))

    async def suggest(self, user_id: str, currency: str, country: str | None = None, k: int = 3) -> Suggestions:
        cfg = self._settings()
        pricing = self._config().pricing
        if not is_known(currency) or pricing.rate(currency) is None:
            raise PricingError("unsupported_currency", f"{currency} is not sold", "currency")
        now = self._clock.now()
        loaded = self.model.loaded_at(user_id)
        if loaded is None or now - loaded >= cfg.refresh_s:
            past = await self._history.succeeded_recharges(user_id, cfg.history_limit)
            self.model.load(user_id, past, now)
        limits = denomination_limits(pricing, self._rates, currency)
        return self.model.suggest(user_id, country, currency, now, k, limits)

    def succeeded(self, rec: Recharge) -> None:
        """A recharge this process saw succeed (its credit is durable). Called on the
        payment's path: a suggestion is never worth failing it."""
        try:
            self.model.observe(rec.user_id, rec.country, rec.currency, rec.amount_minor, rec.created_at,
                               create=False)
        except Exception:
            log.exception("suggestions_observe_failed")

    def _settings(self) -> SuggestionsConfig:
        """The running config's section; a reload's new bounds apply from the next request."""
        cfg = self._config().suggestions
        if cfg is not self._applied:
            self._applied = cfg
            self.model.configure(settings_of(cfg))
        return cfg
