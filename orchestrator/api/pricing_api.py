"""``POST /v1/quotes`` (SPEC section 5): price a recharge and hold that price.

The handler needs three things from the app, each behind a typed key: the
``PricingService`` (``PRICING``), and a ``QuoteGuard`` (``QUOTE_GUARD``) that checks
the API key and the rate limits the same way the recharge endpoint does. ``register``
puts them in place; by default the guard is the app's ``Service``.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiohttp import web

from orchestrator.api.body import check_limit, read_json
from orchestrator.api.state import AUTH, SERVICE
from orchestrator.api.pricing_schemas import QuoteIn
from orchestrator.api.schemas import validate
from orchestrator.clock import iso
from orchestrator.quotes import PricingService, Quote

__all__ = ["PRICING", "QUOTE_GUARD", "QuoteGuard", "ServiceGuard", "create_quote", "quote_json",
           "register"]


class QuoteGuard(Protocol):
    def admit(self, request: web.Request) -> None:
        """Raise ApiError unless the request's key has the recharge scope and its client
        is under its rate limit."""
        ...

    def admit_user(self, user_id: str) -> None:
        """Raise ApiError(rate_limited) if the user is over its rate limit."""
        ...

    def max_body_bytes(self, request: web.Request) -> int: ...


PRICING = web.AppKey("pricing", PricingService)
QUOTE_GUARD = web.AppKey("quote_guard", QuoteGuard)


class ServiceGuard:
    """The guard of the recharge endpoint: the app's ``Service`` auth and limiters."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def admit(self, request: web.Request) -> None:
        client = self._app[AUTH].require(request, "recharge")
        check_limit(self._app[SERVICE].client_limits, client.name, "client")

    def admit_user(self, user_id: str) -> None:
        check_limit(self._app[SERVICE].user_limits, user_id, "user")

    def max_body_bytes(self, request: web.Request) -> int:
        return self._app[SERVICE].config.server.max_body_bytes


def quote_json(quote: Quote) -> dict[str, Any]:
    return {
        "quote_id": quote.quote_id,
        "user_id": quote.user_id,
        "amount_minor": quote.amount_minor,
        "currency": quote.currency,
        "coins": quote.coins,
        "bonus_coins": quote.bonus_coins,
        "rate": str(quote.rate),
        "expires_at": iso(quote.expires_at),
        "promotions": [p.to_api() for p in quote.price.promotions],
    }


async def create_quote(request: web.Request) -> web.Response:
    guard = request.app[QUOTE_GUARD]
    guard.admit(request)
    req: QuoteIn = validate(QuoteIn, await read_json(request, guard.max_body_bytes(request)))
    guard.admit_user(req.user_id)
    quote = await request.app[PRICING].quote(req.user_id, req.amount_minor, req.currency)
    return web.Response(body=orjson.dumps(quote_json(quote)), status=201, content_type="application/json")


def register(app: web.Application, pricing: PricingService, guard: QuoteGuard | None = None) -> None:
    """Mount ``POST /v1/quotes`` on ``app``; ``guard`` defaults to the app's Service."""
    app[PRICING] = pricing
    app[QUOTE_GUARD] = guard if guard is not None else ServiceGuard(app)
    app.router.add_post("/v1/quotes", create_quote)
