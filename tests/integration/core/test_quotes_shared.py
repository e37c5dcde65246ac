"""Quotes live in the journal, for every store (SQLite and PostgreSQL): a quote one
instance issued is redeemed by another on the same store at exactly its price, expires
there the same way, and is purged a further TTL after expiry, whoever purges. Over HTTP
too: POST /v1/quotes on one Service, the recharge on another; and no quote id, however
odd, ever gets a 500."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_api import BODY, FRONT_KEY, Api, _channel, _sha

from channels.memory import MemoryChannel
from config import PricingConfig, parse
from orchestrator.api.app import build_app
from orchestrator.clock import VirtualClock
from orchestrator.journal import QuoteRecord, SqliteJournal
from orchestrator.pricing import UserHistory
from orchestrator.quotes import PricingService, QuoteError
from orchestrator.service import Service

T0 = 1_800_000_000.0


def record(quote_id: str, expires_at: float, **kw: object) -> QuoteRecord:
    base = dict(quote_id=quote_id, user_id="u1", amount_minor=8500, currency="CNY",
                price={"coins": 835, "rate": "0.14040", "promotions": [{"name": "first_recharge", "percent": "15"}]},
                issued_at=expires_at - 300, expires_at=expires_at)
    return QuoteRecord(**{**base, **kw})  # type: ignore[arg-type]


# -- the journal's part -----------------------------------------------------------------


async def test_a_quote_put_by_one_instance_is_read_by_the_other_as_written(two):
    a, b = two
    at = 1796157391.9159791  # floats survive exactly
    q = record("q_" + "1" * 32, at + 300, issued_at=at)
    assert await a.put_quote(q) == 0
    assert await b.get_quote(q.quote_id) == q
    assert await b.get_quote("q_" + "2" * 32) is None
    assert await b.get_quote("' OR 1=1 --") is None


async def test_a_purge_deletes_what_expired_by_its_cutoff_soonest_first_up_to_its_limit(store, two):
    a, b = two
    for i in range(6):
        await a.put_quote(record(f"q_{i:032x}", T0 + i))
    purged = await b.put_quote(record("q_" + "f" * 32, T0 + 1000), purge_before=T0 + 4, purge_limit=3)
    assert purged == 3
    assert sorted(r[0] for r in store.peek("SELECT quote_id FROM quotes")) == [
        f"q_{i:032x}" for i in (3, 4, 5)] + ["q_" + "f" * 32]
    assert await a.put_quote(record("q_" + "e" * 32, T0 + 1000), purge_before=T0 + 4, purge_limit=3) == 2
    assert await b.get_quote(f"q_{4:032x}") is None and await b.get_quote(f"q_{5:032x}") is not None


async def test_the_purge_and_the_read_use_indexes_never_a_scan(tmp_path):
    j = SqliteJournal(tmp_path / "j.db")
    await j.open()
    try:
        purge = await j.query("EXPLAIN QUERY PLAN SELECT quote_id FROM quotes WHERE expires_at <= ? "
                              "ORDER BY expires_at LIMIT 10", (T0,))
        read = await j.query("EXPLAIN QUERY PLAN SELECT * FROM quotes WHERE quote_id = ?", ("q_1",))
    finally:
        await j.close()
    assert [r[-1] for r in purge] == ["SEARCH quotes USING COVERING INDEX quotes_expires (expires_at<?)"], purge
    assert [r[-1] for r in read] == ["SEARCH quotes USING PRIMARY KEY (quote_id=?)"], read


# -- two pricing services, one store ----------------------------------------------------


def pricing_cfg(**kw: object) -> PricingConfig:
    doc = {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404, "JPY": 0.0067}, **kw}
    return parse({"pricing": doc}).config.pricing


def services(two, clock: VirtualClock, **cfg: object) -> tuple[PricingService, PricingService, dict]:
    holder = {"cfg": pricing_cfg(**cfg)}

    async def history(user_id: str) -> UserHistory:
        return UserHistory()

    a, b = two
    return (PricingService(lambda: holder["cfg"], clock, a, history=history),
            PricingService(lambda: holder["cfg"], clock, b, history=history), holder)


async def test_a_quote_issued_by_one_instance_is_redeemed_by_the_other_at_its_exact_price(two):
    clock = VirtualClock(T0)
    sa, sb, _ = services(two, clock)
    q = await sa.quote("u1", 8500, "CNY")
    clock.advance(299)
    p = await sb.price_recharge("u1", 8500, "CNY", q.quote_id)
    assert p == q.price
    assert (p.coins, p.bonus_coins, str(p.rate), [x.to_api() for x in p.promotions]) == (
        835, 125, "0.1404", [{"name": "first_recharge", "percent": "15"}])
    assert (p.bonus_without_first_recharge, str(p.base_amount)) == (0, str(q.price.base_amount))
    assert await sb.price_recharge("u1", 8500, "CNY", q.quote_id) == p, "redeeming does not consume"
    with pytest.raises(QuoteError) as err:
        await sb.price_recharge("u2", 8500, "CNY", q.quote_id)
    assert err.value.code == "quote_mismatch"


async def test_a_quote_expires_for_the_other_instance_too(two):
    clock = VirtualClock(T0)
    sa, sb, holder = services(two, clock)
    q = await sa.quote("u1", 8500, "CNY")
    drift = await sa.quote("u1", 8500, "CNY")
    holder["cfg"] = pricing_cfg(rates={"CNY": 0.1409, "JPY": 0.0067})  # moved 0.36 %
    with pytest.raises(QuoteError) as err:
        await sb.price_recharge("u1", 8500, "CNY", drift.quote_id)
    assert err.value.code == "quote_expired"
    holder["cfg"] = pricing_cfg()
    clock.advance(300)
    with pytest.raises(QuoteError) as err:
        await sb.price_recharge("u1", 8500, "CNY", q.quote_id)
    assert err.value.code == "quote_expired"


async def test_a_quote_purged_by_the_other_instance_is_not_found(store, two):
    clock = VirtualClock(T0)
    sa, sb, _ = services(two, clock)
    sb.quotes.purge_every_s = 0.0  # each of b's quotes purges
    q = await sa.quote("u1", 8500, "CNY")
    clock.advance(599)
    await sb.quote("u2", 8500, "CNY")
    with pytest.raises(QuoteError) as err:
        await sa.price_recharge("u1", 8500, "CNY", q.quote_id)
    assert err.value.code == "quote_expired", "kept a further TTL after it expired"
    clock.advance(1)
    await sb.quote("u2", 8500, "CNY")
    assert store.peek("SELECT count(*) FROM quotes WHERE quote_id = ?", q.quote_id) == [(0,)]
    with pytest.raises(QuoteError) as err:
        await sa.price_recharge("u1", 8500, "CNY", q.quote_id)
    assert err.value.code == "quote_not_found"


async def test_instances_purging_at_once_neither_fail_nor_lose_a_live_quote(store, two):
    clock = VirtualClock(T0)
    sa, sb, _ = services(two, clock)
    for svc in (sa, sb):
        svc.quotes.purge_every_s = 0.0
        svc.quotes.purge_limit = 7
    old = await asyncio.gather(*(s.quote("u1", 8500, "CNY") for s in (sa, sb) for _ in range(40)))
    clock.advance(600)
    fresh = await asyncio.gather(*(s.quote("u1", 8500, "CNY") for s in (sa, sb) for _ in range(40)))
    for q in fresh:
        assert await sa.price_recharge("u1", 8500, "CNY", q.quote_id) == q.price
    live = {r[0] for r in store.peek("SELECT quote_id FROM quotes")}
    assert {q.quote_id for q in fresh} <= live
    assert not live & {q.quote_id for q in old}


# -- over HTTP: two services on one store ---------------------------------------------


def _config(url: str, instance: str):
    return parse({
        "storage": {"url": url, "instance_id": instance},
        "clients": [{"name": "front", "key_sha256": _sha(FRONT_KEY), "scopes": ["recharge"]}],
        "channels": [_channel("a"), _channel("b")],
        "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404, "JPY": 0.0067}},
    })


@contextlib.asynccontextmanager
async def serving(url: str, instance: str):
    channels: dict[str, MemoryChannel] = {}

    def factory(cfg):
        channels[cfg.name] = MemoryChannel(cfg.name)
        return channels[cfg.name]

    service = Service(_config(url, instance), channel_factory=factory,
                      router=lambda svc, rec: [c.name for c in svc.config.channels], reconcile=False, probe=False)
    client = TestClient(TestServer(build_app(service), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, service, channels)
    finally:
        await client.close()


def url_of(store) -> str:
    return f"sqlite:///{store.path}" if store.kind == "sqlite" else store.url


async def quote(api: Api, user: str) -> dict:
    resp = await api.client.post("/v1/quotes", data=orjson.dumps({"user_id": user, "amount_minor": 8500,
                                                                  "currency": "CNY"}),
                                 headers={"Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"})
    body = await resp.json()
    assert resp.status == 201, body
    return body


async def test_a_quote_from_one_service_prices_a_recharge_on_another(store):
    async with serving(url_of(store), "one") as one, serving(url_of(store), "two") as two:
        q = await quote(one, "u_q")
        resp, rec = await two.post({**BODY, "user_id": "u_q", "quote_id": q["quote_id"]}, key="q-1")
        assert resp.status == 201, rec
        assert (rec["coins"], rec["bonus_coins"], rec["promotions"]) == (q["coins"], q["bonus_coins"],
                                                                          q["promotions"])
        _, trail = await two.get(f"/v1/recharges/{rec['id']}/trail")
        created = trail["entries"][0]["detail"]
        assert (created["quote_id"], created["rate"]) == (q["quote_id"], q["rate"])
        resp, again = await one.post({**BODY, "user_id": "u_q", "quote_id": q["quote_id"]}, key="q-1")
        assert resp.status == 201 and again["id"] == rec["id"], "the retry replays on the other instance"
        await two.invariants()


ODD_IDS = ["q_" + "0" * 32, "q_nope", "Q_" + "a" * 32, "q_' OR '1'='1", "q_%_", "q_" + "a" * 62, "\u00e9" * 10,
           "q_\\u0000", "q_\u0000" + "a" * 31, "q_" + "a" * 64, "null", "[]", 7, ["q_x"], {"q": 1}]


async def test_no_quote_id_gets_a_500(tmp_path):
    async with serving(f"sqlite:///{tmp_path}/j.db", "one") as api:
        for i, odd in enumerate(ODD_IDS):
            resp, body = await api.post({**BODY, "quote_id": odd}, key=f"odd-{i}")
            assert resp.status == 422, (odd, body)
            assert body["error"]["code"] in ("quote_not_found", "invalid_field"), (odd, body)
            assert body["error"]["field"] == "quote_id", (odd, body)
        resp, body = await api.post({**BODY, "quote_id": None}, key="no-quote")
        assert resp.status == 201, body  # null: no quote
