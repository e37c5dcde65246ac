"""structlog set-up: JSON lines (orjson), context from contextvars on every line.

``request_id`` is bound per request by the API middleware; ``recharge_id``,
``attempt`` and ``channel`` by the driver around the work they describe.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import orjson
import structlog

__all__ = ["configure", "redact"]

_SECRET_KEYS = frozenset({"api_key", "authorization", "webhook_secret", "key", "token", "account_number", "instrument"})


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Never let a secret or instrument reach a log line, whoever passed it."""
    for k in _SECRET_KEYS.intersection(event):
        event[k] = "[redacted]"
    return event


def configure(level: str = "info", stream: IO[bytes] | None = None, static: dict[str, Any] | None = None) -> None:
    """``static``: fields on every line of this process (a worker's index)."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    fields = dict(static or {})

    def add_static(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        for k, v in fields.items():
            event.setdefault(k, v)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([add_static] if fields else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.BytesLoggerFactory(file=stream or sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )
