"""The risk model on the recharge path over HTTP (issue 27): device_id and ip_country
accepted and checked, the model's score raising the action by its thresholds, the
trail and the explain endpoint naming the features, a shadow model counted and never
acted on, and an artefact that cannot be served refused at reload with the running
config kept.

The model here is written by the test: its only weight is on ``user_count_10m``, so
the score is known: sigmoid(-6 + 4 x log1p(recharges in the last ten minutes))."""

from __future__ import annotations

import orjson
from test_api import BODY, FRONT_KEY, SRE_KEY, assert_error, config_doc, running_api_with

from config import parse
from orchestrator.risk_features import FEATURES


def _artefact(tmp_path, name: str, weights: dict[str, float], intercept: float) -> str:
    doc = {"format": "logistic-v1", "version": name, "features": list(FEATURES),
           "mean": [0.0] * len(FEATURES), "scale": [1.0] * len(FEATURES),
           "coef": [weights.get(f, 0.0) for f in FEATURES], "intercept": intercept, "trained": {"by": "the test"}}
    path = tmp_path / f"{name}.json"
    path.write_bytes(orjson.dumps(doc))
    return str(path)


def _doc(tmp_path, **model) -> dict:
    doc = config_doc(tmp_path)
    velocity = _artefact(tmp_path, "velocity-test", {"user_count_10m": 4.0}, -6.0)
    doc["risk"] = {"model": {"artefact": velocity, "challenge_at": 0.5, "block_at": 0.95, **model}}
    return doc


async def _explain(api, rid: str | None, token: str = SRE_KEY, **query: str):
    params = {**({"recharge_id": rid} if rid is not None else {}), **query}
    resp = await api.client.get("/v1/admin/risk/explain", params=params,
                                headers={"Authorization": f"Bearer {token}"})
    return resp, await resp.json()


async def test_the_score_raises_the_action_and_explain_names_the_features(tmp_path):
    async with running_api_with(parse(_doc(tmp_path))) as api:
        api.service.user_limits.reconfigure(1000, 1000)
        body = {**BODY, "user_id": "u_fast", "device_id": "dev-1", "ip_country": "CN"}
        seen = []
        for i in range(25):
            resp, rec = await api.post(body, key=f"fast-{i}")
            assert resp.status in (201, 202), rec
            seen.append(rec)
        first, last = seen[0], seen[-1]
        assert first["status"] == "succeeded" and first["risk"]["action"] == "allow", first
        assert first["risk"]["model"] == "velocity-test" and first["risk"]["score"] < 0.01
        # The memory channels have no step-up: a challenged recharge finds no route, a blocked one no channel.
        assert last["status"] == "blocked" and "model_score" in last["risk"]["reasons"], last
        assert last["risk"]["score"] >= 0.95
        actions = [r["risk"]["action"] for r in seen]
        assert "challenge" in actions, actions
        assert actions.index("challenge") < actions.index("block"), "challenged before blocked as the burst grows"

        resp, why = await _explain(api, last["id"])
        assert resp.status == 200, why
        assert why["model"] == "velocity-test" and why["action"] == "block" and why["score"] == last["risk"]["score"]
        assert why["features"][0]["feature"] == "user_count_10m" and why["features"][0]["contribution"] > 6, why
        _, trail = await api.get(f"/v1/recharges/{last['id']}/trail")
        created = trail["entries"][0]
        assert created["detail"]["risk_model"] == "velocity-test" and created["detail"]["risk_score"] >= 0.95
        await api.invariants()


