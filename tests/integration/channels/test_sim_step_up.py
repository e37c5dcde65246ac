"""Step-up (3-D Secure) at the simulator, over loopback HTTP (SPEC 6, 16 and 22): a charge
asking ``three_ds: "required"``, or one a channel challenges on its own, is answered
``requires_action`` with an ``action_url`` and charges nothing until the payer completes
it; abandoned, it is declined ``action_abandoned``; not completed in ``action_ttl_s``, it
expires; each ending is told by a signed webhook."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import aiohttp
import orjson
import pytest
from loopback import Delivery
from simharness import Sim, channel_doc, running_sim, secret_of, start

from channels.simulator import SIMULATOR, build_app
from channels.webhooks import check_signature

FAST_PAYER = {"payer_delay_ms": 20}


def signed(delivery: Delivery, channel: str = "t1") -> dict[str, Any]:
    """The event in a delivery whose signature checks (parsed here: ``expired`` and a stale
    ``requires_action`` are statuses of this protocol the simulator sends)."""
    check_signature(secret_of(channel), delivery.signature, delivery.body, now=time.time())
    return orjson.loads(delivery.body)


async def charge(sim, reference: str, channel: str = "t1", *, amount: int = 8500, callback_url: str | None = None,
                 timeout: aiohttp.ClientTimeout | None = None, **extra: Any) -> tuple[int, Any]:
    body = {"reference": reference, "amount_minor": amount, "currency": "CNY", "method": "card",
            "instrument": {"token": "tok_1"}, "callback_url": callback_url, **extra}
    kw = {} if timeout is None else {"timeout": timeout}
    return await sim.raw("POST", f"/{channel}/payments", json=body, headers={"Idempotency-Key": reference}, **kw)


async def get(sim, reference: str, channel: str = "t1") -> dict[str, Any]:
    status, body = await sim.raw("GET", f"/{channel}/payments/{reference}")
    assert status == 200, body
    return body


async def complete(sim, reference: str, channel: str = "t1") -> tuple[int, Any]:
    return await sim.raw("POST", f"/_sim/{channel}/payments/{reference}/complete")


async def fail(sim, reference: str, channel: str = "t1") -> tuple[int, Any]:
    return await sim.raw("POST", f"/_sim/{channel}/payments/{reference}/fail")


async def charged(sim) -> set[str]:
    """What the provider really charged, as the invariants read the ledger."""
    return {p["reference"] for p in await sim.ledger() if p["status"] in ("captured", "refunded")}


@pytest.fixture
async def stepped(sim, receiver):
    """t1 supports step-up; payment ``s1`` (8500 CNY) required it and waits for its payer."""
    await sim.behave("t1", three_ds=True)
    status, body = await charge(sim, "s1", three_ds="required", callback_url=receiver.url)
    assert status == 200 and body["status"] == "requires_action", body
    return body


async def test_a_required_step_up_answers_requires_action_with_where_the_payer_goes(sim, stepped):
    assert stepped == {"reference": "s1", "provider_ref": stepped["provider_ref"], "status": "requires_action",
                       "action_url": f"{sim.url}/t1/challenge/s1", "decline_code": None, "amount_minor": 8500,
                       "currency": "CNY", "refunded_minor": 0}
    assert await get(sim, "s1") == stepped
    entry = await sim.payment("s1")
    assert [h["status"] for h in entry["history"]] == ["requires_action"]
    assert entry["challenge"]["action_url"] == stepped["action_url"]
    assert entry["challenge"]["expires_at"] == pytest.approx(entry["created_at"] + 600)
    assert await charged(sim) == set()
    stats = await sim.stats("t1")
    assert (stats["step_ups"], stats["captures"]) == (1, 0)


async def test_the_same_reference_again_answers_its_state_and_never_charges_twice(sim, stepped, receiver):
    assert await charge(sim, "s1", three_ds="required", callback_url=receiver.url) == (200, stepped)
    assert (await complete(sim, "s1"))[0] == 200
    status, again = await charge(sim, "s1", three_ds="required", callback_url=receiver.url)
    assert (status, again["status"]) == (200, "captured") and "action_url" not in again
    assert len(await sim.ledger()) == 1
    stats = await sim.stats("t1")
    assert (stats["replays"], stats["step_ups"], stats["captures"]) == (2, 1, 1)


async def test_completed_it_is_captured_and_a_signed_webhook_says_so(sim, stepped, receiver):
    status, body = await complete(sim, "s1")
    assert (status, body["status"], body["decline_code"]) == (200, "captured", None)
    assert "action_url" not in body
    (delivery,) = await receiver.wait_for(1)
    event = signed(delivery)
    assert {k: event[k] for k in ("reference", "provider_ref", "status", "decline_code", "amount_minor", "currency")} \
        == {"reference": "s1", "provider_ref": stepped["provider_ref"], "status": "captured", "decline_code": None,
            "amount_minor": 8500, "currency": "CNY"}
    assert (await get(sim, "s1"))["status"] == "captured"
    assert [h["status"] for h in (await sim.payment("s1"))["history"]] == ["requires_action", "captured"]
    assert await charged(sim) == {"s1"}
    assert (await sim.stats("t1"))["step_ups_completed"] == 1


async def test_abandoned_it_is_declined_action_abandoned_and_told(sim, stepped, receiver):
    status, body = await fail(sim, "s1")
    assert (status, body["status"], body["decline_code"]) == (200, "declined", "action_abandoned")
    event = signed((await receiver.wait_for(1))[0])
    assert (event["reference"], event["status"], event["decline_code"]) == ("s1", "declined", "action_abandoned")
    assert (await get(sim, "s1"))["decline_code"] == "action_abandoned"
    assert await charged(sim) == set()


async def test_once_ended_the_payer_acts_no_more(sim, stepped, receiver):
    await complete(sim, "s1")
    for act in (complete, fail):
        status, body = await act(sim, "s1")
        assert (status, body["status"]) == (409, "captured")
    await asyncio.sleep(0.1)
    assert len(receiver.deliveries) == 1


async def test_an_unknown_payment_or_channel_is_404_json(sim):
    for path in ("/_sim/t1/payments/nope/complete", "/_sim/t1/payments/nope/fail", "/_sim/nochan/payments/x/fail"):
        status, body = await sim.raw("POST", path)
        assert (status, body["error"]["code"]) == (404, "not_found"), path


async def test_not_completed_within_action_ttl_it_expires_and_is_told(sim, receiver):
    await sim.behave("t1", three_ds=True, action_ttl_s=0.3)
    await charge(sim, "s1", three_ds="required", callback_url=receiver.url)
    assert (await get(sim, "s1"))["status"] == "requires_action"
    (delivery,) = await receiver.wait_for(1)
    event = signed(delivery)
    assert (event["reference"], event["status"], event["decline_code"]) == ("s1", "expired", None)
    body = await get(sim, "s1")
    assert body["status"] == "expired" and "action_url" not in body
    status, body = await complete(sim, "s1")
    assert (status, body["status"]) == (409, "expired")
    assert await charged(sim) == set()
    assert (await sim.stats("t1"))["step_ups_expired"] == 1


async def test_the_ttl_counts_from_creation_as_the_behaviour_was_then(sim, receiver):
    await sim.behave("t1", three_ds=True, action_ttl_s=0.3)
    await charge(sim, "s1", three_ds="required", callback_url=receiver.url)
    await sim.behave("t1", action_ttl_s=600)
    assert signed((await receiver.wait_for(1))[0])["status"] == "expired"


async def test_a_void_cancels_the_challenge_and_nothing_is_ever_charged(sim, stepped, receiver):
    status, body = await sim.raw("POST", "/t1/payments/s1/void")
    assert (status, body["status"]) == (200, "voided") and "action_url" not in body
    status, body = await complete(sim, "s1")
    assert (status, body["status"]) == (409, "voided")
    assert (await sim.raw("POST", "/t1/payments/s1/void"))[0] == 200  # voided already: the same answer
    await asyncio.sleep(0.1)
    assert receiver.deliveries == []  # the client voided it: nothing to tell
    assert await charged(sim) == set()
    assert (await sim.stats("t1"))["step_ups_voided"] == 1


async def test_refunds_and_disputes_refuse_what_was_never_captured(sim, stepped):
    assert (await sim.refund("t1", "s1", "rf1", 100))[1]["error"]["code"] == "not_captured"
    status, body = await sim.refund("t1", "s1")
    assert (status, body["status"]) == (409, "requires_action")
    status, body = await sim.dispute("t1", "s1", outcome=None)
    assert (status, body["error"]["code"]) == (409, "not_captured")
    await sim.behave("t1", action_ttl_s=0.05)
    await charge(sim, "s2", three_ds="required")
    await asyncio.sleep(0.1)
    status, body = await sim.refund("t1", "s2", "rf2", 100)
    assert (status, body["error"]["code"]) == (409, "not_captured")
    assert "expired" in body["error"]["message"]


async def test_required_of_a_channel_without_step_up_is_declined_three_ds_not_supported(sim):
    status, body = await charge(sim, "n1", three_ds="required")
    assert (status, body["status"], body["decline_code"]) == (200, "declined", "three_ds_not_supported")
    assert (await sim.payment("n1"))["status"] == "declined"
    status, body = await charge(sim, "n2", three_ds="if_available")
    assert (status, body["status"]) == (200, "captured")
    stats = await sim.stats("t1")
    assert (stats["step_ups_unsupported"], stats["declines"], stats["step_ups"]) == (1, 1, 0)


async def test_a_channel_may_demand_step_up_on_its_own(sim):
    await sim.behave("t1", three_ds=True, requires_action_rate=1.0)
    for reference, extra in (("a1", {}), ("a2", {"three_ds": "if_available"}), ("a3", {"three_ds": None})):
        status, body = await charge(sim, reference, **extra)
        assert (status, body["status"]) == (200, "requires_action"), reference
        assert body["action_url"].endswith(f"/t1/challenge/{reference}")


async def test_requires_action_rate_means_nothing_without_three_ds(sim):
    await sim.behave("t1", requires_action_rate=1.0)
    assert (await charge(sim, "a1"))[1]["status"] == "captured"


async def test_the_fate_comes_first_and_step_up_replaces_only_a_capture(sim):
    await sim.behave("t1", three_ds=True, decline_rate=1.0, decline_codes={"do_not_honor": 1})
    body = (await charge(sim, "d1", three_ds="required"))[1]
    assert (body["status"], body["decline_code"]) == ("declined", "do_not_honor")
    await sim.behave("t1", decline_rate=0, not_processed_rate=1.0)
    assert (await charge(sim, "n1", three_ds="required"))[0] in (429, 503)
    assert await sim.payment("n1") is None
    await sim.behave("t1", not_processed_rate=0, pending_rate=1.0)
    assert (await charge(sim, "p1", three_ds="required"))[1]["status"] == "requires_action"
    assert (await complete(sim, "p1"))[1]["status"] == "captured"  # no pending phase after the challenge


async def test_a_lost_answer_leaves_a_step_up_the_client_finds_by_inquiry(sim):
    await sim.behave("t1", three_ds=True, timeout_after_capture_rate=1.0)
    with pytest.raises(TimeoutError):
        await charge(sim, "t1x", three_ds="required", timeout=aiohttp.ClientTimeout(total=0.3))
    body = await get(sim, "t1x")
    assert (body["status"], body["action_url"].endswith("/t1/challenge/t1x")) == ("requires_action", True)
    assert await charged(sim) == set()


async def test_late_processing_lands_as_a_step_up(sim):
    await sim.behave("t1", three_ds=True, late_processing_rate=1.0, late_processing_ms=50)
    assert (await charge(sim, "l1", three_ds="required"))[1]["status"] == "requires_action"


@pytest.mark.parametrize("rate, status, code", [("payer_complete_rate", "captured", None),
                                                ("payer_abandon_rate", "declined", "action_abandoned")])
async def test_the_automatic_payer_acts_after_its_delay(sim, receiver, rate, status, code):
    await sim.behave("t1", three_ds=True, **FAST_PAYER, **{rate: 1.0})
    assert (await charge(sim, "s1", three_ds="required", callback_url=receiver.url))[1]["status"] == "requires_action"
    event = signed((await receiver.wait_for(1))[0])
    assert (event["status"], event["decline_code"]) == (status, code)
    body = await get(sim, "s1")
    assert (body["status"], body["decline_code"]) == (status, code)
    assert await charged(sim) == ({"s1"} if status == "captured" else set())


async def test_a_payer_that_never_acts_lets_it_expire(sim, receiver):
    await sim.behave("t1", three_ds=True, action_ttl_s=0.2, payer_complete_rate=0, payer_abandon_rate=0)
    await charge(sim, "s1", three_ds="required", callback_url=receiver.url)
    assert signed((await receiver.wait_for(1))[0])["status"] == "expired"


async def test_a_payer_slower_than_the_ttl_finds_it_expired(sim, receiver):
    await sim.behave("t1", three_ds=True, action_ttl_s=0.1, payer_complete_rate=1.0, payer_delay_ms=300)
    await charge(sim, "s1", three_ds="required", callback_url=receiver.url)
    await asyncio.sleep(0.5)
    assert [signed(d)["status"] for d in receiver.deliveries] == ["expired"]


async def test_the_ending_webhook_honours_duplicates_and_out_of_order(sim, receiver):
    await sim.behave("t1", three_ds=True, duplicate_webhook_rate=1.0, out_of_order_webhook_rate=1.0)
    await charge(sim, "s1", three_ds="required", callback_url=receiver.url)
    await complete(sim, "s1")
    first, second, stale = (signed(d) for d in await receiver.wait_for(3))
    assert first == second and first["status"] == "captured"
    assert (stale["status"], stale["reference"]) == ("requires_action", "s1")
    assert stale["event_id"] != first["event_id"]
    assert (await get(sim, "s1"))["status"] == "captured"


@pytest.mark.parametrize("value", ["always", True, 1, "REQUIRED", {}])
async def test_a_bad_three_ds_is_refused_422(sim, value):
    status, body = await charge(sim, "b1", three_ds=value)
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "invalid_field", "three_ds")
    assert await sim.payment("b1") is None


@pytest.mark.parametrize("changes, field", [({"three_ds": "yes"}, "three_ds"),
                                            ({"requires_action_rate": 1.5}, "requires_action_rate"),
                                            ({"action_ttl_s": 0}, "action_ttl_s"),
                                            ({"payer_complete_rate": 0.7, "payer_abandon_rate": 0.4}, "payer_rates"),
                                            ({"payer_delay_ms": -1}, "payer_delay_ms")])
async def test_bad_step_up_behaviour_is_refused_and_changes_nothing(sim, changes, field):
    status, body = await sim.raw("PUT", "/_sim/t1/behaviour", json=changes)
    assert (status, body["error"]["field"]) == (422, field)
    behaviour = (await sim.raw("GET", "/_sim/t1/behaviour"))[1]["behaviour"]
    assert {k: behaviour[k] for k in ("three_ds", "requires_action_rate", "action_ttl_s", "payer_complete_rate",
                                      "payer_abandon_rate", "payer_delay_ms")} == \
        {"three_ds": False, "requires_action_rate": 0.0, "action_ttl_s": 600.0, "payer_complete_rate": 0.0,
         "payer_abandon_rate": 0.0, "payer_delay_ms": 3000.0}


async def test_the_ledger_counts_only_completed_step_ups_as_charged(sim, receiver):
    await sim.behave("t1", three_ds=True)
    for reference in ("done", "abandoned", "voided"):
        await charge(sim, reference, three_ds="required", callback_url=receiver.url)
    await sim.behave("t1", action_ttl_s=0.2)
    for reference in ("expired", "open"):
        await charge(sim, reference, three_ds="required", callback_url=receiver.url)
    await sim.behave("t1", action_ttl_s=600)
    await charge(sim, "open", three_ds="required")  # a replay: still the first one's deadline
    await complete(sim, "done")
    await fail(sim, "abandoned")
    await sim.raw("POST", "/t1/payments/voided/void")
    await asyncio.sleep(0.3)
    status_of = {p["reference"]: p["status"] for p in await sim.ledger()}
    assert status_of == {"done": "captured", "abandoned": "declined", "expired": "expired", "voided": "voided",
                         "open": "expired"}
    assert await charged(sim) == {"done"}
    day = dt.datetime.now(dt.UTC).date().isoformat()
    status, report = await sim.raw("GET", f"/t1/settlements?date={day}")
    assert status == 200 and [item["reference"] for item in report["items"]] == ["done"]


@pytest.mark.parametrize("read", ["inquiry", "replay", "ledger", "complete", "void", "page"])
async def test_a_read_after_the_deadline_never_shows_requires_action_though_the_timer_is_late(receiver, read):
    app = build_app({"channels": [channel_doc("t1", behaviour={"three_ds": True})]})
    runner, url = await start(app)
    try:
        async with aiohttp.ClientSession() as session:
            sim = Sim(url, session)
            await charge(sim, "s1", three_ds="required", callback_url=receiver.url)
            ch = app[SIMULATOR].channels["t1"]
            ch.payments["s1"].challenge.expires_at = time.time() - 0.001  # its timer is 600 s away
            if read == "inquiry":
                assert (await get(sim, "s1"))["status"] == "expired"
            elif read == "replay":
                assert (await charge(sim, "s1", three_ds="required"))[1]["status"] == "expired"
            elif read == "ledger":
                assert [p["status"] for p in await sim.ledger()] == ["expired"]
            elif read == "complete":
                assert (await complete(sim, "s1"))[0] == 409
            elif read == "void":
                assert (await sim.raw("POST", "/t1/payments/s1/void"))[1]["status"] == "expired"
            else:
                async with session.get(f"{url}/t1/challenge/s1") as resp:
                    page = await resp.text()
                assert "expired" in page and "/complete" not in page
            assert signed((await receiver.wait_for(1))[0])["status"] == "expired"
            assert ch.settlements == {} and ch.challenges == {}  # the timer was cancelled
    finally:
        await runner.cleanup()


async def test_the_challenge_page_is_self_contained_html_with_the_amount_and_two_buttons(sim, stepped):
    async with sim.session.get(stepped["action_url"]) as resp:
        page = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert "8500" in page and "CNY" in page and "requires action" in page
    assert 'action="/_sim/t1/payments/s1/complete"' in page and 'action="/_sim/t1/payments/s1/fail"' in page
    assert "http://" not in page and "https://" not in page and " src=" not in page
    await complete(sim, "s1")
    async with sim.session.get(stepped["action_url"]) as resp:
        page = await resp.text()
    assert "captured" in page and "/complete" not in page


async def test_the_challenge_page_escapes_the_reference_and_is_404_json_when_unknown(sim):
    await sim.behave("t1", three_ds=True)
    reference = "<b>&x"
    status, body = await charge(sim, reference, three_ds="required")
    async with sim.session.get(body["action_url"]) as resp:
        page = await resp.text()
    assert "<b>&x" not in page and "&lt;b&gt;&amp;x" in page
    for path in ("/t1/challenge/nope", "/nochan/challenge/x"):
        status, body = await sim.raw("GET", path)
        assert (status, body["error"]["code"]) == (404, "not_found"), path
    await charge(sim, "plain")
    assert (await sim.raw("GET", "/t1/challenge/plain"))[0] == 404  # no step-up, no page


async def test_the_challenge_page_needs_no_api_key(sim):
    await sim.behave("t2", three_ds=True)
    body = {"reference": "k1", "amount_minor": 100, "currency": "CNY", "method": "card", "three_ds": "required"}
    status, answer = await sim.raw("POST", "/t2/payments", json=body,
                                   headers={"Idempotency-Key": "k1", "Authorization": "Bearer k-123"})
    assert answer["status"] == "requires_action"
    async with sim.session.get(answer["action_url"]) as resp:
        assert resp.status == 200


async def test_the_same_seed_and_requests_give_the_same_step_ups():
    doc = {"seed": 3, "channels": [channel_doc("t1", behaviour={"three_ds": True, "requires_action_rate": 0.5,
                                                                "decline_rate": 0.2, "payer_complete_rate": 0.5,
                                                                "payer_abandon_rate": 0.3, "payer_delay_ms": 10,
                                                                "action_ttl_s": 0.1})]}
    runs = []
    for _ in range(2):
        async with running_sim(doc) as sim:
            for i in range(30):
                await charge(sim, f"p{i}")
            await asyncio.sleep(0.3)
            runs.append([(p["reference"], [h["status"] for h in p["history"]], p["decline_code"])
                         for p in await sim.ledger()])
    assert runs[0] == runs[1]
    histories = {tuple(history) for _, history, _ in runs[0]}
    assert {("requires_action", "captured"), ("requires_action", "declined"), ("requires_action", "expired"),
            ("captured",), ("declined",)} <= histories


async def test_shutting_the_simulator_down_cancels_every_challenge_timer(receiver):
    app = build_app({"channels": [channel_doc("t1", behaviour={"three_ds": True, "payer_complete_rate": 1.0})]})
    runner, url = await start(app)
    async with aiohttp.ClientSession() as session:
        body = {"reference": "s1", "amount_minor": 100, "currency": "CNY", "method": "card", "three_ds": "required",
                "callback_url": receiver.url}
        async with session.post(f"{url}/t1/payments", json=body, headers={"Idempotency-Key": "s1"}) as resp:
            assert (await resp.json())["status"] == "requires_action"
    ch = app[SIMULATOR].channels["t1"]
    assert set(ch.settlements) == {("challenge", "s1"), ("payer", "s1")}
    handles = list(ch.settlements.values())
    await runner.cleanup()
    assert ch.settlements == {} and all(h.cancelled() for h in handles)
