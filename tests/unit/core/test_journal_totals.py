"""The month a success is tallied in, and when the journal's per-user totals can answer
"how many were created at or after M" by themselves (``orchestrator.journal._totals``)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.journal import UserTotals
from orchestrator.clock import month_of
from orchestrator.journal._totals import totals_since
from orchestrator.pricing import month_start

NOV_2023 = 1_698_796_800  # 2023-11-01T00:00Z
DEC_2023 = 1_701_388_800


def test_a_success_is_tallied_in_the_month_its_recharge_was_created() -> None:
    assert month_of(1_700_000_000.0) == NOV_2023
    assert month_of(NOV_2023) == NOV_2023
    assert month_of(DEC_2023 - 1) == NOV_2023
    # A hair before midnight is still November, as ``created_at >= DEC_2023`` says;
    # datetime alone would round it to the microsecond, into December. The pricing's
    # month (the history's ``since``) is the same one.
    hair = math.nextafter(DEC_2023, 0)
    assert hair < DEC_2023 and month_of(hair) == NOV_2023
    assert month_start(hair) == NOV_2023
    assert month_of(datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC).timestamp()) == \
        datetime(2024, 2, 1, tzinfo=UTC).timestamp()


@given(st.floats(min_value=0, max_value=253_370_000_000, allow_nan=False))  # into 9998
def test_the_month_is_the_one_whose_start_the_time_is_at_or_after(at: float) -> None:
    m = month_of(at)
    assert m <= at
    assert m == month_start(math.floor(at)), "the pricing's month, of the whole second"
    nxt = month_start(m + 32 * 86400)
    assert at < nxt


ROWS = [("CNY", 3, 30000, NOV_2023, 2), ("JPY", 1, 500, DEC_2023, 1)]


def test_the_totals_answer_for_the_start_of_their_newest_month_or_any_later_one() -> None:
    jan = 1_704_067_200
    assert totals_since(ROWS, DEC_2023) == [UserTotals("CNY", 3, 30000, 0), UserTotals("JPY", 1, 500, 1)]
    assert totals_since(ROWS, float(jan)) == [UserTotals("CNY", 3, 30000, 0), UserTotals("JPY", 1, 500, 0)]
    assert totals_since([], float(jan)) == []


def test_the_totals_cannot_answer_for_an_earlier_month_or_a_time_inside_one() -> None:
    assert totals_since(ROWS, NOV_2023) is None, "JPY's tally is December's: November's count is gone"
    assert totals_since(ROWS, DEC_2023 + 3600) is None, "not the start of a month"
    assert totals_since(ROWS[:1], NOV_2023) == [UserTotals("CNY", 3, 30000, 2)]
