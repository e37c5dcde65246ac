"""The median of several `make bench` runs, per scenario and figure.

    python -m bench --results bench/results/run1   (three times, run1..run3)
    python -m bench.medians bench/results/run1 bench/results/run2 bench/results/run3

Prints a markdown table (median, and every run's value beside it) and writes it to
``bench/results/medians.md``.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).resolve().parent / "results"

Figure = Callable[[dict[str, Any]], float | None]


def _max_good(doc: dict[str, Any]) -> float:
    """The last good rate of a stepped search; 0 when not even the first step passed."""
    return doc.get("max_good_rate") or 0


def _summary(key: str, sub: str | None = None, part: str = "summary") -> Figure:
    def get(doc: dict[str, Any]) -> float | None:
        value = doc.get(part, {}).get(key)
        return value.get(sub) if sub and isinstance(value, dict) else value

    return get


def _rss(which: int) -> Figure:
    return lambda doc: doc["resources"][which]["rss_mb"] if doc.get("resources") else None


def _cpu(doc: dict[str, Any]) -> float | None:
    samples = [r["cpu_percent"] for r in doc.get("resources", [])[2:-2]]
    return statistics.median(samples) if samples else None


FIGURES: dict[str, list[tuple[str, Figure]]] = {
    "baseline": [("answered/s", _summary("achieved_rate")), ("p50 ms", _summary("latency_ms", "p50")),
                 ("p99 ms", _summary("latency_ms", "p99")), ("p99 added ms", _summary("added_latency_ms", "p99")),
                 ("CPU %", _cpu)],
    "baseline-max": [("max good rate/s", _max_good)],
    "steady": [("answered/s", _summary("achieved_rate")), ("p50 ms", _summary("latency_ms", "p50")),
               ("p99 ms", _summary("latency_ms", "p99")), ("p50 added ms", _summary("added_latency_ms", "p50")),
               ("p99 added ms", _summary("added_latency_ms", "p99")), ("errors", _summary("errors")),
               ("CPU %", _cpu), ("RSS start MB", _rss(0)), ("RSS end MB", _rss(-1))],
    "max": [("max good rate/s", _max_good)],
    "max-postgres": [("max good rate/s", _max_good)],
    "pricing_risk": [("price + risk p99 us", lambda d: d["price_plus_risk"]["p99_us"]),
                     ("price + risk p50 us", lambda d: d["price_plus_risk"]["p50_us"]),
                     ("price + risk with the model p99 us", lambda d: _get(d, "price_plus_risk_model", "p99_us"))],
    "risk_serving": [("model per recharge p50 us", lambda d: _get(d, "latency", "parts", "per_recharge", "p50_us")),
                     ("model per recharge p99 us", lambda d: _get(d, "latency", "parts", "per_recharge", "p99_us"))],
    "soak": [("answered/s", _summary("achieved_rate")), ("p99 ms", _summary("latency_ms", "p99")),
             ("RSS start MB", _rss(0)), ("RSS end MB", _rss(-1))],
}
IMPAIRED = [("answered/s", _summary("achieved_rate")), ("success in window", _summary("success_ratio", part="in_window")),
            ("p99 ms", _summary("latency_ms", "p99")), ("p99 in window ms", _summary("latency_ms", "p99", "in_window")),
            ("p99 added ms", _summary("added_latency_ms", "p99"))]


def _get(doc: Any, *path: str) -> float | None:
    """A figure deep in a result, None where an older run has none."""
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc


def figures_for(name: str) -> list[tuple[str, Figure]]:
    if name.startswith(("outage", "brownout")):
        return IMPAIRED
    return FIGURES.get(name, [])


def table(runs: list[Path]) -> str:
    names = sorted({p.stem for run in runs for p in run.glob("*.json")})
    lines = [f"Median of {len(runs)} runs ({', '.join(r.name for r in runs)}); every run's value in brackets.", "",
             "| scenario | figure | median | runs |", "| --- | --- | ---: | --- |"]
    for name in names:
        docs = [orjson.loads(p.read_bytes()) if (p := run / f"{name}.json").exists() else None for run in runs]
        for label, get in figures_for(name):
            values = [None if d is None else get(d) for d in docs]
            known = [v for v in values if v is not None]
            median = statistics.median(known) if known else None
            pct = "success" in label
            lines.append(f"| {name} | {label} | {_fmt(median, pct)} | {' / '.join(_fmt(v, pct) for v in values)} |")
    smart = [_smart_p99(run / "routing_sim.md") for run in runs]
    known = [v for v in smart if v is not None]
    if known:
        lines.append(f"| routing_sim | decision p99 us (smart) | {_fmt(statistics.median(known))} | "
                     f"{' / '.join(_fmt(v) for v in smart)} |")
    lines += ["", "A max good rate of 0: not even the first step passed."]
    return "\n".join(lines) + "\n"


def _smart_p99(path: Path) -> float | None:
    """The smart strategy's decision p99 from routing_sim's markdown table."""
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] == "smart":
            return float(cells[2])
    return None


def _fmt(v: float | None, percent: bool = False) -> str:
    if v is None:
        return "-"
    if percent:
        return f"{v:.2%}"
    return f"{v:,.1f}" if isinstance(v, float) and not v.is_integer() else f"{v:,.0f}"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    text = table([Path(a) for a in argv])
    (RESULTS / "medians.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
