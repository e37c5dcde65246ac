"""What a run writes under --results: each scenario's JSON document (and chart), the CPU
medians in it, and the summary table (summary.md)."""

from __future__ import annotations

import statistics
import sys
from typing import Any

import orjson
import psutil

from bench.charts import chart
from bench.stack import CHANNEL_MS
from orchestrator.launch import ROOT

# --results sets it (as --workers sets bench.stack.WORKERS), so other modules read it as
# bench.report.RESULTS at call time, never through a copy taken at import.
RESULTS = ROOT / "bench" / "results"


def write_json(name: str, doc: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def save(name: str, doc: dict[str, Any], window: tuple[float, float] | None = None) -> None:
    write_json(name, doc)
    chart(name, doc, window, RESULTS / f"{name}.png")


def cpu_medians(resources: list[dict[str, Any]]) -> dict[str, float]:
    """Median CPU per role (percent of one core) over the run, its first and last two
    seconds left out (start-up and drain)."""
    inner = resources[2:-2] or resources
    roles = {k for r in inner for k in r.get("cpu", {})}
    return {role: round(statistics.median(r.get("cpu", {}).get(role, 0.0) for r in inner), 1) for role in sorted(roles)}


def report(docs: dict[str, dict[str, Any]]) -> str:
    lines = ["# Benchmark results", "",
             (f"Machine: {psutil.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB; "
              f"Python {sys.version.split()[0]}; direct-API channel latency {CHANNEL_MS:.0f} ms (simulator)."), "",
             "| scenario | target | answered/s | succeeded/sent | p50 ms | p99 ms | p99 added ms | notes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, d in docs.items():
        if "summary" in d:
            s = d["summary"]
            notes = []
            if "in_window" in d:
                notes.append(f"success in window {d['in_window']['success_ratio']:.2%}")
            if s["error_kinds"]:
                notes.append("errors " + ", ".join(f"{k} {n}" for k, n in s["error_kinds"].items()))
            if d.get("resources"):
                rss = [r["rss_mb"] for r in d["resources"]]
                notes.append(f"server RSS {rss[0]}->{rss[-1]} MB")
                notes.append("CPU % " + ", ".join(f"{k} {v:.0f}" for k, v in d.get("cpu_median", {}).items()))
            lines.append(f"| {name} | {d['target']} | {s['achieved_rate']} | {s['succeeded']}/{s['sent']} | "
                         f"{s['latency_ms']['p50']} | {s['latency_ms']['p99']} | {s['added_latency_ms']['p99']} | "
                         f"{'; '.join(notes)} |")
        else:
            at_least = ">= " if d.get("search_topped") else ""
            lines.append(f"| {name} | {d['target']} | max good {at_least}{d['max_good_rate']} | | | | | "
                         + ", ".join(f"{st['rate']:.0f}/s p99 {st['latency_ms']['p99']}" for st in d["steps"]) + " |")
    base, mx, pg = docs.get("baseline-max"), docs.get("max"), docs.get("max-postgres")
    if base and mx and base.get("max_good_rate") and mx.get("max_good_rate"):
        topped = base.get("search_topped")
        lines += ["", f"Max sustainable throughput: orchestrator on SQLite {mx['max_good_rate']:.0f}/s, bare proxy "
                  f"{'at least ' if topped else ''}{base['max_good_rate']:.0f}/s, ratio "
                  f"{'at most ' if topped else ''}{mx['max_good_rate'] / base['max_good_rate']:.2f}"
                  + (" (the proxy passed every rate tried: --max-rates)." if topped else ".")]
    if pg and mx:
        lines += [f"On PostgreSQL: {pg.get('max_good_rate')}/s (SQLite {mx.get('max_good_rate')}/s)."]
    return "\n".join(lines) + "\n"
