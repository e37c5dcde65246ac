"""Approval rates by segment in the simulator's behaviour, without a network: which charges
an entry matches, the decline rate and codes a matching charge really meets (counted over
seeded draws), that matching draws nothing, and that a bad entry is refused by its path."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from channels.simulator import MAX_SEGMENTS, Behaviour, BehaviourError, Fate, SimConfigError, parse_config

N = 2000


def charge(*, issuer: str | None = None, number: str | None = None, amount: int = 8500, currency: str = "CNY",
           method: str = "ewallet") -> dict[str, Any]:
    """A charge request's protocol-v1 body, as the simulator has checked it."""
    instrument: dict[str, Any] = {"account_number": number} if number else {"token": "tok_1"}
    if issuer is not None:
        instrument["issuer"] = issuer
    return {"reference": "r", "amount_minor": amount, "currency": currency, "method": method,
            "instrument": instrument}


def segmented(*entries: dict[str, Any], **channel: Any) -> Behaviour:
    return Behaviour().updated({**channel, "segments": list(entries)})


def met(b: Behaviour, c: dict[str, Any]) -> float:
    """The decline rate ``c`` meets."""
    return b.for_charge(c).decline_rate


@pytest.mark.parametrize(("match", "hits", "misses"), [
    ({}, [charge(), charge(issuer="x")], []),
    ({"issuer": "icbc"}, [charge(issuer="icbc")], [charge(), charge(issuer="icbc2"), charge(issuer="ICBC")]),
    ({"bin_prefix": "622202"}, [charge(number="6222021234567890"), charge(number="622202000000")],
     [charge(number="6222031234567890"), charge(), charge(issuer="622202")]),
    ({"min_amount_minor": 100, "max_amount_minor": 200},
     [charge(amount=100), charge(amount=150), charge(amount=200)], [charge(amount=99), charge(amount=201)]),
    ({"min_amount_minor": 100}, [charge(amount=100), charge(amount=10**9)], [charge(amount=99)]),
    ({"max_amount_minor": 200}, [charge(amount=1), charge(amount=200)], [charge(amount=201)]),
    ({"currency": "PHP"}, [charge(currency="PHP")], [charge(currency="CNY")]),
    ({"method": "card"}, [charge(method="card")], [charge(method="ewallet")]),
    ({"issuer": "icbc", "bin_prefix": "6222", "currency": "CNY", "method": "card", "max_amount_minor": 9000},
     [charge(issuer="icbc", number="622212345678", method="card")],
     [charge(issuer="abc", number="622212345678", method="card"), charge(issuer="icbc", number="622212345678"),
      charge(issuer="icbc", number="622212345678", method="card", amount=9001),
      charge(issuer="icbc", number="522212345678", method="card")]),
])
def test_an_entry_matches_a_charge_only_when_every_key_it_gives_holds(match, hits, misses):
    b = segmented({"match": match, "decline_rate": 0.5}, decline_rate=0.1)
    assert [met(b, c) for c in hits] == [0.5] * len(hits)
    assert [met(b, c) for c in misses] == [0.1] * len(misses)


def test_the_first_matching_entry_wins_and_no_match_is_the_channels_own():
    b = segmented({"match": {"issuer": "icbc", "max_amount_minor": 1000}, "decline_rate": 0.4},
                  {"match": {"issuer": "icbc"}, "decline_rate": 0.2},
                  {"match": {"currency": "CNY"}, "decline_rate": 0.05}, decline_rate=0.01)
    assert met(b, charge(issuer="icbc", amount=500)) == 0.4
    assert met(b, charge(issuer="icbc", amount=5000)) == 0.2
    assert met(b, charge(issuer="gcash")) == 0.05
    unmatched = charge(issuer="gcash", currency="PHP")
    assert b.for_charge(unmatched) is b and met(b, unmatched) == 0.01
    assert Behaviour().for_charge(charge()) == Behaviour()


