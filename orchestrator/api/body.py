"""Reading request bodies with a deadline."""

from __future__ import annotations

import asyncio

from aiohttp import web

from orchestrator.api.errors import ApiError

__all__ = ["BODY_READ_TIMEOUT_S", "read_body"]

BODY_READ_TIMEOUT_S = 10.0


async def read_body(request: web.Request, timeout_s: float | None = None) -> bytes:
    """The whole body, or a clear 400 if the client stalls mid-body: a slow sender holds
    its own request for at most ``timeout_s``, never anyone else's. aiohttp enforces the
    size cap (``client_max_size``) while reading."""
    timeout_s = BODY_READ_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise ApiError("request_timeout", f"the request body did not arrive within {timeout_s:.0f} s") from None
