"""The front-service API (SPEC section 5) over real loopback HTTP: auth and scopes,
idempotency, the error shape for every kind of bad input, and the money invariants."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from channels.memory import Action, MemoryChannel
from config import parse
from orchestrator.api.app import build_app
from orchestrator.invariants import LedgerPayment, check
from orchestrator.service import Service

FRONT_KEY, OTHER_KEY, SRE_KEY = "front-key-123", "other-key-456", "sre-key-789"


def _sha(k: str) -> str:
    return hashlib.sha256(k.encode()).hexdigest()


def _channel(name: str, **kw: object) -> dict[str, object]:
    return {"name": name, "kind": "direct_api", "base_url": f"http://127.0.0.1:1/{name}",
            "webhook_secret": "whsec_secret_" + name, "currencies": ["CNY", "JPY"], "countries": ["CN", "JP"],
            "methods": ["ewallet"], **kw}


def make_config(tmp_path, sync_wait_s: float = 5.0):
    return parse(config_doc(tmp_path, sync_wait_s))


def config_doc(tmp_path, sync_wait_s: float = 5.0) -> dict:
    return {
        "server": {"sync_wait_s": sync_wait_s},
        "logging": {"success_sample": 1.0},
        "storage": {"url": f"sqlite:///{tmp_path}/j.db"},
        "clients": [
            {"name": "front", "key_sha256": _sha(FRONT_KEY), "scopes": ["recharge"]},
            {"name": "other", "key_sha256": _sha(OTHER_KEY), "scopes": ["recharge"]},
            {"name": "sre", "key_sha256": _sha(SRE_KEY), "scopes": ["admin"]},
        ],
        "channels": [_channel("a"), _channel("b")],
        "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404, "JPY": 0.0067}},
    }


class Api:
    def __init__(self, client: TestClient, service: Service, channels: dict[str, MemoryChannel]) -> None:
        self.client = client
        self.service = service
        self.channels = channels

    async def post(self, body: object, *, key: str | None = "k1", token: str | None = FRONT_KEY,
                   raw: bytes | None = None, content_type: str = "application/json"):
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Idempotency-Key"] = key
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else json.dumps(body).encode()  # stdlib: big ints too
        resp = await self.client.post("/v1/recharges", data=data, headers=headers)
        return resp, await resp.json()

    async def get(self, path: str, token: str | None = FRONT_KEY):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await self.client.get(path, headers=headers)
        return resp, await resp.json()

    async def invariants(self) -> None:
        ledger = [LedgerPayment(c.name, p.reference, p.status, refunded_minor=p.refunded_minor)
                  for c in self.channels.values() for p in c.ledger.values()]
        report = await check(self.service.journal, ledger, settled=False)  # type: ignore[arg-type]
        assert report.ok, report.violations


@contextlib.asynccontextmanager
async def running_api(tmp_path, **config_kw):
    """The app over loopback HTTP on MemoryChannels a and b (routing: config order)."""
    async with running_api_with(make_config(tmp_path, **config_kw)) as api:
        yield api


@contextlib.asynccontextmanager
async def running_api_with(loaded):
    channels: dict[str, MemoryChannel] = {}

    def factory(cfg):
        channels[cfg.name] = MemoryChannel(cfg.name)
        return channels[cfg.name]

    service = Service(loaded, channel_factory=factory,
                      router=lambda svc, rec: [c.name for c in svc.config.channels], reconcile=False)
    client = TestClient(TestServer(build_app(service), host="127.0.0.1"))
    await client.start_server()
    try:
        yield Api(client, service, channels)
    finally:
        await client.close()


@pytest.fixture
async def api(tmp_path):
    async with running_api(tmp_path) as a:
        yield a


BODY = {"user_id": "u_1", "amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet",
        "instrument": {"token": "tok_abc"}, "metadata": {"order": "x"}}


def assert_error(resp, body, status: int, code: str, field: str | None = None) -> None:
    assert resp.status == status, body
    assert resp.content_type == "application/json"
    assert set(body) == {"error"}
    err = body["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    if field is not None:
        assert err.get("field") == field, err


async def test_a_recharge_succeeds_and_credits_the_wallet(api):
    resp, body = await api.post(BODY)
    assert resp.status == 201, body
    assert body["status"] == "succeeded" and body["channel"] == "a"
    assert body["coins"] == 835 and body["bonus_coins"] == 125, "SPEC 5's example: 15 % first-recharge bonus"
    assert body["id"].startswith("rc_")
    assert body["attempts"][0]["outcome"] == "captured" and body["attempts"][0]["reference"]
    assert resp.headers.get("X-Request-ID")
    _, got = await api.get(f"/v1/recharges/{body['id']}")
    assert got["status"] == "succeeded" and got["attempts"] == body["attempts"]
    _, trail = await api.get(f"/v1/recharges/{body['id']}/trail")
    assert [e["event"] for e in trail["entries"]] == ["created", "attempt_started", "attempt_captured", "credited"]
    _, wallet = await api.get("/v1/wallets/u_1")
    assert (wallet["coins"], wallet["frozen_coins"], wallet["spendable_coins"]) == (960, 0, 960)
    assert wallet["entries"] == [{"recharge_id": body["id"], "kind": "credit", "refund_id": None, "coins": 960,
                                  "balance_after": 960, "created_at": wallet["entries"][0]["created_at"]}]
    await api.invariants()


async def test_replay_answers_the_stored_result_and_charges_nothing_more(api):
    first, b1 = await api.post(BODY)
    again, b2 = await api.post(BODY)
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert b2 == b1
    assert len(api.channels["a"].ledger) == 1
    _, wallet = await api.get("/v1/wallets/u_1")
    assert wallet["coins"] == 960
    await api.invariants()


async def test_the_same_key_with_another_body_is_refused(api):
    await api.post(BODY)
    resp, body = await api.post({**BODY, "amount_minor": 9900})
    assert_error(resp, body, 422, "idempotency_key_reused", "Idempotency-Key")
    await api.invariants()


async def test_keys_are_scoped_per_client(api):
    _, mine = await api.post(BODY)
    resp, theirs = await api.post(BODY, token=OTHER_KEY)
    assert resp.status == 201 and theirs["id"] != mine["id"]
    resp, body = await api.get(f"/v1/recharges/{mine['id']}", token=OTHER_KEY)
    assert_error(resp, body, 404, "not_found")
    resp, body = await api.get(f"/v1/recharges/{mine['id']}", token=SRE_KEY)
    assert resp.status == 200
    await api.invariants()


async def test_concurrent_requests_with_one_key_make_one_recharge(api):
    api.service.user_limits.reconfigure(1000, 1000)
    api.channels["a"].latency_s = 0.05
    results = await asyncio.gather(*(api.post(BODY) for _ in range(20)))
    ids = {body["id"] for resp, body in results if resp.status in (201, 202)}
    assert len(ids) == 1, results
    assert all(resp.status in (201, 202, 409) for resp, _ in results)
    assert len(api.channels["a"].ledger) == 1
    rows = await api.service.journal.query("SELECT count(*) FROM recharges")  # type: ignore[attr-defined]
    assert rows == [(1,)]
    await api.invariants()


async def test_a_recharge_still_moving_after_sync_wait_answers_202_pending(tmp_path):
    pend = MemoryChannel("a", lambda op, ref, n: Action.PEND if op == "authorize" else Action.OK, kind="bank")
    service = Service(make_config(tmp_path, sync_wait_s=0.2), channel_factory=lambda cfg: pend,
                      router=lambda svc, rec: ["a"], reconcile=False)
    client = TestClient(TestServer(build_app(service), host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.post("/v1/recharges", data=orjson.dumps(BODY),
                                 headers={"Idempotency-Key": "p1", "Authorization": f"Bearer {FRONT_KEY}",
                                          "Content-Type": "application/json"})
        body = await resp.json()
        assert resp.status == 202 and body["status"] == "pending", body
        pend.settle(body["attempts"][0]["reference"], "captured")
        for _ in range(100):
            got = await (await client.get(f"/v1/recharges/{body['id']}",
                                          headers={"Authorization": f"Bearer {FRONT_KEY}"})).json()
            if got["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert got["status"] == "succeeded"
    finally:
        await client.close()


# -- auth -------------------------------------------------------------------------------


async def test_missing_or_wrong_keys_are_401_and_wrong_scope_403(api):
    resp, body = await api.post(BODY, token=None)
    assert_error(resp, body, 401, "unauthorized")
    resp, body = await api.post(BODY, token="nope")
    assert_error(resp, body, 401, "unauthorized")
    resp, body = await api.post(BODY, token=SRE_KEY)
    assert_error(resp, body, 403, "forbidden")
    resp, body = await api.get("/v1/wallets/u_1", token=None)
    assert_error(resp, body, 401, "unauthorized")
    assert api.channels["a"].calls == []


# -- bad input ----------------------------------------------------------------------------

BAD_FIELDS = [
    ({**BODY, "extra": 1}, "unknown_field", "extra"),
    ({k: v for k, v in BODY.items() if k != "user_id"}, "missing_field", "user_id"),
    ({**BODY, "amount_minor": "8500"}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": 85.5}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": 8500.0}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": True}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": 0}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": -100}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": 10**13}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": 10**40}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": None}, "invalid_field", "amount_minor"),
    ({**BODY, "currency": "XYZ"}, "unsupported_currency", "currency"),
    ({**BODY, "currency": "EUR"}, "unsupported_currency", "currency"),  # known, but no rate
    ({**BODY, "currency": "cny"}, "invalid_field", "currency"),
    ({**BODY, "country": "CHN"}, "invalid_field", "country"),
    ({**BODY, "method": "Not A Method"}, "invalid_field", "method"),
    ({**BODY, "user_id": "u" * 65}, "invalid_field", "user_id"),
    ({**BODY, "user_id": ""}, "invalid_field", "user_id"),
    ({**BODY, "user_id": 42}, "invalid_field", "user_id"),
    ({**BODY, "instrument": {"token": "t", "pan": "4111"}}, "unknown_field", "instrument.pan"),
    ({**BODY, "instrument": {}}, "invalid_field", "instrument"),
    ({**BODY, "instrument": "tok"}, "invalid_field", "instrument"),
    ({**BODY, "instrument": {"token": "x" * 129}}, "invalid_field", "instrument.token"),
    ({**BODY, "metadata": {f"k{i}": i for i in range(21)}}, "invalid_field", "metadata"),
    ({**BODY, "metadata": {"k": "v" * 501}}, "invalid_field", "metadata"),
    ({**BODY, "metadata": {"k": {"nested": 1}}}, "invalid_field", None),
    ({**BODY, "quote_id": ""}, "invalid_field", "quote_id"),
    ({**BODY, "currency": "JPY", "amount_minor": 1}, "amount_too_small", "amount_minor"),
]


@pytest.mark.parametrize(("body", "code", "field"), BAD_FIELDS)
async def test_invalid_content_is_422_naming_the_field(api, body, code, field):
    resp, answer = await api.post(body)
    assert_error(resp, answer, 422, code, field)
    assert api.channels["a"].calls == [] and api.channels["b"].calls == []
    rows = await api.service.journal.query("SELECT count(*) FROM recharges")  # type: ignore[attr-defined]
    assert rows == [(0,)], "nothing is stored for a refused request"


@pytest.mark.parametrize("body", [[], [BODY], "text", 42, None])
async def test_a_body_that_is_not_an_object_is_422(api, body):
    resp, answer = await api.post(body)
    assert_error(resp, answer, 422, "validation_failed")


async def test_malformed_json_is_400(api):
    resp, body = await api.post(None, raw=b'{"user_id": "u_1",')
    assert_error(resp, body, 400, "malformed_json")
    resp, body = await api.post(None, raw=b"\xff\xfe")
    assert_error(resp, body, 400, "malformed_json")


async def test_wrong_content_type_is_415(api):
    resp, body = await api.post(BODY, content_type="text/plain")
    assert_error(resp, body, 415, "unsupported_media_type")


async def test_a_body_over_64_kib_is_413(api):
    big = {**BODY, "metadata": {"k": "v" * 70_000}}
    resp, body = await api.post(big)
    assert_error(resp, body, 413, "payload_too_large")


@pytest.mark.parametrize(("key", "code"), [(None, "missing_idempotency_key"), ("", "invalid_idempotency_key"),
                                           ("k" * 256, "invalid_idempotency_key"),
                                           ("caf\u00e9", "invalid_idempotency_key")])
async def test_idempotency_key_is_required_and_printable_ascii(api, key, code):
    if key is not None and not key.isascii():
        # aiohttp refuses to send a non-latin-1 header; latin-1 é is what arrives.
        key = "caf\xe9"
    resp, body = await api.post(BODY, key=key)
    assert_error(resp, body, 400, code, "Idempotency-Key")


async def test_a_key_of_255_characters_is_accepted(api):
    resp, body = await api.post(BODY, key="k" * 255)
    assert resp.status == 201, body


async def test_unknown_recharge_and_route_and_method_answer_in_the_error_shape(api):
    resp, body = await api.get("/v1/recharges/rc_0123456789abcdef")
    assert_error(resp, body, 404, "not_found")
    resp, body = await api.get("/v1/recharges/not-an-id")
    assert_error(resp, body, 404, "not_found")
    resp, body = await api.get("/v1/nothing-here")
    assert_error(resp, body, 404, "not_found")
    resp = await api.client.delete("/v1/recharges", headers={"Authorization": f"Bearer {FRONT_KEY}"})
    assert_error(resp, await resp.json(), 405, "method_not_allowed")
    resp, body = await api.get("/v1/wallets/u_1?limit=0")
    assert_error(resp, body, 422, "invalid_field", "limit")


async def test_an_unknown_query_parameter_is_named_not_ignored(api):
    resp, body = await api.get("/v1/wallets/u_1?limt=5")  # a typo never falls back to the default
    assert_error(resp, body, 422, "unknown_field", "limt")
    q = "/v1/admin/routing/explain?currency=CNY&country=CN&method=ewallet&amount_minor=8500"
    resp, body = await api.get(q + "&segmnt=vip", token=SRE_KEY)
    assert_error(resp, body, 422, "unknown_field", "segmnt")
    resp, body = await api.get("/v1/wallets/u_1?limit=5")
    assert resp.status == 200, body


async def test_health_endpoints(api):
    resp, body = await api.get("/healthz", token=None)
    assert resp.status == 200 and body == {"status": "ok"}
    resp, body = await api.get("/readyz", token=None)
    assert resp.status == 200 and body["checks"]["journal"] == "ok"
    resp = await api.client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200 and "orchestrator_journal_commit_seconds" in text


async def test_log_lines_carry_request_recharge_attempt_and_channel(api):
    import structlog
    from structlog.testing import capture_logs

    api.channels["a"].script = lambda op, ref, n: Action.NOT_PROCESSED if op == "authorize" else Action.OK
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        resp = await api.client.post(
            "/v1/recharges", data=orjson.dumps(BODY),
            headers={"Idempotency-Key": "log-1", "Authorization": f"Bearer {FRONT_KEY}",
                     "Content-Type": "application/json", "X-Request-ID": "req-abc"})
        body = await resp.json()
    assert resp.headers["X-Request-ID"] == "req-abc"
    done = [e for e in logs if e["event"] == "recharge_succeeded"]
    assert done and done[0]["recharge_id"] == body["id"] and done[0]["request_id"] == "req-abc"
    assert done[0]["channel"] == "b"
    attempts = [e for e in logs if e["event"] == "attempt_answered"]
    assert {e["channel"] for e in attempts} == {"a", "b"}
    assert all(e["attempt"].startswith(body["id"]) and e["recharge_id"] == body["id"] for e in attempts)
    assert not any("tok_abc" in repr(e) for e in logs), "instrument tokens never reach the logs"


async def test_succeeded_recharges_are_logged_by_sample_and_the_rest_always(api):
    """At 1,200/s a line per success costs more than the rest of its bookkeeping:
    logging.success_sample of them are logged; a failure is always."""
    from dataclasses import replace

    from structlog.testing import capture_logs

    api.service.settings = replace(api.service.settings, log_success_sample=0.0)
    with capture_logs() as logs:
        for i in range(5):
            resp, _ = await api.post({**BODY, "user_id": f"s{i}"}, key=f"sampled-{i}")
            assert resp.status == 201
        api.channels["a"].script = lambda op, ref, n: Action.NOT_PROCESSED
        api.channels["b"].script = lambda op, ref, n: Action.NOT_PROCESSED
        resp, body = await api.post({**BODY, "user_id": "s-failed"}, key="sampled-failed")
        assert body["status"] == "failed"
    events = [e["event"] for e in logs]
    assert "recharge_succeeded" not in events
    assert "recharge_finished" in events


async def test_channel_health_lists_every_channel_with_its_breaker_and_latency(api):
    await api.post(BODY)
    resp, body = await api.get("/v1/health/channels", token=None)
    assert resp.status == 200
    assert [c["channel"] for c in body["channels"]] == ["a", "b"]
    a = body["channels"][0]
    assert a["breaker"]["state"] == "closed" and a["kind"] == "direct_api"
    assert {"p50", "p95", "p99"} <= set(a["latency_ms"])
    assert "success_rate" in a and "in_flight" in a
    assert body["config_version"] == api.service.loaded.version


async def test_explain_ranks_and_names_the_filtered(api):
    q = "/v1/admin/routing/explain?currency=CNY&country=CN&method=ewallet&amount_minor=8500"
    resp, body = await api.get(q, token=FRONT_KEY)
    assert_error(resp, body, 403, "forbidden")
    resp, body = await api.get(q, token=SRE_KEY)
    assert resp.status == 200, body
    assert [r["channel"] for r in body["ranking"]] and body["strategy"] == "smart"
    assert set(body["ranking"][0]["factors"]) >= {"success", "latency", "cost", "weight"}
    resp, body = await api.get(q.replace("CNY", "PHP"), token=SRE_KEY)
    assert {f["channel"]: f["reason"] for f in body["filtered"]} == {
        "a": "currency PHP not supported", "b": "currency PHP not supported"}
    resp, body = await api.get("/v1/admin/routing/explain?currency=CNY", token=SRE_KEY)
    assert_error(resp, body, 422, "missing_field", "country")
    resp, body = await api.get(q.replace("8500", "-1"), token=SRE_KEY)
    assert_error(resp, body, 422, "invalid_field", "amount_minor")


async def test_status_page_and_its_data(api):
    api.channels["a"].script = lambda op, ref, n: Action.NOT_PROCESSED if op == "authorize" else Action.OK
    await api.post(BODY)
    resp = await api.client.get("/status")
    html = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "/v1/status" in html and "http" not in html.replace("http-equiv", ""), "no external assets"
    resp, body = await api.get("/v1/status", token=None)
    assert [c["channel"] for c in body["channels"]] == ["a", "b"]
    assert body["failovers"][0]["from"] == "a" and body["failovers"][0]["to"] == "b"
    assert body["outcomes_per_min"]["succeeded"] > 0
    assert body["channels"][1]["share"] == 0.5


async def test_an_overload_is_shed_with_503_and_retry_after_before_any_work(tmp_path):
    async with running_api(tmp_path) as api:
        api.service.requests_in_flight = api.service.config.server.max_concurrent_requests
        resp, body = await api.post(BODY, key="shed")
        assert_error(resp, body, 503, "unavailable")
        assert resp.headers["Retry-After"] == "1"
        api.service.requests_in_flight = 0
        rows = await api.service.journal.query("SELECT count(*) FROM recharges")  # type: ignore[attr-defined]
        assert rows == [(0,)]
        resp, body = await api.post(BODY, key="shed")
        assert resp.status == 201


async def test_rate_limits_per_user_answer_429_with_retry_after_and_store_nothing(api):
    for i in range(10):  # the default per-user burst
        resp, _ = await api.post(BODY, key=f"rl-{i}")
        assert resp.status == 201
    resp, body = await api.post(BODY, key="rl-over")
    assert_error(resp, body, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) >= 1
    rows = await api.service.journal.query("SELECT count(*) FROM recharges")  # type: ignore[attr-defined]
    assert rows == [(10,)]
    resp, _ = await api.post({**BODY, "user_id": "u_other"}, key="rl-other")
    assert resp.status == 201, "another user is not limited"
    await api.invariants()


async def test_a_body_that_stalls_midway_gets_a_clear_400_and_holds_nobody_else(api, monkeypatch):
    import orchestrator.api.body as body_mod

    monkeypatch.setattr(body_mod, "BODY_READ_TIMEOUT_S", 0.5)
    host, port = api.client.server.host, api.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/recharges HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + FRONT_KEY.encode() + b"\r\nIdempotency-Key: stall\r\n"
                 b"Content-Length: 500\r\n\r\n{\"user_id\":")
    await writer.drain()
    resp, body = await api.post(BODY, key="not-stalled")  # others are served meanwhile
    assert resp.status == 201
    answer = await asyncio.wait_for(reader.read(4096), 5)
    assert b" 400 " in answer.split(b"\r\n")[0] and b"request_timeout" in answer
    writer.close()
