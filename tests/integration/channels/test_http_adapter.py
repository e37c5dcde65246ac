"""The protocol-v1 adapter against the real simulator over loopback HTTP: every wire
case mapped to the spec's attempt outcome, and the simulator charging at most once."""

from __future__ import annotations

import asyncio
import socket

import pytest
from simharness import Sim, fast_channel, running_sim

from channels import AttemptOutcome, PaymentRequest
from channels.http import HttpChannel, WireAnswer, outcome_of

O = AttemptOutcome


@pytest.fixture
async def sim():
    async with running_sim([fast_channel("t1"), fast_channel("t2", api_key="k-123")]) as s:
        yield s


def adapter(sim: Sim, name: str = "t1", **kw) -> HttpChannel:
    return HttpChannel(name, "direct_api", f"{sim.url}/{name}", timeout_ms=kw.pop("timeout_ms", 400), **kw)


def req(ref: str, amount: int = 8500) -> PaymentRequest:
    return PaymentRequest(ref, amount, "CNY", "ewallet", {"token": "tok_1"}, None)


async def _status_of(sim: Sim, ref: str) -> str | None:
    return next((p["status"] for p in await sim.ledger() if p["reference"] == ref), None)


async def test_captured_and_the_same_reference_never_charges_twice(sim):
    ch = adapter(sim)
    try:
        first = await ch.authorize(req("r1"))
        again = await ch.authorize(req("r1"))
        assert first.outcome is O.CAPTURED and first.provider_ref and first.latency_ms > 0
        assert again.outcome is O.CAPTURED and again.provider_ref == first.provider_ref
        assert len(await sim.ledger()) == 1
        assert (await ch.inquire("r1")).outcome is O.CAPTURED
    finally:
        await ch.close()


async def test_declined_carries_its_code(sim):
    await sim.behave("t1", decline_rate=1.0, decline_codes={"do_not_honor": 1})
    ch = adapter(sim)
    try:
        res = await ch.authorize(req("r1"))
        assert res.outcome is O.DECLINED and res.decline_code == "do_not_honor"
    finally:
        await ch.close()


async def test_429_and_503_are_not_processed_and_nothing_is_charged(sim):
    await sim.behave("t1", not_processed_rate=1.0)
    ch = adapter(sim)
    try:
        for i in range(6):
            res = await ch.authorize(req(f"r{i}"))
            assert res.outcome is O.NOT_PROCESSED, res
        assert await sim.ledger() == []
        assert (await ch.inquire("r1")).outcome is O.NOT_PROCESSED  # 404: no such payment
    finally:
        await ch.close()


async def test_connection_refused_is_not_processed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch = HttpChannel("x", "direct_api", f"http://127.0.0.1:{port}/x", timeout_ms=300)
    try:
        res = await ch.authorize(req("r1"))
        assert res.outcome is O.NOT_PROCESSED and "connect" in res.error
        assert (await ch.ping()).outcome is O.NOT_PROCESSED
    finally:
        await ch.close()


async def test_timeout_before_capture_is_unknown_and_inquiry_finds_nothing(sim):
    await sim.behave("t1", timeout_before_capture_rate=1.0)
    ch = adapter(sim)
    try:
        res = await ch.authorize(req("r1"))
        assert res.outcome is O.UNKNOWN and "timeout" in res.error
        await sim.behave("t1", timeout_before_capture_rate=0.0)
        assert (await ch.inquire("r1")).outcome is O.NOT_PROCESSED
    finally:
        await ch.close()


async def test_timeout_after_capture_is_unknown_and_inquiry_finds_the_capture(sim):
    await sim.behave("t1", timeout_after_capture_rate=1.0)
    ch = adapter(sim)
    try:
        assert (await ch.authorize(req("r1"))).outcome is O.UNKNOWN
        assert (await ch.inquire("r1")).outcome is O.CAPTURED
        assert await _status_of(sim, "r1") == "captured"
    finally:
        await ch.close()


async def test_a_reset_after_send_is_unknown(sim):
    await sim.behave("t1", reset_rate=1.0)
    ch = adapter(sim)
    try:
        res = await ch.authorize(req("r1"))
        assert res.outcome is O.UNKNOWN, res
        assert await _status_of(sim, "r1") == "captured"
    finally:
        await ch.close()


async def test_a_500_is_unknown(sim):
    await sim.behave("t1", error_500_after_capture_rate=1.0)
    ch = adapter(sim)
    try:
        assert (await ch.authorize(req("r1"))).outcome is O.UNKNOWN
    finally:
        await ch.close()


