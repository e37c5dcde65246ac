"""Query strings, as strict as bodies: an operation takes only the parameters it declares,
so a misspelt one (``?limt=5``) is a 422 naming it, never a silent fall-back to a default."""

from __future__ import annotations

import re

from aiohttp import web

from orchestrator.api.errors import ApiError

__all__ = ["RECHARGE_ID", "only"]

RECHARGE_ID = re.compile(r"^rc_[0-9a-f]{1,64}$")
"""A recharge id's shape: anything else is simply not found."""


def only(request: web.Request, *names: str) -> None:
    """422 ``unknown_field`` for the first query parameter not among ``names``."""
    unknown = sorted(set(request.query) - set(names))
    if unknown:
        takes = ", ".join(names) if names else "no query parameters"
        raise ApiError("unknown_field", f"unknown query parameter {unknown[0]!r} (this endpoint takes {takes})",
                       field=unknown[0])
