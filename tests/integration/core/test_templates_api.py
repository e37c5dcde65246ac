"""Recharge templates (SPEC 22) over real loopback HTTP on a real SQLite journal: saved,
listed, read and deleted per (client, user); a recharge made from one succeeds with the
template's fields and keeps the money invariants; its Idempotency-Key replays even once the
template is gone; every bad request is one clear 4xx; a whole account number is never
stored or answered."""

from __future__ import annotations

import json
from typing import Any

import orjson
from test_api import FRONT_KEY, OTHER_KEY, SRE_KEY, assert_error, config_doc, running_api, running_api_with

from config import parse

CARD = "6222020200112345679"  # 19 digits, Luhn-valid: masked 622202*********5679
TEMPLATE = {"name": "Monthly pack", "amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet",
            "instrument": {"token": "tok_abc"}}


class Client:
    """One API key's calls, every answer kept (to look for a number in them)."""

    def __init__(self, api: Any, token: str = FRONT_KEY) -> None:
        self.api = api
        self.token = token
        self.answers: list[str] = []

    async def _call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[Any, Any]:
        h = {"Authorization": f"Bearer {self.token}", **headers}
        data = None
        if body is not None:
            h["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        resp = await self.api.client.request(method, path, data=data, headers=h)
        text = await resp.text()
        self.answers.append(text)
        return resp, json.loads(text) if text else None

    async def create(self, user: str = "u_1", body: Any = None) -> tuple[Any, Any]:
        return await self._call("POST", f"/v1/users/{user}/templates", TEMPLATE if body is None else body)

    async def list(self, user: str = "u_1") -> tuple[Any, Any]:
        return await self._call("GET", f"/v1/users/{user}/templates")

    async def get(self, tid: str, user: str = "u_1") -> tuple[Any, Any]:
        return await self._call("GET", f"/v1/users/{user}/templates/{tid}")

    async def delete(self, tid: str, user: str = "u_1") -> tuple[Any, Any]:
        return await self._call("DELETE", f"/v1/users/{user}/templates/{tid}")

    async def recharge(self, body: Any, key: str) -> tuple[Any, Any]:
        return await self._call("POST", "/v1/recharges", body, **{"Idempotency-Key": key})

    async def made(self, user: str = "u_1", body: Any = None) -> dict[str, Any]:
        resp, t = await self.create(user, body)
        assert resp.status == 201, t
        return t


async def test_a_template_is_saved_listed_read_and_recharged_from(tmp_path):
    async with running_api(tmp_path) as api:
        c = Client(api)
        t = await c.made()
        assert set(t) == {"id", "user_id", "name", "amount_minor", "currency", "country", "method", "instrument",
                          "created_at"}
        assert t["id"].startswith("tpl_") and t["user_id"] == "u_1" and t["instrument"] == {"token": "tok_abc"}
        assert {k: t[k] for k in TEMPLATE} == TEMPLATE
        second = await c.made(body={**TEMPLATE, "name": "Big pack", "amount_minor": 20000})
        resp, listed = await c.list()
        assert resp.status == 200 and listed == {"templates": [t, second]}, "oldest first"
        resp, got = await c.get(t["id"])
        assert resp.status == 200 and got == t

        resp, rec = await c.recharge({"user_id": "u_1", "template_id": t["id"], "metadata": {"order": "o1"}}, "r1")
        assert resp.status == 201, rec
        assert rec["status"] == "succeeded" and rec["channel"] == "a"
        assert (rec["amount_minor"], rec["currency"], rec["country"], rec["method"]) == (8500, "CNY", "CN", "ewallet")
        assert rec["metadata"] == {"order": "o1"}
        _, trail = await c._call("GET", f"/v1/recharges/{rec['id']}/trail")
        assert trail["entries"][0]["event"] == "created" and trail["entries"][0]["detail"]["template_id"] == t["id"]
        stored = await api.service.journal.get(rec["id"])
        assert stored.instrument == {"token": "tok_abc"}
        # The fields given beside the template are the template's: the same recharge.
        resp, same = await c.recharge({"user_id": "u_1", "template_id": t["id"], "amount_minor": 8500,
                                       "currency": "CNY", "country": "CN", "method": "ewallet",
                                       "instrument": {"token": "tok_abc"}}, "r2")
        assert resp.status == 201 and same["status"] == "succeeded" and same["id"] != rec["id"]
        _, wallet = await c._call("GET", "/v1/wallets/u_1")
        assert wallet["coins"] == rec["coins"] + rec["bonus_coins"] + same["coins"] + same["bonus_coins"]
        await api.invariants()


async def test_a_deleted_template_is_gone_but_a_retry_of_its_recharge_still_replays(tmp_path):
    async with running_api(tmp_path) as api:
        c = Client(api)
        t = await c.made()
        body = {"user_id": "u_1", "template_id": t["id"]}
        resp, rec = await c.recharge(body, "del-1")
        assert resp.status == 201, rec
        resp, _ = await c.delete(t["id"])
        assert resp.status == 204
        resp, err = await c.get(t["id"])
        assert_error(resp, err, 404, "template_not_found")
        resp, err = await c.delete(t["id"])
        assert_error(resp, err, 404, "template_not_found")
        resp, listed = await c.list()
        assert listed == {"templates": []}
        resp, err = await c.recharge(body, "del-2")
        assert_error(resp, err, 404, "template_not_found", "template_id")

        resp, again = await c.recharge(body, "del-1")
        assert resp.status == 201 and resp.headers["Idempotent-Replayed"] == "true", again
        assert again["id"] == rec["id"] and again["status"] == "succeeded"
        resp, err = await c.recharge({**body, "metadata": {"x": 1}}, "del-1")
        assert_error(resp, err, 422, "idempotency_key_reused")
        resp, err = await c.recharge({**body, "amount_minor": 9000}, "del-1")
        assert_error(resp, err, 422, "idempotency_key_reused")
        # A new template with the very same fields is another id, so another request.
        fresh = await c.made()
        resp, err = await c.recharge({"user_id": "u_1", "template_id": fresh["id"]}, "del-1")
        assert_error(resp, err, 422, "idempotency_key_reused")
        assert len(await api.service.journal.query("SELECT id FROM recharges")) == 1
        await api.invariants()


async def test_a_replay_with_the_template_still_there_answers_the_same_recharge(tmp_path):
    async with running_api(tmp_path) as api:
        c = Client(api)
        t = await c.made()
        body = {"user_id": "u_1", "template_id": t["id"]}
        _, first = await c.recharge(body, "k")
        resp, again = await c.recharge(body, "k")
        assert resp.headers["Idempotent-Replayed"] == "true" and again["id"] == first["id"]
        # The same payment fields asked for directly under the key: another request.
        direct = {"user_id": "u_1", **{k: TEMPLATE[k] for k in TEMPLATE if k != "name"}}
        resp, err = await c.recharge(direct, "k")
        assert_error(resp, err, 422, "idempotency_key_reused")
        await api.invariants()


async def test_bad_templates_are_each_a_clear_422(tmp_path):
    async with running_api(tmp_path) as api:
        c = Client(api)
        for body, code, field in (
            ({**TEMPLATE, "currency": "XQZ"}, "unsupported_currency", "currency"),  # no such ISO code
            ({**TEMPLATE, "currency": "EUR"}, "unsupported_currency", "currency"),  # not priced (no rate)
            ({**TEMPLATE, "amount_minor": 10}, "amount_too_small", "amount_minor"),
            ({**TEMPLATE, "amount_minor": 1_000_000}, "amount_out_of_range", "amount_minor"),  # 10,000 CNY
            ({**TEMPLATE, "amount_minor": "85"}, "invalid_field", "amount_minor"),
            ({**TEMPLATE, "country": "cn"}, "invalid_field", "country"),
            ({**TEMPLATE, "method": "E-Wallet"}, "invalid_field", "method"),
            ({**TEMPLATE, "instrument": {}}, "invalid_field", "instrument"),
            ({**TEMPLATE, "instrument": {"account_number": "41111"}}, "invalid_field", "instrument.account_number"),
            ({**TEMPLATE, "name": ""}, "invalid_field", "name"),
            ({**TEMPLATE, "name": "   "}, "invalid_field", "name"),
            ({**TEMPLATE, "name": "x" * 65}, "invalid_field", "name"),
            ({**TEMPLATE, "name": "two\nlines"}, "invalid_field", "name"),
            ({k: v for k, v in TEMPLATE.items() if k != "name"}, "missing_field", "name"),
            ({**TEMPLATE, "coins": 5}, "unknown_field", "coins"),
        ):
            resp, err = await c.create(body=body)
            assert_error(resp, err, 422, code, field)
        resp, err = await c.create(user="bad user!")
        assert_error(resp, err, 422, "invalid_field", "user_id")
        resp, _ = await c.create(body={**TEMPLATE, "name": "x" * 64})
        assert resp.status == 201, "64 characters is the most, and allowed"
        resp, err = await Client(api, SRE_KEY).create()
        assert_error(resp, err, 403, "forbidden")
        resp, err = await Client(api, "nope").list()
        assert_error(resp, err, 401, "unauthorized")
        resp, err = await c.get("rc_123")
        assert_error(resp, err, 404, "template_not_found")
        resp, listed = await c.list()
        assert len(listed["templates"]) == 1


async def test_another_users_or_clients_template_does_not_exist_for_the_caller(tmp_path):
    async with running_api(tmp_path) as api:
        front, other = Client(api), Client(api, OTHER_KEY)
        t = await front.made()
        for client, user in ((front, "u_2"), (other, "u_1")):
            resp, err = await client.get(t["id"], user=user)
            assert_error(resp, err, 404, "template_not_found")
            resp, err = await client.delete(t["id"], user=user)
            assert_error(resp, err, 404, "template_not_found")
            resp, listed = await client.list(user=user)
            assert listed == {"templates": []}
            resp, err = await client.recharge({"user_id": user, "template_id": t["id"]}, "steal")
            assert_error(resp, err, 404, "template_not_found", "template_id")
            assert err["error"]["message"] == "no such template", "the same answer as for none at all"
        resp, err = await front.get("tpl_" + "0" * 24)
        assert_error(resp, err, 404, "template_not_found")
        assert (await front.get(t["id"]))[0].status == 200, "still there: nobody else could delete it"
        assert await api.service.journal.query("SELECT id FROM recharges") == []


async def test_a_user_keeps_at_most_max_per_user_templates_per_client(tmp_path):
    doc = config_doc(tmp_path)
    doc["templates"] = {"max_per_user": 3}
    async with running_api_with(parse(doc)) as api:
        front, other = Client(api), Client(api, OTHER_KEY)
        made = [await front.made(body={**TEMPLATE, "name": f"t{i}"}) for i in range(3)]
        resp, err = await front.create()
        assert_error(resp, err, 409, "template_limit_reached")
        assert "3" in err["error"]["message"] and "templates.max_per_user" in err["error"]["message"]
        assert (await front.create(user="u_2"))[0].status == 201, "per user"
        assert (await other.create())[0].status == 201, "per client"
        assert (await front.delete(made[0]["id"]))[0].status == 204
        assert (await front.create())[0].status == 201, "a delete frees a place"
        _, listed = await front.list()
        assert len(listed["templates"]) == 3


async def test_fields_given_beside_the_template_must_be_the_templates(tmp_path):
    async with running_api(tmp_path) as api:
        c = Client(api)
        t = await c.made()
        base = {"user_id": "u_1", "template_id": t["id"]}
        for extra, field in (({"amount_minor": 9000}, "amount_minor"), ({"currency": "JPY"}, "currency"),
                             ({"country": "JP"}, "country"), ({"method": "bank_card"}, "method"),
                             ({"instrument": {"token": "tok_other"}}, "instrument"),
                             ({"instrument": {"account_number": CARD}}, "instrument")):
            resp, err = await c.recharge({**base, **extra}, f"mm-{field}-{len(extra)}")
            assert_error(resp, err, 422, "template_mismatch", field)
        for bad, code, field in (({"template_id": "tpl_XYZ"}, "invalid_field", "template_id"),
                                 ({"currency": "QQQ"}, "unsupported_currency", "currency"),
                                 ({"name": "x"}, "unknown_field", "name"),
                                 ({"user_id": None}, "invalid_field", "user_id")):
            resp, err = await c.recharge({**base, **bad}, "bad")
            assert_error(resp, err, 422, code, field)
        resp, err = await c.recharge({"template_id": t["id"]}, "no-user")
        assert_error(resp, err, 422, "missing_field", "user_id")
        resp, err = await c._call("POST", "/v1/recharges", base)
        assert_error(resp, err, 400, "missing_idempotency_key")
        assert await api.service.journal.query("SELECT id FROM recharges") == []


async def test_a_masked_account_template_needs_the_number_and_never_keeps_it(tmp_path):
    async with running_api(tmp_path) as api:
        seen: list[dict[str, str]] = []
        orig = api.channels["a"].authorize

        async def capture(request):
            seen.append(dict(request.instrument))
            return await orig(request)

        api.channels["a"].authorize = capture
        c = Client(api)
        t = await c.made(body={**TEMPLATE, "instrument": {"account_number": CARD}})
        assert t["instrument"] == {"account_number_masked": "622202*********5679"}
        base = {"user_id": "u_1", "template_id": t["id"]}
        resp, err = await c.recharge(base, "m0")
        assert_error(resp, err, 422, "instrument_required", "instrument.account_number")
        assert "622202*********5679" in err["error"]["message"]
        for inst in ({"account_number": "6222020200112340001"}, {"token": "tok_abc"}):
            resp, err = await c.recharge({**base, "instrument": inst}, "m1")
            assert_error(resp, err, 422, "template_mismatch", "instrument.account_number")
        resp, rec = await c.recharge({**base, "instrument": {"account_number": CARD}}, "m2")
        assert resp.status == 201 and rec["status"] == "succeeded", rec
        assert seen == [{"account_number": CARD}], "the provider gets the whole number"
        resp, again = await c.recharge({**base, "instrument": {"account_number": CARD}}, "m2")
        assert resp.headers["Idempotent-Replayed"] == "true" and again["id"] == rec["id"]
        await c.delete(t["id"])
        resp, again = await c.recharge({**base, "instrument": {"account_number": CARD}}, "m2")
        assert resp.headers["Idempotent-Replayed"] == "true" and again["id"] == rec["id"], "after the delete too"
        resp, err = await c.recharge(base, "m2")
        assert_error(resp, err, 422, "idempotency_key_reused")
        await c.made(body={**TEMPLATE, "name": "card 2", "instrument": {"account_number": CARD}})
        rows = await api.service.journal.query("SELECT instrument FROM templates")
        assert [json.loads(r[0]) for r in rows] == [{"account_number_masked": "622202*********5679"}]
        await c.list()
        await api.invariants()
    db_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("j.db"))
    assert b"templates" in db_bytes, "the database files were read"
    for where, blob in (("the database", db_bytes), ("an API answer", "".join(c.answers).encode())):
        assert CARD.encode() not in blob, f"the account number is in {where}"
        assert CARD[6:15].encode() not in blob, f"its middle digits are in {where}"


async def test_a_quote_holds_for_a_recharge_from_a_template(tmp_path):
    async with running_api(tmp_path) as api:
        c = Client(api)
        t = await c.made()
        resp, quote = await c._call("POST", "/v1/quotes", {"user_id": "u_1", "amount_minor": 8500, "currency": "CNY"})
        assert resp.status == 201, quote
        resp, rec = await c.recharge({"user_id": "u_1", "template_id": t["id"], "quote_id": quote["quote_id"]}, "q")
        assert resp.status == 201 and (rec["coins"], rec["bonus_coins"]) == (quote["coins"], quote["bonus_coins"])
        big = await c.made(body={**TEMPLATE, "name": "big", "amount_minor": 20000})
        resp, err = await c.recharge({"user_id": "u_1", "template_id": big["id"], "quote_id": quote["quote_id"]}, "q2")
        assert_error(resp, err, 422, "quote_mismatch", "quote_id")
