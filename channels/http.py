"""The reference adapter for provider protocol v1 (SPEC section 6).

It only builds requests and reads answers. ``outcome_of`` is the one place that turns what
happened on the wire into the spec's attempt outcomes (``refund_outcome_of``, below, does
the same for partial refunds); nothing outside this module knows an HTTP status code:

    authorize  200|409 captured|pending|declined    -> that outcome (409: the state it already has)
               200 requires_action + action_url     -> REQUIRES_ACTION: the payer's step-up comes first
               429, 503                             -> NOT_PROCESSED: the provider says nothing was charged
               no answer, nothing sent (connect refused, DNS failure, connect timeout, pool wait)
                                                    -> NOT_PROCESSED
               404 and every other 4xx              -> NOT_PROCESSED: an explicit reject (bad request,
                                                       bad key, unknown channel path) charges nothing
               other 5xx, read timeout, reset or disconnect after sending, unreadable 200/409
                                                    -> UNKNOWN: the request may have been processed
    inquire    200 <status>                         -> that status (captured, pending, requires_action,
                                                       declined, voided, refunded); ``expired`` (a
                                                       step-up that lapsed) -> VOIDED, action_expired
               404                                  -> UNKNOWN: no such payment *yet* proves nothing (the
                                                       charge may still be in flight at the provider)
               anything else, 429/503 and no answer at all included
                                                    -> UNKNOWN: the *inquiry* failed, which proves
                                                       nothing about the payment
    void       200|409 <state>                      -> that state (VOIDED when it was cancelled, or when
                                                       the provider recorded a tombstone for a reference
                                                       it had not seen: the charge can never land)
               404, anything else, no answer        -> UNKNOWN (not confirmed)
    refund     as void, REFUNDED when it was given back (a 404 is not a refund)
    ping       200 {"status": "ok"}                 -> CAPTURED, read as "ok" (the Channel protocol
                                                       has one result type; the prober checks for it)
               another HTTP answer                  -> NOT_PROCESSED (the provider is up but refuses)
               no answer                            -> NOT_PROCESSED if nothing was sent, else UNKNOWN

A payment answer that names another reference than the one asked about is UNKNOWN (the
provider is confused, and nothing it says can be trusted); the amount and currency it
states ride on the result for the core to check against the attempt.

A partial refund (``issue_refund``) has its own outcomes, mapped by ``refund_outcome_of``;
the refund_reference is the Idempotency-Key, so every UNKNOWN is safe to ask again:

    issue_refund  200 refunded|pending|failed naming our refund_reference
                                                    -> that outcome, amount_minor as the body states it
                  409|422 {"error": {"code": c}}, c one of not_captured, already_refunded,
                  disputed, refund_exceeds_amount, refund_reference_reused
                                                    -> FAILED with code c: the provider refused it,
                                                       nothing was refunded for this request (reused:
                                                       the refund_reference names another refund)
                  404, 429, 503, any other 4xx/5xx, no answer at all (nothing sent included),
                  an unreadable 200, a 200 naming another refund_reference
                                                    -> UNKNOWN: ask again later under the same
                                                       refund_reference (a 404 may be a replica behind,
                                                       a connect failure is not a refusal)

A settlement report (``settlements``, SPEC 6 and 21) is read as it arrives, never whole
(``_ReportReader``), and either read whole or refused with ``SettlementReportError``:

    settlements   200 {"date", "items": [...]}, every item valid, date the one asked
                                                    -> batches of SettlementItem
                  another status                    -> "the provider answered <status>"
                  no answer (refused, timeout)      -> "unreachable: ..."
                  not JSON, cut short, no date, another date, an item invalid
                                                    -> "malformed or truncated report: ...",
                                                       "the report is for ...", "item <i>: ..."

Kinds differ only in defaults (``KIND_DEFAULTS``), never in code paths.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import ijson
import orjson
from yarl import URL

from channels._kinds import KIND_DEFAULTS, KindDefaults
from channels._protocol import (
    ACTION_EXPIRED,
    AttemptOutcome,
    ChannelResult,
    PaymentRequest,
    RefundOutcome,
    RefundRequest,
    RefundResult,
    SettlementItem,
    SettlementReportError,
)

__all__ = [
    "KIND_DEFAULTS",
    "HttpChannel",
    "KindDefaults",
    "Op",
    "WireAnswer",
    "WirePayment",
    "WireRefund",
    "outcome_of",
    "refund_outcome_of",
]

MAX_BODY_BYTES = 1 << 20
"""A provider answer larger than this is not a protocol-v1 answer: read as unreadable."""


class Op(enum.StrEnum):
    AUTHORIZE = "authorize"
    INQUIRE = "inquire"
    VOID = "void"
    REFUND = "refund"
    ISSUE_REFUND = "issue_refund"
    PING = "ping"


_PAYMENT_STATUS = {
    "captured": AttemptOutcome.CAPTURED,
    "pending": AttemptOutcome.PENDING,
    "requires_action": AttemptOutcome.REQUIRES_ACTION,
    "expired": AttemptOutcome.VOIDED,
    "declined": AttemptOutcome.DECLINED,
    "voided": AttemptOutcome.VOIDED,
    "refunded": AttemptOutcome.REFUNDED,
}


def _opt_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class WirePayment:
    """A payment object as a protocol-v1 provider sends it."""

    reference: str | None
    provider_ref: str | None
    status: str
    decline_code: str | None
    amount_minor: int | None = None
    currency: str | None = None
    action_url: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> WirePayment | None:
        """The payment in ``raw``, or None when it is not one (not JSON, no known status)."""
        doc = _json_object(raw)
        status = _opt_str(doc, "status") if doc is not None else None
        if doc is None or status is None or status not in _PAYMENT_STATUS:
            return None
        amount = doc.get("amount_minor")
        decline_code = _opt_str(doc, "decline_code") or (ACTION_EXPIRED if status == "expired" else None)
        return cls(_opt_str(doc, "reference"), _opt_str(doc, "provider_ref"), status, decline_code,
                   amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
                   _opt_str(doc, "currency"), _opt_str(doc, "action_url"))


_REFUND_STATUS = {
    "refunded": RefundOutcome.REFUNDED,
    "pending": RefundOutcome.PENDING,
    "failed": RefundOutcome.FAILED,
}
# The refusals of SPEC 6 that are final for a refund_reference: the provider looked at it
# and refunded nothing. Any other error code proves nothing either way.
_REFUND_REFUSALS = frozenset({"not_captured", "already_refunded", "disputed", "refund_exceeds_amount",
                             "refund_reference_reused"})


@dataclass(frozen=True, slots=True)
class WireRefund:
    """A refund object as a protocol-v1 provider sends it."""

    refund_reference: str | None
    status: str
    amount_minor: int | None

    @classmethod
    def parse(cls, raw: bytes) -> WireRefund | None:
        """The refund in ``raw``, or None when it is not one (not JSON, no known status)."""
        doc = _json_object(raw)
        status = _opt_str(doc, "status") if doc is not None else None
        if doc is None or status is None or status not in _REFUND_STATUS:
            return None
        amount = doc.get("amount_minor")
        return cls(_opt_str(doc, "refund_reference"), status,
                   amount if isinstance(amount, int) and not isinstance(amount, bool) else None)


def _error_code(raw: bytes) -> tuple[str | None, str | None]:
    """The (code, message) of a protocol error body ``{"error": {"code", "message"}}``."""
    doc = _json_object(raw)
    err = doc.get("error") if doc is not None else None
    if not isinstance(err, dict):
        return None, None
    return _opt_str(err, "code"), _opt_str(err, "message")


@dataclass(frozen=True, slots=True)
class WirePing:
    """The probe answer: ``{"status": "ok"}``."""

    ok: bool

    @classmethod
    def parse(cls, raw: bytes) -> WirePing:
        doc = _json_object(raw)
        return cls(doc is not None and doc.get("status") == "ok")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


@dataclass(frozen=True, slots=True)
class WireAnswer:
    """What happened on the wire, before interpretation.

    ``http_status`` is None when no HTTP answer arrived; then ``sent`` says whether the
    request may have reached the provider. ``raw`` is the body as received.
    """

    op: Op
    http_status: int | None
    raw: bytes = b""
    sent: bool = True
    error: str | None = None
    reference: str | None = None  # the payment asked about, when there is one
    refund_reference: str | None = None  # the refund asked for (issue_refund)


def outcome_of(ans: WireAnswer, latency_ms: float = 0.0) -> ChannelResult:
    """The exhaustive map from a wire answer to an attempt outcome (see the module doc);
    ``latency_ms`` is the exchange's, carried on the result."""
    if ans.http_status is None:
        # Only a charge that never left is known not to have happened; an inquiry, void
        # or refund that never left says nothing about the payment.
        not_processed = not ans.sent and ans.op in (Op.AUTHORIZE, Op.PING)
        return ChannelResult(AttemptOutcome.NOT_PROCESSED if not_processed else AttemptOutcome.UNKNOWN,
                             error=ans.error, latency_ms=latency_ms)
    status = ans.http_status
    if ans.op is Op.PING:
        if status == 200 and WirePing.parse(ans.raw).ok:
            return ChannelResult(AttemptOutcome.CAPTURED, latency_ms=latency_ms)
        return ChannelResult(AttemptOutcome.NOT_PROCESSED, error=f"ping answered {status}, not ok",
                             latency_ms=latency_ms)
    if status in (200, 409):
        return _payment_result(ans, latency_ms)
    if status == 404 and ans.op is not Op.AUTHORIZE:
        return ChannelResult(AttemptOutcome.UNKNOWN, latency_ms=latency_ms,
                             error=f"{ans.op} answered 404: no such payment (yet), which proves nothing")
    if status == 404:
        return ChannelResult(AttemptOutcome.NOT_PROCESSED, error="provider answered 404: no such endpoint",
                             latency_ms=latency_ms)
    if ans.op is Op.AUTHORIZE and status in (429, 503):
        return ChannelResult(AttemptOutcome.NOT_PROCESSED, error=f"provider answered {status}: not processed",
                             latency_ms=latency_ms)
    if ans.op is Op.AUTHORIZE and 400 <= status < 500:
        return ChannelResult(AttemptOutcome.NOT_PROCESSED, error=f"provider rejected the request ({status})",
                             latency_ms=latency_ms)
    return ChannelResult(AttemptOutcome.UNKNOWN, error=f"{ans.op} answered {status}", latency_ms=latency_ms)


