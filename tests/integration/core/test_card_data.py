"""A real-looking card number reaches the provider and nowhere else: no log line, no
byte of the SQLite file, no API answer. Masked first 6 / last 4 where it is kept."""

from __future__ import annotations

import io
import json

import orjson
import structlog
from test_api import BODY, FRONT_KEY, assert_error, running_api

from orchestrator.logs import configure

CARD = "4111111111111111"


async def test_a_card_number_is_never_logged_stored_or_answered(tmp_path):
    out = io.BytesIO()
    configure("debug", out)
    try:
        async with running_api(tmp_path) as api:
            seen: list[dict] = []
            orig = api.channels["a"].authorize

            async def capture(request):
                seen.append(dict(request.instrument))
                return await orig(request)

            api.channels["a"].authorize = capture
            body = {**BODY, "instrument": {"account_number": CARD}}
            resp = await api.client.post("/v1/recharges", data=orjson.dumps(body), headers={
                "Idempotency-Key": "card-1", "Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"})
            text = await resp.text()
            assert resp.status == 201, text
            rid = json.loads(text)["id"]
            answers = [text]
            for path in (f"/v1/recharges/{rid}", f"/v1/recharges/{rid}/trail", "/v1/wallets/u_1"):
                r = await api.client.get(path, headers={"Authorization": f"Bearer {FRONT_KEY}"})
                answers.append(await r.text())
            again = await api.client.post("/v1/recharges", data=orjson.dumps(body), headers={
                "Idempotency-Key": "card-1", "Authorization": f"Bearer {FRONT_KEY}", "Content-Type": "application/json"})
            answers.append(await again.text())
            assert again.headers["Idempotent-Replayed"] == "true"
            assert seen == [{"account_number": CARD}], "the provider gets the whole number"
            stored = await api.service.journal.query("SELECT instrument FROM recharges")  # type: ignore[attr-defined]
            assert json.loads(stored[0][0]) == {"account_number_masked": "411111******1111"}
        db_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("j.db"))
        assert db_bytes, "the database files were read"
        for where, blob in (("the database", db_bytes), ("the logs", out.getvalue()),
                            ("an API answer", "".join(answers).encode())):
            assert CARD.encode() not in blob, f"the card number is in {where}"
            assert CARD[6:12].encode() + CARD[12:].encode() not in blob, f"the middle digits are in {where}"
        assert b"recharge_succeeded" in out.getvalue(), "logging was on"
    finally:
        configure("info")
        structlog.reset_defaults()


async def test_instrument_needs_exactly_one_of_token_or_number(tmp_path):
    async with running_api(tmp_path) as api:
        for inst, field in (({}, "instrument"), ({"token": "t", "account_number": CARD}, "instrument"),
                            ({"account_number": "41111"}, "instrument.account_number"),
                            ({"account_number": "4111-1111-1111-1111"}, "instrument.account_number")):
            resp, body = await api.post({**BODY, "instrument": inst}, key=f"inst-{len(str(inst))}-{field}")
            assert_error(resp, body, 422, "invalid_field", field)
            assert CARD not in json.dumps(body)
