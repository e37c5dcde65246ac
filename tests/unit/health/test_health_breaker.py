"""The breaker's every transition, ejection growth and cap, half-open trial limits."""

from __future__ import annotations

import pytest

from health import Breaker, BreakerConfig
from health_fakes import FakeClock

CONFIG = BreakerConfig(
    consecutive_failures=5, success_rate_threshold=0.85, success_rate_min_volume=20,
    success_rate_window_s=30, success_rate_bucket_s=5, base_ejection_s=30,
    max_ejection_s=100, ejection_decay_s=30, half_open_max_trials=3, half_open_successes=2,
    probe_successes_to_half_open=2, min_open_s=5,
)


def make(config: BreakerConfig = CONFIG) -> tuple[Breaker, FakeClock, list[tuple[str, str]]]:
    clock = FakeClock()
    moves: list[tuple[str, str]] = []
    breaker = Breaker(clock, config, on_transition=lambda old, new: moves.append((old, new)))
    return breaker, clock, moves


def fail(breaker: Breaker, n: int) -> None:
    for _ in range(n):
        breaker.record(False)


def open_it(breaker: Breaker) -> None:
    fail(breaker, CONFIG.consecutive_failures)
    assert breaker.state == "open"


def test_starts_closed_and_admits_everything():
    breaker, _, _ = make()
    assert breaker.state == "closed" and breaker.trials_available
    permit = breaker.try_acquire()
    assert permit is not None and not permit.trial


def test_closed_to_open_on_consecutive_failures():
    breaker, _, moves = make()
    fail(breaker, 4)
    breaker.record(True)  # a success resets the run
    fail(breaker, 4)
    assert breaker.state == "closed" and breaker.consecutive_failures == 4
    breaker.record(False)
    assert breaker.state == "open" and moves == [("closed", "open")]
    assert breaker.try_acquire() is None


def test_closed_to_open_on_success_rate_with_volume():
    breaker, clock, _ = make()
    # 3 in 4 failing, never 5 in a row: volume 20 reached at the 20th result.
    for i in range(19):
        breaker.record(i % 4 == 0)
        clock.advance(0.1)
    assert breaker.state == "closed"  # volume 19 < 20
    breaker.record(False)
    assert breaker.state == "open"


def test_success_rate_ignores_results_outside_the_window():
    breaker, clock, _ = make()
    for i in range(15):
        breaker.record(i % 4 == 0)
    clock.advance(31)
    for i in range(10):
        breaker.record(i % 4 == 0)
    assert breaker.state == "closed"


def test_open_to_half_open_after_the_ejection_time():
    breaker, clock, moves = make()
    open_it(breaker)
    clock.advance(29.9)
    assert breaker.state == "open"
    assert breaker.open_remaining_s() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert moves[-1] == ("open", "half_open")


def test_half_open_lets_at_most_k_trials_through():
    breaker, clock, _ = make()
    open_it(breaker)
    clock.advance(30)
    permits = [breaker.try_acquire() for _ in range(3)]
    assert all(p is not None and p.trial for p in permits)
    assert not breaker.trials_available
    assert breaker.try_acquire() is None
    breaker.release(permits[0])  # never sent: the trial can go to another request
    assert breaker.trials_available and breaker.try_acquire() is not None


def test_half_open_to_closed_on_trial_successes():
    breaker, clock, moves = make()
    open_it(breaker)
    clock.advance(30)
    first, second = breaker.try_acquire(), breaker.try_acquire()
    assert first is not None and second is not None
    breaker.record(True, first)
    assert breaker.state == "half_open"
    breaker.record(True, second)
    assert breaker.state == "closed" and moves[-1] == ("half_open", "closed")


def test_half_open_to_open_on_a_trial_failure_with_a_longer_ejection():
    breaker, clock, moves = make()
    open_it(breaker)
    clock.advance(30)
    permit = breaker.try_acquire()
    assert permit is not None
    breaker.record(False, permit)
    assert breaker.state == "open" and moves[-1] == ("half_open", "open")
    assert breaker.ejections == 2 and breaker.open_remaining_s() == pytest.approx(60)


def test_half_open_ignores_answers_that_are_not_its_trials():
    breaker, clock, _ = make()
    old = breaker.try_acquire()
    open_it(breaker)
    clock.advance(30)
    assert old is not None
    breaker.record(False, old)  # sent before the ejection
    assert breaker.state == "half_open"


