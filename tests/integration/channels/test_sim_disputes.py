"""Disputes at the simulator, through its control API (SPEC 16): on a captured payment,
a signed ``disputed`` webhook at once, then ``dispute_won`` or ``dispute_lost`` after the
channel's webhook delay when an outcome is given; the ledger shows the dispute's state."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from loopback import Delivery, req
from simharness import secret_of

from channels import AttemptOutcome
from channels.webhooks import WebhookEvent, verify

O = AttemptOutcome


def verified(delivery: Delivery) -> WebhookEvent:
    return verify(secret_of("t1"), delivery.signature, delivery.body, now=time.time())


@pytest.fixture
async def captured(sim, adapter, receiver):
    """Payment ``r1`` of 1000, captured on t1, with the receiver as its callback."""
    res = await adapter().authorize(req("r1", amount=1000, callback_url=receiver.url))
    assert res.outcome is O.CAPTURED
    return res


@pytest.mark.parametrize("outcome", ["won", "lost"])
async def test_a_dispute_is_told_then_decided_after_the_webhook_delay(sim, captured, receiver, outcome):
    status, entry = await sim.dispute("t1", "r1", outcome=outcome)
    assert status == 200 and entry["reference"] == "r1"
    assert entry["dispute"]["status"] == "open" and entry["dispute"]["decided_at"] is None
    opened, decided = (verified(d) for d in await receiver.wait_for(2))
    assert [(e.status, e.reference, e.provider_ref, e.amount_minor, e.currency, e.refund_reference)
            for e in (opened, decided)] == [
        ("disputed", "r1", captured.provider_ref, 1000, "CNY", None),
        (f"dispute_{outcome}", "r1", captured.provider_ref, 1000, "CNY", None)]
    assert opened.event_id != decided.event_id
    assert "refund_reference" not in orjson.loads(receiver.deliveries[0].body)
    dispute = (await sim.payment("r1"))["dispute"]
    assert dispute["status"] == outcome and dispute["decided_at"] >= dispute["opened_at"]
    assert (await sim.payment("r1"))["status"] == "captured"  # the money's fate is the dispute's
    assert (await sim.stats("t1"))[f"disputes_{outcome}"] == 1


async def test_a_dispute_without_an_outcome_stays_open(sim, captured, receiver):
    assert (await sim.dispute("t1", "r1", outcome=None))[0] == 200
    (delivery,) = await receiver.wait_for(1)
    assert verified(delivery).status == "disputed"
    await asyncio.sleep(0.15)  # past the webhook delay: nothing decides it
    assert len(receiver.deliveries) == 1
    assert (await sim.payment("r1"))["dispute"]["status"] == "open"
    assert (await sim.raw("POST", "/_sim/t1/payments/r1/dispute"))[0] == 409  # no body: outcome null


@pytest.mark.parametrize(("outcome", "refundable"), [(None, False), ("lost", False), ("won", True)])
async def test_refunds_wait_for_a_dispute_and_are_refused_once_it_is_lost(sim, captured, receiver, outcome,
                                                                          refundable):
    await sim.dispute("t1", "r1", outcome=outcome)
    await receiver.wait_for(1 if outcome is None else 2)
    status, body = await sim.refund("t1", "r1", "rf1", 100)
    if refundable:
        assert (status, body["status"]) == (200, "refunded")
    else:
        assert status == 409 and body["error"]["code"] == "disputed"
        assert (await sim.payment("r1"))["refunded_minor"] == 0


async def test_an_out_of_order_dispute_sends_the_opening_event_again_after_the_outcome(sim, captured, receiver):
    await sim.behave("t1", out_of_order_webhook_rate=1.0)
    await sim.dispute("t1", "r1", outcome="won")
    opened, decided, late = (verified(d) for d in await receiver.wait_for(3))
    assert [e.status for e in (opened, decided, late)] == ["disputed", "dispute_won", "disputed"]
    assert late == opened  # the same event, late: a receiver deduplicates it by event_id


async def test_dispute_webhooks_can_be_dropped_and_the_ledger_still_tells(sim, captured, receiver):
    await sim.behave("t1", webhook_drop_rate=1.0)
    await sim.dispute("t1", "r1", outcome="lost")
    await asyncio.sleep(0.15)
    assert receiver.deliveries == []
    assert (await sim.payment("r1"))["dispute"]["status"] == "lost"
    assert (await sim.stats("t1"))["webhooks_dropped"] == 2


async def test_unknown_references_and_channels_are_404(sim):
    for path in ("/_sim/t1/payments/nope/dispute", "/_sim/zz/payments/r1/dispute"):
        status, body = await sim.raw("POST", path, json={"outcome": "won"})
        assert status == 404 and body["error"]["code"] == "not_found", path


async def test_what_is_not_captured_cannot_be_disputed(sim, adapter, captured, receiver):
    await sim.behave("t1", decline_rate=1.0)
    await adapter().authorize(req("d1"))
    await sim.behave("t1", decline_rate=0.0, pending_rate=1.0, webhook_delay_ms=60_000)
    await adapter().authorize(req("p1"))
    await adapter().void("v1")
    await sim.behave("t1", pending_rate=0.0)
    await adapter().authorize(req("f1"))
    await adapter().refund("f1")
    for reference in ("d1", "p1", "v1", "f1"):
        status, body = await sim.dispute("t1", reference, outcome="won")
        assert status == 409 and body["error"]["code"] == "not_captured", (reference, body)
        assert (await sim.payment(reference))["dispute"] is None
    await sim.dispute("t1", "r1")
    status, body = await sim.dispute("t1", "r1", outcome="lost")
    assert status == 409 and body["error"]["code"] == "already_disputed"
    await asyncio.sleep(0.1)
    assert [verified(d).status for d in receiver.deliveries] == ["disputed"]


@pytest.mark.parametrize(("body", "field"), [
    ({"outcome": "draw"}, "outcome"),
    ({"outcome": 1}, "outcome"),
    ({"outcome": True}, "outcome"),
    ({"outcom": "won"}, "outcom"),
    (["won"], "body"),
])
async def test_a_bad_dispute_body_is_422_and_opens_nothing(sim, captured, receiver, body, field):
    status, answer = await sim.raw("POST", "/_sim/t1/payments/r1/dispute", json=body)
    assert status == 422 and answer == {"error": {"code": "invalid_field", "message": answer["error"]["message"],
                                                  "field": field}}
    assert (await sim.payment("r1"))["dispute"] is None
    status, answer = await sim.raw("POST", "/_sim/t1/payments/r1/dispute", data=b"{")
    assert status == 400 and answer["error"]["code"] == "malformed_json"
    await asyncio.sleep(0.05)
    assert receiver.deliveries == []


async def test_a_dispute_is_post_only_and_a_reset_cancels_its_decision(sim, captured, receiver):
    status, body = await sim.raw("GET", "/_sim/t1/payments/r1/dispute")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    await sim.behave("t1", webhook_delay_ms=80)
    await sim.dispute("t1", "r1", outcome="won")
    await receiver.wait_for(1)
    await sim.raw("POST", "/_sim/reset?channel=t1")
    await asyncio.sleep(0.2)
    assert len(receiver.deliveries) == 1 and await sim.ledger() == []
