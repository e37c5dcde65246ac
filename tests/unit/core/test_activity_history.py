"""The status page's last hour (orchestrator.activity): a ring of buckets on an injected
clock, bounded whatever the traffic, with each channel's approval rate, p99 and share,
recharges by outcome and failovers per bucket."""

from __future__ import annotations

import random

import pytest

from channels import AttemptOutcome
from orchestrator.activity import HISTORY_BUCKETS, Activity


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def activity(clock: Clock, bucket_s: float = 60.0) -> Activity:
    return Activity(clock, history_bucket_s=bucket_s)


def send(a: Activity, channel: str, outcome: AttemptOutcome, latency_ms: float = 20.0) -> None:
    a.attempt(channel)
    a.answered(channel, outcome, latency_ms)


def test_an_hour_is_sixty_buckets_of_a_minute_oldest_first_the_quiet_ones_filled_in():
    clock = Clock(600.0)  # a bucket boundary
    a = activity(clock)
    send(a, "a", AttemptOutcome.CAPTURED)
    clock.t += 59.9
    send(a, "a", AttemptOutcome.CAPTURED)  # same minute
    clock.t += 0.1
    send(a, "b", AttemptOutcome.CAPTURED)  # the next one
    clock.t += 30
    h = a.history()
    assert (h["bucket_s"], h["buckets"], len(h["points"])) == (60.0, HISTORY_BUCKETS, 60)
    assert [p["age_s"] for p in h["points"][-2:]] == [90.0, 30.0]
    assert h["points"][0]["age_s"] == 59 * 60 + 30
    before, last = h["points"][-2], h["points"][-1]
    assert before["channels"]["a"]["attempts"] == 2 and "b" not in before["channels"]
    assert last["channels"] == {"b": {"attempts": 1, "share": 1.0, "answers": 1, "approval": 1.0, "p99_ms": 20.7}}  # 20 ms, to its bin's edge
    assert all(p["channels"] == {} and p["outcomes"] == {} and p["failovers"] == 0 for p in h["points"][:-2])


def test_a_bucket_rolls_off_the_hour_and_an_hour_of_silence_leaves_nothing():
    clock = Clock(0.0)
    a = activity(clock)
    a.outcome("succeeded")
    clock.t = 59 * 60 + 1  # the 60th minute: the first still shows, as the oldest
    assert a.history()["points"][0]["outcomes"] == {"succeeded": 1}
    clock.t = 60 * 60
    assert all(p["outcomes"] == {} for p in a.history()["points"])
    a.outcome("failed")
    clock.t += 5 * 3600
    assert all(p["outcomes"] == {} for p in a.history()["points"])


def test_memory_is_bounded_by_buckets_and_latency_bins_whatever_the_traffic():
    clock = Clock(0.0)
    a = activity(clock, bucket_s=1.0)
    rng = random.Random(7)
    outcomes = list(AttemptOutcome)
    for _ in range(20_000):
        clock.t += rng.random() * 0.05  # ~500 s: 500 buckets of 1 s go through a ring of 60
        send(a, rng.choice("abc"), rng.choice(outcomes), latency_ms=10 ** rng.uniform(-2, 7))
        a.outcome(rng.choice(["succeeded", "failed", "declined"]))
    ring = a._history._ring
    assert len(ring) == HISTORY_BUCKETS
    assert all(len(c.latency) <= 137 for slot in ring for c in slot.channels.values())
    big = activity(clock)
    for _ in range(50_000):
        send(big, "a", AttemptOutcome.CAPTURED, latency_ms=rng.uniform(0, 120_000))
    assert len(big._history._ring) == 1 and len(big._history._ring[0].channels["a"].latency) <= 137


def test_per_channel_approval_p99_and_share_in_one_bucket():
    clock = Clock(0.0)
    a = activity(clock)
    rng = random.Random(3)
    latencies = []
    for i in range(100):
        ms = rng.uniform(20, 40) if i < 98 else 900.0
        latencies.append(ms)
        send(a, "a", AttemptOutcome.CAPTURED if i % 10 else AttemptOutcome.NOT_PROCESSED, ms)
    for i in range(300):
        send(a, "b", AttemptOutcome.DECLINED if i % 4 == 0 else AttemptOutcome.CAPTURED, 5.0)
    for _ in range(50):  # undecided answers: their end comes later; they are not approvals or refusals
        send(a, "b", AttemptOutcome.PENDING, 5.0)
        send(a, "b", AttemptOutcome.REQUIRES_ACTION, 5.0)
    a.attempt("c")  # sent, not answered yet
    point = a.history()["points"][-1]["channels"]
    assert point["a"]["approval"] == 0.9 and point["b"]["approval"] == 0.75
    assert point["c"]["approval"] is None and point["c"]["p99_ms"] is None
    assert (point["a"]["answers"], point["b"]["answers"]) == (100, 300)
    assert point["a"]["share"] == round(100 / 501, 4) and point["b"]["share"] == round(400 / 501, 4)
    assert sum(c["share"] for c in point.values()) == pytest.approx(1.0, abs=1e-3)
    true_p99 = sorted(latencies)[98]  # the 99th of 100
    assert true_p99 <= point["a"]["p99_ms"] <= true_p99 * 1.091  # a bin's upper edge: at most 9 % high
    assert point["b"]["p99_ms"] == pytest.approx(5.0, rel=0.091)


def test_an_outage_shows_as_a_dip_the_traffic_moving_and_failovers():
    clock = Clock(0.0)
    a = activity(clock)
    for minute in range(60):
        clock.t = minute * 60.0 + 1
        down = 20 <= minute < 30
        for i in range(20):
            if down:
                if i < 2:  # the breaker's trial requests
                    send(a, "a", AttemptOutcome.NOT_PROCESSED, 3.0)
                    a.failover(f"r{minute}-{i}", "a", "b", "not_processed")
                send(a, "b", AttemptOutcome.CAPTURED, 30.0)
            else:
                send(a, "a" if i < 16 else "b", AttemptOutcome.CAPTURED, 20.0)
            a.outcome("succeeded")
    clock.t = 3599.0
    points = a.history()["points"]
    approval = [p["channels"]["a"]["approval"] for p in points]
    share_b = [p["channels"]["b"]["share"] for p in points]
    assert approval[:20] == [1.0] * 20 and approval[20:30] == [0.0] * 10 and approval[30:] == [1.0] * 30
    assert share_b[19] == 0.2 and share_b[25] == round(20 / 22, 4)
    assert [p["failovers"] for p in points[19:31]] == [0] + [2] * 10 + [0]
    assert all(p["outcomes"] == {"succeeded": 20} for p in points)


def test_the_live_minute_is_unchanged_by_the_history():
    clock = Clock(0.0)
    a = activity(clock, bucket_s=10.0)
    for _ in range(3):
        a.attempt("a")
    a.attempt("b")
    a.outcome("succeeded")
    view = a.view()
    assert view["share"] == {"a": 0.75, "b": 0.25} and view["outcomes_per_min"] == {"succeeded": 1.0}
    assert a.history()["bucket_s"] == 10.0


def test_a_bucket_size_must_be_positive():
    with pytest.raises(ValueError):
        Activity(Clock(), history_bucket_s=0)
