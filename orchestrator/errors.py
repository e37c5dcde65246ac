"""Every error the orchestrator raises on purpose, under one root::

    OrchestratorError
    +-- Refusal                  the rules turn this request down; code and field say why
    |   +-- PricingError         the amount cannot be priced (unsupported_currency, ...)
    |   |   +-- QuoteError       the quote is unknown, expired, or for another recharge
    |   |   +-- RateSourceError  the live rates failed; the old ones stay (rates_stale)
    |   +-- IdempotencyConflict  the key is held by a recharge with another request
    |   +-- HeldElsewhere        another instance drives this recharge right now
    |   +-- Overloaded           too many recharges in progress here
    |   +-- NotFound             no such recharge (or not the caller's)
    |   +-- RefundRefused        this refund cannot be made (not_refundable, refund_exceeds_amount,
    |   |                        insufficient_coins, recharge_disputed)
    |   +-- EventTooEarly        a provider event about a payment not settled here yet: send it again
    |   +-- TemplateRefused      a recharge template cannot be made or used (template_not_found,
    |   |                        template_limit_reached, template_mismatch, instrument_required)
    |   +-- ReloadError          a config that cannot be applied; the running one stays
    |       +-- NothingToRollBack
    +-- Unavailable              a dependency failed; nothing half-done, a retry is safe
    |   +-- JournalError         the store did not make a write durable
    |   +-- ClusterError         a worker's supervisor is gone or did not answer
    |       +-- Refused          the supervisor turned the request down
    +-- StartError               the server cannot start (printed, exit status 1)
    +-- PgServerError            a throwaway PostgreSQL could not be set up

``orchestrator.api.errors.API_ERRORS`` is the one table from these to API answers.
The packages below the core keep their own roots (``config.ConfigError``,
``channels.webhooks.WebhookError``); the core turns them into these at its edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.model import Recharge

__all__ = ["ClusterError", "EventTooEarly", "HeldElsewhere", "IdempotencyConflict", "JournalError", "NotFound",
           "NothingToRollBack", "OrchestratorError", "Overloaded", "PgServerError", "PricingError",
           "QuoteError", "RateSourceError", "RefundRefused", "Refusal", "Refused", "ReloadError", "StartError",
           "TemplateRefused", "Unavailable"]


class OrchestratorError(Exception):
    """The root: ``except OrchestratorError`` catches every error raised on purpose."""


class Refusal(OrchestratorError):
    """A request the rules turn down. ``code`` is the API error code, ``field`` the
    request field at fault (or None)."""

    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.field = field


class PricingError(Refusal, ValueError):
    def __init__(self, code: str, message: str, field: str) -> None:
        super().__init__(message, code=code, field=field)


class QuoteError(PricingError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, "quote_id")


class RateSourceError(PricingError):
    def __init__(self, message: str) -> None:
        super().__init__("rates_stale", message, "currency")


class IdempotencyConflict(Refusal):
    code = "idempotency_key_reused"

    def __init__(self, message: str = "this Idempotency-Key was already used with a different request body") -> None:
        super().__init__(message, field="Idempotency-Key")


class HeldElsewhere(Refusal):
    code = "request_in_progress"

    def __init__(self, rec: Recharge) -> None:
        super().__init__("this recharge is being processed; retry to get its result")
        self.recharge = rec


class Overloaded(Refusal):
    code = "unavailable"


class NotFound(Refusal):
    code = "not_found"


class RefundRefused(Refusal):
    """A refund the rules turn down; nothing was stored."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, code=code, field=field)


class TemplateRefused(Refusal):
    """A template request the rules turn down (SPEC 22); nothing was stored."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message, code=code, field=field)


class EventTooEarly(Refusal):
    code = "event_too_early"


class ReloadError(Refusal):
    code = "validation_failed"


class NothingToRollBack(ReloadError):
    code = "nothing_to_roll_back"


class Unavailable(OrchestratorError):
    """A dependency failed: nothing half-done was answered, a retry is safe."""


class JournalError(Unavailable):
    """The store failed (disk full, database gone); the step did not become durable."""


class ClusterError(Unavailable):
    """The link to the supervisor closed, or no answer came in time."""


class Refused(ClusterError):
    """The supervisor turned the request down (the message says why)."""


class StartError(OrchestratorError):
    pass


class PgServerError(OrchestratorError, RuntimeError):
    pass
