"""The provider simulator's HTTP face (SPEC section 16): any number of channels on one
port, each at ``/{channel}/...`` speaking protocol v1 with its own live-changeable
behaviour, idempotent by reference like a real provider, and a control API under
``/_sim`` for tests and the demo.

    POST /{ch}/payments                      charge (Idempotency-Key must equal the reference);
                                             "three_ds": "required" | "if_available" may answer
                                             requires_action with an action_url (step-up, below)
    GET  /{ch}/payments/{reference}          the payment, or 404
    POST /{ch}/payments/{reference}/void     200 voided when not yet settled (pending or requires_action;
                                             a reference never seen is voided ahead: a tombstone),
                                             else 409 + state
    POST /{ch}/payments/{reference}/refund   {"refund_reference", "amount_minor"}: 200 with the refund
                                             (refunded, pending or failed), idempotent by
                                             refund_reference; refusals below. No body (or {}):
                                             the whole rest at once, 200 + the payment refunded,
                                             else 409 + state
    GET  /{ch}/settlements?date=YYYY-MM-DD   200 {"date", "items": [...]}: the payments settled that UTC
                                             day, streamed in order of capture (_ledger.py), with the
                                             day's injected discrepancies and the behaviour's
                                             settlement_report_fault; 400 invalid_field (date)
    GET  /{ch}/ping                          200 {"status": "ok"}
    GET  /{ch}/challenge/{reference}         the payer's step-up page (HTML: the amount, complete or
                                             abandon); outside protocol v1: no API key, no outage

    GET|PUT /_sim/{ch}/behaviour             read / change behaviour (partial, validated: 422)
    GET  /_sim/ledger[?channel=]             every payment held, with its status history, its
                                             refunded_minor, refunds and dispute
    GET  /_sim/stats                         counters per channel
    POST /_sim/reset[?channel=]              back to the configured state, ledger emptied
    POST /_sim/{ch}/payments/{reference}/dispute   {"outcome": "won" | "lost" | null}: opens a
                                             dispute on a captured payment (``disputed`` webhook),
                                             decided after the webhook delay when an outcome is
                                             given; 200 + the ledger entry
    POST /_sim/{ch}/payments/{reference}/complete   the payer completes the step-up: captured, and a
                                             captured webhook; 200 + the payment
    POST /_sim/{ch}/payments/{reference}/fail       the payer abandons it: declined action_abandoned,
                                             and a declined webhook; 200 + the payment. Either
                                             one on a payment not in requires_action: 409 + the
                                             payment as it is
    POST /_sim/{ch}/settlement_discrepancies {"date", "drop", "amount", "fee", "unknown",
                                             "settle_voided"} (counts optional, >= 0): alters that
                                             day's report until reset (_ledger.py); 200 + the
                                             references picked by kind, 409 not_enough_payments
                                             (nothing changed) when a kind lacks payments

A step-up (``_behaviour.py`` says when one happens) records the payment ``requires_action``:
nothing is charged until the payer completes it; not completed within ``action_ttl_s`` of
its creation it is ``expired`` (by a timer per challenge, and on any read after the
deadline, so a read never shows a challenge past it). Asked ``"required"`` by a channel
without ``three_ds``: 200 ``declined`` ``three_ds_not_supported``.

Every error is JSON ``{"error": {"code", "message", "field"?}}``. A refund or a dispute
the payment's state refuses (``_ledger.py`` says why) answers:

    409 refund_reference_reused   the refund_reference names a refund of another payment or
                                  amount (a conflict with what exists, not a bad body: 422)
    409 not_captured              pending, declined or voided (a dispute: refunded too)
    409 already_refunded          refunded in full
    409 disputed                  its dispute is open or lost
    409 already_disputed          a payment has one dispute
    422 refund_exceeds_amount     more than is left to refund; nothing changes
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import html
import itertools
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeGuard
from urllib.parse import quote

import orjson
import structlog
from aiohttp import web

from channels.simulator._behaviour import Behaviour, BehaviourError, Fate
from channels.simulator._config import SimConfig, parse_config
from channels.simulator._ledger import DISCREPANCIES, UNSUPPORTED, Payment, Refusal, SimChannel
from channels.simulator._notifier import Notifier

__all__ = ["SIMULATOR", "Simulator", "build_app"]

log = structlog.get_logger("simulator")

MAX_BODY_BYTES = 64 * 1024
_STALL_POLL_S = 0.02
_LIMITS = {"reference": 255, "currency": 3, "method": 64}
_REFUSAL_STATUS = {"refund_reference_reused": 409, "not_captured": 409, "already_refunded": 409, "disputed": 409,
                   "already_disputed": 409, "refund_exceeds_amount": 422, "not_enough_payments": 409}
_OUTCOMES = ("won", "lost", None)
_THREE_DS = ("required", "if_available", None)
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MAX_DISCREPANCIES = 1_000_000
REPORT_CHUNK = 2000
"""Report items per write: a big day is streamed, never built whole."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
V1Handler = Callable[[web.Request, SimChannel], Awaitable[web.StreamResponse]]


