"""Reading request bodies with a deadline."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import orjson
from aiohttp import web

from orchestrator.api.errors import ApiError

__all__ = ["BODY_READ_TIMEOUT_S", "check_limit", "idempotency_key", "read_body", "read_json"]

BODY_READ_TIMEOUT_S = 10.0
_IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


def idempotency_key(request: web.Request) -> str:
    """The ``Idempotency-Key`` header (SPEC 5: 1 to 255 printable ASCII characters)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise ApiError("missing_idempotency_key", "the Idempotency-Key header is required", field="Idempotency-Key")
    if not _IDEMPOTENCY_KEY.match(key):
        raise ApiError("invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters",
                       field="Idempotency-Key")
    return key


async def read_body(request: web.Request, timeout_s: float | None = None) -> bytes:
    """The whole body, or a clear 400 if the client stalls mid-body: a slow sender holds
    its own request for at most ``timeout_s``, never anyone else's. aiohttp enforces the
    size cap (``client_max_size``) while reading."""
    if request.content.is_eof():
        return await request.read()  # it all came with the head: nothing to wait for
    timeout_s = BODY_READ_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise ApiError("request_timeout", f"the request body did not arrive within {timeout_s:.0f} s") from None


async def read_json(request: web.Request, limit: int) -> Any:
    """A JSON body: 415 unless application/json, 413 past ``limit``, 400 if malformed."""
    if request.content_type != "application/json":
        raise ApiError("unsupported_media_type", "send the body as application/json")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("payload_too_large", f"the body must be at most {limit} bytes")
    raw = await read_body(request)
    if len(raw) > limit:
        raise ApiError("payload_too_large", f"the body must be at most {limit} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError("malformed_json", f"the body is not valid JSON: {exc.msg} at position {exc.pos}") from None


def check_limit(limiter: Any, key: str, what: str) -> None:
    """429 with Retry-After when ``key`` is over its token bucket."""
    wait = limiter.check(key)
    if wait > 0:
        raise ApiError("rate_limited", f"too many requests for this {what}; retry later",
                       retry_after=max(1, math.ceil(wait)))
