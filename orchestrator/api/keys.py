"""Typed keys of the aiohttp application's state."""

from aiohttp import web

from orchestrator.service import Service

__all__ = ["SERVICE"]

SERVICE = web.AppKey("service", Service)