# -- answers ------------------------------------------------------------------------------

def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, field: str | None = None,
           headers: Mapping[str, str] | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    return _json({"error": err}, status, headers)


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _drop(request: web.Request) -> web.StreamResponse:
    """Drop the connection with a TCP reset (SO_LINGER 0), as a crashing provider or a
    middlebox does. The response returned is never written: the transport is gone."""
    transport = request.transport
    if transport is not None and not transport.is_closing():
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=204)


async def _stall_then_drop(request: web.Request, seconds: float) -> web.StreamResponse:
    """Answer nothing for ``seconds`` or until the client hangs up (its timeout), then
    drop the connection. Polling keeps a stalled handler from outliving its client."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while _connected(request) and (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(_STALL_POLL_S, left))
    return _drop(request)


async def _write_report(request: web.Request, resp: web.StreamResponse, day: str,
                        items: Iterator[dict[str, Any]], fault: str | None) -> None:
    """A report's body, ``REPORT_CHUNK`` items per write, or broken by its ``fault``
    within its first chunk (``_cut``)."""
    await resp.write(b'{"date":' + orjson.dumps(day) + b',"items":[')
    if fault is not None:
        return await _cut(request, resp, list(itertools.islice(items, REPORT_CHUNK)), fault)
    separator = b""
    while chunk := list(itertools.islice(items, REPORT_CHUNK)):
        await resp.write(separator + b",".join(orjson.dumps(item) for item in chunk))
        separator = b","
    await resp.write(b"]}")


async def _cut(request: web.Request, resp: web.StreamResponse, chunk: list[dict[str, Any]], fault: str) -> None:
    """End a report badly after half of ``chunk``: ``malformed``, garbage follows, the
    response otherwise complete; ``truncated``, half an item follows and the connection is
    closed (flushed first: the client gets a valid start, then no end)."""
    shown = b",".join(orjson.dumps(item) for item in chunk[:max(1, len(chunk) // 2)])
    if fault == "malformed":
        await resp.write(shown + b"]}<html>502 Bad Gateway</html>\x00")
        return
    await resp.write(shown + (b"," if shown else b"") + b'{"reference":"')
    if request.transport is not None:
        request.transport.close()


def _retry_later(status: int, message: str) -> web.Response:
    return _error(status, "unavailable" if status == 503 else "rate_limited", message, headers={"Retry-After": "1"})


def _refused(refusal: Refusal) -> web.Response:
    return _error(_REFUSAL_STATUS[refusal.code], refusal.code, refusal.message)


# -- aiohttp's own refusals, as JSON -------------------------------------------------------

# Without a middleware, which would wrap each payment too: ``_serve``, a catch-all route added
# last and the body readers answer these (docs/architecture.md#the-simulators-refusals).

def _refusal(exc: web.HTTPException) -> web.Response:
    return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)


async def _not_found(_request: web.Request) -> web.Response:
    return _refusal(web.HTTPNotFound())


def _serve(router: web.UrlDispatcher, path: str, **handlers: Handler) -> None:
    """``path`` answering each method in ``handlers`` (GET answers HEAD too, as
    ``add_get`` does) and any other method with a JSON 405."""
    resource = router.add_resource(path)
    allowed = sorted({*handlers, *(["HEAD"] if "GET" in handlers else [])})
    for method, handler in handlers.items():
        if method == "GET":
            resource.add_route("HEAD", handler)
        resource.add_route(method, handler)

    async def method_not_allowed(_request: web.Request) -> web.Response:
        return _error(405, "method_not_allowed", "Method Not Allowed", headers={"Allow": ", ".join(allowed)})

    resource.add_route("*", method_not_allowed)


# -- request validation -------------------------------------------------------------------

def _payment_problem(body: Any, idempotency_key: str | None) -> tuple[str, str] | None:
    """The (field, message) of the first problem in a charge request, or None."""
    if not isinstance(body, dict):
        return "body", "must be a JSON object"
    for key, limit in _LIMITS.items():
        value = body.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            return key, f"a string of 1 to {limit} characters is required"
    if not _positive_int(body.get("amount_minor")):
        return "amount_minor", "a positive integer is required"
    if not isinstance(body.get("instrument", {}), dict):
        return "instrument", "must be a JSON object"
    callback = body.get("callback_url")
    if callback is not None and (not isinstance(callback, str) or not callback.startswith(("http://", "https://"))):
        return "callback_url", "must be an http(s) URL"
    if body.get("three_ds") not in _THREE_DS:
        return "three_ds", "must be \"required\", \"if_available\" or null"
    if idempotency_key != body["reference"]:
        return "Idempotency-Key", "the Idempotency-Key header must equal the reference"
    return None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _refund_problem(body: Any) -> tuple[str, str] | None:
    """The (field, message) of the first problem in a refund request's body, or None."""
    if not isinstance(body, dict):
        return "body", "must be a JSON object"
    reference = body.get("refund_reference")
    if not isinstance(reference, str) or not 0 < len(reference) <= _LIMITS["reference"]:
        return "refund_reference", f"a string of 1 to {_LIMITS['reference']} characters is required"
    if not _positive_int(body.get("amount_minor")):
        return "amount_minor", "a positive integer is required"
    return None


