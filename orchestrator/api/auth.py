"""API keys: stored as sha256 hashes, compared in constant time, with scopes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from aiohttp import web

from config import ClientConfig
from orchestrator.api.errors import ApiError

__all__ = ["Authenticator"]


class Authenticator:
    """Checks keys against the running config's clients (``clients`` is read on every
    request, so a reload takes effect on the next one)."""

    def __init__(self, clients: Callable[[], Sequence[ClientConfig]]) -> None:
        self._clients = clients

    def identify(self, request: web.Request) -> ClientConfig | None:
        """The client a request's bearer key belongs to, or None (no key, or unknown).

        Every configured hash is compared, in constant time, whatever matches first,
        so the time taken says nothing about which key (or how much of one) was right.
        """
        header = request.headers.get("Authorization")
        if header is None or not header.startswith("Bearer "):
            return None
        token = header[7:].strip()
        if not token or len(token) > 512:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for client in self._clients():
            if hmac.compare_digest(digest, client.key_sha256):
                found = client
        return found

    def require_any(self, request: web.Request) -> ClientConfig:
        """The client, whichever of its scopes (``recharge`` or ``admin``) it holds."""
        client = self.identify(request)
        if client is None:
            raise ApiError("unauthorized", "a valid API key is required (Authorization: Bearer <key>)")
        if not ({"recharge", "admin"} & set(client.scopes)):
            raise ApiError("forbidden", "this API key has no scope for this resource")
        return client

    def require(self, request: web.Request, scope: str) -> ClientConfig:
        client = self.identify(request)
        if client is None:
            raise ApiError("unauthorized", "a valid API key is required (Authorization: Bearer <key>)")
        if scope not in client.scopes:
            raise ApiError("forbidden", f"this API key lacks the {scope!r} scope")
        return client