async def test_explain_refuses_bad_asks(tmp_path):
    async with running_api_with(parse(_doc(tmp_path))) as api:
        _, rec = await api.post(BODY, key="one")
        resp, body = await _explain(api, rec["id"], token=FRONT_KEY)
        assert_error(resp, body, 403, "forbidden")
        resp, body = await _explain(api, None)
        assert_error(resp, body, 422, "validation_failed", "recharge_id")
        resp, body = await _explain(api, "rc_0000")
        assert_error(resp, body, 404, "not_found")
        resp, body = await _explain(api, "../etc")
        assert_error(resp, body, 404, "not_found")
        resp, body = await _explain(api, rec["id"], limit="5")
        assert_error(resp, body, 422, "unknown_field", "limit")
        resp, body = await _explain(api, rec["id"])
        assert resp.status == 200 and body["action"] == "allow" and len(body["features"]) == 5, body


async def test_device_and_ip_country_are_checked(tmp_path):
    async with running_api_with(parse(_doc(tmp_path))) as api:
        resp, body = await api.post({**BODY, "ip_country": "cn"}, key="ip-1")
        assert_error(resp, body, 422, "invalid_field", "ip_country")
        resp, body = await api.post({**BODY, "device_id": "x" * 129}, key="dev-1")
        assert_error(resp, body, 422, "invalid_field", "device_id")
        resp, body = await api.post({**BODY, "device_id": 42}, key="dev-2")
        assert_error(resp, body, 422, "invalid_field", "device_id")
        resp, body = await api.post({**BODY, "device_id": "a phone"}, key="dev-3")
        assert_error(resp, body, 422, "invalid_field", "device_id")
        resp, body = await api.post({**BODY, "device_id": "dev-ok", "ip_country": "PH"}, key="ok")
        assert resp.status == 201 and body["status"] == "succeeded", body
        await api.invariants()


async def test_a_shadow_model_is_counted_never_acted_on(tmp_path):
    shadow = _artefact(tmp_path, "paranoid", {}, 5.0)  # blocks everything, were it live
    async with running_api_with(parse(_doc(tmp_path, shadow=shadow))) as api:
        for i in range(3):
            resp, rec = await api.post({**BODY, "user_id": f"u_s{i}"}, key=f"s-{i}")
            assert rec["status"] == "succeeded" and rec["risk"]["action"] == "allow", rec
        counted = api.service.metrics.risk_shadow_decisions.labels("paranoid", "block", "allow")._value.get()
        assert counted == 3
        await api.invariants()


async def test_an_artefact_that_cannot_be_served_is_refused_at_reload(tmp_path):
    async with running_api_with(parse(_doc(tmp_path))) as api:
        running = api.service.loaded.version
        bad = tmp_path / "broken.json"
        bad.write_bytes(orjson.dumps({"format": "logistic-v1", "version": "x", "features": ["amount_log"]}))
        for artefact, says in ((str(bad), "features"), (str(tmp_path / "missing.json"), "no risk model artefact")):
            doc = _doc(tmp_path)
            doc["risk"]["model"]["artefact"] = artefact
            resp = await api.client.put("/v1/admin/config", data=orjson.dumps(doc), headers={
                "Authorization": f"Bearer {SRE_KEY}", "Content-Type": "application/json"})
            body = await resp.json()
            assert_error(resp, body, 422, "validation_failed")
            assert says in body["error"]["message"], body
            assert api.service.loaded.version == running
        resp, rec = await api.post(BODY, key="after")
        assert rec["risk"]["model"] == "velocity-test", "the running model stays"


async def test_a_model_not_enforced_scores_and_explains_but_does_not_act(tmp_path):
    async with running_api_with(parse(_doc(tmp_path, enforce=False))) as api:
        api.service.user_limits.reconfigure(1000, 1000)
        for i in range(25):
            resp, rec = await api.post({**BODY, "user_id": "u_watched"}, key=f"w-{i}")
        assert rec["status"] == "succeeded" and rec["risk"]["action"] == "allow", rec
        assert rec["risk"]["score"] >= 0.95 and rec["risk"]["model"] == "velocity-test"
        _, why = await _explain(api, rec["id"])
        assert why["features"][0]["feature"] == "user_count_10m" and why["action"] == "allow", why
        await api.invariants()
