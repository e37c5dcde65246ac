"""The bench's summary: a max search that passed every rate it tried reports its max as a
lower bound (and the ratio to it as an upper bound), not as the max."""

from __future__ import annotations

from bench.report import report


def _search(top: float, topped: bool) -> dict:
    return {"target": "x", "max_good_rate": top, "search_topped": topped, "steps": []}


def test_a_topped_baseline_search_is_a_lower_bound():
    text = report({"baseline-max": _search(3000, True), "max": _search(1500, False)})
    assert "max good >= 3000" in text
    assert "bare proxy at least 3000/s, ratio at most 0.50" in text


def test_a_search_that_found_its_limit_is_the_max():
    text = report({"baseline-max": _search(1650, False), "max": _search(1200, False)})
    assert "max good 1650" in text and ">=" not in text
    assert "bare proxy 1650/s, ratio 0.73." in text
