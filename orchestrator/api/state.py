"""What the aiohttp application holds, under typed keys (``app[SERVICE]``)."""

from aiohttp import web

from orchestrator.api.auth import Authenticator
from orchestrator.service import Service

__all__ = ["AUTH", "SERVICE"]

SERVICE = web.AppKey("service", Service)
AUTH = web.AppKey("auth", Authenticator)
