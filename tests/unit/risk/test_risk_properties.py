"""Properties: Luhn accepts exactly the numbers whose check digit is right (so any
single-digit typo is caught), and velocity never blocks under its limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from risk_builders import engine, txn

from orchestrator.risk import luhn_ok


def check_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@given(payload=st.text(alphabet="0123456789", min_size=11, max_size=18), pos=st.integers(0, 18),
       delta=st.integers(1, 9))
def test_luhn_catches_every_single_digit_typo(payload: str, pos: int, delta: int) -> None:
    number = payload + check_digit(payload)
    assert luhn_ok(number)
    pos %= len(number)
    typo = number[:pos] + str((int(number[pos]) + delta) % 10) + number[pos + 1:]
    assert not luhn_ok(typo)


@settings(max_examples=50, deadline=None)
@given(limit=st.integers(1, 20), gaps=st.lists(st.floats(0, 30), min_size=1, max_size=60))
def test_velocity_blocks_exactly_past_the_limit(limit: int, gaps: list[float]) -> None:
    eng, clock = engine(velocity=[{"name": "v", "key": "user", "window_s": 60, "max_count": limit}])
    accepted: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        now = clock.monotonic()
        in_window = sum(1 for t in accepted if t > now - 60)
        decision = eng.screen(txn())
        assert decision.blocked is (in_window + 1 > limit)
        if not decision.blocked:
            accepted.append(now)
