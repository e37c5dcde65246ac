"""`make bench`: the orchestrator under open-loop load against the simulator's direct-API
channels at 28 ms, beside a bare aiohttp pass-through proxy on the same load.

Scenarios (each load scenario on a fresh simulator, a fresh orchestrator and a fresh
SQLite journal with its durable settings untouched):
  micro     the routing-decision and pricing + risk microbenchmarks (bench/routing_sim.py,
            bench/pricing_risk_bench.py), each in its own process
  baseline  the bare proxy: steady rate, then stepped up to its max
  steady    1,200 recharges/s for 60 s
  max       the rate stepped up until p99 passes 100 ms or errors appear (a bad step is
            run once more before it counts: this machine is shared and noisy)
  outage    the steady rate; the busiest channel goes down at 20 s, back at 40 s
  brownout  the steady rate; the busiest channel's latency x20 from 20 s to 40 s
  postgres  the max search again with the journal on PostgreSQL (a throwaway server)
  profile   py-spy on every orchestrator process at the steady rate and at the max good
            rate, in runs of their own (bench/results/profile-*.md: the top costs)
  soak      (only with --soak) steady for 10 minutes: RSS at start and end

Traffic: unique Idempotency-Keys; 22,000 users (a tenth of them carry a fifth of the
traffic); CNY 70 %, HKD, USD and PHP 10 % each, at typical price points (bench.loadgen).

Writes bench/results/<scenario>.json and .png, and bench/results/summary.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import bench.report
import bench.scenarios
import bench.stack
from bench.report import report
from bench.scenarios import impaired, micro, profiled, steady, stepped
from orchestrator.launch import ROOT

# The rates of every max search (--max-rates): well past the orchestrator's reach, so the
# bare proxy's search ends at a rate it fails too (docs/performance.md#max-search-rates).
MAX_RATES = ("600,800,900,1000,1100,1200,1300,1400,1500,1650,1800,2000,2200,2400,2700,3000,"
             "3500,4000,4500,5000,5500,6000,7000")


async def main_async(args: argparse.Namespace) -> int:
    work = ROOT / "data" / "bench"
    docs: dict[str, dict[str, Any]] = {}
    wanted = args.scenarios.split(",")
    rates = [float(r) for r in args.max_rates.split(",")]
    t0 = time.monotonic()
    if "micro" in wanted:
        await micro()
    if "baseline" in wanted:
        docs["baseline"] = await steady(work, "proxy", args.rate, args.duration, "baseline")
        docs["baseline-max"] = await stepped(work, "proxy", rates, args.step, "baseline-max")
    if "steady" in wanted:
        docs["steady"] = await steady(work, "orchestrator", args.rate, args.duration, "steady")
    if "max" in wanted:
        docs["max"] = await stepped(work, "orchestrator", rates, args.step, "max")
    impair_rate = args.impair_rate or args.rate
    suffix = "" if impair_rate == args.rate else f"-{impair_rate:.0f}"
    if "outage" in wanted:
        docs[f"outage{suffix}"] = await impaired(work, impair_rate, f"outage{suffix}", {"outage": True},
                                                 {"outage": False})
    if "brownout" in wanted:
        docs[f"brownout{suffix}"] = await impaired(work, impair_rate, f"brownout{suffix}", {"latency_multiplier": 20},
                                                   {"latency_multiplier": 1})
    if "postgres" in wanted:
        from orchestrator.journal.pgserver import running

        with running() as server:
            docs["max-postgres"] = await stepped(work, "orchestrator", [150.0, 300.0, 450.0, *rates], args.step,
                                                 "max-postgres", server.create_schema())
    if "profile" in wanted:
        bench.report.RESULTS.mkdir(parents=True, exist_ok=True)
        docs["profile-steady"] = await profiled(work, args.rate, "profile-steady")
        top = docs.get("max", {}).get("max_good_rate") or args.rate
        docs["profile-max"] = await profiled(work, top, "profile-max")
    if args.soak:
        docs["soak"] = await steady(work, "orchestrator", args.soak_rate or args.rate, args.soak_seconds, "soak")
    text = report(docs)
    (bench.report.RESULTS / "summary.md").write_text(text)
    print(text)
    print(f"bench finished in {time.monotonic() - t0:.0f} s; results in {bench.report.RESULTS}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="micro,baseline,steady,max,outage,brownout,postgres,profile")
    p.add_argument("--rate", type=float, default=1200)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--step", type=float, default=10, help="seconds per step of the max search")
    p.add_argument("--impair-rate", type=float, default=0,
                   help="rate of the outage and brownout scenarios (0: --rate)")
    p.add_argument("--loadgens", type=int, default=1, help="load generator processes sharing each rate")
    p.add_argument("--workers", type=int, default=bench.stack.WORKERS, help="orchestrator worker processes (server.workers)")
    p.add_argument("--max-rates", default=MAX_RATES)
    p.add_argument("--soak", action="store_true", help="also a 10-minute steady run for memory")
    p.add_argument("--soak-rate", type=float, default=0, help="rate of the soak (0: --rate)")
    p.add_argument("--soak-seconds", type=float, default=600, help="length of the soak")
    p.add_argument("--risk-model", choices=("on", "off"), default="on",
                   help="score every recharge with the example config's risk model (observing), or not")
    p.add_argument("--results", type=Path, default=bench.report.RESULTS, help="where the JSON, charts and summary go")
    args = p.parse_args(argv)
    bench.report.RESULTS = args.results.resolve()
    bench.scenarios.LOADGENS = args.loadgens
    bench.stack.WORKERS = args.workers
    bench.stack.RISK_MODEL = args.risk_model == "on"
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
