"""API errors: one exception type, a table from error code to HTTP status, and the
one table from the core's errors (``orchestrator.errors``) to API answers.

Every error the API answers has the spec's shape
``{"error": {"code", "message", "field"?}}``; nothing else ever reaches a client.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from orchestrator.errors import (
    ClusterError,
    JournalError,
    NothingToRollBack,
    OrchestratorError,
    Refusal,
    ReloadError,
)

__all__ = ["API_ERRORS", "RETRY_AFTER", "STATUS", "ApiError", "api_error_of", "error_response"]

STATUS: dict[str, int] = {
    "malformed_json": 400,
    "missing_idempotency_key": 400,
    "invalid_idempotency_key": 400,
    "bad_request": 400,
    "request_timeout": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "template_not_found": 404,
    "method_not_allowed": 405,
    "request_in_progress": 409,
    "quote_expired": 409,
    "nothing_to_roll_back": 409,
    "not_refundable": 409,
    "insufficient_coins": 409,
    "recharge_disputed": 409,
    "event_too_early": 409,
    "template_limit_reached": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_failed": 422,
    "missing_field": 422,
    "unknown_field": 422,
    "invalid_field": 422,
    "unsupported_currency": 422,
    "amount_too_small": 422,
    "amount_out_of_range": 422,
    "quote_not_found": 422,
    "quote_mismatch": 422,
    "idempotency_key_reused": 422,
    "refund_exceeds_amount": 422,
    "template_mismatch": 422,
    "instrument_required": 422,
    "headers_too_large": 431,
    "rate_limited": 429,
    "internal_error": 500,
    "unavailable": 503,
    "rates_stale": 503,
}


class ApiError(OrchestratorError):
    """An answer already in the API's terms (raised by the API layer itself)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: int | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        if code not in STATUS:
            raise ValueError(f"unknown API error code {code!r}")
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.details = details

    @property
    def status(self) -> int:
        return STATUS[self.code]


# The core's errors as API answers: (code, message), looked up along the error's class
# hierarchy. None keeps the error's own code or message; "{}" wraps the error's own.
API_ERRORS: dict[type[OrchestratorError], tuple[str | None, str | None]] = {
    Refusal: (None, None),
    ReloadError: (None, "the config cannot be applied: {}"),
    NothingToRollBack: (None, None),
    JournalError: ("unavailable", "storage is unavailable; retry shortly"),
    ClusterError: ("unavailable", "the other workers cannot be reached; retry shortly"),
    OrchestratorError: ("internal_error", "internal error; the request id identifies it in logs"),
}
# When a client should try again, by code (seconds).
RETRY_AFTER = {"rates_stale": 5, "request_in_progress": 1, "unavailable": 1, "event_too_early": 5}


def api_error_of(exc: OrchestratorError) -> ApiError:
    """The answer for one of the core's errors (``API_ERRORS``)."""
    if isinstance(exc, ApiError):
        return exc
    code, message = next(API_ERRORS[c] for c in type(exc).__mro__ if c in API_ERRORS)
    code = code or getattr(exc, "code", "internal_error")
    return ApiError(code, (message or "{}").format(exc), field=exc.field if isinstance(exc, Refusal) else None,
                    retry_after=RETRY_AFTER.get(code))


def error_response(err: ApiError) -> web.Response:
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.field is not None:
        body["field"] = err.field
    if err.details:
        body["details"] = err.details
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return web.Response(
        body=orjson.dumps({"error": body}), status=err.status, content_type="application/json", headers=headers
    )