def test_a_trial_from_an_earlier_half_open_period_does_not_count():
    breaker, clock, _ = make()
    open_it(breaker)
    clock.advance(30)
    stale = breaker.try_acquire()
    breaker.record(False, breaker.try_acquire())  # reopen (60 s)
    clock.advance(60)
    assert breaker.state == "half_open"
    assert stale is not None
    breaker.record(False, stale)
    assert breaker.state == "half_open"


def test_open_ignores_live_results():
    breaker, _, _ = make()
    open_it(breaker)
    breaker.record(True)
    breaker.record(False)
    assert breaker.state == "open" and breaker.ejections == 1


def test_ejection_time_grows_and_is_capped():
    breaker, clock, _ = make()
    open_it(breaker)
    durations = []
    for _ in range(5):
        durations.append(round(breaker.open_remaining_s()))
        clock.advance(breaker.open_remaining_s())
        permit = breaker.try_acquire()
        breaker.record(False, permit)  # type: ignore[arg-type]
    assert durations == [30, 60, 90, 100, 100]


def test_ejection_multiplier_decays_while_closed():
    breaker, clock, _ = make()
    open_it(breaker)
    clock.advance(30)
    breaker.record(False, breaker.try_acquire())  # type: ignore[arg-type]
    clock.advance(60)
    breaker.record(True, breaker.try_acquire())  # type: ignore[arg-type]
    breaker.record(True, breaker.try_acquire())  # type: ignore[arg-type]
    assert breaker.state == "closed" and breaker.ejections == 2
    clock.advance(30)  # one decay interval forgives one ejection
    open_it(breaker)
    assert breaker.ejections == 2 and breaker.open_remaining_s() == pytest.approx(60)
    clock.advance(60)
    breaker.record(True, breaker.try_acquire())  # type: ignore[arg-type]
    breaker.record(True, breaker.try_acquire())  # type: ignore[arg-type]
    clock.advance(10 * 30)  # long healthy: fully forgiven
    open_it(breaker)
    assert breaker.ejections == 1


def test_failed_probes_count_towards_consecutive_failures():
    breaker, _, _ = make()
    for _ in range(4):
        breaker.record_probe(False)
    breaker.record_probe(True)  # a good ping does not vouch for payments
    assert breaker.consecutive_failures == 4
    breaker.record_probe(False)
    assert breaker.state == "open"


def test_probe_successes_end_an_ejection_early_but_not_before_min_open():
    breaker, clock, _ = make()
    open_it(breaker)
    breaker.record_probe(True)
    breaker.record_probe(True)
    assert breaker.state == "open"  # min_open_s not reached
    clock.advance(5)
    assert breaker.state == "half_open"


def test_a_failed_probe_restarts_the_streak():
    breaker, clock, _ = make()
    open_it(breaker)
    clock.advance(6)
    breaker.record_probe(True)
    breaker.record_probe(False)
    breaker.record_probe(True)
    assert breaker.state == "open"
    breaker.record_probe(True)
    assert breaker.state == "half_open"


def test_probes_act_as_trials_when_half_open():
    breaker, clock, _ = make()
    open_it(breaker)
    clock.advance(30)
    breaker.record_probe(True)
    breaker.record_probe(True)
    assert breaker.state == "closed"
    open_it(breaker)
    clock.advance(breaker.open_remaining_s())
    breaker.record_probe(False)
    assert breaker.state == "open"


def test_early_half_open_can_be_disabled():
    config = BreakerConfig(probe_successes_to_half_open=0)
    breaker, clock, _ = make(config)
    fail(breaker, config.consecutive_failures)
    clock.advance(10)
    for _ in range(10):
        breaker.record_probe(True)
    assert breaker.state == "open"


def test_describe_is_json_ready():
    breaker, clock, _ = make()
    open_it(breaker)
    assert breaker.describe() == {"state": "open", "ejections": 1, "open_remaining_s": 30.0,
                                  "consecutive_failures": 0, "trials_issued": 0, "trials_max": 3}


@pytest.mark.parametrize("bad", [
    {"consecutive_failures": 0}, {"success_rate_threshold": 1.5},
    {"base_ejection_s": 0}, {"base_ejection_s": 60, "max_ejection_s": 30},
    {"half_open_successes": 4, "half_open_max_trials": 3}, {"ejection_decay_s": 0},
    {"min_open_s": -1},
])
def test_config_validates(bad):
    with pytest.raises(ValueError):
        BreakerConfig(**bad)  # type: ignore[arg-type]