async def test_pending_then_void_then_a_capture_refuses_void(sim):
    await sim.behave("t1", pending_rate=1.0, webhook_delay_ms=60_000)
    ch = adapter(sim)
    try:
        assert (await ch.authorize(req("p1"))).outcome is O.PENDING
        assert (await ch.inquire("p1")).outcome is O.PENDING
        assert (await ch.void("p1")).outcome is O.VOIDED
        assert (await ch.void("p1")).outcome is O.VOIDED  # idempotent
        await sim.behave("t1", pending_rate=0.0)
        assert (await ch.authorize(req("c1"))).outcome is O.CAPTURED
        void = await ch.void("c1")
        assert void.outcome is O.CAPTURED and "refused" in void.error  # 409 with its state
        assert (await ch.void("nope")).outcome is O.NOT_PROCESSED
    finally:
        await ch.close()


async def test_refund_of_a_capture(sim):
    ch = adapter(sim)
    try:
        await ch.authorize(req("r1"))
        assert (await ch.refund("r1")).outcome is O.REFUNDED
        assert (await ch.inquire("r1")).outcome is O.REFUNDED
        assert await _status_of(sim, "r1") == "refunded"
    finally:
        await ch.close()


async def test_outage_modes_and_recovery(sim):
    ch = adapter(sim)
    try:
        await sim.behave("t1", outage=True, outage_mode="refuse")
        assert (await ch.authorize(req("o1"))).outcome is O.NOT_PROCESSED
        assert (await ch.ping()).outcome is O.NOT_PROCESSED
        assert (await ch.inquire("o1")).outcome is O.UNKNOWN, "a refused inquiry proves nothing"
        await sim.behave("t1", outage_mode="hang")
        assert (await ch.authorize(req("o2"))).outcome is O.UNKNOWN
        assert (await ch.ping()).outcome is O.UNKNOWN
        await sim.behave("t1", outage_mode="reset")
        assert (await ch.authorize(req("o3"))).outcome is O.UNKNOWN
        await sim.behave("t1", outage=False)
        assert (await ch.ping()).outcome is O.CAPTURED
        assert (await ch.authorize(req("o4"))).outcome is O.CAPTURED
        assert [p["reference"] for p in await sim.ledger()] == ["o4"]
    finally:
        await ch.close()


async def test_the_api_key_is_sent_and_checked(sim):
    good, bad = adapter(sim, "t2", api_key="k-123"), adapter(sim, "t2", api_key="wrong")
    try:
        assert (await good.authorize(req("k1"))).outcome is O.CAPTURED
        assert (await bad.authorize(req("k2"))).outcome is O.NOT_PROCESSED  # 401: an explicit reject
    finally:
        await good.close()
        await bad.close()


async def test_bad_control_api_input_is_422_and_changes_nothing(sim):
    before = await sim.behave("t1")
    for bad in ({"decline_rate": 2}, {"latency_ms": -1}, {"outage_mode": "explode"}, {"colour": "red"},
                {"decline_codes": {}}, {"decline_rate": 0.6, "pending_rate": 0.6}):
        async with sim.session.put(f"{sim.url}/_sim/t1/behaviour", json=bad) as resp:
            body = await resp.json()
            assert resp.status == 422 and body["error"]["field"], (bad, body)
    assert await sim.behave("t1") == before
    async with sim.session.put(f"{sim.url}/_sim/t1/behaviour", data=b"{") as resp:
        assert resp.status == 400
    async with sim.session.put(f"{sim.url}/_sim/zz/behaviour", json={}) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (WireAnswer("authorize", 200, {"status": "captured", "provider_ref": "p"}, True), O.CAPTURED),
        (WireAnswer("authorize", 200, {"status": "weird"}, True), O.UNKNOWN),
        (WireAnswer("authorize", 200, None, True), O.UNKNOWN),
        (WireAnswer("authorize", 502, None, True), O.UNKNOWN),
        (WireAnswer("authorize", 400, None, True), O.NOT_PROCESSED),
        (WireAnswer("authorize", None, None, False, "refused"), O.NOT_PROCESSED),
        (WireAnswer("authorize", None, None, True, "timeout"), O.UNKNOWN),
        (WireAnswer("inquire", 404, None, True), O.NOT_PROCESSED),
        (WireAnswer("inquire", 200, {"status": "voided"}, True), O.VOIDED),
        (WireAnswer("inquire", 503, None, True), O.UNKNOWN),  # the inquiry failed, not the payment
        (WireAnswer("void", 429, None, True), O.UNKNOWN),
        (WireAnswer("void", 409, {"status": "captured"}, True), O.CAPTURED),
        (WireAnswer("refund", 200, {"status": "refunded"}, True), O.REFUNDED),
        (WireAnswer("ping", 200, None, True), O.CAPTURED),
        (WireAnswer("ping", 500, None, True), O.NOT_PROCESSED),
    ],
)
def test_the_one_mapping_from_wire_to_outcome(answer, expected):
    assert outcome_of(answer).outcome is expected
