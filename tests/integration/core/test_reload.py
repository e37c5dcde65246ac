"""SRE controls over HTTP: reload by API (YAML or JSON), validation with every error
named, dry-run diffs, history and rollback, drains, key revocation, and in-flight
recharges finishing on the config they started with."""

from __future__ import annotations

import asyncio
import copy

import orjson
import pytest
import yaml
from test_api import BODY, FRONT_KEY, SRE_KEY, Api, _channel, _sha, assert_error, running_api

from channels.memory import Action


def document(tmp_path) -> dict:
    return {
        "server": {"sync_wait_s": 2},
        "storage": {"url": f"sqlite:///{tmp_path}/j.db"},
        "clients": [
            {"name": "front", "key_sha256": _sha(FRONT_KEY), "scopes": ["recharge"]},
            {"name": "sre", "key_sha256": _sha(SRE_KEY), "scopes": ["admin"]},
        ],
        "channels": [_channel("a"), _channel("b")],
        "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404, "JPY": 0.0067}},
    }


@pytest.fixture
async def api(tmp_path):
    async with running_api(tmp_path, sync_wait_s=2) as a:
        yield a


async def put(api: Api, doc: dict | str, *, dry_run: bool = False, as_yaml: bool = False, token: str = SRE_KEY):
    if as_yaml:
        data, ctype = (doc if isinstance(doc, str) else yaml.safe_dump(doc)).encode(), "application/yaml"
    else:
        data, ctype = orjson.dumps(doc), "application/json"
    path = "/v1/admin/config" + ("?dry_run=1" if dry_run else "")
    resp = await api.client.put(path, data=data, headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
    return resp, await resp.json()


async def test_reload_by_api_applies_a_new_version_and_keeps_history(api, tmp_path):
    first = api.service.loaded.version
    doc = document(tmp_path)
    doc["channels"][1]["weight"] = 3.0
    resp, body = await put(api, doc, as_yaml=True)
    assert resp.status == 200 and body["applied"] is True, body
    assert body["version"] != first
    assert "~ channels[b].weight: 1.0 -> 3.0" in body["diff"]
    _, current = await api.get("/v1/admin/config", token=SRE_KEY)
    assert current["version"] == body["version"] and current["source"] == "api"
    assert current["config"]["channels"][0]["webhook_secret"] == "[redacted]"
    assert current["config"]["clients"][0]["key_sha256"] == "[redacted]"
    _, history = await api.get("/v1/admin/config/history", token=SRE_KEY)
    assert [h["version"] for h in history["history"]] == [body["version"], first]
    assert api.service.routing.current.channels["b"].weight == 3.0


async def test_an_invalid_config_is_refused_with_every_error_and_the_old_one_stays(api, tmp_path):
    before = api.service.loaded.version
    doc = document(tmp_path)
    doc["channels"].append(copy.deepcopy(doc["channels"][0]))  # duplicate name
    doc["channels"][1]["currencies"] = ["CNY", "EUR"]  # EUR has no rate
    doc["routing"] = {"rules": [{"match": {"country": "CN"}, "channels": ["a", "ghost"]}]}
    doc["channels"][0]["timeout_ms"] = -5
    resp, body = await put(api, doc)
    assert_error(resp, body, 422, "validation_failed")
    fields = {d["field"]: d["message"] for d in body["error"]["details"]}
    assert fields["channels[2].name"].startswith("duplicate channel name 'a'")
    assert fields["channels[1].currencies[1]"] == "currency EUR has no rate in pricing.rates"
    assert fields["routing.rules[0].channels[1]"] == "unknown channel 'ghost'"
    assert fields["channels[0].timeout_ms"] == "must be > 0"
    assert api.service.loaded.version == before


async def test_garbage_bodies_are_clear_errors(api):
    resp, body = await put(api, "channels: [unclosed", as_yaml=True)
    assert_error(resp, body, 422, "validation_failed")
    resp = await api.client.put("/v1/admin/config", data=b"{nope", headers={
        "Authorization": f"Bearer {SRE_KEY}", "Content-Type": "application/json"})
    assert_error(resp, await resp.json(), 400, "malformed_json")
    resp = await api.client.put("/v1/admin/config", data=b"x", headers={
        "Authorization": f"Bearer {SRE_KEY}", "Content-Type": "text/plain"})
    assert_error(resp, await resp.json(), 415, "unsupported_media_type")
    resp, body = await put(api, {"server": {}}, token=FRONT_KEY)
    assert_error(resp, body, 403, "forbidden")


async def test_a_config_that_would_lock_out_the_key_applying_it_is_refused(api, tmp_path):
    before = api.service.loaded.version
    for doc in ({}, {**document(tmp_path), "clients": document(tmp_path)["clients"][:1]}):
        for dry_run in (True, False):
            resp, body = await put(api, doc, dry_run=dry_run)
            assert_error(resp, body, 422, "validation_failed", "clients")
    assert api.service.loaded.version == before
    _, current = await api.get("/v1/admin/config", token=SRE_KEY)
    assert current["version"] == before, "the admin key still works"
    doc = document(tmp_path)
    doc["clients"].append({"name": "sre2", "key_sha256": _sha("sre-key-2"), "scopes": ["admin"]})
    resp, body = await put(api, doc)  # rotation, step 1: add the new key
    assert resp.status == 200 and body["applied"], body
    doc["clients"] = [c for c in doc["clients"] if c["name"] != "sre"]
    resp, body = await put(api, doc, token="sre-key-2")  # step 2: drop the old one with the new key
    assert resp.status == 200 and body["applied"], body


async def test_a_query_parameter_other_than_dry_run_is_refused(api, tmp_path):
    resp = await api.client.put("/v1/admin/config?dryrun=1", data=orjson.dumps(document(tmp_path)),
                                headers={"Authorization": f"Bearer {SRE_KEY}", "Content-Type": "application/json"})
    assert_error(resp, await resp.json(), 422, "unknown_field", "dryrun")
    assert api.service.loaded.version == api.service.history[0].loaded.version, "nothing applied"


async def test_dry_run_diffs_without_applying(api, tmp_path):
    before = api.service.loaded.version
    doc = document(tmp_path)
    doc["channels"].pop(1)
    doc["routing"] = {"max_attempts": 2}
    resp, body = await put(api, doc, dry_run=True)
    assert resp.status == 200 and body["dry_run"] is True
    assert "- channels[b]" in body["diff"] and "~ routing.max_attempts: 3 -> 2" in body["diff"]
    assert api.service.loaded.version == before
    assert "b" in api.service.channels


async def test_rollback_restores_the_previous_config(api, tmp_path):
    first = api.service.loaded.version
    doc = document(tmp_path)
    doc["channels"].pop(1)
    _, applied = await put(api, doc)
    assert "b" not in api.service.channels
    resp = await api.client.post("/v1/admin/config/rollback", headers={"Authorization": f"Bearer {SRE_KEY}"})
    body = await resp.json()
    assert resp.status == 200 and body["version"] == first
    assert "b" in api.service.channels
    _, history = await api.get("/v1/admin/config/history", token=SRE_KEY)
    assert [h["source"] for h in history["history"]][:2] == ["rollback", "api"]


async def test_drain_and_enable_are_immediate_and_survive_a_reload(api, tmp_path):
    resp = await api.client.post("/v1/admin/channels/a/drain", headers={"Authorization": f"Bearer {SRE_KEY}"})
    assert resp.status == 200
    q = "/v1/admin/routing/explain?currency=CNY&country=CN&method=ewallet&amount_minor=8500"
    _, explain = await api.get(q, token=SRE_KEY)
    assert {f["channel"]: f["reason"] for f in explain["filtered"]} == {"a": "drained"}
    resp, body = await api.post(BODY, key="after-drain")
    assert body["channel"] == "b" and [a["channel"] for a in body["attempts"]] == ["b"]
    doc = document(tmp_path)
    doc["channels"][0]["weight"] = 2.0
    await put(api, doc)
    _, health = await api.get("/v1/health/channels", token=None)
    assert {c["channel"]: c["drained"] for c in health["channels"]} == {"a": True, "b": False}
    resp = await api.client.post("/v1/admin/channels/a/enable", headers={"Authorization": f"Bearer {SRE_KEY}"})
    assert resp.status == 200
    _, explain = await api.get(q, token=SRE_KEY)
    assert explain["filtered"] == []
    resp = await api.client.post("/v1/admin/channels/zz/drain", headers={"Authorization": f"Bearer {SRE_KEY}"})
    assert_error(resp, await resp.json(), 404, "not_found")
    await api.invariants()


async def test_a_revoked_key_is_refused_from_the_next_request(api, tmp_path):
    resp, _ = await api.post(BODY, key="before")
    assert resp.status == 201
    doc = document(tmp_path)
    doc["clients"] = [c for c in doc["clients"] if c["name"] != "front"]
    await put(api, doc)
    resp, body = await api.post(BODY, key="after")
    assert_error(resp, body, 401, "unauthorized")


async def test_in_flight_recharges_finish_on_the_config_they_started_with(api, tmp_path):
    started = api.service.loaded.version
    gate = asyncio.Event()

    async def slow_authorize(request, orig=api.channels["a"].authorize):
        await gate.wait()
        return await orig(request)

    api.channels["a"].authorize = slow_authorize
    api.channels["a"].script = lambda op, ref, n: Action.NOT_PROCESSED if op == "authorize" else Action.OK
    post = asyncio.create_task(api.post(BODY, key="inflight"))
    for _ in range(200):
        if api.channels["a"].calls or api.service.driver.in_flight:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    doc = document(tmp_path)
    doc["channels"].pop(0)  # remove a, the channel the recharge is on
    doc["routing"] = {"max_attempts": 1}  # would forbid the failover to b
    await put(api, doc)
    gate.set()
    resp, body = await post
    assert resp.status == 201 and body["status"] == "succeeded", body
    assert [a["channel"] for a in body["attempts"]] == ["a", "b"], "failed over under the old rules"
    assert body["config_version"] == started
    _, trail = await api.get(f"/v1/recharges/{body['id']}/trail")
    assert trail["entries"][0]["detail"]["config_version"] == started
    resp, body = await api.post({**BODY, "user_id": "u_2"}, key="after-reload")
    assert body["config_version"] == api.service.loaded.version != started
    assert [a["channel"] for a in body["attempts"]] == ["b"]
    await api.invariants()
