"""The reconciliation admin API (SPEC 21) over real HTTP on loopback: a run started in the
background and read back with its summary; bad input refused with the error shape, nothing
recorded; admins only."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from test_api import BODY, FRONT_KEY, SRE_KEY, assert_error, config_doc, running_api_with

from config import parse


@pytest.fixture
async def api(tmp_path):
    async with running_api_with(parse(config_doc(tmp_path))) as a:
        yield a


async def _start(api, body: object, token: str | None = SRE_KEY):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = await api.client.post("/v1/admin/reconciliations", json=body, headers=headers)
    return resp, await resp.json()


async def _until_done(api, run_id: str) -> dict:
    for _ in range(100):
        resp, run = await api.get(f"/v1/admin/reconciliations/{run_id}", token=SRE_KEY)
        assert resp.status == 200
        if run["status"] != "running":
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(run)


async def test_a_run_reconciles_the_days_captures_in_the_background(api):
    resp, rec = await api.post(BODY)
    assert resp.status == 201 and rec["status"] == "succeeded"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    resp, run = await _start(api, {"channel": rec["channel"], "date": today})
    assert resp.status == 202 and run["status"] == "running" and run["trigger"] == "manual"
    done = await _until_done(api, run["id"])
    assert done["status"] == "completed" and done["report_items"] == 1, done
    assert done["summary"]["discrepancies"] == 0 and done["discrepancies"] == []
    assert done["summary"]["currencies"]["CNY"] == {"settled_minor": 8500, "discrepant_minor": 0,
                                                    "deviation_rate": 0.0}
    resp, listed = await api.get("/v1/admin/reconciliations?limit=5", token=SRE_KEY)
    assert [r["id"] for r in listed["reconciliations"]] == [run["id"]]
    resp, other = await api.get("/v1/admin/reconciliations?channel=b", token=SRE_KEY)
    assert other["reconciliations"] == []
    resp, status = await api.get("/v1/status", token=None)
    assert resp.status == 200
    assert [(r["channel"], r["id"], r["open"]) for r in status["reconciliations"]] == [(rec["channel"], run["id"], 0)]
    await api.invariants()


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"date": "2026-12-01"}, 422, "missing_field", "channel"),
    ({"channel": "a"}, 422, "missing_field", "date"),
    ({"channel": "a", "date": "yesterday"}, 422, "invalid_field", "date"),
    ({"channel": "a", "date": "2026-13-01"}, 422, "invalid_field", "date"),
    ({"channel": "a", "date": "2026-12-01", "x": 1}, 422, "unknown_field", "x"),
    ({"channel": "nope", "date": "2026-12-01"}, 404, "not_found", None),
    ([1, 2], 422, "validation_failed", None),
])
async def test_bad_input_is_refused_and_records_no_run(api, body, status, code, field):
    resp, err = await _start(api, body)
    assert_error(resp, err, status, code, field)
    resp, listed = await api.get("/v1/admin/reconciliations", token=SRE_KEY)
    assert listed["reconciliations"] == []


async def test_only_admins_reconcile_and_bad_queries_are_refused(api):
    resp, err = await _start(api, {"channel": "a", "date": "2026-12-01"}, token=FRONT_KEY)
    assert_error(resp, err, 403, "forbidden")
    resp, err = await _start(api, {"channel": "a", "date": "2026-12-01"}, token=None)
    assert_error(resp, err, 401, "unauthorized")
    resp, err = await api.get("/v1/admin/reconciliations/rn_0123456789abcdef", token=SRE_KEY)
    assert_error(resp, err, 404, "not_found")
    resp, err = await api.get("/v1/admin/reconciliations/../x", token=SRE_KEY)
    assert resp.status == 404
    resp, err = await api.get("/v1/admin/reconciliations?limit=0", token=SRE_KEY)
    assert_error(resp, err, 422, "invalid_field", "limit")
    resp, err = await api.get("/v1/admin/reconciliations?channel=A%20B", token=SRE_KEY)
    assert_error(resp, err, 422, "invalid_field", "channel")
    resp, err = await api.get("/v1/admin/reconciliations?nope=1", token=SRE_KEY)
    assert resp.status == 422
