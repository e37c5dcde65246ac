"""Each risk rule, firing and not firing: blocklists, Luhn, the amount limit, velocity per
user and per instrument (count and amount in a sliding window), amount above history."""

from __future__ import annotations

from decimal import Decimal

import pytest
from risk_builders import VALID_CARD, engine, risk_config, txn

from config import ConfigError, parse
from orchestrator.pricing import UserHistory
from orchestrator.risk import luhn_ok


def test_a_plain_recharge_is_allowed() -> None:
    eng, _ = engine()
    d = eng.assess(txn())
    assert (d.action, d.reasons, d.blocked) == ("allow", (), False)


@pytest.mark.parametrize(("blocklist", "inp", "reason"), [
    ({"users": ["u_bad"]}, txn(user="u_bad"), "user_blocked"),
    ({"instruments": ["tok_bad"]}, txn(instrument="tok_bad"), "instrument_blocked"),
    ({"instruments": ["411111******1111"]}, txn(instrument="411111******1111", account_number=VALID_CARD),
     "instrument_blocked"),
    ({"countries": ["KP"]}, txn(country="KP"), "country_blocked"),
])
def test_blocklists_block(blocklist: dict[str, list[str]], inp, reason: str) -> None:  # type: ignore[no-untyped-def]
    eng, _ = engine(blocklist=blocklist)
    d = eng.assess(inp)
    assert (d.action, d.reasons) == ("block", (reason,))
    assert eng.assess(txn(user="u_ok", instrument="tok_ok", country="CN")).action == "allow"


def test_blocklist_reload_keeps_state() -> None:
    eng, _ = engine(velocity=[{"name": "burst", "key": "user", "window_s": 60, "max_count": 2}])
    eng.screen(txn(user="u9"))
    eng.screen(txn(user="u9"))
    assert eng.assess(txn(user="u9")).reasons == ("velocity:burst",)
    new = risk_config(velocity=[{"name": "burst", "key": "user", "window_s": 60, "max_count": 2}],
                      blocklist={"users": ["u9"], "countries": ["RU"]})
    eng.configure(new)
    assert eng.config is new
    assert eng.assess(txn(user="u9")).reasons == ("user_blocked", "velocity:burst")  # state survived
    assert eng.assess(txn(user="u1", country="RU")).reasons == ("country_blocked",)
    eng.configure(risk_config())
    assert eng.assess(txn(user="u9")).action == "allow"


@pytest.mark.parametrize(("number", "ok"), [
    ("4111111111111111", True), ("5555555555554444", True), ("378282246310005", True),
    ("6011111111111117", True), ("4012888888881881", True), ("79927398713000", False),
    ("4111111111111112", False), ("5555555555554440", False), ("411111111111", False),
    ("41111111111", False), ("41111111111111111111", False), ("4111x11111111111", False),
])
def test_luhn(number: str, ok: bool) -> None:
    assert luhn_ok(number) is ok


def test_a_failing_account_number_is_blocked_and_a_token_is_not_checked() -> None:
    eng, _ = engine()
    assert eng.assess(txn(account_number="4111111111111112", instrument="411111******1112")).reasons == ("luhn_failed",)
    assert eng.assess(txn(account_number=VALID_CARD, instrument="411111******1111")).action == "allow"
    off, _ = engine(luhn=False)
    assert off.assess(txn(account_number="4111111111111112")).action == "allow"


def test_amount_limit() -> None:
    eng, _ = engine(max_amount_base=300)
    assert eng.assess(txn(amount=300)).action == "allow"
    assert eng.assess(txn(amount="300.0001")).reasons == ("amount_over_limit",)


def test_user_count_velocity_in_a_sliding_window() -> None:
    eng, clock = engine(velocity=[{"name": "u10", "key": "user", "window_s": 60, "max_count": 10}])
    for _ in range(10):
        assert eng.screen(txn()).action == "allow"
        clock.advance(1)
    d = eng.screen(txn())  # the 11th within 60 s
    assert (d.action, d.reasons) == ("block", ("velocity:u10",))
    assert eng.assess(txn(user="u2")).action == "allow"  # per user
    clock.advance(50)  # the first one (at T0) is now exactly 60 s old: out of the window
    assert eng.assess(txn()).action == "allow"


def test_a_blocked_recharge_is_not_counted() -> None:
    eng, _ = engine(velocity=[{"name": "u2", "key": "user", "window_s": 60, "max_count": 2}],
                    blocklist={"countries": ["KP"]})
    for _ in range(5):
        assert eng.screen(txn(country="KP")).action == "block"
    assert eng.screen(txn()).action == "allow"
    assert eng.screen(txn()).action == "allow"
    assert eng.screen(txn()).action == "block"


def test_user_amount_velocity_reviews() -> None:
    eng, clock = engine(velocity=[{"name": "u_amt", "key": "user", "window_s": 3600, "max_amount_base": 1000,
                                   "action": "review"}])
    eng.screen(txn(amount=600))
    clock.advance(1800)
    assert eng.assess(txn(amount=400)).action == "allow"  # 1000 is the limit, not over it
    d = eng.assess(txn(amount="400.01"))
    assert (d.action, d.reasons) == ("review", ("velocity:u_amt",))
    clock.advance(1800)  # the 600 has left the hour
    assert eng.assess(txn(amount=999)).action == "allow"


