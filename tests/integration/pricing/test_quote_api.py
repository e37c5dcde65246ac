"""POST /v1/quotes over loopback HTTP: the answer's shape, strict input, and the
pricing errors in the spec's error shape (422, 409, 503 with Retry-After). The quotes
go to a real journal (a SQLite file per test)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pricing_builders import pricing

from orchestrator.api.errors import ApiError, api_error_of, error_response
from orchestrator.api.pricing_api import register
from orchestrator.clock import VirtualClock
from orchestrator.errors import OrchestratorError
from orchestrator.journal import SqliteJournal
from orchestrator.pricing import UserHistory
from orchestrator.quotes import PricingService

T0 = 1_800_000_000.0


class Guard:
    """Lets through requests carrying the right key; counts per-user admissions."""

    def __init__(self) -> None:
        self.users: list[str] = []

    def admit(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != "Bearer good":
            raise ApiError("unauthorized", "a valid API key is required")

    def admit_user(self, user_id: str) -> None:
        self.users.append(user_id)
        if user_id == "u_hot":
            raise ApiError("rate_limited", "slow down", retry_after=1)

    def max_body_bytes(self, request: web.Request) -> int:
        return 1024


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except OrchestratorError as err:
        return error_response(api_error_of(err))


@contextlib.asynccontextmanager
async def api(tmp_path, **cfg: object):
    clock = VirtualClock(T0)
    holder = {"cfg": pricing(**cfg)}

    async def history(user_id: str) -> UserHistory:
        return UserHistory()

    journal = SqliteJournal(tmp_path / "j.db")
    await journal.open()
    svc = PricingService(lambda: holder["cfg"], clock, journal, history=history)
    app = web.Application(middlewares=[errors])
    guard = Guard()
    register(app, svc, guard)
    try:
        async with TestClient(TestServer(app)) as client:
            yield client, svc, guard
    finally:
        await journal.close()


async def post(client: TestClient, body: object, token: str = "good", raw: bytes | None = None):
    resp = await client.post("/v1/quotes", json=None if raw is not None else body, data=raw,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return resp, await resp.json()


BODY = {"user_id": "u_1", "amount_minor": 8500, "currency": "CNY"}


async def test_a_quote_answers_the_spec_fields(tmp_path) -> None:
    async with api(tmp_path) as (client, svc, guard):
        resp, body = await post(client, BODY)
        assert resp.status == 201
        assert body["quote_id"].startswith("q_")
        assert (body["coins"], body["bonus_coins"], body["rate"]) == (835, 125, "0.1404")
        assert body["expires_at"] == "2027-01-15T08:05:00.000Z"  # T0 + 300 s
        assert body["promotions"] == [{"name": "first_recharge", "percent": "15"}]
        assert guard.users == ["u_1"]
        assert await svc.quotes.get(body["quote_id"]) is not None


@pytest.mark.parametrize(("body", "code", "field"), [
    ({**BODY, "amount_minor": "8500"}, "invalid_field", "amount_minor"),
    ({**BODY, "amount_minor": 85.0}, "invalid_field", "amount_minor"),
    ({**BODY, "extra": 1}, "unknown_field", "extra"),
    ({"user_id": "u_1", "currency": "CNY"}, "missing_field", "amount_minor"),
    ({**BODY, "currency": "XXX"}, "unsupported_currency", "currency"),
    ({**BODY, "currency": "ZAR"}, "unsupported_currency", "currency"),
    ({**BODY, "amount_minor": 200_001}, "amount_out_of_range", "amount_minor"),
    ({**BODY, "currency": "JPY", "amount_minor": 1}, "amount_too_small", "amount_minor"),
])
async def test_bad_input_is_422_with_its_field(tmp_path, body: dict[str, Any], code: str, field: str) -> None:
    async with api(tmp_path) as (client, _, _):
        resp, answer = await post(client, body)
        assert resp.status == 422
        assert (answer["error"]["code"], answer["error"]["field"]) == (code, field)


async def test_auth_body_and_rate_limits_come_first(tmp_path) -> None:
    async with api(tmp_path) as (client, _, _):
        resp, body = await post(client, BODY, token="bad")
        assert (resp.status, body["error"]["code"]) == (401, "unauthorized")
        resp, body = await post(client, None, raw=b"{not json")
        assert (resp.status, body["error"]["code"]) == (400, "malformed_json")
        resp, body = await post(client, None, raw=b"[1]")
        assert resp.status == 422
        resp, body = await post(client, {**BODY, "user_id": "u_hot"})
        assert (resp.status, resp.headers["Retry-After"]) == (429, "1")
        resp, body = await post(client, None, raw=b'{"user_id": "' + b"x" * 2000 + b'"}')
        assert (resp.status, body["error"]["code"]) == (413, "payload_too_large")


async def test_stale_rates_are_503_with_retry_after(tmp_path) -> None:
    async with api(tmp_path, rate_source={"url": "http://fx.test", "refresh_s": 60, "max_age_s": 300}) as (client, _, _):
        resp, body = await post(client, BODY)
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert (body["error"]["code"], body["error"]["field"]) == ("rates_stale", "currency")