def _payment_result(ans: WireAnswer, latency_ms: float) -> ChannelResult:
    payment = WirePayment.parse(ans.raw)
    if payment is None:
        return ChannelResult(AttemptOutcome.UNKNOWN, error=f"{ans.op}: unreadable {ans.http_status} answer",
                             latency_ms=latency_ms)
    if ans.reference is not None and payment.reference is not None and payment.reference != ans.reference:
        return ChannelResult(AttemptOutcome.UNKNOWN, latency_ms=latency_ms,
                             error=f"{ans.op}: the answer is about payment {payment.reference[:64]!r}, not the one asked")
    error = None if ans.http_status == 200 else f"{ans.op} refused (409): the payment is {payment.status}"
    outcome = _PAYMENT_STATUS[payment.status]
    if outcome is AttemptOutcome.REQUIRES_ACTION and payment.action_url is None and ans.op is Op.AUTHORIZE:
        return ChannelResult(AttemptOutcome.UNKNOWN, latency_ms=latency_ms,
                             error=f"{ans.op}: requires_action without an action_url")
    return ChannelResult(outcome, provider_ref=payment.provider_ref,
                         decline_code=payment.decline_code, error=error, latency_ms=latency_ms,
                         amount_minor=payment.amount_minor, currency=payment.currency, action_url=payment.action_url)


