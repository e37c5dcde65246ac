"""The refund API (SPEC 19) over real loopback HTTP: what a refund answers, and every
kind of bad input refused with the right status and field, nothing stored."""

from __future__ import annotations

import json

import pytest
from test_api import BODY, FRONT_KEY, OTHER_KEY, SRE_KEY, assert_error, running_api

from channels.memory import Action


@pytest.fixture
async def api(tmp_path):
    async with running_api(tmp_path) as a:
        yield a


async def _refund(api, rid: str, body: object = None, *, key: str | None = "rf1", token: str = FRONT_KEY,
                  raw: bytes | None = None, content_type: str = "application/json"):
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    resp = await api.client.post(f"/v1/recharges/{rid}/refunds", data=data, headers=headers)
    return resp, await resp.json()


async def _nothing_stored(api, rid: str) -> None:
    assert await api.service.journal.refunds_of(rid) == []
    recharge = await api.service.journal.get(rid)
    wallet = await api.service.journal.wallet(recharge.user_id)
    assert wallet.coins == recharge.coins + recharge.bonus_coins
    await api.invariants()


async def test_a_refund_answers_its_object_and_the_recharge_and_wallet_show_it(api):
    _, rec = await api.post(BODY)
    resp, refund = await _refund(api, rec["id"], {"amount_minor": 2000, "reason": "duplicate order"})
    assert resp.status == 201, refund
    assert set(refund) >= {"id", "recharge_id", "amount_minor", "coins", "status", "created_at", "updated_at"}
    assert (refund["status"], refund["amount_minor"], refund["recharge_id"]) == ("succeeded", 2000, rec["id"])
    again, replay = await _refund(api, rec["id"], {"amount_minor": 2000, "reason": "duplicate order"})
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true" and replay == refund
    _, got = await api.get(f"/v1/refunds/{refund['id']}")
    assert got == refund
    _, recharge = await api.get(f"/v1/recharges/{rec['id']}")
    assert recharge["refunded_minor"] == 2000 and [r["id"] for r in recharge["refunds"]] == [refund["id"]]
    _, wallet = await api.get("/v1/wallets/u_1")
    total = rec["coins"] + rec["bonus_coins"]
    assert (wallet["coins"], wallet["frozen_coins"]) == (total - refund["coins"], 0)
    assert [(e["kind"], e["coins"]) for e in wallet["entries"]] == [("refund", -refund["coins"]), ("credit", total)]
    # The rest, without a body at all.
    resp, rest = await _refund(api, rec["id"], key="rf2")
    assert resp.status == 201 and rest["amount_minor"] == BODY["amount_minor"] - 2000
    _, trail = await api.get(f"/v1/recharges/{rec['id']}/trail")
    assert [e["event"] for e in trail["entries"]][-4:] == ["refund_requested", "refund_succeeded"] * 2
    await api.invariants()


async def test_a_refund_the_provider_leaves_pending_answers_202(api):
    _, rec = await api.post(BODY)
    api.channels["a"].script = lambda op, ref, n: Action.PEND if op == "issue_refund" else Action.OK
    resp, refund = await _refund(api, rec["id"])
    assert resp.status == 202 and refund["status"] == "pending"
    await api.invariants()


@pytest.mark.parametrize(("body", "field", "code"), [
    ({"amount_minor": -1}, "amount_minor", "invalid_field"),
    ({"amount_minor": 0}, "amount_minor", "invalid_field"),
    ({"amount_minor": 12.5}, "amount_minor", "invalid_field"),
    ({"amount_minor": "100"}, "amount_minor", "invalid_field"),
    ({"amount_minor": True}, "amount_minor", "invalid_field"),
    ({"amount_minor": 10**13}, "amount_minor", "invalid_field"),
    ({"amount_minor": 100, "oops": 1}, "oops", "unknown_field"),
    ({"reason": ""}, "reason", "invalid_field"),
    ({"reason": "x" * 256}, "reason", "invalid_field"),
])
async def test_a_bad_refund_body_is_422_with_its_field_and_stores_nothing(api, body, field, code):
    _, rec = await api.post(BODY)
    resp, err = await _refund(api, rec["id"], body)
    assert_error(resp, err, 422, code, field)
    await _nothing_stored(api, rec["id"])


