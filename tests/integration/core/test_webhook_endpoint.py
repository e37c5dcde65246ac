"""POST /v1/webhooks/{channel} over loopback HTTP: signatures (good, bad, stale, missing),
duplicates and out-of-order events, and the money invariants after each."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from test_api import BODY, FRONT_KEY, Api, assert_error, running_api

from channels.memory import Action
from channels.webhooks import sign

SECRET_A = "whsec_secret_a"


@pytest.fixture
async def api(tmp_path):
    async with running_api(tmp_path, sync_wait_s=0.1) as a:
        yield a


async def _pending_recharge(api: Api) -> tuple[str, str]:
    api.channels["a"].script = lambda op, ref, n: Action.PEND if op == "authorize" else Action.OK
    api.service.clock.sleep = lambda s: asyncio.sleep(30)  # only the webhook can finish it in time
    resp = await api.client.post("/v1/recharges", data=orjson.dumps(BODY), headers={
        "Idempotency-Key": "wh-1", "Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"})
    body = await resp.json()
    for _ in range(200):
        _, got = await api.get(f"/v1/recharges/{body['id']}")
        if got["attempts"] and got["attempts"][0]["outcome"] == "pending":
            return body["id"], got["attempts"][0]["reference"]
        await asyncio.sleep(0.01)
    raise AssertionError("recharge never became pending")


async def _send(api: Api, event: dict, *, secret: str = SECRET_A, t: int | None = None, header: str | None = None,
                channel: str = "a"):
    raw = orjson.dumps(event)
    sig = header if header is not None else sign(secret, raw, int(time.time()) if t is None else t)
    headers = {"Content-Type": "application/json"}
    if sig:
        headers["X-Provider-Signature"] = sig
    resp = await api.client.post(f"/v1/webhooks/{channel}", data=raw, headers=headers)
    return resp, await resp.json()


def _event(ref: str, status: str, event_id: str = "ev1", **kw) -> dict:
    return {"event_id": event_id, "reference": ref, "provider_ref": "pr_" + ref, "status": status,
            "decline_code": None, **kw}


async def test_a_signed_capture_completes_the_recharge_and_a_repeat_is_a_no_op(api):
    rid, ref = await _pending_recharge(api)
    api.channels["a"].settle(ref, "captured")
    resp, body = await _send(api, _event(ref, "captured"))
    assert resp.status == 200 and body["effect"] == "succeeded"
    resp, body = await _send(api, _event(ref, "captured"))
    assert resp.status == 200 and body["effect"] == "duplicate"
    _, rec = await api.get(f"/v1/recharges/{rid}")
    assert rec["status"] == "succeeded"
    _, wallet = await api.get("/v1/wallets/u_1")
    assert wallet["coins"] == 960 and len(wallet["entries"]) == 1
    await api.invariants()


async def test_bad_stale_and_missing_signatures_are_401_and_change_nothing(api):
    rid, ref = await _pending_recharge(api)
    api.channels["a"].settle(ref, "captured")
    event = _event(ref, "captured")
    for kwargs in ({"secret": "wrong-secret"}, {"t": int(time.time()) - 301}, {"t": int(time.time()) + 400},
                   {"header": ""}, {"header": "t=abc,v1=00"}, {"header": "v1=deadbeef"}):
        resp, body = await _send(api, event, **kwargs)
        assert_error(resp, body, 401, "unauthorized")
    _, rec = await api.get(f"/v1/recharges/{rid}")
    assert rec["status"] == "pending"
    assert await api.service.journal.event_seen("a", "ev1") is False
    await api.invariants()


async def test_a_body_tampered_after_signing_is_refused(api):
    rid, ref = await _pending_recharge(api)
    raw = orjson.dumps(_event(ref, "declined"))
    header = sign(SECRET_A, raw, int(time.time()))
    tampered = raw.replace(b"declined", b"captured")
    resp = await api.client.post("/v1/webhooks/a", data=tampered, headers={"X-Provider-Signature": header})
    assert_error(resp, await resp.json(), 401, "unauthorized")


async def test_an_out_of_order_pending_after_capture_never_moves_it_back(api):
    rid, ref = await _pending_recharge(api)
    api.channels["a"].settle(ref, "captured")
    await _send(api, _event(ref, "captured", "ev-2"))
    resp, body = await _send(api, _event(ref, "pending", "ev-1"))
    assert resp.status == 200 and body["effect"] == "ignored"
    _, rec = await api.get(f"/v1/recharges/{rid}")
    assert rec["status"] == "succeeded"
    _, trail = await api.get(f"/v1/recharges/{rid}/trail")
    assert [e["event"] for e in trail["entries"]][-1] == "webhook_ignored"
    await api.invariants()


async def test_malformed_events_and_unknown_channels(api):
    rid, ref = await _pending_recharge(api)
    resp, body = await _send(api, {"event_id": "e", "reference": ref, "status": "teleported"})
    assert_error(resp, body, 422, "validation_failed")
    resp, body = await _send(api, {"reference": ref, "status": "captured"})
    assert_error(resp, body, 422, "validation_failed")
    resp, body = await _send(api, _event(ref, "captured"), channel="nope")
    assert_error(resp, body, 404, "not_found")
    resp, body = await _send(api, _event("rc_unknown.1", "captured", "ev-x"))
    assert resp.status == 200 and body["effect"] == "unknown_payment"
    await api.invariants()
