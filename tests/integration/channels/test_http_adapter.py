"""The protocol-v1 adapter against the real simulator over loopback HTTP: every wire case
mapped to the spec's attempt outcome (SPEC sections 6 and 7), and what the provider
really holds checked in its ledger."""

from __future__ import annotations

import asyncio

import aiohttp
from loopback import closed_port, req

from channels import AttemptOutcome, Channel
from channels.http import HttpChannel

O = AttemptOutcome


async def test_the_adapter_is_a_channel(adapter):
    ch = adapter()
    assert isinstance(ch, Channel)
    assert (ch.name, ch.kind, ch.expects_pending) == ("t1", "direct_api", False)


async def test_captured_carries_the_provider_ref_and_a_measured_latency(sim, adapter):
    ch = adapter()
    res = await ch.authorize(req("r1"))
    assert res.outcome is O.CAPTURED and res.error is None
    payment = await sim.payment("r1")
    assert res.provider_ref == payment["provider_ref"] and res.provider_ref.startswith("pr_")
    assert res.latency_ms > 0
    assert (await ch.inquire("r1")).outcome is O.CAPTURED


async def test_resending_a_reference_charges_once(sim, adapter):
    ch = adapter()
    first = await ch.authorize(req("r1"))
    again = await ch.authorize(req("r1"))
    assert again.outcome is O.CAPTURED and again.provider_ref == first.provider_ref
    assert [(p["reference"], p["status"]) for p in await sim.ledger()] == [("r1", "captured")]
    stats = await sim.stats("t1")
    assert (stats["captures"], stats["replays"], stats["authorizations"]) == (1, 1, 2)


async def test_concurrent_sends_of_one_reference_charge_once(sim, adapter):
    await sim.behave("t1", latency_ms=20)
    ch = adapter()
    results = await asyncio.gather(*(ch.authorize(req("r1")) for _ in range(8)))
    assert {r.outcome for r in results} == {O.CAPTURED}
    assert len({r.provider_ref for r in results}) == 1
    assert len(await sim.ledger()) == 1 and (await sim.stats("t1"))["captures"] == 1


async def test_pending_then_settled_and_inquiry_follows(sim, adapter):
    await sim.behave("t1", pending_rate=1.0, webhook_delay_ms=50)
    ch = adapter()
    res = await ch.authorize(req("p1"))
    assert res.outcome is O.PENDING and res.provider_ref
    assert (await ch.inquire("p1")).outcome is O.PENDING
    await asyncio.sleep(0.15)
    assert (await ch.inquire("p1")).outcome is O.CAPTURED


async def test_declined_carries_its_weighted_code(sim, adapter):
    await sim.behave("t1", decline_rate=1.0, decline_codes={"do_not_honor": 1, "insufficient_funds": 3})
    ch = adapter()
    results = [await ch.authorize(req(f"d{i}")) for i in range(20)]
    assert {r.outcome for r in results} == {O.DECLINED}
    codes = [r.decline_code for r in results]
    assert set(codes) == {"do_not_honor", "insufficient_funds"}
    assert codes.count("insufficient_funds") > codes.count("do_not_honor")
    assert (await ch.inquire("d0")).decline_code == codes[0]


async def test_429_and_503_are_not_processed_and_nothing_is_recorded(sim, adapter):
    await sim.behave("t1", not_processed_rate=1.0)
    ch = adapter()
    results = [await ch.authorize(req(f"n{i}")) for i in range(12)]
    assert {r.outcome for r in results} == {O.NOT_PROCESSED}
    assert {r.error for r in results} == {"provider answered 429: not processed",
                                           "provider answered 503: not processed"}
    assert await sim.ledger() == []
    assert (await ch.inquire("n0")).outcome is O.UNKNOWN  # 404: no such payment, which proves nothing


async def test_connection_refused_is_not_processed():
    ch = HttpChannel("x", "direct_api", f"http://127.0.0.1:{closed_port()}/x", timeout_ms=300)
    try:
        res = await ch.authorize(req("r1"))
        assert res.outcome is O.NOT_PROCESSED and res.error.startswith("connect failed")
        assert (await ch.ping()).outcome is O.NOT_PROCESSED
        # An inquiry that never reached the provider says nothing about the payment.
        assert (await ch.inquire("r1")).outcome is O.UNKNOWN
        assert (await ch.void("r1")).outcome is O.UNKNOWN
    finally:
        await ch.close()


async def test_dns_failure_is_not_processed():
    ch = HttpChannel("x", "direct_api", "http://no-such-host.invalid/x", timeout_ms=2000)
    try:
        res = await ch.authorize(req("r1"))
        assert res.outcome is O.NOT_PROCESSED and res.error.startswith("connect failed")
    finally:
        await ch.close()