def refund_outcome_of(ans: WireAnswer, latency_ms: float = 0.0) -> RefundResult:
    """The exhaustive map from a refund's wire answer to its outcome (see the module doc)."""
    status = ans.http_status
    if status == 200:
        refund = WireRefund.parse(ans.raw)
        if refund is None:
            return RefundResult(RefundOutcome.UNKNOWN, error="issue_refund: unreadable 200 answer",
                                latency_ms=latency_ms)
        if refund.refund_reference is None or refund.refund_reference != ans.refund_reference:
            # Not our refund (or a whole-payment answer): nothing in it is about this one.
            return RefundResult(RefundOutcome.UNKNOWN, latency_ms=latency_ms,
                                error=f"issue_refund: the answer is about refund {str(refund.refund_reference)[:64]!r},"
                                      " not the one asked")
        return RefundResult(_REFUND_STATUS[refund.status], amount_minor=refund.amount_minor, latency_ms=latency_ms)
    if status in (409, 422):
        code, message = _error_code(ans.raw)
        if code in _REFUND_REFUSALS:
            said = f": {message[:200]}" if message else ""
            return RefundResult(RefundOutcome.FAILED, code=code, latency_ms=latency_ms,
                                error=f"issue_refund refused ({status} {code}){said}")
    what = ans.error if status is None else f"issue_refund answered {status}"
    return RefundResult(RefundOutcome.UNKNOWN, error=what, latency_ms=latency_ms)


