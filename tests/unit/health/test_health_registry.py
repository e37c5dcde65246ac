"""HealthRegistry: admission, recording, states for routing, the health report."""

from __future__ import annotations

import json

import pytest

from channels._protocol import AttemptOutcome
from health import BreakerConfig, HealthRegistry
from health_fakes import FakeClock
from routing import ChannelState

BREAKER = BreakerConfig(consecutive_failures=3, base_ejection_s=30, half_open_max_trials=2,
                        half_open_successes=1)


def make(**kwargs: object) -> tuple[HealthRegistry, FakeClock, list[str]]:
    clock = FakeClock()
    changes: list[str] = []
    registry = HealthRegistry(clock, breaker_config=BREAKER, on_change=changes.append, **kwargs)  # type: ignore[arg-type]
    registry.add_channel("a")
    registry.add_channel("b", max_in_flight=2)
    changes.clear()
    return registry, clock, changes


def eject(registry: HealthRegistry, name: str) -> None:
    for _ in range(BREAKER.consecutive_failures):
        ticket = registry.begin_attempt(name)
        assert ticket is not None
        registry.end_attempt(ticket, AttemptOutcome.NOT_PROCESSED, 5.0)


def test_attempt_round_trip_feeds_stats_and_gauge():
    registry, clock, _ = make()
    ticket = registry.begin_attempt("a")
    assert ticket is not None and registry.in_flight() == {"a": 1, "b": 0}
    clock.advance(0.03)
    registry.end_attempt(ticket, AttemptOutcome.CAPTURED, 30.0)
    assert registry.in_flight()["a"] == 0
    assert registry.stats("a").window_counts() == (1, 0)


def test_admission_refuses_drained_capped_open_and_exhausted_half_open():
    registry, clock, _ = make()
    registry.drain("a")
    assert registry.begin_attempt("a") is None
    registry.enable("a")
    assert registry.begin_attempt("a") is not None
    first, second = registry.begin_attempt("b"), registry.begin_attempt("b")
    assert first and second and registry.begin_attempt("b") is None  # cap 2
    registry.abandon_attempt(first)
    assert registry.begin_attempt("b") is not None
    eject(registry, "a")
    assert registry.begin_attempt("a") is None
    clock.advance(30)
    trials = [registry.begin_attempt("a"), registry.begin_attempt("a")]
    assert all(t is not None and t.permit.trial for t in trials)
    assert registry.begin_attempt("a") is None
    registry.abandon_attempt(trials[0])  # type: ignore[arg-type]
    assert registry.begin_attempt("a") is not None


def test_trial_success_closes_and_the_window_restarts_clean():
    registry, clock, changes = make()
    eject(registry, "a")
    assert changes == ["a"]  # closed -> open
    clock.advance(30)
    assert registry.states()["a"].breaker == "half_open"
    assert registry.stats("a").window_counts() == (0, 0)  # the outage is forgotten
    ticket = registry.begin_attempt("a")
    assert ticket is not None
    registry.end_attempt(ticket, AttemptOutcome.DECLINED, 40.0)  # a decline is the channel working
    assert registry.breaker("a").state == "closed"
    assert changes == ["a", "a", "a"]


def test_states_for_routing():
    registry, clock, _ = make()
    for _ in range(9):
        ticket = registry.begin_attempt("a")
        assert ticket is not None
        registry.end_attempt(ticket, AttemptOutcome.CAPTURED, 30.0)
    registry.record_attempt("a", AttemptOutcome.UNKNOWN, 2000.0)
    registry.record_probe("a", True, 25.0)
    pending = registry.begin_attempt("a")
    clock.advance(0.5)
    registry.drain("b")
    states = registry.states()
    assert set(states) == {"a", "b"}
    a = states["a"]
    assert isinstance(a, ChannelState)
    assert (a.breaker, a.drained, a.in_flight, a.last_probe_ok) == ("closed", False, 1, True)
    assert a.successes == pytest.approx(9.0) and a.failures == pytest.approx(1.0)
    assert a.latency_ewma_ms is not None and 25.0 <= a.latency_ewma_ms <= 30.0
    assert a.latency_p99_ms == 30.0
    assert a.stalled_ms == pytest.approx(500.0)
    assert states["b"].drained and states["b"].last_probe_ok is None
    assert pending is not None


def test_report_is_json_ready_and_complete():
    registry, clock, _ = make(wall_clock=lambda: 1_700_000_000.0)
    ticket = registry.begin_attempt("a")
    assert ticket is not None
    registry.end_attempt(ticket, AttemptOutcome.CAPTURED, 30.0)
    registry.record_probe("a", True, 28.0)
    clock.advance(1.5)
    report = registry.report()
    json.dumps(report)
    a = report["a"]
    assert a["state"] == "healthy" and a["breaker"]["state"] == "closed"
    assert set(a["latency_ms"]) == {"ewma", "p50", "p95", "p99"}
    assert a["success_rate"] == 1.0 and a["outcomes"]["captured"] == 1
    assert a["last_probe"] == {"ok": True, "latency_ms": 28.0, "age_s": 1.5,
                               "at_unix": 1_699_999_998.5}
    assert report["b"]["state"] == "unknown" and report["b"]["last_probe"] is None


@pytest.mark.parametrize(("setup", "state"), [
    (lambda r, c: r.drain("a"), "drained"),
    (lambda r, c: eject(r, "a"), "ejected"),
    (lambda r, c: (eject(r, "a"), c.advance(30)), "recovering"),
    (lambda r, c: r.record_probe("a", False, 1000.0), "degraded"),
])
def test_report_summary_state(setup, state):
    registry, clock, _ = make()
    setup(registry, clock)
    assert registry.report()["a"]["state"] == state


def test_probes_notify_and_feed_the_breaker():
    registry, _, changes = make()
    for _ in range(3):
        registry.record_probe("a", False, 1000.0)
    assert registry.breaker("a").state == "open"
    assert changes.count("a") == 4  # three probes and one transition


def test_membership_follows_config_reload():
    registry, _, changes = make()
    ticket = registry.begin_attempt("a")
    registry.sync({"b": 5, "c": None})
    assert registry.names == ("b", "c")
    assert changes == ["a", "c"]
    assert ticket is not None
    registry.end_attempt(ticket, AttemptOutcome.CAPTURED, 30.0)  # removed meanwhile: ignored
    registry.record_probe("a", True, 30.0)
    with pytest.raises(KeyError):
        registry.begin_attempt("a")
    # b keeps its history and takes the new cap
    tickets = [registry.begin_attempt("b") for _ in range(6)]
    assert sum(t is not None for t in tickets) == 5


def test_drain_is_idempotent_and_notifies_once():
    registry, _, changes = make()
    registry.drain("a")
    registry.drain("a")
    assert registry.is_drained("a") and changes == ["a"]
    registry.enable("a")
    assert not registry.is_drained("a") and changes == ["a", "a"]


def test_panic_admission_bypasses_an_open_breaker_but_not_a_drain():
    from health import HealthRegistry

    clock = [0.0]
    reg = HealthRegistry(lambda: clock[0])
    reg.add_channel("a")
    while (ticket := reg.begin_attempt("a")) is not None:
        reg.end_attempt(ticket, "not_processed", 5.0)
    assert reg.breaker("a").state == "open"
    assert reg.begin_attempt("a") is None
    ticket = reg.begin_attempt("a", panic=True)
    assert ticket is not None
    reg.end_attempt(ticket, "captured", 5.0)
    assert reg.breaker("a").state == "open", "a panic answer is not a half-open trial"
    reg.drain("a")
    assert reg.begin_attempt("a", panic=True) is None