async def test_timeout_before_capture_is_unknown_and_nothing_was_charged(sim, adapter):
    await sim.behave("t1", timeout_before_capture_rate=1.0)
    ch = adapter(timeout_ms=200)
    res = await ch.authorize(req("r1"))
    assert res.outcome is O.UNKNOWN and res.error.startswith("timeout")
    assert 190 < res.latency_ms < 1000
    assert (await ch.inquire("r1")).outcome is O.UNKNOWN
    assert await sim.ledger() == []


async def test_timeout_after_capture_is_unknown_and_inquiry_finds_the_capture(sim, adapter):
    await sim.behave("t1", timeout_after_capture_rate=1.0)
    ch = adapter(timeout_ms=200)
    assert (await ch.authorize(req("r1"))).outcome is O.UNKNOWN
    assert (await ch.inquire("r1")).outcome is O.CAPTURED
    assert (await sim.payment("r1"))["status"] == "captured"


async def test_a_reset_after_capture_is_unknown(sim, adapter):
    await sim.behave("t1", reset_rate=1.0)
    ch = adapter()
    res = await ch.authorize(req("r1"))
    assert res.outcome is O.UNKNOWN and res.error.startswith("connection lost"), res
    assert (await ch.inquire("r1")).outcome is O.CAPTURED


async def test_a_reset_before_capture_is_unknown_and_nothing_was_charged(sim, adapter):
    await sim.behave("t1", reset_before_capture_rate=1.0)
    ch = adapter()
    assert (await ch.authorize(req("r1"))).outcome is O.UNKNOWN
    assert (await ch.inquire("r1")).outcome is O.UNKNOWN


async def test_a_500_after_capture_is_unknown(sim, adapter):
    await sim.behave("t1", error_500_after_capture_rate=1.0)
    ch = adapter()
    res = await ch.authorize(req("r1"))
    assert res.outcome is O.UNKNOWN and res.error == "authorize answered 500"
    assert (await ch.inquire("r1")).outcome is O.CAPTURED


async def test_an_unknown_outcome_resent_returns_the_recorded_state(sim, adapter):
    await sim.behave("t1", error_500_after_capture_rate=1.0)
    ch = adapter()
    assert (await ch.authorize(req("r1"))).outcome is O.UNKNOWN
    assert (await ch.authorize(req("r1"))).outcome is O.CAPTURED  # the replay, not a new fate
    assert len(await sim.ledger()) == 1


async def test_an_explicit_reject_is_not_processed(sim, adapter):
    unsupported = await adapter("cny").authorize(req("r1", currency="PHP"))
    assert unsupported.outcome is O.NOT_PROCESSED and "422" in unsupported.error
    unknown_path = await adapter("nope").authorize(req("r2"))
    assert unknown_path.outcome is O.NOT_PROCESSED and "404" in unknown_path.error
    assert await sim.ledger() == []


async def test_the_api_key_is_sent_and_a_wrong_one_is_rejected(sim, adapter):
    assert (await adapter("t2", api_key="k-123").authorize(req("k1"))).outcome is O.CAPTURED
    wrong = await adapter("t2", api_key="wrong").authorize(req("k2"))
    assert wrong.outcome is O.NOT_PROCESSED and "401" in wrong.error
    assert (await adapter("t2").ping()).outcome is O.NOT_PROCESSED  # no key at all
    assert [p["reference"] for p in await sim.ledger()] == ["k1"]


async def test_inquiry_of_an_unknown_reference_is_unknown_not_proof(adapter):
    res = await adapter().inquire("never-sent")
    assert res.outcome is O.UNKNOWN and "no such payment" in res.error


async def test_references_are_one_path_segment(sim, adapter):
    ch = adapter()
    assert (await ch.authorize(req("a/b?c=d#e"))).outcome is O.CAPTURED
    assert (await ch.inquire("a/b?c=d#e")).outcome is O.CAPTURED
    assert (await sim.payment("a/b?c=d#e"))["status"] == "captured"


async def test_void_of_a_pending_payment_stops_its_settlement(sim, adapter):
    await sim.behave("t1", pending_rate=1.0, webhook_delay_ms=50)
    ch = adapter()
    assert (await ch.authorize(req("p1"))).outcome is O.PENDING
    assert (await ch.void("p1")).outcome is O.VOIDED
    assert (await ch.void("p1")).outcome is O.VOIDED  # voiding twice is the same answer
    await asyncio.sleep(0.15)  # past the settlement it would have had
    assert (await ch.inquire("p1")).outcome is O.VOIDED
    assert [h["status"] for h in (await sim.payment("p1"))["history"]] == ["pending", "voided"]


async def test_void_of_a_captured_payment_is_refused_with_its_state(adapter):
    ch = adapter()
    await ch.authorize(req("c1"))
    res = await ch.void("c1")
    assert res.outcome is O.CAPTURED and "409" in res.error