# -- settlement reports -------------------------------------------------------------------

SETTLEMENT_BATCH = 2000
"""Items per batch ``settlements`` yields: a day of millions is never held whole."""

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_MAX_REFERENCE = 255
_NESTED = object()  # an item's field whose value is an object or array: never a valid one


def _is_day(value: str) -> bool:
    """A real date written YYYY-MM-DD (``date.fromisoformat`` alone also takes 2025-W11-5)."""
    if not _DAY.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


_MAX_MINOR = 10**15  # as the API's amounts: what every store's 64-bit integer holds with room


def _is_minor(value: Any) -> bool:
    """An amount in minor units: an integer from 0 to 10^15 (ijson reads 12.5 or 1e3 as a Decimal)."""
    return type(value) is int and 0 <= value <= _MAX_MINOR


def _settlement_item(index: int, doc: dict[str, Any]) -> SettlementItem:
    """Item ``index`` of a report, or SettlementReportError naming its first bad field."""

    def bad(field_name: str, what: str) -> SettlementReportError:
        if field_name not in doc:
            return SettlementReportError(f"item {index}: {field_name} is missing")
        return SettlementReportError(f"item {index}: {field_name} must be {what}")

    reference = doc.get("reference")
    if not isinstance(reference, str) or not 0 < len(reference) <= _MAX_REFERENCE:
        raise bad("reference", f"a string of 1 to {_MAX_REFERENCE} characters")
    provider_ref = doc.get("provider_ref")
    if provider_ref is not None and not isinstance(provider_ref, str):
        raise SettlementReportError(f"item {index}: provider_ref must be a string or null")
    status = doc.get("status")
    if not isinstance(status, str):
        raise bad("status", "a string")
    amount, fee = doc.get("amount_minor"), doc.get("fee_minor")
    if not _is_minor(amount):
        raise bad("amount_minor", "an integer from 0 to 10^15")
    currency = doc.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise bad("currency", "3 uppercase letters")
    if not _is_minor(fee):
        raise bad("fee_minor", "an integer from 0 to 10^15")
    settled_at = doc.get("settled_at")
    if not isinstance(settled_at, str):
        raise bad("settled_at", "a string")
    return SettlementItem(reference, provider_ref, status, amount, currency, fee, settled_at)


