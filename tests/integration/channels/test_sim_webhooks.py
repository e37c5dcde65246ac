"""Pending payments settle later and the simulator tells the callback URL with signed
webhooks (SPEC section 6): verified here with ``channels.webhooks.verify``, the function
the orchestrator uses. Duplicates, out-of-order events, drops and retries included."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from loopback import Delivery, closed_port, req
from simharness import secret_of

from channels import AttemptOutcome
from channels.webhooks import SignatureError, WebhookEvent, verify

O = AttemptOutcome


def verified(delivery: Delivery, channel: str = "t1") -> WebhookEvent:
    return verify(secret_of(channel), delivery.signature, delivery.body, now=time.time())


async def test_a_pending_payment_settles_and_a_signed_webhook_is_delivered(sim, adapter, receiver):
    await sim.behave("t1", pending_rate=1.0)
    res = await adapter().authorize(req("p1", callback_url=receiver.url))
    assert res.outcome is O.PENDING
    (delivery,) = await receiver.wait_for(1)
    event = verified(delivery)
    assert (event.reference, event.provider_ref, event.status, event.decline_code) == \
        ("p1", res.provider_ref, "captured", None)
    assert event.event_id.startswith("evt_")
    assert set(orjson.loads(delivery.body)) == {"event_id", "reference", "provider_ref", "status", "decline_code",
                                                "amount_minor", "currency"}
    with pytest.raises(SignatureError):
        verify(secret_of("t2"), delivery.signature, delivery.body, now=time.time())
    assert [h["status"] for h in (await sim.payment("p1"))["history"]] == ["pending", "captured"]


async def test_a_pending_payment_can_settle_declined_with_a_code(sim, adapter, receiver):
    await sim.behave("t1", pending_rate=1.0, pending_decline_rate=1.0, decline_codes={"do_not_honor": 1})
    await adapter().authorize(req("p1", callback_url=receiver.url))
    event = verified((await receiver.wait_for(1))[0])
    assert (event.status, event.decline_code) == ("declined", "do_not_honor")


async def test_a_digital_currency_channel_settles_the_same_way(sim, adapter, receiver):
    ch = adapter("settle", "digital_currency")
    assert ch.expects_pending
    assert (await ch.authorize(req("p1", callback_url=receiver.url))).outcome is O.PENDING
    event = verified((await receiver.wait_for(1))[0], "settle")
    assert event.status == "captured"
    assert (await ch.inquire("p1")).outcome is O.CAPTURED


async def test_duplicate_webhooks_carry_the_same_event_id(sim, adapter, receiver):
    await sim.behave("t1", pending_rate=1.0, duplicate_webhook_rate=1.0)
    await adapter().authorize(req("p1", callback_url=receiver.url))
    first, second = (verified(d) for d in await receiver.wait_for(2))
    assert first == second
    assert (await sim.stats("t1"))["webhooks_duplicated"] == 1


async def test_out_of_order_webhooks_send_a_stale_pending_after_the_final_state(sim, adapter, receiver):
    await sim.behave("t1", pending_rate=1.0, out_of_order_webhook_rate=1.0)
    await adapter().authorize(req("p1", callback_url=receiver.url))
    final, stale = (verified(d) for d in await receiver.wait_for(2))
    assert (final.status, stale.status) == ("captured", "pending")
    assert final.event_id != stale.event_id and stale.reference == "p1"
    assert (await sim.payment("p1"))["status"] == "captured"  # the provider's truth did not move back


async def test_delivery_is_retried_on_failure_with_a_fresh_signature_each_time(sim, adapter, receiver):
    receiver.answers = [500, 503]
    await sim.behave("t1", pending_rate=1.0)
    await adapter().authorize(req("p1", callback_url=receiver.url))
    deliveries = await receiver.wait_for(3)
    assert len({verified(d).event_id for d in deliveries}) == 1
    stats = await sim.stats("t1")
    assert (stats["webhooks_sent"], stats["webhook_failures"], stats["webhooks_delivered"]) == (3, 2, 1)


async def test_delivery_gives_up_after_the_bounded_number_of_attempts(sim, adapter, receiver):
    receiver.answers = [500] * 10
    await sim.behave("t1", pending_rate=1.0, webhook_max_attempts=3)
    await adapter().authorize(req("p1", callback_url=receiver.url))
    await receiver.wait_for(3)
    await asyncio.sleep(0.2)  # longer than the next backoff would be
    assert len(receiver.deliveries) == 3
    stats = await sim.stats("t1")
    assert (stats["webhooks_given_up"], stats["webhooks_delivered"]) == (1, 0)
    assert (await sim.payment("p1"))["status"] == "captured"  # the inquiry still finds it


async def test_a_dropped_webhook_is_never_sent_but_the_payment_settles(sim, adapter, receiver):
    await sim.behave("t1", pending_rate=1.0, webhook_drop_rate=1.0)
    ch = adapter()
    await ch.authorize(req("p1", callback_url=receiver.url))
    await asyncio.sleep(0.15)
    assert receiver.deliveries == []
    assert (await ch.inquire("p1")).outcome is O.CAPTURED
    assert (await sim.stats("t1"))["webhooks_dropped"] == 1


async def test_a_voided_pending_payment_sends_no_webhook(sim, adapter, receiver):
    await sim.behave("t1", pending_rate=1.0, webhook_delay_ms=80)
    ch = adapter()
    await ch.authorize(req("p1", callback_url=receiver.url))
    assert (await ch.void("p1")).outcome is O.VOIDED
    await asyncio.sleep(0.2)
    assert receiver.deliveries == []


async def test_an_unreachable_callback_is_retried_then_given_up(sim, adapter):
    await sim.behave("t1", pending_rate=1.0, webhook_max_attempts=2)
    await adapter().authorize(req("p1", callback_url=f"http://127.0.0.1:{closed_port()}/hook"))
    for _ in range(50):
        if (await sim.stats("t1"))["webhooks_given_up"]:
            break
        await asyncio.sleep(0.02)
    stats = await sim.stats("t1")
    assert (stats["webhooks_sent"], stats["webhook_failures"], stats["webhooks_given_up"]) == (2, 2, 1)
