"""The live FX rate source (``pricing.rate_source``): an outside call like a provider's,
so it lives with them. ``fetch`` answers ``{"CNY": "0.1404", ...}`` in base units."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

__all__ = ["HttpRateSource"]


class HttpRateSource:
    """GETs the URL the running config names (read on every fetch, so a reload moves
    it); one connection pool, closed with ``close``."""

    def __init__(self, url: Callable[[], str | None], *, timeout_s: float = 5.0) -> None:
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self) -> dict[str, object]:
        url = self._url()
        if url is None:
            return {}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.get(url) as resp:
            resp.raise_for_status()
            doc = await resp.json(content_type=None)
        return doc.get("rates", doc) if isinstance(doc, dict) else doc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