class _ReportReader:
    """A settlement report's JSON events (``ijson.basic_parse``), read as they arrive: each
    item checked as it closes, the top-level ``date`` wherever it comes (before the items
    or after them). Pure: no I/O, so a test feeds it events.

    ``depth`` counts the containers open: the document is 1, ``items`` 2, an item 3. Only
    depths 1 to 3 matter; what nests deeper, or sits under another top-level key, is
    skipped unread (by depth, never by a dotted path, which a key with a dot could fake)."""

    def __init__(self, date: str) -> None:
        self.date = date
        self.items = 0  # items read so far
        self.dated = False
        self._listed = False  # an ``items`` array was seen
        self._in_items = False
        self._depth = 0
        self._key: str | None = None  # the top-level key whose value comes next
        self._item: dict[str, Any] | None = None
        self._field: str | None = None  # the item's key whose value comes next

    def feed(self, event: str, value: Any) -> SettlementItem | None:
        """Read one event; the item it completes, if it completes one."""
        depth = self._depth
        if event in ("end_map", "end_array"):
            self._depth = depth - 1
            return self._close(depth)
        if event in ("start_map", "start_array"):
            self._depth = depth + 1
        if depth == 0 and event != "start_map":
            raise SettlementReportError("malformed or truncated report: it is not a JSON object")
        if depth == 1:
            self._top(event, value)
        elif depth == 2 and self._in_items:
            if event != "start_map":
                raise SettlementReportError(f"item {self.items}: must be a JSON object")
            self._item = {}
        elif depth == 3 and self._in_items:
            assert self._item is not None
            if event == "map_key":
                self._field = value
            else:
                self._item[self._field or ""] = _NESTED if event in ("start_map", "start_array") else value
        return None

    def _top(self, event: str, value: Any) -> None:
        if event == "map_key":
            self._key = value
        elif self._key == "date":
            if event != "string" or not _is_day(value):
                raise SettlementReportError("the report's date must be a YYYY-MM-DD string")
            if value != self.date:
                raise SettlementReportError(f"the report is for {value}, not {self.date}")
            self.dated = True
        elif self._key == "items":
            if event != "start_array":
                raise SettlementReportError("the report's items must be an array")
            if self._listed:
                raise SettlementReportError("the report has two items arrays")
            self._listed = self._in_items = True

    def _close(self, depth: int) -> SettlementItem | None:
        if depth == 2 and self._in_items:
            self._in_items = False
        elif depth == 3 and self._in_items and self._item is not None:
            item, self._item = _settlement_item(self.items, self._item), None
            self.items += 1
            return item
        return None

    def finish(self) -> None:
        """At the end of a well-formed document: the parts that must have come."""
        if not self.dated:
            raise SettlementReportError(f"the report names no date (asked for {self.date})")
        if not self._listed:
            raise SettlementReportError("the report has no items array")


