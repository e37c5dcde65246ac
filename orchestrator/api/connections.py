"""The HTTP server's connections: what a slow or hostile client meets before (or instead
of) the app.

- A request head (request line and headers) must arrive within ``server.header_timeout_s``
  of the connection opening, or of its first byte on a kept-alive connection; past that
  the client gets a 400 ``request_timeout`` if it had started one, and the connection is
  closed. (A body that stalls is the handler's business: ``api.body.read_body``.)
- At most ``server.max_connections`` connections are served at once; one past the cap
  gets its request answered 503 ``unavailable`` with ``Retry-After`` and is closed,
  without reaching the app, so the server stays responsive for the connections it holds.
- A request aiohttp's parser refuses (a line or header over 8190 bytes, more than 128
  headers, malformed HTTP) is answered in the spec's error shape (431
  ``headers_too_large`` or 400 ``bad_request``), not aiohttp's plain text, and logged as
  one line rather than a traceback.
- A kept-alive connection idle for ``server.idle_timeout_s`` is closed.

aiohttp has no hook for its low-level errors (aio-libs/aiohttp#3287), so this subclasses
its ``RequestHandler`` (the asyncio protocol of one connection) and the ``Server`` that
makes one per connection; ``runner`` puts them under an ``AppRunner``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from config import ServerConfig
from orchestrator.api.errors import ApiError, error_response

__all__ = ["Limits", "runner"]

log = structlog.get_logger("orchestrator.api.connections")


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, server: ServerConfig) -> Limits:
        return cls(server.header_timeout_s, server.max_connections)


class _Server(web.Server):
    """aiohttp's connection factory, making ``_Connection``s and counting the ones it serves."""

    def __init__(self, made_by: web.Server, limits: Callable[[], Limits]) -> None:
        super().__init__(made_by.request_handler, request_factory=made_by.request_factory,
                         handler_cancellation=made_by.handler_cancellation, loop=asyncio.get_running_loop(),
                         **made_by._kwargs)
        self.limits = limits
        self.served = 0

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


async def _over_capacity(request: BaseRequest) -> web.StreamResponse:
    response = error_response(ApiError("unavailable", "too many connections; retry shortly", retry_after=1))
    response.force_close()
    return response


class _Connection(RequestHandler):
    __slots__ = ("_head_timer", "_head_started", "_served", "_header_timeout_s")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server: _Server = self._manager  # type: ignore[assignment]
        limits = server.limits()
        self._header_timeout_s = limits.header_timeout_s
        self._head_started = False
        self._served = server.served < limits.max_connections
        if self._served:
            server.served += 1
        else:
            log.warning("connection_refused", reason="max_connections", max_connections=limits.max_connections)
            self._request_handler = _over_capacity
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = self._loop.call_later(self._header_timeout_s,
                                                                             self._head_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        server = self._manager
        if server is not None and self._served:
            server.served -= 1  # type: ignore[attr-defined]
            self._served = False
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a whole head arrived (or one the parser refused)
            self._head_started = False
            self._cancel_head_timer()
        elif data and self._awaiting_head():
            # Part of a head: the first byte of a new request starts its clock.
            self._head_started = True
            if self._head_timer is None:
                self._head_timer = self._loop.call_later(self._header_timeout_s, self._head_timed_out)

    def _awaiting_head(self) -> bool:
        """Between requests: bytes now are a request head, not a body."""
        if self._request_count == 0:
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or not self._awaiting_head():
            return
        log.info("request_head_timeout", timeout_s=self._header_timeout_s, started=self._head_started)
        if self._head_started:  # it began a request: say why it ends (no request object to answer through)
            err = ApiError("request_timeout",
                           f"the request line and headers did not arrive within {self._header_timeout_s:g} s")
            body = orjson.dumps({"error": {"code": err.code, "message": err.message}})
            transport.write(b"HTTP/1.1 %d Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                            b"Connection: close\r\n\r\n%s" % (err.status, len(body), body))
        self.force_close()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to what never reached the app (a request its parser refused, a
        failure outside the middleware), in the spec's error shape."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message):
            err = ApiError("headers_too_large", f"the request line or headers are too large (at most "
                           f"{self.max_field_size} bytes per line and {self.max_headers} headers)")
        elif status < 500:
            reason = " ".join((message or "unparsable").split())[:200]
            err = ApiError("bad_request", f"malformed HTTP request: {reason}")
        else:
            log.error("unhandled_error", path=request.path, status=status, exc_info=exc)
            err = ApiError("internal_error", "internal error")
        if err.status < 500:
            log.info("bad_http_request", status=err.status, code=err.code, reason=message and message[:200])
        response = error_response(err)
        response.force_close()
        return response


def runner(app: web.Application, limits: Callable[[], Limits], **kwargs: Any) -> web.AppRunner:
    """An ``AppRunner`` whose connections are ``_Connection``s; ``limits`` is read as each
    connection opens, so a config reload applies to new connections."""

    class _Runner(web.AppRunner):
        async def _make_server(self) -> web.Server:
            return _Server(await super()._make_server(), limits)

    return _Runner(app, **kwargs)