def _dispute_problem(body: Any) -> tuple[str, str] | None:
    """The (field, message) of the first problem in a dispute's body, or None. Unknown keys
    are refused: a misspelt ``outcome`` must not open a dispute that never closes."""
    if not isinstance(body, dict):
        return "body", "must be a JSON object"
    for key in body:
        if key != "outcome":
            return str(key), "unknown field"
    if body.get("outcome") not in _OUTCOMES:
        return "outcome", "must be \"won\", \"lost\" or null"
    return None


def _is_day(value: str | None) -> TypeGuard[str]:
    """A real date written YYYY-MM-DD (``date.fromisoformat`` alone also takes 2025-W11-5)."""
    if value is None or not _DAY.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _discrepancy_problem(body: Any) -> tuple[str, str] | None:
    """The (field, message) of the first problem in a discrepancy request, or None. Unknown
    keys are refused: a misspelt kind must not be read as zero."""
    if not isinstance(body, dict):
        return "body", "must be a JSON object"
    for key in body:
        if key != "date" and key not in DISCREPANCIES:
            return str(key), "unknown field"
    if not isinstance(body.get("date"), str) or not _is_day(body["date"]):
        return "date", "a date YYYY-MM-DD is required"
    for kind in DISCREPANCIES:
        count = body.get(kind, 0)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= _MAX_DISCREPANCIES:
            return kind, f"must be an integer from 0 to {_MAX_DISCREPANCIES}"
    return None


