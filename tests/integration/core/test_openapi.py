"""The OpenAPI 3.1 document is served, and real responses of every kind validate against
the schema it declares for their path and status: the document cannot drift."""

from __future__ import annotations

from typing import Any

import orjson
from jsonschema import Draft202012Validator
from test_api import BODY, FRONT_KEY, SRE_KEY, api  # noqa: F401  (fixture)

from channels.memory import Action
from orchestrator.api.openapi import OPENAPI


def _resolve(node: Any) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            target: Any = OPENAPI
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _resolve(target)
        return {k: _resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v) for v in node]
    return node


def check(path: str, method: str, status: int, body: Any) -> None:
    op = OPENAPI["paths"][path][method]
    declared = op["responses"].get(str(status))
    assert declared is not None, f"{method.upper()} {path} answered {status}, which the document does not declare"
    schema = _resolve(declared)["content"]["application/json"]["schema"]
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
    assert not errors, f"{method.upper()} {path} {status}: {errors[0].message} at {list(errors[0].path)}"


async def test_the_document_is_served_and_is_openapi_3_1(api):
    resp, doc = await api.get("/v1/openapi.json", token=None)
    assert resp.status == 200 and doc["openapi"].startswith("3.1")
    assert doc == orjson.loads(orjson.dumps(OPENAPI))
    for path in ("/v1/recharges", "/v1/recharges/{id}", "/v1/recharges/{id}/trail", "/v1/wallets/{user_id}",
                 "/v1/webhooks/{channel}", "/healthz", "/readyz", "/v1/health/channels", "/metrics"):
        assert path in doc["paths"]


async def test_real_responses_match_the_document(api):
    h = {"Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"}
    r = await api.client.post("/v1/recharges", data=orjson.dumps(BODY), headers={**h, "Idempotency-Key": "oa-1"})
    rec = await r.json()
    check("/v1/recharges", "post", r.status, rec)
    r = await api.client.post("/v1/recharges", data=orjson.dumps(BODY), headers={**h, "Idempotency-Key": "oa-1"})
    check("/v1/recharges", "post", r.status, await r.json())
    for bad, key in (({**BODY, "amount_minor": -1}, "oa-2"), (b"{", "oa-3")):
        data = bad if isinstance(bad, bytes) else orjson.dumps(bad)
        r = await api.client.post("/v1/recharges", data=data, headers={**h, "Idempotency-Key": key})
        check("/v1/recharges", "post", r.status, await r.json())
    r = await api.client.post("/v1/recharges", data=orjson.dumps(BODY), headers={"Idempotency-Key": "oa-4"})
    check("/v1/recharges", "post", r.status, await r.json())
    api.channels["a"].script = lambda op, ref, n: Action.DECLINE_HARD if op == "authorize" else Action.OK
    r = await api.client.post("/v1/recharges", data=orjson.dumps({**BODY, "user_id": "u_2"}),
                              headers={**h, "Idempotency-Key": "oa-5"})
    check("/v1/recharges", "post", r.status, await r.json())
    for path, spec_path in ((f"/v1/recharges/{rec['id']}", "/v1/recharges/{id}"),
                            (f"/v1/recharges/{rec['id']}/trail", "/v1/recharges/{id}/trail"),
                            ("/v1/recharges/rc_00", "/v1/recharges/{id}"),
                            ("/v1/wallets/u_1", "/v1/wallets/{user_id}"),
                            ("/v1/wallets/u_1?limit=0", "/v1/wallets/{user_id}")):
        resp, body = await api.get(path)
        check(spec_path, "get", resp.status, body)
    resp, body = await api.get("/v1/health/channels", token=None)
    check("/v1/health/channels", "get", resp.status, body)
    resp, body = await api.get("/v1/admin/config", token=SRE_KEY)
    check("/v1/admin/config", "get", resp.status, body)
    resp, body = await api.get("/v1/admin/config", token=FRONT_KEY)
    check("/v1/admin/config", "get", resp.status, body)
    r = await api.client.post("/v1/webhooks/a", data=b"{}", headers={"X-Provider-Signature": "t=1,v1=00"})
    check("/v1/webhooks/{channel}", "post", r.status, await r.json())


CARD = "6222020200112345679"
INSTRUMENTS = [  # (instrument, whether the server takes it)
    ({"token": "t"}, True),
    ({"account_number": CARD}, True),
    ({"token": "t", "issuer": "icbc"}, True),
    ({"account_number": CARD, "issuer": "gcash"}, True),
    ({"token": "t", "issuer": None}, True),
    ({"token": "t", "account_number": None}, True),
    ({"token": None, "account_number": CARD, "issuer": "bank_of.china-2"}, True),
    ({}, False),
    ({"issuer": "icbc"}, False),
    ({"token": None}, False),
    ({"token": "t", "account_number": CARD}, False),
    ({"token": "t", "account_number": CARD, "issuer": "icbc"}, False),
    ({"token": "t", "issuer": "ICBC"}, False),
    ({"token": "t", "issuer": ""}, False),
    ({"token": "t", "issuer": "i" * 33}, False),
    ({"token": "t", "issuer": 7}, False),
    ({"token": "t", "bank": "icbc"}, False),
]


async def test_the_instrument_schema_takes_exactly_what_the_server_takes(api):
    schema = Draft202012Validator(_resolve(OPENAPI["components"]["schemas"]["Instrument"]))
    h = {"Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"}
    for n, (instrument, taken) in enumerate(INSTRUMENTS):
        assert schema.is_valid(instrument) is taken, instrument
        r = await api.client.post("/v1/recharges", data=orjson.dumps({**BODY, "instrument": instrument}),
                                  headers={**h, "Idempotency-Key": f"inst-{n}"})
        answer = await r.json()
        assert (r.status in (201, 202)) is taken, (instrument, r.status, answer)
        check("/v1/recharges", "post", r.status, answer)


async def test_templates_with_an_issuer_match_the_document(api):
    h = {"Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"}
    template = {"name": "t", "amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet"}
    for instrument in ({"token": "t", "issuer": "icbc"}, {"account_number": CARD, "issuer": "icbc"},
                       {"token": "t"}):
        r = await api.client.post("/v1/users/u_1/templates", data=orjson.dumps({**template, "instrument": instrument}),
                                  headers=h)
        made = await r.json()
        check("/v1/users/{user_id}/templates", "post", r.status, made)
        assert r.status == 201 and made["instrument"].get("issuer") == instrument.get("issuer")
        resp, got = await api.get(f"/v1/users/u_1/templates/{made['id']}")
        check("/v1/users/{user_id}/templates/{id}", "get", resp.status, got)
    r = await api.client.post("/v1/users/u_1/templates", headers=h, data=orjson.dumps(
        {**template, "instrument": {"token": "t", "issuer": "ICBC"}}))
    check("/v1/users/{user_id}/templates", "post", r.status, await r.json())
    assert r.status == 422
