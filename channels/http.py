"""The reference adapter for provider protocol v1 (SPEC section 6).

It only builds requests and reads answers; ``outcome_of`` is the one place that turns
what happened on the wire into the spec's attempt outcomes:

    authorize  200 captured|pending|declined   -> that outcome
               429, 503                        -> NOT_PROCESSED (the provider says: nothing charged)
               connect refused / DNS / connect timeout (nothing was sent) -> NOT_PROCESSED
               other 4xx (an explicit reject)  -> NOT_PROCESSED
               other 5xx, read timeout, reset after send, unreadable 200 -> UNKNOWN
    inquire    200 <status>                    -> that status; 404 -> NOT_PROCESSED (no such payment)
               anything else (429/503 included: the *inquiry* was not processed) -> UNKNOWN
    void       200 voided -> VOIDED; 409 <current state> -> that state; 404 -> NOT_PROCESSED
    refund     200 refunded -> REFUNDED; 409 <current state> -> that state
    ping       200 -> CAPTURED (meaning "ok"); anything else -> NOT_PROCESSED / UNKNOWN

One ``aiohttp.ClientSession`` per channel: pooled keep-alive connections, at most
``max_in_flight`` of them.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from channels._protocol import AttemptOutcome, ChannelResult, PaymentRequest

__all__ = ["KIND_DEFAULTS", "HttpChannel", "KindDefaults", "outcome_of"]


@dataclass(frozen=True, slots=True)
class KindDefaults:
    """What differs between kinds: defaults, not code paths."""

    timeout_ms: int
    connect_timeout_ms: int
    expects_pending: bool


KIND_DEFAULTS = {
    "direct_api": KindDefaults(timeout_ms=2000, connect_timeout_ms=500, expects_pending=False),
    "digital_currency": KindDefaults(timeout_ms=4000, connect_timeout_ms=1000, expects_pending=True),
    "bank": KindDefaults(timeout_ms=8000, connect_timeout_ms=1000, expects_pending=True),
}

_STATUS = {
    "captured": AttemptOutcome.CAPTURED,
    "pending": AttemptOutcome.PENDING,
    "declined": AttemptOutcome.DECLINED,
    "voided": AttemptOutcome.VOIDED,
    "refunded": AttemptOutcome.REFUNDED,
}


@dataclass(frozen=True, slots=True)
class WireAnswer:
    """What came back, before interpretation. ``status`` is None when no HTTP answer
    arrived; ``sent`` says whether the request may have reached the provider."""

    op: str
    status: int | None
    body: dict[str, Any] | None
    sent: bool
    error: str | None = None


def _payment(body: dict[str, Any] | None, err: str) -> ChannelResult | None:
    if not isinstance(body, dict):
        return None
    outcome = _STATUS.get(str(body.get("status")))
    if outcome is None:
        return None
    ref = body.get("provider_ref")
    code = body.get("decline_code")
    return ChannelResult(outcome, provider_ref=ref if isinstance(ref, str) else None,
                         decline_code=code if isinstance(code, str) else None, error=err or None)


def outcome_of(ans: WireAnswer) -> ChannelResult:
    """The exhaustive map from a wire answer to an attempt outcome (see module doc)."""
    if ans.status is None:
        # No answer: if the request may have been sent, the payment may exist.
        kind = AttemptOutcome.UNKNOWN if ans.sent else AttemptOutcome.NOT_PROCESSED
        return ChannelResult(kind, error=ans.error)
    if ans.op == "ping":
        ok = ans.status == 200
        return ChannelResult(AttemptOutcome.CAPTURED if ok else AttemptOutcome.NOT_PROCESSED,
                             error=None if ok else f"ping answered {ans.status}")
    if ans.status in (200, 409) and ans.op in ("authorize", "inquire", "void", "refund"):
        parsed = _payment(ans.body, "" if ans.status == 200 else f"{ans.op} refused: payment is in this state")
        if parsed is not None:
            return parsed
        return ChannelResult(AttemptOutcome.UNKNOWN, error=f"{ans.op}: unreadable {ans.status} answer")
    if ans.status == 404 and ans.op in ("inquire", "void", "refund"):
        return ChannelResult(AttemptOutcome.NOT_PROCESSED, error="provider has no such payment")
    if ans.status in (429, 503) and ans.op == "authorize":
        return ChannelResult(AttemptOutcome.NOT_PROCESSED, error=f"provider answered {ans.status}: not processed")
    if 400 <= ans.status < 500 and ans.op == "authorize":
        return ChannelResult(AttemptOutcome.NOT_PROCESSED, error=f"provider rejected the request ({ans.status})")
    return ChannelResult(AttemptOutcome.UNKNOWN, error=f"provider answered {ans.status}")


class HttpChannel:
    """A Channel speaking protocol v1 over HTTP(S)."""

    def __init__(
        self,
        name: str,
        kind: str,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_ms: int | None = None,
        connect_timeout_ms: int | None = None,
        max_in_flight: int | None = None,
        ca_file: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        defaults = KIND_DEFAULTS[kind]
        self.name = name
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self.expects_pending = defaults.expects_pending
        self._timeout = aiohttp.ClientTimeout(
            total=(timeout_ms or defaults.timeout_ms) / 1000,
            connect=(connect_timeout_ms or defaults.connect_timeout_ms) / 1000,
        )
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limit = max_in_flight or 0
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._session = session
        self._owns_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def _send(self, op: str, method: str, path: str, *, body: dict[str, Any] | None = None,
                    idempotency_key: str | None = None) -> ChannelResult:
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        started = time.perf_counter()
        ans = await self._exchange(op, method, self.base_url + path, headers, data)
        result = outcome_of(ans)
        return ChannelResult(result.outcome, result.provider_ref, result.decline_code, result.error,
                             (time.perf_counter() - started) * 1000)

    async def _exchange(self, op: str, method: str, url: str, headers: dict[str, str], data: bytes | None) -> WireAnswer:
        try:
            async with self._client().request(method, url, headers=headers, data=data) as resp:
                raw = await resp.read()
                try:
                    parsed = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    parsed = None
                return WireAnswer(op, resp.status, parsed if isinstance(parsed, dict) else None, True)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # The connection was never made: nothing was sent.
            return WireAnswer(op, None, None, False, f"connect failed: {type(exc).__name__}")
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            return WireAnswer(op, None, None, True, f"timeout: {type(exc).__name__}")
        except (aiohttp.ClientError, OSError) as exc:
            # Reset, disconnect, bad answer after the request went out: may have been processed.
            return WireAnswer(op, None, None, True, f"connection error: {type(exc).__name__}")

    # -- the Channel protocol ----------------------------------------------------------

    async def authorize(self, request: PaymentRequest) -> ChannelResult:
        body = {
            "reference": request.reference,
            "amount_minor": request.amount_minor,
            "currency": request.currency,
            "method": request.method,
            "instrument": request.instrument,
            "callback_url": request.callback_url,
        }
        return await self._send("authorize", "POST", "/payments", body=body, idempotency_key=request.reference)

    async def inquire(self, reference: str) -> ChannelResult:
        return await self._send("inquire", "GET", f"/payments/{reference}")

    async def void(self, reference: str) -> ChannelResult:
        return await self._send("void", "POST", f"/payments/{reference}/void", idempotency_key=f"{reference}.void")

    async def refund(self, reference: str) -> ChannelResult:
        return await self._send("refund", "POST", f"/payments/{reference}/refund",
                                idempotency_key=f"{reference}.refund")

    async def ping(self) -> ChannelResult:
        return await self._send("ping", "GET", "/ping")

    async def close(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
            # Let the connector's transports finish closing (aiohttp's advice).
            await asyncio.sleep(0)
