"""Amount suggestions (SPEC 22) over real loopback HTTP on a real SQLite journal: a user
with history gets their habitual amount first, and the recharges this process sees succeed
move it at once; a new user gets their country's amounts; nothing known gets the
configured defaults; a bad currency is one clear 422."""

from __future__ import annotations

import pytest
from test_api import FRONT_KEY, SRE_KEY, assert_error, config_doc, running_api_with

from config import parse

BODY = {"method": "ewallet", "instrument": {"token": "tok_abc"}, "country": "CN", "currency": "CNY"}


@pytest.fixture
async def api(tmp_path):
    doc = config_doc(tmp_path)
    doc["suggestions"] = {"cohort_min_recharges": 2, "defaults": {"CNY": [3000, 6800, 9800]}}
    doc["limits"] = {"per_user": {"rate_per_s": 1000, "burst": 1000}}
    async with running_api_with(parse(doc)) as a:
        yield a


async def recharge(api, user: str, amount: int, key: str) -> None:
    resp, body = await api.post({**BODY, "user_id": user, "amount_minor": amount}, key=key)
    assert resp.status == 201 and body["status"] == "succeeded", body


async def suggestions(api, user: str, query: str = "currency=CNY", token: str | None = FRONT_KEY):
    return await api.get(f"/v1/users/{user}/suggestions?{query}", token=token)


async def test_a_user_with_history_gets_their_habitual_amount_first(api):
    for i, amount in enumerate([6800, 6800, 3000, 6800, 6800]):
        await recharge(api, "u_hab", amount, f"h{i}")
    resp, body = await suggestions(api, "u_hab")  # read from the journal: the first ask
    assert resp.status == 200, body
    assert body["basis"] == "history"
    assert [a["amount_minor"] for a in body["amounts"]][:2] == [6800, 3000]
    scores = [a["score"] for a in body["amounts"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 and len(scores) <= 3


async def test_a_recharge_this_process_sees_succeed_counts_at_once(api):
    _, body = await suggestions(api, "u_late")  # read from the journal: nothing yet
    assert body["basis"] == "default"

    class Unread:
        async def succeeded_recharges(self, user_id: str, limit: int) -> list:
            raise AssertionError("read from the journal again within refresh_s")

    api.service.suggestions._history = Unread()
    await recharge(api, "u_late", 19800, "l1")
    _, body = await suggestions(api, "u_late")
    assert body["basis"] == "history" and body["amounts"][0]["amount_minor"] == 19800


async def test_a_new_user_gets_what_their_country_buys_and_nothing_known_gets_the_defaults(api):
    _, body = await suggestions(api, "u_new", "currency=CNY&country=CN")
    assert body == {"amounts": [{"amount_minor": 3000, "score": 0.3333}, {"amount_minor": 6800, "score": 0.3333},
                                {"amount_minor": 9800, "score": 0.3333}], "basis": "default"}
    for i, user in enumerate(["u_a", "u_b", "u_c"]):
        await recharge(api, user, 9800, f"c{i}")
    await recharge(api, "u_d", 3000, "c3")
    resp, body = await suggestions(api, "u_new", "currency=CNY&country=CN")
    assert resp.status == 200 and body["basis"] == "cohort", body
    assert [a["amount_minor"] for a in body["amounts"]] == [9800, 3000]
    # JPY: nothing bought, no defaults configured: round amounts from the smallest one can buy.
    _, body = await suggestions(api, "u_new", "currency=JPY")
    assert body["basis"] == "default"
    assert [a["amount_minor"] for a in body["amounts"]] == [200, 500, 2000]


@pytest.mark.parametrize(("query", "code", "field"), [
    ("", "missing_field", "currency"),
    ("currency=cny", "invalid_field", "currency"),
    ("currency=CNY&currency=JPY", "invalid_field", "currency"),
    ("currency=XYZ", "unsupported_currency", "currency"),
    ("currency=EUR", "unsupported_currency", "currency"),  # an ISO code, but not sold here
    ("currency=CNY&country=china", "invalid_field", "country"),
    ("currency=CNY&limit=3", "unknown_field", "limit"),
])
async def test_a_bad_query_is_422_naming_the_field(api, query, code, field):
    resp, body = await suggestions(api, "u_1", query)
    assert_error(resp, body, 422, code, field)


async def test_suggestions_need_a_recharge_key(api):
    resp, body = await suggestions(api, "u_1", token=None)
    assert_error(resp, body, 401, "unauthorized")
    resp, body = await suggestions(api, "u_1", token=SRE_KEY)
    assert_error(resp, body, 403, "forbidden")
    resp, body = await suggestions(api, "bad%20user")
    assert_error(resp, body, 422, "invalid_field", "user_id")
