"""Velocity state stays bounded: 100,000 users and instruments through an engine capped
at 5,000 keys and 16 events per key, and reloads that shrink the bounds."""

from __future__ import annotations

from risk_builders import engine, risk_config, txn

from orchestrator.risk import RiskInput

RULES = [{"name": "u", "key": "user", "window_s": 3600, "max_count": 10},
         {"name": "i", "key": "instrument", "window_s": 3600, "max_count": 10}]


def test_a_hundred_thousand_users_stay_within_the_key_cap() -> None:
    eng, clock = engine(velocity=RULES, max_keys=5000, max_events_per_key=16)
    for n in range(100_000):
        eng.record(txn(user=f"u{n}", instrument=f"tok_{n}"))
        if n % 1000 == 0:
            clock.advance(1)
    users, instruments = eng.tracked()
    assert users == 5000 and instruments == 5000
    assert eng.events_held() == 10_000
    # The most recent users are the ones kept.
    eng.record(txn(user="u99999", instrument="tok_99999"))
    assert eng.tracked() == (5000, 5000)


def test_one_busy_user_holds_at_most_max_events_per_key() -> None:
    eng, clock = engine(velocity=RULES, max_events_per_key=16)
    for _ in range(10_000):
        eng.record(txn())
        clock.advance(0.01)
    assert eng.events_held() == 32  # 16 for the user, 16 for the instrument
    assert eng.assess(txn()).action == "block"  # still over 10 in the window


def test_old_events_are_dropped_as_the_window_moves() -> None:
    eng, clock = engine(velocity=[{"name": "u", "key": "user", "window_s": 60, "max_count": 5}])
    for _ in range(5):
        eng.record(txn())
    clock.advance(61)
    eng.record(txn())
    assert eng.events_held() == 1


def test_a_reload_with_smaller_bounds_applies_on_the_next_record() -> None:
    eng, _ = engine(velocity=RULES, max_keys=1000, max_events_per_key=16)
    for n in range(1000):
        eng.record(txn(user=f"u{n}", instrument=None))
    for _ in range(16):
        eng.record(txn(user="u0", instrument=None))
    eng.configure(risk_config(velocity=RULES, max_keys=10, max_events_per_key=10))
    eng.record(txn(user="u0", instrument=None))
    assert eng.tracked() == (10, 0)
    assert eng.events_held() <= 10 + 9


def test_no_velocity_rule_no_state() -> None:
    eng, _ = engine()
    for n in range(1000):
        eng.screen(RiskInput(user_id=f"u{n}", amount_base=txn().amount_base, country="CN"))
    assert eng.tracked() == (0, 0)
