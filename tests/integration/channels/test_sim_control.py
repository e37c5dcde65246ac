"""The simulator's control API and its provider-side rules, over loopback HTTP: live
behaviour changes (validated whole), the ledger, counters, reset, keys, currencies, and
repeatable runs from a seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from loopback import req
from simharness import channel_doc, running_sim, start

from channels.http import HttpChannel
from channels.simulator import COUNTERS, build_app, load_config

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "simulator.example.yaml"
PAYMENT = {"reference": "r1", "amount_minor": 500, "currency": "CNY", "method": "ewallet",
           "instrument": {"token": "t"}, "callback_url": None}


async def test_behaviour_reads_back_the_kind_defaults_and_the_overrides(sim):
    status, body = await sim.raw("GET", "/_sim/settle/behaviour")
    assert status == 200 and (body["channel"], body["kind"]) == ("settle", "digital_currency")
    assert body["behaviour"]["pending_rate"] == 1.0 and body["behaviour"]["latency_ms"] == 1


async def test_a_partial_update_changes_only_what_it_names(sim):
    before = await sim.behave("t1")
    after = await sim.behave("t1", decline_rate=0.25, latency_distribution="normal")
    assert after == {**before, "decline_rate": 0.25, "latency_distribution": "normal"}


@pytest.mark.parametrize(("change", "field"), [
    ({"decline_rate": 2}, "decline_rate"),
    ({"decline_rate": True}, "decline_rate"),
    ({"latency_ms": -1}, "latency_ms"),
    ({"latency_ms": "fast"}, "latency_ms"),
    ({"latency_distribution": "pareto"}, "latency_distribution"),
    ({"latency_multiplier": 0}, "latency_multiplier"),
    ({"outage": "yes"}, "outage"),
    ({"outage_mode": "explode"}, "outage_mode"),
    ({"webhook_max_attempts": 0}, "webhook_max_attempts"),
    ({"webhook_max_attempts": 2.5}, "webhook_max_attempts"),
    ({"decline_codes": {}}, "decline_codes"),
    ({"decline_codes": {"x": -1}}, "decline_codes"),
    ({"colour": "red"}, "colour"),
    ({"decline_rate": 0.6, "pending_rate": 0.6}, "rates"),
    ({"refund_pending_rate": 1.5}, "refund_pending_rate"),
    ({"refund_failure_rate": -0.1}, "refund_failure_rate"),
])
async def test_bad_control_input_is_422_naming_the_field_and_changes_nothing(sim, change, field):
    before = await sim.behave("t1")
    status, body = await sim.raw("PUT", "/_sim/t1/behaviour", json={**change, "ping_latency_ms": 7})
    assert status == 422 and body["error"]["field"] == field, body
    assert await sim.behave("t1") == before


async def test_control_input_that_is_not_an_object_or_not_json(sim):
    assert (await sim.raw("PUT", "/_sim/t1/behaviour", json=[1]))[0] == 422
    status, body = await sim.raw("PUT", "/_sim/t1/behaviour", data=b"{")
    assert status == 400 and body["error"]["code"] == "malformed_json"
    status, body = await sim.raw("PUT", "/_sim/zz/behaviour", json={})
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_the_ledger_holds_every_payment_with_its_history_and_filters_by_channel(sim, adapter):
    await adapter("t1").authorize(req("a1", amount=1234))
    await adapter("cny").authorize(req("b1"))
    ledger = await sim.ledger()
    assert sorted(p["channel"] for p in ledger) == ["cny", "t1"]
    (a1,) = await sim.ledger("t1")
    assert {k: a1[k] for k in ("channel", "reference", "amount_minor", "currency", "status")} == {
        "channel": "t1", "reference": "a1", "amount_minor": 1234, "currency": "CNY", "status": "captured"}
    assert a1["provider_ref"] and a1["created_at"] > 0
    assert [h["status"] for h in a1["history"]] == ["captured"]
    assert (await sim.raw("GET", "/_sim/ledger?channel=zz"))[0] == 404


async def test_stats_count_requests_and_captures_with_every_key_present(sim, adapter):
    ch = adapter()
    await ch.authorize(req("a1"))
    await ch.authorize(req("a1"))
    await ch.ping()
    stats = await sim.stats("t1")
    assert set(COUNTERS) <= set(stats)
    assert (stats["requests"], stats["authorizations"], stats["pings"], stats["captures"], stats["payments"]) == \
        (3, 2, 1, 1, 1)
    assert (await sim.stats("t2"))["requests"] == 0


async def test_reset_empties_the_ledger_and_restores_the_configured_behaviour(sim, adapter):
    await sim.behave("t1", decline_rate=1.0)
    await adapter().authorize(req("a1"))
    status, body = await sim.raw("POST", "/_sim/reset?channel=t1")
    assert status == 200 and body == {"reset": ["t1"]}
    assert await sim.ledger() == [] and (await sim.stats("t1"))["requests"] == 0
    assert (await sim.behave("t1"))["decline_rate"] == 0
    assert (await sim.raw("POST", "/_sim/reset"))[1]["reset"] == ["t1", "t2", "cny", "settle"]


async def test_a_missing_or_wrong_api_key_is_401(sim):
    url = "/t2/payments"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer k-1234"},
                    {"Authorization": "Bearer k-12é"}):
        status, body = await sim.raw("POST", url, json=PAYMENT, headers={"Idempotency-Key": "r1", **headers})
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _ = await sim.raw("POST", url, json=PAYMENT, headers={"Idempotency-Key": "r1",
                                                                    "Authorization": "Bearer k-123"})
    assert status == 200 and (await sim.stats("t2"))["unauthorized"] == 4


@pytest.mark.parametrize(("change", "headers", "field"), [
    ({"amount_minor": 0}, {}, "amount_minor"),
    ({"amount_minor": True}, {}, "amount_minor"),
    ({"currency": "CNYX"}, {}, "currency"),
    ({"reference": ""}, {}, "reference"),
    ({"instrument": "card"}, {}, "instrument"),
    ({"callback_url": "ftp://x"}, {}, "callback_url"),
    ({}, {"Idempotency-Key": "other"}, "Idempotency-Key"),
])
async def test_a_bad_charge_request_is_422_and_records_nothing(sim, change, headers, field):
    status, body = await sim.raw("POST", "/t1/payments", json={**PAYMENT, **change},
                                 headers={"Idempotency-Key": "r1", **headers})
    assert status == 422 and body["error"]["field"] == field
    assert await sim.ledger() == []


async def test_unknown_paths_methods_and_big_bodies_answer_json(sim):
    assert (await sim.raw("GET", "/nope/ping")) == (404, {"error": {"code": "not_found",
                                                                    "message": "no such channel"}})
    status, body = await sim.raw("GET", "/t1/elsewhere")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await sim.raw("DELETE", "/t1/payments")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    async with sim.session.patch(sim.url + "/_sim/t1/behaviour") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET, HEAD, PUT"
    status, body = await sim.raw("POST", "/t1/payments", data=b"x" * 70_000, headers={"Idempotency-Key": "r1"})
    assert status == 413 and "error" in body
    status, body = await sim.raw("POST", "/t1/payments", data=b"{", headers={"Idempotency-Key": "r1"})
    assert status == 400 and body["error"]["code"] == "malformed_json"


async def _run_once(seed: int) -> list[tuple[str, str | None, str | None]]:
    doc = {"seed": seed, "channels": [channel_doc("mix", behaviour={
        "decline_rate": 0.3, "not_processed_rate": 0.2, "pending_rate": 0.2, "webhook_delay_ms": 60_000,
        "decline_codes": {"a": 1, "b": 1, "c": 1}})]}
    runner, url = await start(build_app(doc))
    ch = HttpChannel("mix", "direct_api", f"{url}/mix", timeout_ms=500)
    try:
        results = [await ch.authorize(req(f"r{i}")) for i in range(30)]
        return [(r.outcome.value, r.decline_code, r.provider_ref) for r in results]
    finally:
        await ch.close()
        await runner.cleanup()


async def test_the_same_seed_gives_the_same_run_and_another_seed_does_not():
    first, again, other = await _run_once(5), await _run_once(5), await _run_once(6)
    assert first == again
    assert first != other
    assert {o for o, _, _ in first} == {"captured", "declined", "not_processed", "pending"}


async def test_latency_is_drawn_from_the_configured_distribution(sim, adapter):
    await sim.behave("t1", latency_ms=40, latency_jitter_ms=0, latency_distribution="fixed")
    res = await adapter().authorize(req("l1"))
    assert 40 <= res.latency_ms < 1000
    await sim.behave("t1", latency_multiplier=3)
    res = await adapter().authorize(req("l2"))
    assert 120 <= res.latency_ms < 1500


async def test_the_example_config_serves_every_channel_and_its_currencies():
    config = load_config(EXAMPLE)
    async with running_sim(config) as sim:
        for spec in config.channels:
            status, body = await sim.raw("GET", f"/{spec.name}/ping")
            assert (status, body) == (200, {"status": "ok"}), spec.name
        status, body = await sim.raw("POST", "/alipay_direct/payments", json={**PAYMENT, "currency": "PHP"},
                                     headers={"Idempotency-Key": "r1"})
        assert status == 422 and body["error"]["code"] == "unsupported_currency"
