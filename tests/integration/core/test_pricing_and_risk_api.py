"""Pricing and risk on the recharge path over HTTP: quotes honoured and refused on drift,
the first-recharge bonus given once under concurrency, risk blocks before any channel."""

from __future__ import annotations

import asyncio

import orjson
from test_api import BODY, FRONT_KEY, SRE_KEY, assert_error, running_api
from test_reload import document, put


async def test_a_quote_fixes_the_price_and_a_drifted_rate_expires_it(tmp_path):
    async with running_api(tmp_path) as api:
        resp = await api.client.post("/v1/quotes", data=orjson.dumps(
            {"user_id": "u_q", "amount_minor": 8500, "currency": "CNY"}),
            headers={"Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"})
        quote = await resp.json()
        assert resp.status == 201 and quote["coins"] == 835 and quote["bonus_coins"] == 125, quote
        resp, rec = await api.post({**BODY, "user_id": "u_q", "quote_id": quote["quote_id"]}, key="q-1")
        assert resp.status == 201 and rec["coins"] == 835 and rec["bonus_coins"] == 125
        resp = await api.client.post("/v1/quotes", data=orjson.dumps(
            {"user_id": "u_q2", "amount_minor": 8500, "currency": "CNY"}),
            headers={"Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"})
        second = await resp.json()
        doc = document(tmp_path)
        doc["pricing"]["rates"]["CNY"] = 0.1409  # moved 0.36 %: past the 0.3 % a quote tolerates
        _, applied = await put(api, doc)
        assert applied["applied"], applied
        resp, body = await api.post({**BODY, "user_id": "u_q2", "quote_id": second["quote_id"]}, key="q-2")
        assert_error(resp, body, 409, "quote_expired")
        resp, body = await api.post({**BODY, "user_id": "u_q2", "quote_id": "q_nope"}, key="q-3")
        assert_error(resp, body, 422, "quote_not_found", "quote_id")
        # The recharge made with the first quote still replays, though its quote is gone stale.
        resp, again = await api.post({**BODY, "user_id": "u_q", "quote_id": quote["quote_id"]}, key="q-1")
        assert resp.status == 201 and again["id"] == rec["id"]
        await api.invariants()


async def test_two_simultaneous_first_recharges_get_the_bonus_once(tmp_path):
    async with running_api(tmp_path) as api:
        api.service.user_limits.reconfigure(1000, 1000)
        api.channels["a"].latency_s = 0.05
        results = await asyncio.gather(*(api.post({**BODY, "user_id": "u_first"}, key=f"first-{i}")
                                         for i in range(6)))
        bonuses = sorted(body["bonus_coins"] for resp, body in results if resp.status == 201)
        assert len(bonuses) == 6 and bonuses.count(125) == 1 and bonuses.count(0) == 5, bonuses
        listed = [[pr["name"] for pr in body["promotions"]] for _, body in results]
        assert sorted(listed) == [[]] * 5 + [["first_recharge"]], listed
        winner = next(body for _, body in results if body["bonus_coins"] == 125)
        _, got = await api.get(f"/v1/recharges/{winner['id']}")
        assert [pr["name"] for pr in got["promotions"]] == ["first_recharge"], "GET lists them too"
        _, wallet = await api.get("/v1/wallets/u_first")
        assert wallet["coins"] == 6 * 835 + 125
        await api.invariants()


async def test_a_blocklisted_user_is_blocked_before_any_channel(tmp_path):
    async with running_api(tmp_path) as api:
        doc = document(tmp_path)
        doc["risk"] = {"blocklist": {"users": ["u_bad"]}}
        _, applied = await put(api, doc)
        assert applied["applied"], applied
        resp, body = await api.post({**BODY, "user_id": "u_bad"}, key="bad-1")
        assert resp.status == 201 and body["status"] == "blocked" and "user_blocked" in body["reason"], body
        assert body["risk"]["action"] == "block" and body["risk"]["reasons"]
        assert api.channels["a"].calls == [] and api.channels["b"].calls == []
        _, wallet = await api.get("/v1/wallets/u_bad")
        assert wallet["coins"] == 0
        resp, body = await api.post({**BODY, "instrument": {"account_number": "4111111111111112"}}, key="luhn")
        assert body["status"] == "blocked" and "luhn" in body["reason"], body
        await api.invariants()
        doc["risk"] = {"blocklist": {"users": []}}
        await put(api, doc, token=SRE_KEY)
        resp, body = await api.post({**BODY, "user_id": "u_bad"}, key="bad-2")
        assert body["status"] == "succeeded", "the blocklist reloads"


async def test_rates_from_a_source_and_stale_rates_refused(tmp_path):
    from aiohttp import web

    answers = {"CNY": "0.1404"}
    source = web.Application()

    async def rates(request):
        return web.json_response(answers)

    source.router.add_get("/rates", rates)
    runner = web.AppRunner(source)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with running_api(tmp_path) as api:
            doc = document(tmp_path)
            doc["pricing"]["rate_source"] = {"url": f"http://127.0.0.1:{port}/rates", "refresh_s": 0.2,
                                             "max_age_s": 0.5}
            _, applied = await put(api, doc)
            assert applied["applied"], applied
            await api.service.pricing.rates.refresh(api.service._rate_source.fetch)
            resp, body = await api.post(BODY, key="src-1")
            assert resp.status == 201, body
            await runner.cleanup()  # the source goes away; the rates age past max_age_s
            await asyncio.sleep(0.8)
            resp, body = await api.post({**BODY, "user_id": "u_2"}, key="src-2")
            assert_error(resp, body, 503, "rates_stale")
            assert resp.headers.get("Retry-After")
            await api.invariants()
    finally:
        await runner.cleanup()
