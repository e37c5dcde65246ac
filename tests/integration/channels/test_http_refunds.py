"""Partial refunds through the protocol-v1 adapter, over loopback HTTP (SPEC 6): each wire
answer mapped to its refund outcome, against the real simulator where it can say it and a
scripted provider where only a broken one would, and the simulator's ledger checked for
what was really given back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from loopback import closed_port, req
from simharness import start

from channels import AttemptOutcome, Channel, RefundOutcome, RefundRequest
from channels.http import HttpChannel

R = RefundOutcome


def refund(refund_reference: str, amount: int, reference: str = "r1") -> RefundRequest:
    return RefundRequest(reference, refund_reference, amount)


@pytest.fixture
async def captured(sim, adapter):
    """Payment ``r1`` of 1000, captured on t1."""
    assert (await adapter().authorize(req("r1", amount=1000))).outcome is AttemptOutcome.CAPTURED


async def _refunded_minor(sim, reference: str = "r1") -> int:
    return (await sim.payment(reference))["refunded_minor"]


async def test_the_adapter_still_is_a_channel(adapter):
    assert isinstance(adapter(), Channel)


async def test_a_refund_is_refunded_with_its_amount_and_a_measured_latency(sim, adapter, captured):
    res = await adapter().issue_refund(refund("rf1", 300))
    assert (res.outcome, res.amount_minor, res.code, res.error) == (R.REFUNDED, 300, None, None)
    assert res.latency_ms > 0
    entry = await sim.payment("r1")
    assert (entry["status"], entry["refunded_minor"]) == ("captured", 300)
    assert [(r["refund_reference"], r["amount_minor"], r["status"]) for r in entry["refunds"]] == \
        [("rf1", 300, "refunded")]


async def test_asking_again_under_the_same_refund_reference_never_refunds_twice(sim, adapter, captured):
    ch = adapter()
    first = await ch.issue_refund(refund("rf1", 300))
    again = await asyncio.gather(*(ch.issue_refund(refund("rf1", 300)) for _ in range(3)))
    assert {(r.outcome, r.amount_minor) for r in (first, *again)} == {(R.REFUNDED, 300)}
    assert await _refunded_minor(sim) == 300
    stats = await sim.stats("t1")
    assert (stats["refund_requests"], stats["refund_replays"]) == (1, 3)


async def test_partial_refunds_add_up_and_the_last_one_refunds_the_payment(sim, adapter, captured):
    ch = adapter()
    for ref, amount in (("rf1", 300), ("rf2", 700)):
        assert (await ch.issue_refund(refund(ref, amount))).outcome is R.REFUNDED
    assert (await ch.inquire("r1")).outcome is AttemptOutcome.REFUNDED
    assert await _refunded_minor(sim) == 1000


async def test_a_pending_refund_turns_refunded_when_asked_again(sim, adapter, captured):
    await sim.behave("t1", refund_pending_rate=1.0, webhook_delay_ms=60)
    ch = adapter()
    res = await ch.issue_refund(refund("rf1", 400))
    assert (res.outcome, res.amount_minor) == (R.PENDING, 400)
    assert await _refunded_minor(sim) == 0
    await asyncio.sleep(0.2)
    res = await ch.issue_refund(refund("rf1", 400))
    assert (res.outcome, res.amount_minor) == (R.REFUNDED, 400)
    assert await _refunded_minor(sim) == 400
    assert (await sim.stats("t1"))["refund_requests"] == 1


async def test_a_pending_refund_can_end_failed(sim, adapter, captured):
    await sim.behave("t1", refund_pending_rate=1.0, refund_failure_rate=1.0, webhook_delay_ms=60)
    ch = adapter()
    assert (await ch.issue_refund(refund("rf1", 400))).outcome is R.PENDING
    await asyncio.sleep(0.2)
    res = await ch.issue_refund(refund("rf1", 400))
    assert (res.outcome, res.amount_minor, res.code) == (R.FAILED, 400, None)
    assert await _refunded_minor(sim) == 0


async def test_a_failed_refund_stays_failed_and_a_new_reference_may_try_again(sim, adapter, captured):
    await sim.behave("t1", refund_failure_rate=1.0)
    ch = adapter()
    res = await ch.issue_refund(refund("rf1", 1000))
    assert (res.outcome, res.amount_minor, res.code) == (R.FAILED, 1000, None)
    await sim.behave("t1", refund_failure_rate=0.0)
    assert (await ch.issue_refund(refund("rf1", 1000))).outcome is R.FAILED
    assert (await ch.issue_refund(refund("rf2", 1000))).outcome is R.REFUNDED
    assert await _refunded_minor(sim) == 1000


async def test_the_providers_refusals_are_failed_with_their_code_and_change_nothing(sim, adapter, captured):
    await sim.behave("t1", decline_rate=1.0)
    ch = adapter()
    await ch.authorize(req("d1", amount=1000))
    await sim.behave("t1", decline_rate=0.0)
    await ch.authorize(req("r2", amount=500))
    await ch.authorize(req("r3", amount=500))
    assert (await ch.issue_refund(refund("rf-all", 500, "r2"))).outcome is R.REFUNDED
    assert (await sim.dispute("t1", "r3"))[0] == 200
    assert (await ch.issue_refund(refund("rf1", 250))).outcome is R.REFUNDED
    before = await sim.ledger()
    cases = [
        (refund("rf2", 751), "refund_exceeds_amount"),
        (refund("rf1", 300), "refund_reference_reused"),  # another amount
        (refund("rf1", 250, "r2"), "refund_reference_reused"),  # another payment
        (refund("rf3", 100, "d1"), "not_captured"),
        (refund("rf4", 1, "r2"), "already_refunded"),
        (refund("rf5", 100, "r3"), "disputed"),
    ]
    for request, code in cases:
        res = await ch.issue_refund(request)
        assert (res.outcome, res.code, res.amount_minor) == (R.FAILED, code, None), (request, res)
        assert code in res.error
    assert await sim.ledger() == before


async def test_no_such_payment_is_unknown_not_failed(sim, adapter):
    res = await adapter().issue_refund(refund("rf1", 100, "never-sent"))
    assert res.outcome is R.UNKNOWN and "404" in res.error
    assert (await sim.stats("t1"))["refund_requests"] == 0


async def test_a_wrong_api_key_is_unknown(sim, adapter):
    ch = adapter("t2", api_key="k-123")
    await ch.authorize(req("r1", amount=1000))
    res = await adapter("t2", api_key="wrong").issue_refund(refund("rf1", 100))
    assert res.outcome is R.UNKNOWN and "401" in res.error
    assert (await ch.issue_refund(refund("rf1", 100))).outcome is R.REFUNDED


@pytest.mark.parametrize("mode", ["refuse", "hang", "reset"])
async def test_an_outage_is_unknown_and_the_same_refund_goes_through_after_it(sim, adapter, captured, mode):
    await sim.behave("t1", outage=True, outage_mode=mode, hang_ms=1000)
    ch = adapter(timeout_ms=200)
    res = await ch.issue_refund(refund("rf1", 300))
    assert res.outcome is R.UNKNOWN and res.error, res
    await sim.behave("t1", outage=False)
    assert (await ch.issue_refund(refund("rf1", 300))).outcome is R.REFUNDED
    assert await _refunded_minor(sim) == 300


async def test_nothing_listening_is_unknown(adapter):
    res = await adapter(base_url=f"http://127.0.0.1:{closed_port()}/t1").issue_refund(refund("rf1", 1))
    assert res.outcome is R.UNKNOWN and res.error.startswith("connect failed")


# -- a provider only a broken one would be ------------------------------------------------

Script = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[HttpChannel]]]:
    """Serves one handler at ``POST /payments/{reference}/refund`` and makes an adapter to it."""
    runners: list[web.AppRunner] = []
    channels: list[HttpChannel] = []

    async def make(handler: Script) -> HttpChannel:
        app = web.Application()
        app.router.add_post("/payments/{reference}/refund", handler)
        runner, url = await start(app)
        runners.append(runner)
        channels.append(HttpChannel("x", "direct_api", url, timeout_ms=300, api_key="k1"))
        return channels[-1]

    yield make
    for ch in channels:
        await ch.close()
    for runner in runners:
        await runner.cleanup()


async def test_the_request_is_keyed_by_its_refund_reference(scripted):
    seen: list[tuple[str, dict[str, str], dict]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.match_info["reference"], dict(request.headers), await request.json()))
        return web.json_response({"refund_reference": "rf/1", "status": "refunded", "amount_minor": 5})

    res = await (await scripted(handler)).issue_refund(RefundRequest("pay/1?x", "rf/1", 5))
    assert res.outcome is R.REFUNDED
    ((reference, headers, body),) = seen
    assert reference == "pay/1?x"  # one path segment, however the reference is spelt
    assert (headers["Idempotency-Key"], headers["Authorization"], headers["Content-Type"]) == \
        ("rf/1", "Bearer k1", "application/json")
    assert body == {"refund_reference": "rf/1", "amount_minor": 5}


def answering(status: int, body: bytes | dict) -> Script:
    async def handler(_request: web.Request) -> web.Response:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return web.Response(status=status, body=raw, content_type="application/json")

    return handler


@pytest.mark.parametrize(("status", "body"), [
    (200, {"refund_reference": "rf-other", "status": "refunded", "amount_minor": 100}),  # another refund
    (200, {"status": "refunded", "amount_minor": 100}),  # names no refund
    (200, {"reference": "r1", "status": "refunded", "refunded_minor": 1000}),  # a whole-payment answer
    (200, {"refund_reference": "rf1", "status": "settled", "amount_minor": 100}),
    (200, b"<html>ok</html>"),
    (200, b""),
    (409, {"error": {"code": "conflict", "message": "request in progress"}}),
    (422, {"error": {"code": "invalid_field", "message": "amount_minor"}}),
    (409, b"refund_exceeds_amount"),
    (429, {"error": {"code": "rate_limited"}}),
    (503, {"error": {"code": "unavailable"}}),
    (500, {"error": {"code": "refund_exceeds_amount"}}),  # a refusal code on a 5xx is no refusal
    (502, b""),
])
async def test_every_answer_that_proves_nothing_is_unknown(scripted, status, body):
    res = await (await scripted(answering(status, body))).issue_refund(refund("rf1", 100))
    assert (res.outcome, res.code) == (R.UNKNOWN, None), res
    assert res.error


async def test_a_reset_after_the_request_is_unknown(scripted):
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    res = await (await scripted(handler)).issue_refund(refund("rf1", 100))
    assert res.outcome is R.UNKNOWN and res.error.startswith("connection lost")


async def test_a_late_answer_is_unknown(scripted):
    async def handler(_request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.json_response({"refund_reference": "rf1", "status": "refunded", "amount_minor": 100})

    res = await (await scripted(handler)).issue_refund(refund("rf1", 100))
    assert res.outcome is R.UNKNOWN and res.error.startswith("timeout")
