"""Bounded windows: sliding counts, latency quantiles, the time-decayed EWMA."""

from __future__ import annotations

import pytest

from health import LatencyWindow, SlidingCounts, TimeDecayedEwma


def test_sliding_counts_forget_what_left_the_window():
    counts = SlidingCounts(window_s=60, bucket_s=10)
    counts.add(True, 0.0)
    counts.add(False, 5.0)
    counts.add(True, 30.0)
    assert counts.counts(30.0) == (2, 1)
    assert counts.counts(65.0) == (1, 0)  # the 0-10 s bucket has left
    assert counts.counts(95.0) == (0, 0)


def test_sliding_counts_reuse_buckets():
    counts = SlidingCounts(window_s=60, bucket_s=10)
    counts.add(True, 0.0)
    counts.add(False, 60.0)  # same slot, next lap: the old count is dropped
    assert counts.counts(60.0) == (0, 1)
    assert counts.buckets == 6


def test_decayed_counts_halve_per_half_life():
    counts = SlidingCounts(window_s=60, bucket_s=10, half_life_s=10)
    for _ in range(8):
        counts.add(False, 0.0)
    counts.add(True, 20.0)
    ok, failed = counts.decayed(20.0)
    assert ok == 1.0 and failed == pytest.approx(2.0)


def test_clear_empties_every_bucket_even_near_clock_zero():
    counts = SlidingCounts(window_s=60, bucket_s=2)
    counts.add(False, -1.0)
    counts.add(False, 0.5)
    counts.clear()
    assert counts.counts(1.0) == (0, 0) and counts.decayed(1.0) == (0.0, 0.0)


def test_latency_quantiles_nearest_rank():
    window = LatencyWindow(capacity=1000)
    for v in range(1, 101):
        window.add(float(v), 0.0)
    assert window.quantiles(0.0, (0.5, 0.95, 0.99), fresh=True) == (50.0, 95.0, 99.0)


def test_latency_window_is_bounded_and_keeps_the_latest():
    window = LatencyWindow(capacity=100)
    for v in range(100_000):
        window.add(float(v), 0.0)
    assert len(window) == 100
    p50, = window.quantiles(0.0, (0.5,), fresh=True)
    assert p50 is not None and p50 >= 99_900


def test_latency_window_drops_old_samples():
    window = LatencyWindow(capacity=100, max_age_s=60)
    window.add(5000.0, 0.0)
    window.add(30.0, 50.0)
    assert window.quantiles(100.0, (0.99,), fresh=True) == (30.0,)
    assert window.quantiles(200.0, (0.99,), fresh=True) == (None,)


def test_latency_quantiles_are_cached_briefly():
    window = LatencyWindow(capacity=100, refresh_s=0.5, refresh_every=32)
    window.add(10.0, 0.0)
    assert window.quantiles(0.0, (0.5,)) == (10.0,)
    window.add(1000.0, 0.0)
    assert window.quantiles(0.1, (0.99,)) == (10.0,)  # cached
    assert window.quantiles(0.6, (0.99,)) == (1000.0,)  # refreshed by time


def test_ewma_follows_samples_by_time():
    ewma = TimeDecayedEwma(tau_s=2.0, min_alpha=0.05)
    ewma.add(560.0, 0.0)
    assert ewma.value == 560.0
    # Probes 2 s apart: each moves it 63 % of the way.
    ewma.add(28.0, 2.0)
    assert ewma.value == pytest.approx(28 + 532 * 0.3679, rel=1e-3)
    # Back-to-back samples still move it by min_alpha.
    before = ewma.value
    ewma.add(28.0, 2.0)
    assert ewma.value == pytest.approx(before + 0.05 * (28.0 - before))


@pytest.mark.parametrize("factory", [
    lambda: SlidingCounts(window_s=0), lambda: LatencyWindow(capacity=0),
    lambda: TimeDecayedEwma(tau_s=0), lambda: TimeDecayedEwma(min_alpha=0),
])
def test_windows_validate(factory):
    with pytest.raises(ValueError):
        factory()
