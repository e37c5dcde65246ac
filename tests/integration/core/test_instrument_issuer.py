"""``instrument.issuer`` (SPEC 5, for routing by segment) over real loopback HTTP on a real
SQLite journal: an optional lower-case code kept with the recharge's instrument (so it is
part of the request's fingerprint), sent to the provider whole, and a template's too; a
bad one is a 422 naming it, and one given beside a template must be the template's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_api import BODY, assert_error, running_api
from test_templates_api import CARD, TEMPLATE, Client

ICBC = {"token": "tok_abc", "issuer": "icbc"}


def provider_sees(api: Any) -> list[dict[str, str]]:
    """Every instrument channel ``a`` is sent, in order."""
    seen: list[dict[str, str]] = []
    orig = api.channels["a"].authorize

    async def capture(request: Any) -> Any:
        seen.append(dict(request.instrument))
        return await orig(request)

    api.channels["a"].authorize = capture
    return seen


async def stored_instruments(api: Any, table: str = "recharges") -> list[dict[str, Any]]:
    """The instrument column as the SQLite journal holds it (JSON text)."""
    rows = await api.service.journal.query(f"SELECT instrument FROM {table} ORDER BY created_at")
    return [json.loads(r[0]) for r in rows]


async def test_an_issuer_is_kept_with_the_instrument_and_sent_to_the_provider(tmp_path):
    async with running_api(tmp_path) as api:
        seen = provider_sees(api)
        resp, rec = await api.post({**BODY, "instrument": ICBC}, key="iss-1")
        assert resp.status == 201 and rec["status"] == "succeeded", rec
        resp, card = await api.post({**BODY, "instrument": {"account_number": CARD, "issuer": "icbc"}}, key="iss-2")
        assert resp.status == 201, card
        assert seen == [ICBC, {"account_number": CARD, "issuer": "icbc"}], "the provider gets it beside the number"
        assert await stored_instruments(api) == [ICBC, {"account_number_masked": "622202*********5679",
                                                        "issuer": "icbc"}]
        resp, plain = await api.post({**BODY, "instrument": {"token": "tok_abc", "issuer": None}}, key="iss-3")
        assert resp.status == 201, plain
        assert seen[-1] == {"token": "tok_abc"}, "null is the same as left out"
        await api.invariants()
    # The journal's JSON round-trips: a new service on the same SQLite file reads it back.
    async with running_api(tmp_path) as again:
        assert (await again.service.journal.get(rec["id"])).instrument == ICBC
        assert (await again.service.journal.get(plain["id"])).instrument == {"token": "tok_abc"}
        resp, replayed = await again.post({**BODY, "instrument": ICBC}, key="iss-1")
        assert resp.headers["Idempotent-Replayed"] == "true" and replayed["id"] == rec["id"]


async def test_the_issuer_is_part_of_the_requests_fingerprint(tmp_path):
    async with running_api(tmp_path) as api:
        assert (await api.post({**BODY, "instrument": ICBC}, key="fp"))[0].status == 201
        for other in ({"token": "tok_abc"}, {"token": "tok_abc", "issuer": "ccb"}):
            resp, err = await api.post({**BODY, "instrument": other}, key="fp")
            assert_error(resp, err, 422, "idempotency_key_reused")
        resp, _ = await api.post({**BODY, "instrument": ICBC}, key="fp")
        assert resp.headers["Idempotent-Replayed"] == "true"
        assert len(await stored_instruments(api)) == 1


@pytest.mark.parametrize("issuer", ["ICBC", "", "-icbc", "_icbc", "icbc bank", "icbc\n", "i" * 33, "bancó", 7, True,
                                    ["icbc"], {"code": "icbc"}])
async def test_a_bad_issuer_is_422_naming_it_and_stores_nothing(tmp_path, issuer):
    async with running_api(tmp_path) as api:
        resp, err = await api.post({**BODY, "instrument": {"token": "tok_abc", "issuer": issuer}}, key="bad")
        assert_error(resp, err, 422, "invalid_field", "instrument.issuer")
        assert err["error"]["message"].startswith("instrument.issuer")
        resp, err = await Client(api).create(body={**TEMPLATE, "instrument": {"token": "t", "issuer": issuer}})
        assert_error(resp, err, 422, "invalid_field", "instrument.issuer")
        assert await stored_instruments(api) == [] and await stored_instruments(api, "templates") == []
        assert api.channels["a"].calls == []


@pytest.mark.parametrize("issuer", ["icbc", "gcash", "0", "bank_of.china-2", "i" * 32])
async def test_a_good_issuer_is_taken_as_given(tmp_path, issuer):
    async with running_api(tmp_path) as api:
        resp, rec = await api.post({**BODY, "instrument": {"token": "tok_abc", "issuer": issuer}}, key="ok")
        assert resp.status == 201, rec
        assert await stored_instruments(api) == [{"token": "tok_abc", "issuer": issuer}]


async def test_a_templates_issuer_is_kept_and_used_and_one_given_beside_it_must_match(tmp_path):
    async with running_api(tmp_path) as api:
        seen = provider_sees(api)
        c = Client(api)
        t = await c.made(body={**TEMPLATE, "instrument": ICBC})
        assert t["instrument"] == ICBC
        assert (await c.get(t["id"]))[1]["instrument"] == ICBC
        base = {"user_id": "u_1", "template_id": t["id"]}
        for n, inst in enumerate((None, {"token": "tok_abc"}, ICBC)):
            body = base if inst is None else {**base, "instrument": inst}
            resp, rec = await c.recharge(body, f"t{n}")
            assert resp.status == 201 and rec["status"] == "succeeded", rec
        assert seen == [ICBC] * 3, "the template's issuer, whether the request repeats it or not"
        assert await stored_instruments(api) == [ICBC] * 3
        resp, err = await c.recharge({**base, "instrument": {"token": "tok_abc", "issuer": "ccb"}}, "t-ccb")
        assert_error(resp, err, 422, "template_mismatch", "instrument.issuer")
        assert "'icbc'" in err["error"]["message"]

        plain = await c.made(body={**TEMPLATE, "name": "no issuer"})
        assert plain["instrument"] == {"token": "tok_abc"}
        resp, err = await c.recharge({"user_id": "u_1", "template_id": plain["id"], "instrument": ICBC}, "p-icbc")
        assert_error(resp, err, 422, "template_mismatch", "instrument.issuer")
        assert len(await stored_instruments(api)) == 3
        await api.invariants()


async def test_a_masked_templates_issuer_goes_with_the_number_brought_again(tmp_path):
    async with running_api(tmp_path) as api:
        seen = provider_sees(api)
        c = Client(api)
        t = await c.made(body={**TEMPLATE, "instrument": {"account_number": CARD, "issuer": "icbc"}})
        masked = {"account_number_masked": "622202*********5679", "issuer": "icbc"}
        assert t["instrument"] == masked and await stored_instruments(api, "templates") == [masked]
        base = {"user_id": "u_1", "template_id": t["id"]}
        resp, rec = await c.recharge({**base, "instrument": {"account_number": CARD}}, "m1")
        assert resp.status == 201 and rec["status"] == "succeeded", rec
        assert seen == [{"account_number": CARD, "issuer": "icbc"}]
        assert await stored_instruments(api) == [masked]
        resp, err = await c.recharge({**base, "instrument": {"account_number": CARD, "issuer": "ccb"}}, "m2")
        assert_error(resp, err, 422, "template_mismatch", "instrument.issuer")
        resp, again = await c.recharge({**base, "instrument": {"account_number": CARD}}, "m1")
        assert resp.headers["Idempotent-Replayed"] == "true" and again["id"] == rec["id"]
    assert CARD not in "".join(c.answers)
