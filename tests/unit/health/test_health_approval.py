"""Approval per (channel, segment), what finished payments teach, and the fleet view."""

from __future__ import annotations

import orjson
import pytest

from channels._protocol import AttemptOutcome
from health import ApprovalBook, ApprovalConfig, FleetView, HealthRegistry, decode_blob, encode_blob, lessons
from health_fakes import FakeClock
from routing import ALL_SEGMENTS

SEG = "CNY/CN/ewallet/b0"


def test_lessons_blame_only_soft_declines_another_channel_then_approved():
    assert lessons([], "a") == [("a", True)]
    assert lessons([("b", True), ("c", False)], "a") == [("b", False), ("a", True)]
    # the same channel soft-declining and then capturing (a retry) blames nobody
    assert lessons([("a", True)], "a") == [("a", True)]


def test_tallies_pool_into_the_channel_and_decay_with_time():
    clock = FakeClock()
    book = ApprovalBook(clock, ApprovalConfig(half_life_s=100.0, fast_half_life_s=10.0))
    for _ in range(90):
        book.record("a", SEG, True)
    for _ in range(10):
        book.record("a", "PHP/PH/ewallet/b0", False)
    counts = book.by_channel()["a"]
    assert counts[SEG] == (90.0, 0.0)
    assert counts[ALL_SEGMENTS] == (90.0, 10.0)
    clock.advance(100.0)
    yes, no = book.by_channel()["a"][ALL_SEGMENTS]
    assert yes == pytest.approx(45.0) and no == pytest.approx(5.0)


def test_a_break_shows_through_the_fast_tally():
    clock = FakeClock()
    book = ApprovalBook(clock, ApprovalConfig(half_life_s=120.0, fast_half_life_s=10.0))
    for i in range(1000):  # 97 % for 100 s
        book.record("a", SEG, i % 100 >= 3)
        clock.advance(0.1)
    yes, no = book.by_channel()["a"][SEG]
    assert 0.96 < yes / (yes + no) < 0.98 and yes + no > 500
    for i in range(100):  # then 40 % declines for 10 s
        book.record("a", SEG, i % 5 >= 2)
        clock.advance(0.1)
    yes, no = book.by_channel()["a"][SEG]
    # The slow tally would still say ~0.92; the fast one (10 s memory) took over.
    assert yes + no < 200 and yes / (yes + no) < 0.85


def test_a_steady_channel_keeps_its_slow_estimate():
    clock = FakeClock()
    book = ApprovalBook(clock)
    for i in range(3000):
        book.record("a", SEG, i % 20 != 0)  # 95 %, evenly
        clock.advance(0.05)
    yes, no = book.by_channel()["a"][SEG]
    assert yes + no > 500, "the slow tally, with its long memory"


def test_memory_is_bounded():
    book = ApprovalBook(FakeClock(), ApprovalConfig(max_keys=50))
    for i in range(1000):
        book.record("a", f"seg{i}", True)
    assert len(book) <= 50


def test_registry_learns_exports_and_merges_the_fleet():
    clock, wall = FakeClock(), FakeClock(1_700_000_000.0)
    registry = HealthRegistry(clock, wall_clock=wall)
    registry.add_channel("a")
    ticket = registry.begin_attempt("a")
    assert ticket is not None
    registry.end_attempt(ticket, AttemptOutcome.CAPTURED, 30.0)
    registry.record_approval("a", SEG, True)
    registry.record_approval("gone", SEG, True)  # not tracked: ignored
    mine = orjson.loads(registry.export())
    assert mine["channels"]["a"]["seg"][SEG] == [1.0, 0.0] and "gone" not in mine["channels"]

    # Another instance saw "a" fail 200 times and decline its segment 30 in 100.
    other = encode_blob(wall.now, {"a": {"s": 0, "f": 200, "lat": 40.0, "probe": [False, wall.now - 1],
                                          "seg": {SEG: [70, 30], ALL_SEGMENTS: [70, 30]}}})
    registry.update_fleet([("other", wall.now, other), ("me", wall.now, registry.export())], me="me")
    state = registry.states()["a"]
    assert state.failures == pytest.approx(200.0) and state.successes == pytest.approx(1.0, rel=0.01)
    assert state.approvals[SEG] == pytest.approx((71.0, 30.0))
    assert state.fleet is not None and state.fleet.instances == 1 and state.fleet.probe_ok is False
    report = registry.report()["a"]
    assert report["fleet"]["instances"] == 1 and report["approval"]["approved"] == 1.0
    # What we publish stays our own: the fleet's numbers are never re-shared.
    assert orjson.loads(registry.export())["channels"]["a"]["f"] == 0


def test_fleet_blobs_age_and_bad_ones_are_skipped():
    view = FleetView(work_half_life_s=10.0, approval_half_life_s=100.0)
    blob = encode_blob(0.0, {"a": {"s": 100, "f": 0, "lat": None, "probe": None, "seg": {SEG: [100, 0]}}})
    view.update([("x", 0.0, blob), ("y", 0.0, b"not json"), ("z", 0.0, orjson.dumps({"v": 99}))], me="me", now=10.0)
    a = view.channels["a"]
    assert a.successes == pytest.approx(50.0) and a.segments[SEG][0] == pytest.approx(100 * 0.5 ** 0.1)
    assert view.rejected == 2 and view.instances == ("x",)
    assert decode_blob(b"\xff") is None
