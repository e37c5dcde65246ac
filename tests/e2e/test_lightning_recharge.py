"""Lightning recharge (SPEC 22) end to end: the orchestrator process on SQLite and the
provider simulator, over real HTTP. A user saves a token template and a card template,
recharges from each (a card template with the whole number again), deletes one, and
retries a recharge made from it: the retry replays, a new recharge from it is 404. SPEC 18
holds against the simulator's ledger afterwards (``checked_stack``), and the card number
is in no byte of the orchestrator's database files nor in any answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from procs import FRONT_KEY, checked_stack

pytestmark = pytest.mark.slow

CHANNELS = [{"name": "sim_direct", "kind": "direct_api", "webhook_secret": "whsec_templates_e2e",
             "behaviour": {"latency_ms": 2, "latency_jitter_ms": 0, "ping_latency_ms": 0, "pending_rate": 0}}]
CARD = "6222020200112345679"  # Luhn-valid
TEMPLATE = {"name": "Monthly", "amount_minor": 8500, "currency": "CNY", "country": "CN", "method": "ewallet",
            "instrument": {"token": "tok_e2e"}}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("templates")
    with checked_stack(tmp, CHANNELS) as orch:
        yield orch, tmp


class Front:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.s = url, session
        self.answers: list[str] = []

    async def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {FRONT_KEY}", **({"Idempotency-Key": key} if key else {})}
        async with self.s.request(method, self.url + path, json=body, headers=headers) as r:
            text = await r.text()
            self.answers.append(text)
            return r.status, (await r.json() if text else None), r.headers


async def _scenario(url: str) -> list[str]:
    async with aiohttp.ClientSession() as s:
        f = Front(url, s)
        status, token_tpl, _ = await f.call("POST", "/v1/users/u_e2e/templates", TEMPLATE)
        assert status == 201, token_tpl
        status, card_tpl, _ = await f.call("POST", "/v1/users/u_e2e/templates",
                                           {**TEMPLATE, "name": "Card", "instrument": {"account_number": CARD}})
        assert status == 201 and card_tpl["instrument"] == {"account_number_masked": "622202*********5679"}
        status, listed, _ = await f.call("GET", "/v1/users/u_e2e/templates")
        assert [t["id"] for t in listed["templates"]] == [token_tpl["id"], card_tpl["id"]]

        by_token = {"user_id": "u_e2e", "template_id": token_tpl["id"]}
        status, rec, _ = await f.call("POST", "/v1/recharges", by_token, key="e2e-1")
        assert status == 201 and rec["status"] == "succeeded" and rec["amount_minor"] == 8500, rec
        by_card = {"user_id": "u_e2e", "template_id": card_tpl["id"], "instrument": {"account_number": CARD}}
        status, err, _ = await f.call("POST", "/v1/recharges", {**by_card, "instrument": None}, key="e2e-2")
        assert status == 422 and err["error"]["code"] == "instrument_required", err
        status, card_rec, _ = await f.call("POST", "/v1/recharges", by_card, key="e2e-2")
        assert status == 201 and card_rec["status"] == "succeeded", card_rec

        status, _, _ = await f.call("DELETE", f"/v1/users/u_e2e/templates/{token_tpl['id']}")
        assert status == 204
        status, err, _ = await f.call("GET", f"/v1/users/u_e2e/templates/{token_tpl['id']}")
        assert status == 404 and err["error"]["code"] == "template_not_found"
        status, again, headers = await f.call("POST", "/v1/recharges", by_token, key="e2e-1")
        assert status == 201 and headers["Idempotent-Replayed"] == "true" and again["id"] == rec["id"]
        status, err, _ = await f.call("POST", "/v1/recharges", by_token, key="e2e-3")
        assert status == 404 and err["error"]["code"] == "template_not_found"
        status, wallet, _ = await f.call("GET", "/v1/wallets/u_e2e")
        assert wallet["coins"] == sum(r["coins"] + r["bonus_coins"] for r in (rec, card_rec))
        return f.answers


def test_a_user_recharges_from_templates_and_a_deleted_ones_recharge_still_replays(live):
    orch, tmp = live
    answers = asyncio.run(_scenario(orch.url))
    db = b"".join(p.read_bytes() for p in tmp.iterdir() if p.name.startswith("orch.db"))
    assert b"622202*********5679" in db, "the database files were read"
    for where, blob in (("the database", db), ("an answer", "".join(answers).encode())):
        assert CARD.encode() not in blob, f"the card number is in {where}"
