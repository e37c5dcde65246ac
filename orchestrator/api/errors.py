"""API errors: one exception type, one table from error code to HTTP status.

Every error the API answers has the spec's shape
``{"error": {"code", "message", "field"?}}``; nothing else ever reaches a client.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = ["ApiError", "STATUS", "error_response"]

STATUS: dict[str, int] = {
    "malformed_json": 400,
    "missing_idempotency_key": 400,
    "invalid_idempotency_key": 400,
    "bad_request": 400,
    "request_timeout": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_in_progress": 409,
    "quote_expired": 409,
    "nothing_to_roll_back": 409,
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
    "headers_too_large": 431,
    "rate_limited": 429,
    "internal_error": 500,
    "unavailable": 503,
    "rates_stale": 503,
}


class ApiError(Exception):
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