async def test_a_refund_above_what_is_left_is_refused_and_stores_nothing(api):
    _, rec = await api.post(BODY)
    resp, err = await _refund(api, rec["id"], {"amount_minor": BODY["amount_minor"] + 1})
    assert_error(resp, err, 422, "refund_exceeds_amount", "amount_minor")
    await _nothing_stored(api, rec["id"])
    resp, _ = await _refund(api, rec["id"], key="whole")
    assert resp.status == 201
    resp, err = await _refund(api, rec["id"], key="again")
    assert_error(resp, err, 422, "refund_exceeds_amount", "amount_minor")
    resp, err = await _refund(api, rec["id"], {"amount_minor": 1}, key="one-more")
    assert_error(resp, err, 422, "refund_exceeds_amount", "amount_minor")
    assert len(await api.service.journal.refunds_of(rec["id"])) == 1
    await api.invariants()


async def test_refunds_of_unknown_foreign_or_unsucceeded_recharges_are_refused(api):
    _, rec = await api.post(BODY)
    resp, err = await _refund(api, "rc_0123456789abcdef")
    assert_error(resp, err, 404, "not_found")
    resp, err = await _refund(api, "not-an-id")
    assert_error(resp, err, 404, "not_found")
    resp, err = await _refund(api, rec["id"], token=OTHER_KEY)
    assert_error(resp, err, 404, "not_found")
    await _nothing_stored(api, rec["id"])
    api.channels["a"].script = api.channels["b"].script = lambda op, ref, n: (
        Action.DECLINE_HARD if op == "authorize" else Action.OK)
    _, declined = await api.post(BODY, key="k2")
    assert declined["status"] == "declined"
    resp, err = await _refund(api, declined["id"])
    assert_error(resp, err, 409, "not_refundable", "recharge_id")
    assert await api.service.journal.refunds_of(declined["id"]) == []


async def test_refund_keys_headers_and_bodies_are_checked(api):
    _, rec = await api.post(BODY)
    resp, err = await _refund(api, rec["id"], {"amount_minor": 100}, key=None)
    assert_error(resp, err, 400, "missing_idempotency_key", "Idempotency-Key")
    resp, err = await _refund(api, rec["id"], {"amount_minor": 100}, key="x" * 256)
    assert resp.status == 400 and err["error"]["field"] == "Idempotency-Key"
    resp, err = await _refund(api, rec["id"], raw=b"{not json")
    assert_error(resp, err, 400, "malformed_json")
    resp, err = await _refund(api, rec["id"], raw=b"[1, 2]")
    assert_error(resp, err, 422, "validation_failed")
    resp, err = await _refund(api, rec["id"], raw=b"amount=1", content_type="text/plain")
    assert_error(resp, err, 415, "unsupported_media_type")
    resp, err = await _refund(api, rec["id"], {"amount_minor": 100}, token="nope")
    assert_error(resp, err, 401, "unauthorized")
    await _nothing_stored(api, rec["id"])
    # The same key with another body is refused, and the first refund stays the only one.
    resp, first = await _refund(api, rec["id"], {"amount_minor": 100}, key="same")
    assert resp.status == 201
    resp, err = await _refund(api, rec["id"], {"amount_minor": 200}, key="same")
    assert_error(resp, err, 422, "idempotency_key_reused", "Idempotency-Key")
    assert [r.id for r in await api.service.journal.refunds_of(rec["id"])] == [first["id"]]
    # A refund is the caller's own: another client reads 404, an admin reads it.
    resp, err = await api.get(f"/v1/refunds/{first['id']}", token=OTHER_KEY)
    assert_error(resp, err, 404, "not_found")
    resp, got = await api.get(f"/v1/refunds/{first['id']}", token=SRE_KEY)
    assert resp.status == 200 and got["id"] == first["id"]
    await api.invariants()


async def test_admins_list_and_redeliver_notifications(api):
    resp, body = await api.get("/v1/admin/notifications?state=dead", token=SRE_KEY)
    assert resp.status == 200 and body == {"state": "dead", "notifications": []}
    resp, err = await api.get("/v1/admin/notifications?state=lost", token=SRE_KEY)
    assert_error(resp, err, 422, "invalid_field", "state")
    for bad in ("0", "1001", "\u00b2", "-1", "x"):
        resp, err = await api.get(f"/v1/admin/notifications?limit={bad}", token=SRE_KEY)
        assert_error(resp, err, 422, "invalid_field", "limit")
        resp, err = await api.get(f"/v1/wallets/u_1?limit={bad}")
        assert_error(resp, err, 422, "invalid_field", "limit")
    resp, err = await api.get("/v1/admin/notifications", token=FRONT_KEY)
    assert_error(resp, err, 403, "forbidden")
    resp = await api.client.post("/v1/admin/notifications/evt_00/redeliver",
                                 headers={"Authorization": f"Bearer {SRE_KEY}"})
    assert_error(resp, await resp.json(), 404, "not_found")