def test_a_segment_keeps_every_other_rate_of_the_channel():
    b = segmented({"match": {"issuer": "icbc"}, "decline_rate": 0.3}, pending_rate=0.2, latency_ms=40)
    seg = b.for_charge(charge(issuer="icbc"))
    assert (seg.pending_rate, seg.latency_ms, seg.decline_codes) == (0.2, 40, b.decline_codes)
    assert seg is b.for_charge(charge(issuer="icbc"))  # built once per behaviour, not per charge


def test_the_decline_rate_applied_is_the_segments():
    b = segmented({"match": {"issuer": "icbc"}, "decline_rate": 0.3},
                  {"match": {"issuer": "gcash"}, "decline_rate": 0.0}, decline_rate=0.1)
    rng = random.Random(26)
    declines: Counter[str] = Counter()
    for i in range(3 * N):
        issuer = ("icbc", "gcash", "boc")[i % 3]
        declines[issuer] += b.for_charge(charge(issuer=issuer)).fate(rng) is Fate.DECLINE
    # N draws each: a standard deviation of about 0.01 at 0.3, so +-0.06 cannot flake.
    assert 0.24 <= declines["icbc"] / N <= 0.36, declines
    assert declines["gcash"] == 0
    assert 0.06 <= declines["boc"] / N <= 0.14, declines


def test_a_segments_decline_codes_replace_the_channels_and_default_to_them():
    b = segmented({"match": {"issuer": "icbc"}, "decline_rate": 1.0, "decline_codes": {"do_not_honor": 1}},
                  {"match": {"issuer": "boc"}, "decline_rate": 1.0},
                  decline_codes={"insufficient_funds": 1, "card_blocked": 1})
    rng = random.Random(3)
    icbc = b.for_charge(charge(issuer="icbc"))
    boc = b.for_charge(charge(issuer="boc"))
    assert {icbc.decline_code(rng) for _ in range(200)} == {"do_not_honor"}
    assert {boc.decline_code(rng) for _ in range(200)} == {"insufficient_funds", "card_blocked"}
    later = b.updated({"decline_codes": {"expired_card": 1}})  # a live change of the channel's codes
    assert later.for_charge(charge(issuer="boc")).decline_code(rng) == "expired_card"


def test_matching_draws_nothing_so_a_seed_replays_the_same_run():
    """Segments at the channel's own rate change nothing: the same draws, the same fates."""
    plain = Behaviour(decline_rate=0.2, pending_rate=0.3)
    same = segmented({"match": {"issuer": "icbc"}, "decline_rate": 0.2}, decline_rate=0.2, pending_rate=0.3)

    def run(b: Behaviour, seed: int) -> list[tuple[Fate, str]]:
        rng = random.Random(seed)
        return [(b.for_charge(charge(issuer=("icbc", "boc")[i % 2])).fate(rng), b.decline_code(rng))
                for i in range(300)]

    assert run(plain, 9) == run(same, 9) == run(same, 9)
    other = segmented({"match": {"issuer": "icbc"}, "decline_rate": 0.5}, decline_rate=0.2, pending_rate=0.3)
    assert run(other, 9) == run(other, 9) != run(plain, 9)


def test_segments_read_back_as_written_and_an_update_of_them_replaces_them():
    entries = [{"match": {"issuer": "icbc", "bin_prefix": "6222"}, "decline_rate": 0.3},
               {"match": {}, "decline_rate": 0.0, "decline_codes": {"x": 2}}]
    b = segmented(*entries)
    assert b.to_json()["segments"] == entries
    assert Behaviour().updated(b.to_json()) == b
    assert Behaviour().to_json()["segments"] == []
    replaced = b.updated({"segments": [{"match": {"method": "card"}, "decline_rate": 0.1}]})
    assert replaced.to_json()["segments"] == [{"match": {"method": "card"}, "decline_rate": 0.1}]
    assert met(replaced, charge(issuer="icbc")) == 0.0
    assert b.updated({"segments": []}).for_charge(charge(issuer="icbc")).decline_rate == 0.0


_OK = {"match": {"issuer": "icbc"}, "decline_rate": 0.3}