async def _read_json(request: web.Request, empty: Any) -> tuple[Any, web.Response | None]:
    """The request's JSON body (``empty`` when there is none), or the answer refusing it."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        return None, _refusal(exc)
    if not raw.strip():
        return empty, None
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        return None, _error(400, "malformed_json", "the body is not JSON")


def _bearer_ok(request: web.Request, api_key: str) -> bool:
    sent = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sent, f"Bearer {api_key}".encode())


# -- the simulator ------------------------------------------------------------------------

class Simulator:
    """The simulator's state and handlers; ``build_app`` wires them to aiohttp."""

    def __init__(self, config: SimConfig) -> None:
        self.channels = {spec.name: SimChannel(spec) for spec in config.channels}
        self.notifier = Notifier()

    async def lifespan(self, _app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx``: no settlement timer outlives the app."""
        yield
        for ch in self.channels.values():
            ch.cancel_settlements()

    # -- protocol v1 ----------------------------------------------------------------------

    def v1(self, handler: V1Handler) -> Handler:
        """What every protocol-v1 request goes through: the channel, its counters, its
        outage (before authentication: a provider that is down checks nothing), its key."""

        async def route(request: web.Request) -> web.StreamResponse:
            ch = self.channels.get(request.match_info["channel"])
            if ch is None:
                return _error(404, "not_found", "no such channel")
            ch.counters["requests"] += 1
            if ch.behaviour.outage:
                return await self._outage(request, ch)
            if ch.spec.api_key is not None and not _bearer_ok(request, ch.spec.api_key):
                ch.counters["unauthorized"] += 1
                return _error(401, "unauthorized", "missing or wrong API key")
            return await handler(request, ch)

        return route

    async def _outage(self, request: web.Request, ch: SimChannel) -> web.StreamResponse:
        ch.counters["outage_answers"] += 1
        mode = ch.behaviour.outage_mode
        if mode == "refuse":
            return _retry_later(503, "channel in outage")
        if mode == "hang":
            return await _stall_then_drop(request, ch.behaviour.hang_ms / 1000)
        return _drop(request)

    async def authorize(self, request: web.Request, ch: SimChannel) -> web.StreamResponse:
        ch.counters["authorizations"] += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            ch.counters["rejected"] += 1
            return _error(400, "malformed_json", "the body is not JSON")
        except web.HTTPRequestEntityTooLarge as exc:
            return _refusal(exc)
        if problem := _payment_problem(body, request.headers.get("Idempotency-Key")):
            ch.counters["rejected"] += 1
            return _error(422, "invalid_field", problem[1], problem[0])
        if ch.spec.currencies is not None and body["currency"] not in ch.spec.currencies:
            ch.counters["rejected"] += 1
            return _error(422, "unsupported_currency", f"this channel takes {sorted(ch.spec.currencies)}", "currency")
        await asyncio.sleep(ch.behaviour.latency_s(ch.rng))
        existing = ch.payments.get(body["reference"])
        if existing is not None:  # idempotent by reference: its current state, never a second charge
            ch.counters["replays"] += 1
            self.notifier.expire_if_due(ch, existing)
            if existing.history and existing.history[0][1] == "voided":
                ch.counters["refused_by_tombstone"] += 1
            return _json(existing.wire())
        return await self._charge(request, ch, body)

    async def _charge(self, request: web.Request, ch: SimChannel, body: dict[str, Any]) -> web.StreamResponse:
        """A new payment meets its fate (see _behaviour.py for the list), or a step-up in
        place of its capture. Its segment (if any) sets the decline rate and codes it meets."""
        b = ch.behaviour.for_charge(body)
        if body.get("three_ds") == "required" and not b.three_ds:
            return self._unsupported(ch, body)
        fate = b.fate(ch.rng)
        step_up = b.steps_up(fate, body.get("three_ds"), ch.rng)  # drawn now: the sleep below lets others draw
        if fate is Fate.NOT_PROCESSED:
            ch.counters["not_processed"] += 1
            return _retry_later(ch.rng.choice((429, 503)), "not processed: try again or elsewhere")
        if fate is Fate.TIMEOUT_BEFORE_CAPTURE:
            ch.counters["answers_lost"] += 1
            return await _stall_then_drop(request, b.hang_ms / 1000)
        if fate is Fate.RESET_BEFORE_CAPTURE:
            ch.counters["answers_lost"] += 1
            return _drop(request)
        if fate is Fate.LATE_PROCESSING:
            # Still working on it after the client gave up: it lands late, unless a void
            # left a tombstone meanwhile.
            ch.counters["late_processing"] += 1
            await asyncio.sleep(b.late_processing_ms * b.latency_multiplier / 1000)
            existing = ch.payments.get(body["reference"])
            if existing is not None:
                ch.counters["refused_by_tombstone"] += existing.status == "voided"
                return _json(existing.wire())
            fate = Fate.CAPTURE
        payment = ch.record(body["reference"], body["amount_minor"], body["currency"], body.get("callback_url"))
        if step_up:
            self.notifier.challenge(ch, payment, _action_url(request, ch, payment.reference))
        else:
            self._settle_at_once(ch, b, payment, fate)
        if fate is Fate.TIMEOUT_AFTER_CAPTURE:
            ch.counters["answers_lost"] += 1
            return await _stall_then_drop(request, b.hang_ms / 1000)
        if fate is Fate.RESET:
            ch.counters["answers_lost"] += 1
            return _drop(request)
        if fate is Fate.ERROR_500_AFTER_CAPTURE:
            ch.counters["errors_500"] += 1
            return _error(500, "internal_error", "provider error")
        return _json(payment.wire())

    @staticmethod
    def _unsupported(ch: SimChannel, body: dict[str, Any]) -> web.Response:
        """Step-up asked of a channel without it: declined at once, before any draw (a
        provider refuses what it cannot do before it processes anything)."""
        payment = ch.record(body["reference"], body["amount_minor"], body["currency"], body.get("callback_url"))
        ch.move(payment, "declined", UNSUPPORTED)
        ch.counters["step_ups_unsupported"] += 1
        return _json(payment.wire())

    def _settle_at_once(self, ch: SimChannel, b: Behaviour, payment: Payment, fate: Fate) -> None:
        if fate is Fate.DECLINE:
            ch.move(payment, "declined", b.decline_code(ch.rng))
        elif fate is Fate.PENDING:
            ch.move(payment, "pending")
            self.notifier.schedule(ch, payment, b)
        else:
            ch.move(payment, "captured")

    async def _lookup(self, request: web.Request, ch: SimChannel) -> Payment | None:
        """A reference's payment, after the channel's light-request latency."""
        await asyncio.sleep(ch.behaviour.ping_latency_s())
        payment = ch.payments.get(request.match_info["reference"])
        if payment is not None:
            self.notifier.expire_if_due(ch, payment)
        return payment

    async def inquire(self, request: web.Request, ch: SimChannel) -> web.StreamResponse:
        if (payment := await self._lookup(request, ch)) is None:
            return _error(404, "not_found", "no such payment")
        return _json(payment.wire())

    async def void(self, request: web.Request, ch: SimChannel) -> web.StreamResponse:
        if (payment := await self._lookup(request, ch)) is None:
            reference = request.match_info["reference"]
            if len(reference) > _LIMITS["reference"]:
                return _error(404, "not_found", "no such payment")
            return _json(ch.tombstone(reference).wire())
        if payment.status == "pending":
            ch.cancel_settlement(payment.reference)
            ch.move(payment, "voided")
        elif payment.status == "requires_action":  # the challenge is cancelled: a later complete is 409
            ch.end_challenge(payment, "voided")
        return _json(payment.wire(), 200 if payment.status == "voided" else 409)

    async def refund(self, request: web.Request, ch: SimChannel) -> web.StreamResponse:
        if (payment := await self._lookup(request, ch)) is None:
            return _error(404, "not_found", "no such payment")
        body, refused = await _read_json(request, empty={})
        if refused is not None:
            return refused
        if body == {}:
            return self._refund_the_rest(ch, payment)
        if problem := _refund_problem(body):
            ch.counters["rejected"] += 1
            return _error(422, "invalid_field", problem[1], problem[0])
        refund_reference, amount = body["refund_reference"], body["amount_minor"]
        if (known := ch.refunds.get(refund_reference)) is not None:
            if (known.reference, known.amount_minor) != (payment.reference, amount):
                ch.counters["refunds_refused"] += 1
                return _refused(Refusal("refund_reference_reused", f"refund_reference {refund_reference!r} names a "
                                        "refund of another payment or amount"))
            ch.counters["refund_replays"] += 1
            return _json(known.wire())
        if refusal := payment.refund_refusal(amount):
            ch.counters["refunds_refused"] += 1
            return _refused(refusal)
        b = ch.behaviour
        pending, failed = b.chance("refund_pending_rate", ch.rng), b.chance("refund_failure_rate", ch.rng)
        status = "pending" if pending else "failed" if failed else "refunded"
        refund = ch.refund(payment, refund_reference, amount, status)
        if pending:
            self.notifier.schedule_refund(ch, payment, refund, failed)
        return _json(refund.wire())

    @staticmethod
    def _refund_the_rest(ch: SimChannel, payment: Payment) -> web.Response:
        """A refund without a body, as before refunds were partial: all that is left, at
        once, answered with the payment (refunded, or 409 with the state that refuses it)."""
        if payment.refund_refusal(None) is None:
            ch.refund(payment, ch.new_id("rf"), payment.refundable_minor, "refunded")
        return _json(payment.wire(), 200 if payment.status == "refunded" else 409)

    async def settlement_report(self, request: web.Request, ch: SimChannel) -> web.StreamResponse:
        """The day's report, streamed ``REPORT_CHUNK`` items per write, or its fault."""
        ch.counters["settlement_reports"] += 1
        day = request.query.get("date")
        if not _is_day(day):
            ch.counters["rejected"] += 1
            return _error(400, "invalid_field", "a date YYYY-MM-DD is required", "date")
        fault = ch.behaviour.settlement_report_fault
        if fault == "unavailable":
            return _retry_later(503, "the settlement report is not available")
        items = ch.report(day)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await resp.prepare(request)
            if request.method != "HEAD":  # a body after a HEAD answer would corrupt the connection
                await _write_report(request, resp, day, items, fault)
        except ConnectionError:  # the client hung up: nothing to finish
            pass
        return resp

    async def ping(self, request: web.Request, ch: SimChannel) -> web.StreamResponse:
        ch.counters["pings"] += 1
        await asyncio.sleep(ch.behaviour.ping_latency_s())
        return _json({"status": "ok"})

    # -- control API ----------------------------------------------------------------------

    def _named(self, name: str | None) -> SimChannel:
        ch = self.channels.get(name or "")
        if ch is None:
            raise _NoSuchChannel()
        return ch

    async def get_behaviour(self, request: web.Request) -> web.Response:
        return self._behaviour_view(self._named(request.match_info["channel"]))

    async def put_behaviour(self, request: web.Request) -> web.Response:
        ch = self._named(request.match_info["channel"])
        try:
            changes = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "malformed_json", "the body is not JSON")
        except web.HTTPRequestEntityTooLarge as exc:
            return _refusal(exc)
        try:
            ch.behaviour = ch.behaviour.updated(changes)
        except BehaviourError as exc:
            return _error(422, "invalid_field", exc.message, exc.field)
        log.info("behaviour_changed", channel=ch.name, changes=changes)
        return self._behaviour_view(ch)

    @staticmethod
    def _behaviour_view(ch: SimChannel) -> web.Response:
        return _json({"channel": ch.name, "kind": ch.spec.kind, "behaviour": ch.behaviour.to_json()})

    def _selected(self, request: web.Request) -> list[SimChannel]:
        only = request.query.get("channel")
        return list(self.channels.values()) if only is None else [self._named(only)]

    async def ledger(self, request: web.Request) -> web.Response:
        chosen = self._selected(request)
        for ch in chosen:
            self.notifier.expire_if_due(ch)
        payments = [p.ledger() for ch in chosen for p in ch.payments.values()]
        return _json({"payments": payments, "count": len(payments)})

    async def stats(self, request: web.Request) -> web.Response:
        return _json({ch.name: ch.stats() for ch in self._selected(request)})

    async def dispute(self, request: web.Request) -> web.Response:
        ch = self._named(request.match_info["channel"])
        if (payment := ch.payments.get(request.match_info["reference"])) is None:
            return _error(404, "not_found", "no such payment")
        self.notifier.expire_if_due(ch, payment)
        body, refused = await _read_json(request, empty={})
        if refused is not None:
            return refused
        if problem := _dispute_problem(body):
            return _error(422, "invalid_field", problem[1], problem[0])
        if refusal := payment.dispute_refusal():
            return _refused(refusal)
        self.notifier.dispute(ch, payment, body.get("outcome"))
        log.info("dispute_opened", channel=ch.name, reference=payment.reference, outcome=body.get("outcome"))
        return _json(payment.ledger())

    async def complete(self, request: web.Request) -> web.Response:
        return self._payer_acts(request, "complete")

    async def fail(self, request: web.Request) -> web.Response:
        return self._payer_acts(request, "fail")

    def _payer_acts(self, request: web.Request, action: str) -> web.Response:
        """The payer completes or abandons a step-up: 200 + the payment, or 409 + the
        payment when it does not require action (any more)."""
        ch = self._named(request.match_info["channel"])
        if (payment := ch.payments.get(request.match_info["reference"])) is None:
            return _error(404, "not_found", "no such payment")
        self.notifier.expire_if_due(ch, payment)
        if not self.notifier.end_challenge(ch, payment, action):
            return _json(payment.wire(), 409)
        log.info("challenge_ended", channel=ch.name, reference=payment.reference, status=payment.status)
        return _json(payment.wire())

    async def challenge_page(self, request: web.Request) -> web.Response:
        """The payer's page for a step-up (``_challenge_html``); JSON 404 when unknown."""
        ch = self._named(request.match_info["channel"])
        if (payment := ch.payments.get(request.match_info["reference"])) is None or payment.challenge is None:
            return _error(404, "not_found", "no such challenge")
        self.notifier.expire_if_due(ch, payment)
        return web.Response(text=_challenge_html(ch.name, payment), content_type="text/html",
                            headers=_PAGE_HEADERS)

    async def settlement_discrepancies(self, request: web.Request) -> web.Response:
        ch = self._named(request.match_info["channel"])
        body, refused = await _read_json(request, empty={})
        if refused is not None:
            return refused
        if problem := _discrepancy_problem(body):
            return _error(422, "invalid_field", problem[1], problem[0])
        picked = ch.inject_discrepancies(body["date"], body)
        if isinstance(picked, Refusal):
            return _refused(picked)
        log.info("settlement_discrepancies", channel=ch.name, date=body["date"],
                 **{kind: len(refs) for kind, refs in picked.items()})
        return _json(picked)

    async def reset(self, request: web.Request) -> web.Response:
        chosen = self._selected(request)
        for ch in chosen:
            ch.reset()
        log.info("reset", channels=[ch.name for ch in chosen])
        return _json({"reset": [ch.name for ch in chosen]})


