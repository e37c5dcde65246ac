"""The scenarios of `make bench`, each on a fresh Stack: its load, its impairments, and
the document it saves under --results."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import bench.report
import bench.stack
from bench.load import load, summarize, timeline
from bench.report import cpu_medians, save, write_json
from bench.sampler import process_tree
from bench.stack import BUSIEST, Stack
from orchestrator.launch import ROOT

LOADGENS = 1  # load generator processes per load (--loadgens)


async def micro() -> None:
    """Routing decision (SPEC: p99 < 50 us), risk + pricing (p99 < 200 us) and the risk
    model's serving cost and memory (p99 < 1 ms), each in its own process, before any load."""
    bench.report.RESULTS.mkdir(parents=True, exist_ok=True)
    for module, out, extra in (("bench.routing_sim", "routing_sim.md", ["--quick"]),
                               ("bench.pricing_risk_bench", "pricing_risk.json", []),
                               ("bench.risk_serving_bench", "risk_serving.json", ["--quick"])):
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, *extra, "--out",
                                                    str(bench.report.RESULTS / out), cwd=ROOT)
        if await proc.wait() != 0:
            raise SystemExit(f"{module} failed")


async def steady(work: Path, target: str, rate: float, duration: float, name: str,
                 db_url: str | None = None) -> dict[str, Any]:
    async with Stack(work / name, target, db_url) as stack:
        result = await load(stack, rate, duration, name, LOADGENS)
    doc = {"scenario": name, "target": target, "title": f"{rate:.0f}/s for {duration:.0f}s",
           "summary": summarize(result, since=2.0), "errors": result["errors"],
           "send_lag_max_ms": result["send_lag_max_ms"], "timeline": timeline(result),
           "resources": result["resources"], "cpu_median": cpu_medians(result["resources"])}
    save(name, doc)
    return doc


async def stepped(work: Path, target: str, rates: list[float], step_s: float, name: str,
                  db_url: str | None = None) -> dict[str, Any]:
    steps = []
    last_good = None
    async with Stack(work / name, target, db_url) as stack:
        for rate in rates:
            # A bad step is run once more before it ends the search: one can be this
            # shared machine's noise (docs/performance.md#max-search-noise).
            for tries in (1, 2):
                result = await load(stack, rate, step_s, f"{name}-{int(rate)}-{tries}", LOADGENS)
                summ = summarize(result, since=1.0)
                good = summ["errors"] == 0 and (summ["latency_ms"]["p99"] or 1e9) < 100 and \
                    summ["achieved_rate"] >= 0.97 * rate
                steps.append({"rate": rate, "try": tries, "good": good, **summ,
                              "send_lag_max_ms": result["send_lag_max_ms"],
                              "cpu_median": cpu_medians(result["resources"]), "resources": result["resources"]})
                if good:
                    break
            if not good:
                break
            last_good = rate
    doc = {"scenario": name, "target": target,
           "title": "rate stepped up until p99 > 100 ms, errors or a missed rate (twice at one rate)",
           "max_good_rate": last_good, "steps": steps, "timeline": [],
           # Every rate passed: the true max is at least the last one (``--max-rates``).
           "search_topped": bool(rates) and last_good == rates[-1]}
    write_json(name, doc)
    return doc


async def impaired(work: Path, rate: float, name: str, changes: dict[str, Any], restore: dict[str, Any]) -> dict[str, Any]:
    async with Stack(work / name, "orchestrator") as stack:
        task = asyncio.create_task(load(stack, rate, 60.0, name, LOADGENS))
        await asyncio.sleep(20.2)
        await stack.behave(BUSIEST, **changes)
        await asyncio.sleep(20.0)
        await stack.behave(BUSIEST, **restore)
        result = await task
    window = (20.0, 40.0)
    doc = {"scenario": name, "target": "orchestrator", "title": f"{rate:.0f}/s; {BUSIEST} {changes} from 20 s to 40 s",
           "summary": summarize(result, since=2.0), "in_window": summarize(result, *window),
           "errors": result["errors"], "timeline": timeline(result), "resources": result["resources"],
           "cpu_median": cpu_medians(result["resources"])}
    save(name, doc, window)
    return doc


async def profiled(work: Path, rate: float, name: str, seconds: float = 20.0) -> dict[str, Any]:
    """py-spy (``--gil``: samples of the thread holding the GIL, so CPU, not waiting) on
    every orchestrator process under ``rate`` for ``seconds``, in a run of its own: a
    sampled process runs slower, so no measured scenario is profiled."""
    from bench.profile import summarize_profiles

    async with Stack(work / name, "orchestrator") as stack:
        task = asyncio.create_task(load(stack, rate, seconds + 8, name, LOADGENS))
        await asyncio.sleep(4)
        assert stack.server is not None and stack.server.pid is not None
        outs: list[tuple[str, Path]] = []
        spies = []
        for proc in process_tree(stack.server.pid):
            cmd = proc.cmdline()
            if "_sqlite_writer" in " ".join(cmd):
                role = "journal-writer"
            elif "_worker" in cmd:
                role = f"worker{cmd[cmd.index('--index') + 1]}"
            elif bench.stack.WORKERS > 1:
                continue  # the supervisor: nothing per request
            else:
                role = "orchestrator"
            out = bench.report.RESULTS / f"{name}-{role}.txt"
            outs.append((role, out))
            spies.append(await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid), "--duration",
                str(int(seconds)), "--rate", "100", "--gil", "--format", "raw", "--output", str(out),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
        await asyncio.gather(*(p.wait() for p in spies))
        result = await task
    text = summarize_profiles(outs, f"{name}: {rate:.0f}/s, py-spy --gil at 100 Hz for {seconds:.0f} s")
    (bench.report.RESULTS / f"{name}.md").write_text(text)
    summary = summarize(result, since=2.0)
    return {"scenario": name, "target": "orchestrator", "title": f"profile at {rate:.0f}/s", "summary": summary,
            "profiles": [str(o.name) for _, o in outs]}