@pytest.mark.parametrize(("segments", "field"), [
    ({"issuer": "icbc"}, "segments"),
    ("icbc", "segments"),
    ([_OK] * (MAX_SEGMENTS + 1), "segments"),
    ([_OK, "x"], "segments[1]"),
    ([{"decline_rate": 0.3}], "segments[0].match"),
    ([{"match": {}, "decline_rate": 0.3, "rate": 1}], "segments[0].rate"),
    ([{"match": {}}], "segments[0].decline_rate"),
    ([{"match": {}, "decline_rate": 1.5}], "segments[0].decline_rate"),
    ([{"match": {}, "decline_rate": -0.1}], "segments[0].decline_rate"),
    ([{"match": {}, "decline_rate": True}], "segments[0].decline_rate"),
    ([{"match": {}, "decline_rate": "0.3"}], "segments[0].decline_rate"),
    ([{"match": {}, "decline_rate": 0.3, "decline_codes": {}}], "segments[0].decline_codes"),
    ([{"match": {}, "decline_rate": 0.3, "decline_codes": {"x": 0}}], "segments[0].decline_codes"),
    ([{"match": [], "decline_rate": 0.3}], "segments[0].match"),
    ([{"match": {"country": "CN"}, "decline_rate": 0.3}], "segments[0].match.country"),
    ([{"match": {"issuer": "ICBC"}, "decline_rate": 0.3}], "segments[0].match.issuer"),
    ([{"match": {"issuer": ""}, "decline_rate": 0.3}], "segments[0].match.issuer"),
    ([{"match": {"issuer": 7}, "decline_rate": 0.3}], "segments[0].match.issuer"),
    ([{"match": {"bin_prefix": 622202}, "decline_rate": 0.3}], "segments[0].match.bin_prefix"),
    ([{"match": {"bin_prefix": "62x"}, "decline_rate": 0.3}], "segments[0].match.bin_prefix"),
    ([{"match": {"min_amount_minor": -1}, "decline_rate": 0.3}], "segments[0].match.min_amount_minor"),
    ([{"match": {"max_amount_minor": 1.5}, "decline_rate": 0.3}], "segments[0].match.max_amount_minor"),
    ([{"match": {"min_amount_minor": 10, "max_amount_minor": 9}, "decline_rate": 0.3}],
     "segments[0].match.max_amount_minor"),
    ([{"match": {"currency": "cny"}, "decline_rate": 0.3}], "segments[0].match.currency"),
    ([{"match": {"method": ""}, "decline_rate": 0.3}], "segments[0].match.method"),
])
def test_a_bad_entry_is_refused_by_its_path(segments, field):
    with pytest.raises(BehaviourError) as exc:
        Behaviour().updated({"segments": segments})
    assert exc.value.field == field, exc.value


def test_a_segments_rate_takes_the_decline_rates_place_in_the_sum_of_fate_rates():
    b = Behaviour().updated({"pending_rate": 0.6, "segments": [{"match": {}, "decline_rate": 0.4}]})
    assert b.for_charge(charge()).decline_rate == 0.4
    with pytest.raises(BehaviourError) as exc:
        b.updated({"pending_rate": 0.7})  # validated whole: the segment no longer fits
    assert exc.value.field == "segments[0].decline_rate" and "1.1" in exc.value.message


def test_a_bad_entry_in_the_config_names_its_whole_path():
    doc = {"channels": [{"name": "a", "kind": "bank", "webhook_secret": "whsec_xxxx",
                         "behaviour": {"segments": [_OK, {"match": {"issuer": "Bad Bank"}, "decline_rate": 0.1}]}}]}
    with pytest.raises(SimConfigError) as exc:
        parse_config(doc)
    assert str(exc.value).startswith("channels[0].behaviour.segments[1].match.issuer:"), exc.value
    doc["channels"][0]["behaviour"]["segments"].pop()
    (spec,) = parse_config(doc).channels
    assert spec.behaviour.for_charge(charge(issuer="icbc")).decline_rate == 0.3