async def test_a_void_of_a_reference_never_seen_leaves_a_tombstone_the_late_charge_meets(sim, adapter):
    """SPEC 6: the provider records the void, so the charge still on its way is refused
    as voided and charges nothing: the confirmation that lets a recharge move on."""
    await sim.behave("t1", late_processing_rate=1.0, late_processing_ms=300)
    ch = adapter(timeout_ms=100)
    assert (await ch.authorize(req("late1"))).outcome is O.UNKNOWN  # the client gave up
    assert (await ch.inquire("late1")).outcome is O.UNKNOWN  # 404: still being processed
    assert (await ch.void("late1")).outcome is O.VOIDED
    await asyncio.sleep(0.4)  # the late charge lands now, and meets the tombstone
    assert (await ch.inquire("late1")).outcome is O.VOIDED
    assert (await sim.payment("late1"))["status"] == "voided"
    assert (await sim.stats("t1"))["refused_by_tombstone"] == 1


async def test_a_late_charge_with_no_void_lands_captured_after_the_client_gave_up(sim, adapter):
    await sim.behave("t1", late_processing_rate=1.0, late_processing_ms=300)
    ch = adapter(timeout_ms=100)
    assert (await ch.authorize(req("late2"))).outcome is O.UNKNOWN
    assert (await ch.inquire("late2")).outcome is O.UNKNOWN
    await asyncio.sleep(0.4)
    assert (await ch.inquire("late2")).outcome is O.CAPTURED


async def test_refund_of_a_capture_and_of_what_cannot_be_refunded(sim, adapter):
    ch = adapter()
    await ch.authorize(req("r1"))
    assert (await ch.refund("r1")).outcome is O.REFUNDED
    assert (await ch.refund("r1")).outcome is O.REFUNDED  # idempotent
    assert (await ch.inquire("r1")).outcome is O.REFUNDED
    await sim.behave("t1", decline_rate=1.0)
    await ch.authorize(req("d1"))
    refused = await ch.refund("d1")
    assert refused.outcome is O.DECLINED and "409" in refused.error
    assert (await ch.refund("never-sent")).outcome is O.UNKNOWN, "a 404 is not a refund"
    assert (await sim.payment("r1"))["status"] == "refunded"


async def test_ping_is_captured_when_ok_with_its_latency(sim, adapter):
    await sim.behave("t1", ping_latency_ms=30)
    res = await adapter().ping()
    assert res.outcome is O.CAPTURED and res.error is None and res.latency_ms >= 30


async def test_outage_refuse_is_not_processed_and_recovery(sim, adapter):
    ch = adapter()
    await sim.behave("t1", outage=True, outage_mode="refuse")
    assert (await ch.authorize(req("o1"))).outcome is O.NOT_PROCESSED
    assert (await ch.ping()).outcome is O.NOT_PROCESSED
    assert (await ch.inquire("o1")).outcome is O.UNKNOWN, "a refused inquiry proves nothing"
    assert (await ch.void("o1")).outcome is O.UNKNOWN
    await sim.behave("t1", outage=False)
    assert (await ch.ping()).outcome is O.CAPTURED
    assert (await ch.authorize(req("o2"))).outcome is O.CAPTURED
    assert [p["reference"] for p in await sim.ledger()] == ["o2"]
    assert (await sim.stats("t1"))["outage_answers"] == 4


async def test_outage_hang_and_reset_are_unknown(sim, adapter):
    ch = adapter(timeout_ms=200)
    await sim.behave("t1", outage=True, outage_mode="hang")
    assert (await ch.authorize(req("o1"))).outcome is O.UNKNOWN
    assert (await ch.ping()).outcome is O.UNKNOWN
    await sim.behave("t1", outage_mode="reset")
    assert (await ch.authorize(req("o2"))).outcome is O.UNKNOWN
    assert (await ch.ping()).outcome is O.UNKNOWN
    assert await sim.ledger() == []


async def test_the_pool_is_capped_and_a_wait_for_a_connection_is_not_processed(sim, adapter):
    await sim.behave("t1", latency_ms=300)
    ch = adapter(max_in_flight=1, timeout_ms=1000, connect_timeout_ms=100)
    first, second = await asyncio.gather(ch.authorize(req("r1")), ch.authorize(req("r2")))
    assert first.outcome is O.CAPTURED
    assert second.outcome is O.NOT_PROCESSED and second.error.startswith("connect failed")
    assert [p["reference"] for p in await sim.ledger()] == ["r1"]


async def test_a_handed_in_session_is_used_and_left_open(sim):
    async with aiohttp.ClientSession() as session:
        ch = HttpChannel("t1", "direct_api", f"{sim.url}/t1", timeout_ms=300, session=session)
        assert (await ch.authorize(req("s1"))).outcome is O.CAPTURED
        await ch.close()
        assert not session.closed
        assert (await ch.authorize(req("s2"))).outcome is O.CAPTURED
        # A deadline after the connection was made is read as "may have been sent".
        await sim.behave("t1", timeout_before_capture_rate=1.0)
        assert (await ch.authorize(req("s3"))).outcome is O.UNKNOWN
