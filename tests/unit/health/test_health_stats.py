"""ChannelStats: what counts as the channel working, windows, in-flight, memory bound."""

from __future__ import annotations

import sys

import pytest

from channels._protocol import AttemptOutcome
from health import ChannelStats, StatsConfig, channel_worked
from health_fakes import FakeClock


@pytest.mark.parametrize(("outcome", "worked"), [
    (AttemptOutcome.CAPTURED, True), (AttemptOutcome.PENDING, True),
    (AttemptOutcome.DECLINED, True), (AttemptOutcome.VOIDED, True),
    (AttemptOutcome.REFUNDED, True), (AttemptOutcome.NOT_PROCESSED, False),
    (AttemptOutcome.UNKNOWN, False), ("declined", True), ("unknown", False),
])
def test_a_decline_is_the_channel_working(outcome, worked):
    assert channel_worked(outcome) is worked


def test_unknown_outcome_strings_are_refused():
    with pytest.raises(ValueError):
        channel_worked("exploded")


def test_record_counts_outcomes_and_window():
    clock = FakeClock()
    stats = ChannelStats(clock)
    assert stats.record(AttemptOutcome.CAPTURED, 30.0) is True
    assert stats.record(AttemptOutcome.DECLINED, 32.0) is True
    assert stats.record(AttemptOutcome.UNKNOWN, 2000.0) is False
    assert stats.window_counts() == (2, 1)
    assert stats.success_rate() == pytest.approx(2 / 3)
    assert stats.outcome_counts()["declined"] == 1 and stats.outcome_counts()["unknown"] == 1
    clock.advance(61)
    assert stats.window_counts() == (0, 0) and stats.success_rate() is None
    assert stats.outcome_counts()["captured"] == 1  # lifetime counts stay


def test_latency_describes_answers_not_timeouts():
    stats = ChannelStats(FakeClock())
    stats.record(AttemptOutcome.CAPTURED, 30.0)
    stats.record(AttemptOutcome.UNKNOWN, 2000.0)
    stats.record(AttemptOutcome.NOT_PROCESSED, 5.0)
    assert stats.latency_ewma_ms == 30.0
    assert stats.latency_quantiles(fresh=True) == (30.0, 30.0, 30.0)


def test_probes_feed_last_probe_but_not_success_rate_nor_a_never_measured_latency():
    clock = FakeClock()
    stats = ChannelStats(clock, ping_like_payment=False)
    stats.record_probe(True, 25.0)
    clock.advance(2)
    stats.record_probe(False, 1000.0)
    assert stats.window_counts() == (0, 0)
    assert stats.latency_ewma_ms is None, "a bank's ping latency is not its payments'"
    assert stats.last_probe is not None and stats.last_probe.ok is False
    assert stats.last_probe.at == clock.now
    assert stats.probe_counts() == {"ok": 1, "failed": 1}


def test_probes_refresh_the_latency_of_a_channel_idle_for_a_window():
    clock = FakeClock()
    stats = ChannelStats(clock, StatsConfig(window_s=60, half_life_s=10), ping_like_payment=False)
    stats.record(AttemptOutcome.CAPTURED, 4800.0)
    stats.record_probe(True, 40.0)
    assert stats.latency_ewma_ms == 4800.0, "while live traffic speaks, pings do not"
    clock.advance(11)
    stats.record_probe(True, 40.0)
    assert stats.latency_ewma_ms < 4800.0, "after a silent half-life the probe stands in"


def test_decayed_counts_weigh_recent_results_more():
    clock = FakeClock(0.0)
    stats = ChannelStats(clock, StatsConfig(window_s=60, bucket_s=2, half_life_s=10))
    stats.record(AttemptOutcome.UNKNOWN, 2000.0)
    clock.advance(20)
    stats.record(AttemptOutcome.CAPTURED, 30.0)
    ok, failed = stats.decayed_counts()
    assert ok == 1.0 and failed == pytest.approx(0.25)


def test_reset_success_window_keeps_lifetime_counts():
    stats = ChannelStats(FakeClock())
    stats.record(AttemptOutcome.UNKNOWN, 2000.0)
    stats.reset_success_window()
    assert stats.window_counts() == (0, 0)
    assert stats.outcome_counts()["unknown"] == 1


def test_in_flight_gauge_and_stall():
    clock = FakeClock()
    stats = ChannelStats(clock)
    assert stats.stalled_ms() == 0.0
    first = stats.enter()
    clock.advance(0.010)
    second = stats.enter()
    assert stats.in_flight == 2
    clock.advance(0.040)
    assert stats.stalled_ms() == pytest.approx(50.0)  # silent since the first went out
    stats.record(AttemptOutcome.CAPTURED, 50.0)
    stats.exit(first)
    clock.advance(0.005)
    assert stats.stalled_ms() == pytest.approx(5.0)  # an answer resets the silence
    stats.record(AttemptOutcome.UNKNOWN, 2000.0)  # a timeout is not an answer
    clock.advance(0.005)
    assert stats.stalled_ms() == pytest.approx(10.0)
    stats.exit(second)
    stats.exit(second)  # idempotent
    assert stats.in_flight == 0 and stats.stalled_ms() == 0.0


def test_memory_stays_bounded_under_heavy_traffic():
    clock = FakeClock(0.0)
    config = StatsConfig(latency_samples=512)
    stats = ChannelStats(clock, config)
    before = sys.getsizeof(stats._outcomes)
    for i in range(100_000):
        clock.advance(0.001)
        token = stats.enter()
        stats.record(AttemptOutcome.CAPTURED if i % 10 else AttemptOutcome.UNKNOWN, 28.0)
        stats.exit(token)
        if i % 50 == 0:
            stats.record_probe(True, 27.0)
    assert stats.latency_window_size == 512
    assert stats.in_flight == 0
    assert stats._counts.buckets == 30
    assert len(stats._outcomes) == len(AttemptOutcome)
    assert sys.getsizeof(stats._outcomes) == before
    ok, failed = stats.window_counts()
    assert ok + failed <= 60_000  # only the last 60 s of 100 s


def test_stats_config_validates():
    with pytest.raises(ValueError):
        StatsConfig(bucket_s=0)
    with pytest.raises(ValueError):
        StatsConfig(latency_samples=0)


def test_a_direct_apis_ping_counts_as_its_latency():
    clock = FakeClock()
    stats = ChannelStats(clock)
    stats.record_probe(True, 25.0)
    assert stats.latency_ewma_ms == 25.0
