"""Refunds at the simulator, over loopback HTTP (SPEC 6 and 16): partial, several per
payment, idempotent by refund_reference, never more than was captured; some answered
pending and settled later with a signed webhook, some failed; the ledger shows them."""

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


def verified(delivery: Delivery, channel: str = "t1") -> WebhookEvent:
    return verify(secret_of(channel), delivery.signature, delivery.body, now=time.time())


@pytest.fixture
async def captured(sim, adapter, receiver):
    """Payment ``r1`` of 1000, captured on t1, with the receiver as its callback."""
    res = await adapter().authorize(req("r1", amount=1000, callback_url=receiver.url))
    assert res.outcome is O.CAPTURED
    return res


async def _payment(sim, reference: str = "r1") -> dict:
    status, body = await sim.raw("GET", f"/t1/payments/{reference}")
    assert status == 200
    return body


async def test_partial_refunds_add_up_to_the_amount_and_then_the_payment_is_refunded(sim, captured):
    for ref, amount in (("rf1", 300), ("rf2", 300)):
        assert await sim.refund("t1", "r1", ref, amount) == \
            (200, {"refund_reference": ref, "status": "refunded", "amount_minor": amount})
    payment = await _payment(sim)
    assert (payment["status"], payment["refunded_minor"]) == ("captured", 600)
    assert await sim.refund("t1", "r1", "rf3", 400) == \
        (200, {"refund_reference": "rf3", "status": "refunded", "amount_minor": 400})
    payment = await _payment(sim)
    assert (payment["status"], payment["refunded_minor"]) == ("refunded", 1000)
    entry = await sim.payment("r1")
    assert [(r["refund_reference"], r["amount_minor"], r["status"]) for r in entry["refunds"]] == \
        [("rf1", 300, "refunded"), ("rf2", 300, "refunded"), ("rf3", 400, "refunded")]
    assert [h["status"] for h in entry["history"]] == ["captured", "refunded"]
    stats = await sim.stats("t1")
    assert (stats["refund_requests"], stats["refunds"]) == (3, 1)


async def test_the_same_refund_reference_again_answers_that_refund_and_never_refunds_twice(sim, captured):
    first = await sim.refund("t1", "r1", "rf1", 250)
    assert await sim.refund("t1", "r1", "rf1", 250) == first
    assert (await _payment(sim))["refunded_minor"] == 250
    assert len((await sim.payment("r1"))["refunds"]) == 1
    stats = await sim.stats("t1")
    assert (stats["refund_requests"], stats["refund_replays"]) == (1, 1)


async def test_a_refund_reference_reused_with_another_amount_or_payment_is_a_409(sim, adapter, captured):
    await adapter().authorize(req("r2", amount=1000))
    await sim.refund("t1", "r1", "rf1", 250)
    for reference, amount in (("r1", 300), ("r2", 250)):
        status, body = await sim.refund("t1", reference, "rf1", amount)
        assert status == 409 and body["error"]["code"] == "refund_reference_reused", body
    assert [(await _payment(sim, r))["refunded_minor"] for r in ("r1", "r2")] == [250, 0]


async def test_an_over_refund_is_refused_and_changes_nothing(sim, captured):
    await sim.refund("t1", "r1", "rf1", 600)
    before = await sim.payment("r1")
    status, body = await sim.refund("t1", "r1", "rf2", 401)
    assert status == 422 and body["error"]["code"] == "refund_exceeds_amount"
    assert "400 is left" in body["error"]["message"]
    assert await sim.payment("r1") == before
    assert (await sim.refund("t1", "r1", "rf2", 400))[1]["status"] == "refunded"  # the name is still free


async def test_a_refund_after_a_full_refund_is_refused(sim, adapter, captured):
    await sim.refund("t1", "r1", "rf1", 1000)
    status, body = await sim.refund("t1", "r1", "rf2", 1)
    assert status == 409 and body["error"]["code"] == "already_refunded"
    await adapter().authorize(req("r2", amount=500))
    assert (await adapter().refund("r2")).outcome is O.REFUNDED  # no body: the whole payment
    status, body = await sim.refund("t1", "r2", "rf3", 1)
    assert status == 409 and body["error"]["code"] == "already_refunded"
    assert (await _payment(sim, "r2"))["refunded_minor"] == 500


