"""Notifications to front services on the wire (SPEC 19): one signed POST per delivery.

    POST <url>   Content-Type: application/json
                 X-Orchestrator-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The outbox decides what to send, when, and how often to retry; this module only sends one
body and says how it went. A delivery is ``ok`` only on a 2xx: a redirect is not followed
(the signed body goes where the client configured it, nowhere else) and, like every other
answer or failure, is a ``Delivery`` with ``ok`` false, never an exception, so the outbox
has one thing to read.

Each destination (scheme, host and port) gets at most ``max_per_destination`` POSTs at
once: a client that answers slowly holds its own slots, not every connection the sender
has, so the other clients' notifications still go out on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

from channels.webhooks import NOTIFY_SIGNATURE_HEADER, sign

__all__ = ["Delivery", "NotifySender"]

_MAX_ANSWER_BYTES = 64 * 1024  # read so the connection is reused; a client's answer is never used


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one POST went. ``status`` is the HTTP status when an answer came; ``error``
    says what went wrong otherwise (or which non-2xx it was)."""

    ok: bool
    status: int | None
    error: str | None
    latency_ms: float


@dataclass(slots=True)
class _Gate:
    """One destination's slots, and how many senders hold or wait for one."""

    slots: asyncio.Semaphore
    users: int = 0


class NotifySender:
    """Sends signed notifications. The session is the caller's when handed in (never
    closed here), else created on first use inside the running loop and closed by
    ``close``. ``timeout_s`` bounds a whole ``send``, the wait for a slot included, so a
    stuck destination costs its caller a known time."""

    def __init__(self, session: aiohttp.ClientSession | None = None, *, timeout_s: float = 10.0,
                 max_per_destination: int = 4) -> None:
        if timeout_s <= 0 or max_per_destination <= 0:
            raise ValueError("timeout_s and max_per_destination must be > 0")
        self._session = session
        self._owns_session = session is None
        self._timeout_s = timeout_s
        self._max = max_per_destination
        self._gates: dict[tuple[str, str, int | None], _Gate] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            # The per-destination gates are the limit; the connector's own (100) would
            # make one slow client queue everyone else's deliveries behind it.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30))
        return self._session

    async def send(self, url: str, secret: str, body: bytes, now: float, *, timeout_s: float | None = None
                   ) -> Delivery:
        """POST ``body`` to ``url``, signed with ``secret`` at ``int(now)``; ``timeout_s``
        is the caller's budget when it has less left than the sender's own."""
        budget = self._timeout_s if timeout_s is None else min(timeout_s, self._timeout_s)
        started = time.perf_counter()

        def done(ok: bool, status: int | None, error: str | None) -> Delivery:
            return Delivery(ok, status, error, (time.perf_counter() - started) * 1000)

        target = _target(url)
        if target is None:
            return done(False, None, "not an absolute http(s) URL")
        headers = {"Content-Type": "application/json", NOTIFY_SIGNATURE_HEADER: sign(secret, body, int(now))}
        slotted = False
        try:
            async with asyncio.timeout(budget), self._slot(target):
                slotted = True
                async with self._client().post(target, data=body, headers=headers, allow_redirects=False) as resp:
                    if resp.content_length is not None and resp.content_length <= _MAX_ANSWER_BYTES:
                        await resp.read()
                    ok = 200 <= resp.status < 300
                    return done(ok, resp.status, None if ok else f"answered {resp.status}")
        except TimeoutError:
            return done(False, None, "timeout" if slotted else "timeout waiting for a slot to this destination")
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
            return done(False, None, f"connect failed: {type(exc).__name__}")
        except (aiohttp.ClientError, OSError) as exc:
            return done(False, None, f"connection lost: {type(exc).__name__}")

    @contextlib.asynccontextmanager
    async def _slot(self, target: URL) -> AsyncIterator[None]:
        """One of the destination's slots, for as long as the POST takes. A gate lives only
        while someone holds or waits for it, so many destinations leave nothing behind."""
        origin = (target.scheme, target.host or "", target.port)
        gate = self._gates.get(origin)
        if gate is None:
            gate = self._gates[origin] = _Gate(asyncio.Semaphore(self._max))
        gate.users += 1
        try:
            async with gate.slots:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[origin]

    async def close(self) -> None:
        """Close the session this sender created (never one handed in)."""
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)  # let the connector's transports finish closing (aiohttp's advice)


def _target(url: str) -> URL | None:
    try:
        target = URL(url)
    except (ValueError, TypeError):
        return None
    if target.scheme not in ("http", "https") or not target.host:
        return None
    return target
