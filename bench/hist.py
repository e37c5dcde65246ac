"""HDR histograms of latency in microseconds (``hdrhistogram``), as the load generator
records them and the report reads them: encoded per second, merged over any window."""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

__all__ = ["PERCENTILES", "merge", "new_histogram", "percentiles_ms"]

LOWEST_US = 1
HIGHEST_US = 60_000_000
DIGITS = 3
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def merge(encoded: Iterable[str]) -> HdrHistogram:
    """One histogram of every encoded one given (empty if none)."""
    out = new_histogram()
    for text in encoded:
        if text:
            out.add(HdrHistogram.decode(text))
    return out


def percentiles_ms(h: HdrHistogram) -> dict[str, float | None]:
    if h.get_total_count() == 0:
        return {name: None for name, _ in PERCENTILES}
    return {name: round(h.get_value_at_percentile(q) / 1000, 2) for name, q in PERCENTILES}