def _action_url(request: web.Request, ch: SimChannel, reference: str) -> str:
    """Where the payer completes a step-up: this simulator's page, as the client reached it."""
    return f"{request.url.origin()}/{ch.name}/challenge/{quote(reference, safe='')}"


# Self-contained: nothing loads from anywhere, and the only script is the page's own.
_PAGE_HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'; "
                 "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'"}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Confirm your payment</title>
<style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}}
.amount{{font-size:2rem;margin:.5rem 0}} form{{display:inline}}
button{{font-size:1rem;padding:.5rem 1rem;margin:.5rem .5rem 0 0}}
</style></head><body>
<h1>Confirm your payment</h1>
<p>{channel} asks you to confirm this payment.</p>
<p class="amount">{amount} <small>{currency} (minor units)</small></p>
<p>Reference <code>{reference}</code>: <strong id="status">{status}</strong></p>
{actions}
</body></html>
"""
_ACTIONS = """<form method="post" action="{base}/complete"><button>Confirm</button></form>
<form method="post" action="{base}/fail"><button>Cancel</button></form>
<script>
for (const form of document.forms) form.addEventListener("submit", async (event) => {{
  event.preventDefault();
  const answer = await fetch(form.action, {{method: "POST"}});
  document.getElementById("status").textContent = (await answer.json()).status.replace("_", " ");
  for (const f of [...document.forms]) f.remove();
}});
</script>"""


def _challenge_html(channel: str, payment: Payment) -> str:
    """The page a payer sees: the amount, and while the step-up is open, two buttons that
    post to the control API's complete and fail (by script, so the page shows the result)."""
    base = f"/_sim/{channel}/payments/{quote(payment.reference, safe='')}"
    actions = _ACTIONS.format(base=html.escape(base)) if payment.status == "requires_action" else ""
    return _PAGE.format(channel=html.escape(channel), amount=payment.amount_minor,
                        currency=html.escape(payment.currency), reference=html.escape(payment.reference),
                        status=html.escape(payment.status.replace("_", " ")), actions=actions)