async def test_no_body_refunds_the_rest_after_partial_refunds(sim, adapter, captured):
    await sim.refund("t1", "r1", "rf1", 300)
    status, payment = await sim.refund("t1", "r1")
    assert status == 200 and (payment["status"], payment["refunded_minor"]) == ("refunded", 1000)
    status, again = await sim.raw("POST", "/t1/payments/r1/refund", json={})  # an empty body is no body
    assert (status, again) == (200, payment)
    rest = (await sim.payment("r1"))["refunds"][1]
    assert rest["amount_minor"] == 700 and rest["refund_reference"].startswith("rf_")


async def test_what_is_not_captured_cannot_be_refunded(sim, adapter):
    await sim.behave("t1", decline_rate=1.0)
    await adapter().authorize(req("d1"))
    await sim.behave("t1", decline_rate=0.0, pending_rate=1.0, webhook_delay_ms=60_000)
    await adapter().authorize(req("p1"))
    await adapter().void("v1")  # a tombstone
    for reference in ("d1", "p1", "v1"):
        status, body = await sim.refund("t1", reference, "rf1", 100)
        assert status == 409 and body["error"]["code"] == "not_captured", (reference, body)
    status, body = await sim.refund("t1", "never-sent", "rf1", 100)
    assert status == 404 and body["error"]["code"] == "not_found"
    assert (await sim.stats("t1"))["refund_requests"] == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"refund_reference": "", "amount_minor": 100}, "refund_reference"),
    ({"refund_reference": 7, "amount_minor": 100}, "refund_reference"),
    ({"refund_reference": "x" * 256, "amount_minor": 100}, "refund_reference"),
    ({"amount_minor": 100}, "refund_reference"),
    ({"refund_reference": "rf1"}, "amount_minor"),
    ({"refund_reference": "rf1", "amount_minor": 0}, "amount_minor"),
    ({"refund_reference": "rf1", "amount_minor": -5}, "amount_minor"),
    ({"refund_reference": "rf1", "amount_minor": True}, "amount_minor"),
    ({"refund_reference": "rf1", "amount_minor": "100"}, "amount_minor"),
    ([100], "body"),
])
async def test_a_bad_refund_body_is_422_and_refunds_nothing(sim, captured, body, field):
    status, answer = await sim.raw("POST", "/t1/payments/r1/refund", json=body)
    assert status == 422 and answer["error"]["field"] == field, answer
    assert (await sim.payment("r1"))["refunds"] == []


async def test_a_refund_body_that_is_not_json_is_400(sim, captured):
    status, body = await sim.raw("POST", "/t1/payments/r1/refund", data=b"{")
    assert status == 400 and body["error"]["code"] == "malformed_json"
    assert (await sim.payment("r1"))["status"] == "captured"


async def test_a_pending_refund_holds_its_share_then_settles_with_a_signed_webhook(sim, captured, receiver):
    await sim.behave("t1", refund_pending_rate=1.0, webhook_delay_ms=300)
    assert await sim.refund("t1", "r1", "rf1", 400) == \
        (200, {"refund_reference": "rf1", "status": "pending", "amount_minor": 400})
    assert (await _payment(sim))["refunded_minor"] == 0
    status, body = await sim.refund("t1", "r1", "rf2", 601)
    assert status == 422 and body["error"]["code"] == "refund_exceeds_amount"
    (delivery,) = await receiver.wait_for(1)
    event = verified(delivery)
    assert (event.reference, event.provider_ref, event.status, event.amount_minor, event.currency,
            event.refund_reference, event.decline_code) == \
        ("r1", captured.provider_ref, "refunded", 400, "CNY", "rf1", None)
    assert event.event_id.startswith("evt_")
    assert set(orjson.loads(delivery.body)) == {"event_id", "reference", "provider_ref", "status", "decline_code",
                                                "amount_minor", "currency", "refund_reference"}
    assert (await _payment(sim))["refunded_minor"] == 400
    assert (await sim.refund("t1", "r1", "rf1", 400))[1]["status"] == "refunded"  # the replay, settled