def _json_reason(exc: ijson.JSONError) -> str:
    """The first line of an ijson (yajl) error: the rest is a drawing of where it failed."""
    arg = exc.args[0] if exc.args else ""
    text = (arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Errors that prove the request never left: the connection was not made, or the URL
# could not be used. A connect timeout includes the wait for a pooled connection.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)


def _no_answer(op: Op, exc: BaseException, possibly_sent: bool = True) -> WireAnswer:
    """A failure with no HTTP answer. Only a failure that proves nothing left (``_NOT_SENT``)
    is not sent; a bare deadline (TimeoutError) is, unless the caller knows otherwise.

    A deadline cannot pass before the request leaves: the connect phase (pool wait
    included) has its own, shorter timeout, which aiohttp reports as
    ``ConnectionTimeoutError``. So every bare TimeoutError here came after the connection
    was made, when the request may be on its way: read as sent, the safe side
    (docs/performance.md#sent-detection)."""
    not_sent = isinstance(exc, _NOT_SENT) or (isinstance(exc, TimeoutError) and not possibly_sent)
    kind = "connect failed" if not_sent else "timeout" if isinstance(exc, TimeoutError) else "connection lost"
    return WireAnswer(op, None, sent=not not_sent, error=f"{kind}: {type(exc).__name__}")


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    length = resp.content_length
    if length is not None and length <= MAX_BODY_BYTES:
        return await resp.read()  # the common case: one small declared body
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b""  # unreadable, and not worth holding in memory
        chunks.append(chunk)
    return b"".join(chunks)


class HttpChannel:
    """A Channel speaking protocol v1 over HTTP(S).

    One ``aiohttp.ClientSession`` per channel, created on first use inside the running
    loop: pooled keep-alive connections, at most ``max_in_flight`` at once (a request
    waiting for a free one counts against the connect timeout, so it stays NOT_PROCESSED).
    Every call returns a ``ChannelResult`` with ``latency_ms`` measured around the wire
    exchange; provider and network failures never raise.
    """

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
        if kind not in KIND_DEFAULTS:
            raise ValueError(f"kind must be one of {sorted(KIND_DEFAULTS)}, not {kind!r}")
        defaults = KIND_DEFAULTS[kind]
        total_ms = timeout_ms if timeout_ms is not None else defaults.timeout_ms
        connect_ms = connect_timeout_ms if connect_timeout_ms is not None else defaults.connect_timeout_ms
        if total_ms <= 0 or connect_ms <= 0 or (max_in_flight is not None and max_in_flight <= 0):
            raise ValueError("timeout_ms, connect_timeout_ms and max_in_flight must be > 0")
        self.name = name
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        self._payments = URL(self.base_url + "/payments")  # parsed once: every charge goes there
        self.expects_pending = defaults.expects_pending
        self.poll_schedule_s = defaults.poll_schedule_s
        # The connect phase must end before the whole deadline, or a slow connect would
        # surface as a bare deadline instead of the connect timeout that proves "not sent".
        self._timeout = aiohttp.ClientTimeout(total=total_ms / 1000, connect=min(connect_ms, total_ms * 0.9) / 1000)
        # A big day's report takes a minute to arrive: a deadline of its own, and a read
        # timeout that only a provider gone silent reaches.
        self._report_timeout = aiohttp.ClientTimeout(total=max(300.0, 10 * total_ms / 1000),
                                                     connect=self._timeout.connect, sock_read=10 * total_ms / 1000)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limit = max_in_flight or 0
        self._ssl: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._session = session
        self._owns_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=30, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    @property
    def timeout_s(self) -> float:
        """The longest any call takes: past it the call answers (UNKNOWN or NOT_PROCESSED)."""
        return float(self._timeout.total or 0.0)

    async def _call(self, op: Op, method: str, path: str | URL, *, body: dict[str, Any] | None = None,
                    idempotency_key: str | None = None, reference: str | None = None) -> ChannelResult:
        started = time.perf_counter()
        answer = await self._send(op, method, path, body, idempotency_key, reference)
        return outcome_of(answer, (time.perf_counter() - started) * 1000)

    async def _send(self, op: Op, method: str, path: str | URL, body: dict[str, Any] | None,
                    idempotency_key: str | None, reference: str | None, refund_reference: str | None = None
                    ) -> WireAnswer:
        headers = dict(self._auth)
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        url = path if isinstance(path, URL) else URL(self.base_url + path)
        return await self._exchange(op, method, url, headers, data, reference, refund_reference)

    async def _exchange(self, op: Op, method: str, url: URL, headers: dict[str, str], data: bytes | None,
                        reference: str | None = None, refund_reference: str | None = None) -> WireAnswer:
        """The one seam to the network: every library error becomes a ``WireAnswer``."""
        try:
            async with self._client().request(method, url, headers=headers, data=data) as resp:
                return WireAnswer(op, resp.status, await _read_capped(resp), reference=reference,
                                  refund_reference=refund_reference)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _no_answer(op, exc)

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
        if request.three_ds is not None:
            body["three_ds"] = request.three_ds
        return await self._call(Op.AUTHORIZE, "POST", self._payments, body=body, idempotency_key=request.reference,
                                reference=request.reference)

    async def inquire(self, reference: str) -> ChannelResult:
        return await self._call(Op.INQUIRE, "GET", f"/payments/{_segment(reference)}", reference=reference)

    async def void(self, reference: str) -> ChannelResult:
        return await self._call(Op.VOID, "POST", f"/payments/{_segment(reference)}/void",
                                idempotency_key=f"{reference}.void", reference=reference)

    async def refund(self, reference: str) -> ChannelResult:
        return await self._call(Op.REFUND, "POST", f"/payments/{_segment(reference)}/refund",
                                idempotency_key=f"{reference}.refund", reference=reference)

    async def issue_refund(self, request: RefundRequest) -> RefundResult:
        """A partial refund, keyed by its refund_reference: on UNKNOWN, call again with the
        same request (the provider answers that refund as it is now, never a second one)."""
        body = {"refund_reference": request.refund_reference, "amount_minor": request.amount_minor}
        started = time.perf_counter()
        answer = await self._send(Op.ISSUE_REFUND, "POST", f"/payments/{_segment(request.reference)}/refund", body,
                                  request.refund_reference, request.reference, request.refund_reference)
        return refund_outcome_of(answer, (time.perf_counter() - started) * 1000)

    async def settlements(self, date: str) -> AsyncIterator[list[SettlementItem]]:
        """``GET /settlements?date=``, parsed as it streams in: batches of at most
        ``SETTLEMENT_BATCH`` items, the last one only once the whole document was read and
        found valid. Any failure, after some batches too, is SettlementReportError (module
        doc): the caller discards the whole run."""
        if not _is_day(date):
            raise SettlementReportError(f"not a date (YYYY-MM-DD): {date[:40]!r}")
        reader = _ReportReader(date)
        url = URL(self.base_url + "/settlements").with_query(date=date)
        answered = False
        batch: list[SettlementItem] = []
        try:
            async with self._client().get(url, headers=self._auth, timeout=self._report_timeout) as resp:
                answered = True
                if resp.status != 200:
                    code, _ = _error_code(await _read_capped(resp))
                    raise SettlementReportError(f"the provider answered {resp.status}" + (f" ({code})" if code else ""))
                async for event, value in ijson.basic_parse_async(resp.content, buf_size=64 * 1024):
                    if (item := reader.feed(event, value)) is None:
                        continue
                    batch.append(item)
                    if len(batch) >= SETTLEMENT_BATCH:
                        yield batch
                        batch = []
                reader.finish()
        except ijson.JSONError as exc:
            raise SettlementReportError(f"malformed or truncated report: {_json_reason(exc)} "
                                        f"(after {reader.items} items)") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _report_failure(exc, answered, reader.items) from exc
        if batch:
            yield batch

    async def ping(self) -> ChannelResult:
        """CAPTURED means the provider answered ``200 {"status": "ok"}``; ``latency_ms``
        is the probe's round trip. Anything else is NOT_PROCESSED or UNKNOWN (module doc)."""
        return await self._call(Op.PING, "GET", "/ping")

    async def close(self) -> None:
        """Close the session this channel created (never one handed in)."""
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()
            # Let the connector's transports finish closing (aiohttp's advice).
            await asyncio.sleep(0)


def _report_failure(exc: BaseException, answered: bool, items: int) -> SettlementReportError:
    """A network failure while fetching a report: before the answer the provider was not
    reached; after it, the body was cut short (a deadline is "unreachable" either way)."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, TimeoutError):
        return SettlementReportError("unreachable: timeout" + (f" after {items} items" if answered else ""))
    if not answered:
        return SettlementReportError(f"unreachable: {what[:200]}")
    return SettlementReportError(f"malformed or truncated report: the body was cut short after {items} items "
                                 f"({what[:200]})")


def _segment(reference: str) -> str:
    """A reference as one URL path segment: a '/' or '?' in it must not change the route."""
    return quote(reference, safe="")