def test_instrument_velocity_spans_users_and_keys_account_numbers() -> None:
    eng, _ = engine(velocity=[{"name": "i3", "key": "instrument", "window_s": 600, "max_count": 3}])
    for user in ("a", "b", "c"):
        assert eng.screen(txn(user=user, instrument="411111******1111", account_number=VALID_CARD)).action == "allow"
    d = eng.assess(txn(user="d", instrument="411111******1111", account_number=VALID_CARD))
    assert d.reasons == ("velocity:i3",)
    # Another card with the same mask is another instrument: the key is the whole number's.
    assert eng.assess(txn(user="d", instrument="411111******1111", account_number="4111110000091111")).action == "allow"
    assert eng.assess(txn(user="d", instrument="tok_other")).action == "allow"
    assert eng.assess(txn(user="d", instrument=None)).action == "allow"


def test_the_most_severe_action_wins_and_every_reason_is_listed() -> None:
    amount_rule = {"name": "amt", "key": "user", "window_s": 60, "max_amount_base": 50, "action": "review"}
    eng, _ = engine(max_amount_base=100, velocity=[amount_rule], blocklist={"users": ["u1"]})
    d = eng.assess(txn(amount=200))
    assert (d.action, d.reasons) == ("block", ("user_blocked", "amount_over_limit", "velocity:amt"))


HIST = UserHistory(lifetime_spend_base=Decimal(100), count=5, average_amount_base=Decimal(20),
                   has_succeeded_before=True)


@pytest.mark.parametrize(("amount", "history", "action"), [
    ("200", HIST, "allow"),                 # 10 x the average exactly: not above it
    ("200.01", HIST, "review"),
    ("5000", UserHistory(count=2, average_amount_base=Decimal(1)), "allow"),   # too few prior recharges
    ("5000", UserHistory(), "allow"),                                          # a new user: no average
    ("5000", None, "allow"),
])
def test_amount_far_above_the_users_history(amount: str, history, action: str) -> None:  # type: ignore[no-untyped-def]
    eng, _ = engine()
    d = eng.assess(txn(amount=amount, history=history))
    assert d.action == action
    assert d.reasons == (("amount_above_history",) if action == "review" else ())


def test_history_rule_is_configurable() -> None:
    eng, _ = engine(history={"multiple": 3, "min_prior": 5, "action": "block"})
    assert eng.assess(txn(amount="60.01", history=HIST)).action == "block"
    off, _ = engine(history={"enabled": False})
    assert off.assess(txn(amount="1e6", history=HIST)).action == "allow"


def test_disabled_risk_allows_everything() -> None:
    eng, _ = engine(enabled=False, blocklist={"users": ["u1"]})
    assert eng.assess(txn()).action == "allow"


@pytest.mark.parametrize(("doc", "message"), [
    ({"velocity": [{"name": "x", "key": "user", "window_s": 60}]}, "exactly one of max_count or max_amount_base"),
    ({"velocity": [{"name": "x", "key": "user", "window_s": 60, "max_count": 1, "max_amount_base": 5}]},
     "exactly one of"),
    ({"velocity": [{"name": "x", "key": "user", "window_s": 60, "max_count": 1}] * 2}, "duplicate velocity rule"),
    ({"velocity": [{"name": "x", "key": "user", "window_s": 60, "max_count": 500}]}, "max_events_per_key"),
    ({"velocity": [{"name": "x", "key": "device", "window_s": 60, "max_count": 5}]}, "risk.velocity[0].key"),
    ({"blocklist": {"countries": ["kp"]}}, "risk.blocklist.countries[0]"),
    ({"max_amount_base": 0}, "risk.max_amount_base"),
])
def test_bad_risk_config_is_refused_with_its_path(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse({"risk": doc})
    assert message in str(err.value)


def test_an_amount_over_the_challenge_limit_is_challenged_not_blocked() -> None:
    eng, _ = engine(challenge_amount_base=50, max_amount_base=500)
    d = eng.assess(txn(amount=60))
    assert (d.action, d.reasons, d.challenged, d.blocked) == ("challenge", ("amount_over_challenge_limit",), True,
                                                              False)
    assert d.score == 0.7
    assert eng.assess(txn(amount=50)).action == "allow"
    assert eng.assess(txn(amount=600)).reasons == ("amount_over_limit",), "over the hard limit: blocked, not challenged"


def test_weak_signals_add_up_to_a_challenge_at_the_configured_score() -> None:
    rules = [{"name": "burst", "key": "user", "window_s": 60, "max_count": 1, "action": "review"},
             {"name": "card", "key": "instrument", "window_s": 60, "max_count": 1, "action": "review", "score": 0.5}]
    eng, _ = engine(velocity=rules, challenge_score=0.6)
    eng.record(txn())
    d = eng.assess(txn())
    assert d.reasons == ("velocity:burst", "velocity:card") and d.score == 0.7  # 1 - 0.6 * 0.5
    assert d.action == "challenge"
    eng, _ = engine(velocity=rules[:1], challenge_score=0.6)
    eng.record(txn())
    assert (eng.assess(txn()).action, eng.assess(txn()).score) == ("review", 0.4), "one weak signal: review only"


def test_a_score_at_block_score_blocks() -> None:
    rules = [{"name": "burst", "key": "user", "window_s": 60, "max_count": 1, "action": "challenge"}]
    eng, _ = engine(velocity=rules, challenge_score=0.3, block_score=0.65)
    eng.record(txn())
    assert eng.assess(txn()).action == "block"
    with pytest.raises(ConfigError):
        risk_config(challenge_score=0.8, block_score=0.5)
