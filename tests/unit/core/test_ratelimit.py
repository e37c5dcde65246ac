"""Token buckets: bursts, refill, Retry-After, bounded memory, live reconfiguration."""

from __future__ import annotations

from orchestrator.ratelimit import Limiter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_then_the_rate():
    clock = Clock()
    lim = Limiter(rate=2, burst=3, clock=clock)
    assert [lim.check("u") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = lim.check("u")
    assert 0.49 < wait <= 0.5
    clock.t += 0.5
    assert lim.check("u") == 0.0
    assert lim.check("other") == 0.0, "keys are independent"


def test_memory_stays_bounded_whatever_the_number_of_users():
    lim = Limiter(rate=1, burst=1, clock=Clock(), max_keys=1000)
    for i in range(100_000):
        lim.check(f"user-{i}")
    assert len(lim) == 1000


def test_reconfiguring_keeps_levels_under_the_new_burst():
    clock = Clock()
    lim = Limiter(rate=1, burst=10, clock=clock)
    lim.check("u")
    lim.reconfigure(rate=1, burst=2)
    assert lim.check("u") == 0.0 and lim.check("u") == 0.0
    assert lim.check("u") > 0