class _NoSuchChannel(web.HTTPNotFound):
    def __init__(self) -> None:
        super().__init__(text=orjson.dumps({"error": {"code": "not_found", "message": "no such channel"}}).decode(),
                         content_type="application/json")


SIMULATOR = web.AppKey("simulator", Simulator)


def build_app(config: SimConfig | Mapping[str, Any]) -> web.Application:
    """The simulator app for a config (a ``SimConfig`` or the parsed YAML document).
    Nothing runs until the app starts: the webhook session lives in ``cleanup_ctx``."""
    sim = Simulator(config if isinstance(config, SimConfig) else parse_config(config))
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SIMULATOR] = sim
    app.cleanup_ctx.append(sim.notifier.lifespan)
    app.cleanup_ctx.append(sim.lifespan)  # cleaned up first: settlements stop before the session closes
    r = app.router
    _serve(r, "/_sim/ledger", GET=sim.ledger)
    _serve(r, "/_sim/stats", GET=sim.stats)
    _serve(r, "/_sim/reset", POST=sim.reset)
    _serve(r, "/_sim/{channel}/behaviour", GET=sim.get_behaviour, PUT=sim.put_behaviour)
    _serve(r, "/_sim/{channel}/payments/{reference}/dispute", POST=sim.dispute)
    _serve(r, "/_sim/{channel}/payments/{reference}/complete", POST=sim.complete)
    _serve(r, "/_sim/{channel}/payments/{reference}/fail", POST=sim.fail)
    _serve(r, "/_sim/{channel}/settlement_discrepancies", POST=sim.settlement_discrepancies)
    _serve(r, "/{channel}/payments", POST=sim.v1(sim.authorize))
    _serve(r, "/{channel}/payments/{reference}", GET=sim.v1(sim.inquire))
    _serve(r, "/{channel}/payments/{reference}/void", POST=sim.v1(sim.void))
    _serve(r, "/{channel}/payments/{reference}/refund", POST=sim.v1(sim.refund))
    _serve(r, "/{channel}/settlements", GET=sim.v1(sim.settlement_report))
    _serve(r, "/{channel}/ping", GET=sim.v1(sim.ping))
    _serve(r, "/{channel}/challenge/{reference}", GET=sim.challenge_page)
    r.add_route("*", "/{path:.*}", _not_found)  # last: whatever no resource above matched
    return app