async def test_a_failed_refund_refunds_nothing_and_stays_failed_under_its_reference(sim, captured, receiver):
    await sim.behave("t1", refund_failure_rate=1.0)
    assert await sim.refund("t1", "r1", "rf1", 1000) == \
        (200, {"refund_reference": "rf1", "status": "failed", "amount_minor": 1000})
    await sim.behave("t1", refund_failure_rate=0.0)
    assert (await sim.refund("t1", "r1", "rf1", 1000))[1]["status"] == "failed"
    payment = await _payment(sim)
    assert (payment["status"], payment["refunded_minor"]) == ("captured", 0)
    assert (await sim.refund("t1", "r1", "rf2", 1000))[1]["status"] == "refunded"  # a new name, all of it
    await asyncio.sleep(0.1)
    assert receiver.deliveries == []  # answered at once: nothing to tell later
    assert (await sim.stats("t1"))["refunds_failed"] == 1


async def test_a_pending_refund_can_settle_failed_and_give_its_share_back(sim, captured, receiver):
    await sim.behave("t1", refund_pending_rate=1.0, refund_failure_rate=1.0)
    assert (await sim.refund("t1", "r1", "rf1", 1000))[1]["status"] == "pending"
    event = verified((await receiver.wait_for(1))[0])
    assert (event.status, event.refund_reference, event.amount_minor) == ("failed", "rf1", 1000)
    assert (await sim.payment("r1"))["refunds"][0]["status"] == "failed"
    await sim.behave("t1", refund_pending_rate=0.0, refund_failure_rate=0.0)
    assert (await sim.refund("t1", "r1", "rf2", 1000))[1]["status"] == "refunded"


async def test_refund_webhooks_are_duplicated_and_dropped_like_the_others(sim, captured, receiver):
    await sim.behave("t1", refund_pending_rate=1.0, duplicate_webhook_rate=1.0, out_of_order_webhook_rate=1.0)
    await sim.refund("t1", "r1", "rf1", 100)
    first, second = (verified(d) for d in await receiver.wait_for(2))
    assert first == second and first.refund_reference == "rf1"
    await sim.behave("t1", duplicate_webhook_rate=0.0, webhook_drop_rate=1.0)
    await sim.refund("t1", "r1", "rf2", 100)
    await asyncio.sleep(0.15)
    assert len(receiver.deliveries) == 2  # no stale 'pending' for a refund, nothing for the dropped one
    assert (await _payment(sim))["refunded_minor"] == 200  # dropped, yet settled: an inquiry finds it
    stats = await sim.stats("t1")
    assert (stats["webhooks_duplicated"], stats["webhooks_dropped"], stats["webhooks_out_of_order"]) == (1, 1, 0)


async def test_a_reset_cancels_a_pending_refund(sim, captured, receiver):
    await sim.behave("t1", refund_pending_rate=1.0, webhook_delay_ms=80)
    await sim.refund("t1", "r1", "rf1", 100)
    await sim.raw("POST", "/_sim/reset?channel=t1")
    await asyncio.sleep(0.2)
    assert receiver.deliveries == [] and await sim.ledger() == []


async def test_the_ledger_shows_refunded_minor_each_refund_and_the_dispute(sim, captured):
    await sim.behave("t1", refund_pending_rate=1.0, webhook_delay_ms=60_000)
    await sim.refund("t1", "r1", "rf1", 100)
    (entry,) = await sim.ledger("t1")
    assert set(entry) == {"reference", "provider_ref", "status", "decline_code", "amount_minor", "currency",
                          "refunded_minor", "channel", "created_at", "history", "refunds", "dispute"}
    assert (entry["refunded_minor"], entry["dispute"]) == (0, None)
    (refund,) = entry["refunds"]
    assert set(refund) == {"refund_reference", "status", "amount_minor", "created_at", "updated_at"}
    assert (refund["refund_reference"], refund["status"], refund["amount_minor"]) == ("rf1", "pending", 100)
    assert refund["created_at"] == refund["updated_at"] >= entry["created_at"]
