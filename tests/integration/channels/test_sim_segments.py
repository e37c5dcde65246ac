"""Approval rates by segment at the simulator, over loopback HTTP: ``segments`` set and
replaced live with ``PUT /_sim/{channel}/behaviour`` change the decline rate a charge of
that segment meets, a pending one declines with the segment's codes, a bad entry is 422
naming it and changes nothing, and a seed still replays the same run."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from simharness import Sim, channel_doc, running_sim

N = 300  # charges per segment and phase


async def charge(sim: Sim, reference: str, issuer: str, channel: str = "t1") -> dict[str, Any]:
    body = {"reference": reference, "amount_minor": 8500, "currency": "CNY", "method": "card",
            "instrument": {"account_number": "6222021234567890", "issuer": issuer}, "callback_url": None}
    status, answer = await sim.raw("POST", f"/{channel}/payments", json=body, headers={"Idempotency-Key": reference})
    assert status == 200, answer
    return answer


async def declines(sim: Sim, phase: str, issuers: tuple[str, ...]) -> Counter[str]:
    """How many of ``N`` charges per issuer were declined, sent 50 at a time."""
    refs = [(f"{phase}-{issuer}-{i}", issuer) for issuer in issuers for i in range(N)]
    counted: Counter[str] = Counter()
    for start in range(0, len(refs), 50):
        answers = await asyncio.gather(*(charge(sim, ref, issuer) for ref, issuer in refs[start:start + 50]))
        for (_, issuer), answer in zip(refs[start:start + 50], answers, strict=True):
            counted[issuer] += answer["status"] == "declined"
    return counted


async def test_segments_set_and_replaced_live_change_the_decline_rate_a_segment_meets(sim):
    assert (await sim.behave("t1"))["segments"] == []
    assert await declines(sim, "before", ("icbc", "gcash")) == Counter()

    segments = [{"match": {"issuer": "icbc"}, "decline_rate": 0.5, "decline_codes": {"do_not_honor": 1}}]
    assert (await sim.behave("t1", segments=segments))["segments"] == segments
    counted = await declines(sim, "icbc-half", ("icbc", "gcash"))
    # A standard deviation of about 9 around 150: 90 to 210 cannot flake.
    assert 90 <= counted["icbc"] <= 210 and counted["gcash"] == 0, counted
    codes = {p["decline_code"] for p in await sim.ledger("t1") if p["status"] == "declined"}
    assert codes == {"do_not_honor"}

    replaced = [{"match": {"issuer": "gcash", "bin_prefix": "622202"}, "decline_rate": 1.0}]
    await sim.behave("t1", segments=replaced)
    counted = await declines(sim, "gcash-all", ("icbc", "gcash"))
    assert counted == Counter({"gcash": N}), counted

    await sim.behave("t1", segments=[])
    assert await declines(sim, "after", ("icbc", "gcash")) == Counter()


async def test_a_pending_payment_of_a_segment_declines_with_its_codes(sim):
    await sim.behave("settle", pending_decline_rate=1.0, decline_codes={"insufficient_funds": 1},
                     segments=[{"match": {"issuer": "icbc"}, "decline_rate": 0, "decline_codes": {"card_blocked": 1}}])
    assert (await charge(sim, "p-icbc", "icbc", "settle"))["status"] == "pending"
    assert (await charge(sim, "p-boc", "boc", "settle"))["status"] == "pending"
    for _ in range(100):
        settled = {p["reference"]: p for p in await sim.ledger("settle") if p["status"] != "pending"}
        if len(settled) == 2:
            break
        await asyncio.sleep(0.02)
    assert {ref: (p["status"], p["decline_code"]) for ref, p in settled.items()} == {
        "p-icbc": ("declined", "card_blocked"), "p-boc": ("declined", "insufficient_funds")}


@pytest.mark.parametrize(("segments", "field"), [
    ({"match": {}}, "segments"),
    ([{"match": {"issuer": "ICBC"}, "decline_rate": 0.3}], "segments[0].match.issuer"),
    ([{"match": {"bin": "6222"}, "decline_rate": 0.3}], "segments[0].match.bin"),
    ([{"match": {}, "decline_rate": 2}], "segments[0].decline_rate"),
    ([{"match": {}, "decline_rate": 0.3, "decline_codes": []}], "segments[0].decline_codes"),
    ([{"decline_rate": 0.3}], "segments[0].match"),
    ([None], "segments[0]"),
])
async def test_a_bad_entry_is_422_naming_it_and_changes_nothing(sim, segments, field):
    before = await sim.behave("t1", segments=[{"match": {"issuer": "icbc"}, "decline_rate": 0.2}])
    status, body = await sim.raw("PUT", "/_sim/t1/behaviour", json={"segments": segments, "decline_rate": 0.1})
    assert status == 422 and body["error"] == {"code": "invalid_field", "field": field,
                                               "message": body["error"]["message"]}, body
    assert body["error"]["message"]
    assert await sim.behave("t1") == before


async def _run_once(seed: int) -> list[tuple[str, str | None]]:
    behaviour = {"decline_rate": 0.1, "decline_codes": {"a": 1, "b": 1},
                 "segments": [{"match": {"issuer": "icbc"}, "decline_rate": 0.6, "decline_codes": {"c": 1, "d": 1}}]}
    async with running_sim({"seed": seed, "channels": [channel_doc("mix", behaviour=behaviour)]}) as sim:
        answers = [await charge(sim, f"r{i}", ("icbc", "boc")[i % 2], "mix") for i in range(40)]
    return [(a["status"], a["decline_code"]) for a in answers]


async def test_the_same_seed_gives_the_same_run_with_segments():
    first, again = await _run_once(5), await _run_once(5)
    assert first == again
    assert {code for _, code in first[0::2]} >= {"c", "d"} and {code for _, code in first[1::2]} <= {None, "a", "b"}
