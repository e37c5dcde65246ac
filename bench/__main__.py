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
  outage    600/s (--impair-rate); the busiest channel goes down at 20 s, back at 40 s
  brownout  600/s; the busiest channel's latency x20 from 20 s to 40 s
  postgres  the max search again with the journal on PostgreSQL (a throwaway server)
  soak      (only with --soak) steady for 10 minutes: RSS at start and end

Writes bench/results/<scenario>.json and .png, and bench/results/summary.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import yaml

from orchestrator.launch import ROOT, Child, free_port

RESULTS = ROOT / "bench" / "results"
TOKEN = "bench-front-key"
CHANNEL_MS = 28.0


def sim_doc() -> dict[str, Any]:
    direct = {"latency_ms": CHANNEL_MS, "latency_jitter_ms": 2, "ping_latency_ms": 1}
    return {"seed": 11, "channels": [
        {"name": "alipay_direct", "kind": "direct_api", "webhook_secret": "whsec_bench_alipay", "behaviour": direct},
        {"name": "wechat_direct", "kind": "direct_api", "webhook_secret": "whsec_bench_wechat",
         "behaviour": {**direct, "latency_ms": CHANNEL_MS + 4}},
        {"name": "usdt_settle", "kind": "digital_currency", "webhook_secret": "whsec_bench_usdt",
         "behaviour": {"latency_ms": 1200, "latency_jitter_ms": 100, "ping_latency_ms": 5, "pending_rate": 0}},
        {"name": "unionpay_bank", "kind": "bank", "webhook_secret": "whsec_bench_unionpay",
         "behaviour": {"latency_ms": 4800, "latency_jitter_ms": 300, "ping_latency_ms": 10, "pending_rate": 0}},
    ]}


def orch_doc(sim_url: str, db: Path, port: int) -> dict[str, Any]:
    channels = []
    for ch, timeout in (("alipay_direct", 2000), ("wechat_direct", 2000), ("usdt_settle", 4000),
                        ("unionpay_bank", 8000)):
        kind = "direct_api" if "direct" in ch else ("bank" if "bank" in ch else "digital_currency")
        channels.append({"name": ch, "kind": kind, "base_url": f"{sim_url}/{ch}", "webhook_secret": f"whsec_bench_{ch}",
                         "currencies": ["CNY"], "countries": ["CN"], "methods": ["ewallet"], "timeout_ms": timeout})
    return {
        "server": {"host": "127.0.0.1", "port": port, "sync_wait_s": 10},
        "storage": {"url": f"sqlite:///{db}"},
        "clients": [{"name": "bench", "key_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "scopes": ["recharge"]}],
        "channels": channels,
        "routing": {"deadline_s": 15},
        "health": {"probe_interval_s": 2},
        "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404}},
    }


class Stack:
    """Simulator + orchestrator (or the baseline proxy), fresh, in a work dir; the
    orchestrator on SQLite, or on PostgreSQL when ``db_url`` is given."""

    def __init__(self, work: Path, target: str, db_url: str | None = None) -> None:
        self.work = work
        self.target = target
        self.db_url = db_url
        self.sim: Child | None = None
        self.server: Child | None = None

    async def __aenter__(self) -> Stack:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        sim_port = free_port()
        (self.work / "sim.yaml").write_text(yaml.safe_dump(sim_doc()))
        self.sim = Child("simulator", ["orchestrator", "simulate", "--config", str(self.work / "sim.yaml"),
                                       "--port", str(sim_port)], self.work / "sim.log",
                         f"http://127.0.0.1:{sim_port}", "/_sim/stats").start()
        await self.sim.wait_ready()
        port = free_port()
        if self.target == "proxy":
            self.server = Child("proxy", ["bench.proxy", "--upstream", f"{self.sim.url}/alipay_direct",
                                          "--port", str(port)], self.work / "proxy.log",
                                f"http://127.0.0.1:{port}", "/healthz").start()
        else:
            cfg = self.work / "orch.yaml"
            doc = orch_doc(self.sim.url, self.work / "orch.db", port)
            if self.db_url:
                doc["storage"]["url"] = self.db_url
            cfg.write_text(yaml.safe_dump(doc))
            self.server = Child("orchestrator", ["orchestrator", "serve", "--config", str(cfg), "--log-level",
                                                 "warning"], self.work / "orch.log",
                                f"http://127.0.0.1:{port}", "/readyz").start()
        await self.server.wait_ready()
        await asyncio.sleep(2.5)  # a probe round, so routing starts from measured channels
        return self

    async def __aexit__(self, *exc: object) -> None:
        for child in (self.server, self.sim):
            if child is not None:
                child.stop()

    async def behave(self, channel: str, **changes: Any) -> None:
        assert self.sim is not None
        async with aiohttp.ClientSession() as s, s.put(f"{self.sim.url}/_sim/{channel}/behaviour", json=changes) as r:
            r.raise_for_status()


async def load(stack: Stack, rate: float, duration: float, tag: str) -> dict[str, Any]:
    """Run the load generator in its own process; sample the server's CPU and RSS."""
    assert stack.server is not None and stack.server.pid is not None
    out = stack.work / f"load-{tag}.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "--url", stack.server.url + "/v1/recharges", "--rate", str(rate),
        "--duration", str(duration), "--key-prefix", f"{tag}-{time.time_ns()}", "--token", TOKEN, "--out", str(out),
        cwd=ROOT)
    server = psutil.Process(stack.server.pid)
    server.cpu_percent()
    samples = []
    t0 = time.monotonic()
    while proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), 1.0)
        except TimeoutError:
            pass
        try:
            samples.append({"t": round(time.monotonic() - t0, 1), "cpu_percent": server.cpu_percent(),
                            "rss_mb": round(server.memory_info().rss / 2**20, 1)})
        except psutil.NoSuchProcess:
            break
    result = orjson.loads(out.read_bytes())
    result["resources"] = samples
    return result


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def summarize(result: dict[str, Any], since: float = 0.0, until: float | None = None) -> dict[str, Any]:
    recs = [r for r in result["records"] if r[0] >= since and (until is None or r[0] < until)]
    ok = [r for r in recs if r[2] in (200, 201)]
    lat = [r[1] for r in ok]
    added = [r[1] - r[4] for r in ok if r[4] is not None]
    span = (until if until is not None else result["duration"]) - since
    return {
        "sent": len(recs), "ok": len(ok), "errors": len(recs) - len(ok),
        "achieved_rate": round(len(ok) / span, 1) if span > 0 else None,
        "latency_ms": {q: pct(lat, v) for q, v in (("p50", .5), ("p90", .9), ("p99", .99), ("p99.9", .999))},
        "added_latency_ms": {q: pct(added, v) for q, v in (("p50", .5), ("p90", .9), ("p99", .99), ("p99.9", .999))},
        "channel_share": {ch: round(n / max(1, len(ok)), 4) for ch, n in Counter(r[3] for r in ok).items()},
    }


def timeline(result: dict[str, Any]) -> list[dict[str, Any]]:
    by_s: dict[int, list[Any]] = defaultdict(list)
    for r in result["records"]:
        by_s[int(r[0])].append(r)
    out = []
    for s in sorted(by_s):
        recs = by_s[s]
        ok = [r for r in recs if r[2] in (200, 201)]
        lat = [r[1] for r in ok]
        out.append({"t": s, "sent": len(recs), "ok": len(ok), "p50": pct(lat, .5), "p99": pct(lat, .99),
                    "share": {ch: round(n / max(1, len(ok)), 3) for ch, n in Counter(r[3] for r in ok).items()}})
    return out


def chart(name: str, doc: dict[str, Any], window: tuple[float, float] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = doc["timeline"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ts = [p["t"] for p in tl]
    ax1.plot(ts, [p["p50"] for p in tl], label="p50")
    ax1.plot(ts, [p["p99"] for p in tl], label="p99")
    ax1.set_ylabel("end-to-end latency, ms")
    ax1.set_yscale("log")
    ax1.legend()
    channels = sorted({ch for p in tl for ch in p["share"] if ch})
    bottom = [0.0] * len(tl)
    for ch in channels:
        vals = [p["share"].get(ch, 0) for p in tl]
        ax2.bar(ts, vals, bottom=bottom, label=ch, width=1.0)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_ylabel("share of recharges")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="lower left", fontsize=8)
    for ax in (ax1, ax2):
        if window:
            ax.axvspan(*window, color="red", alpha=0.1)
    fig.suptitle(f"{name}: {doc.get('title', '')}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=90)
    plt.close(fig)


def save(name: str, doc: dict[str, Any], window: tuple[float, float] | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    chart(name, doc, window)


# -- scenarios ------------------------------------------------------------------------------


async def steady(work: Path, target: str, rate: float, duration: float, name: str,
                 db_url: str | None = None) -> dict[str, Any]:
    async with Stack(work / name, target, db_url) as stack:
        result = await load(stack, rate, duration, name)
    doc = {"scenario": name, "target": target, "title": f"{rate:.0f}/s for {duration:.0f}s",
           "summary": summarize(result, since=2.0), "errors": result["errors"],
           "send_lag_max_ms": result["send_lag_max_ms"], "timeline": timeline(result),
           "resources": result["resources"]}
    save(name, doc)
    return doc


async def stepped(work: Path, target: str, rates: list[float], step_s: float, name: str,
                  db_url: str | None = None) -> dict[str, Any]:
    steps = []
    last_good = None
    async with Stack(work / name, target, db_url) as stack:
        for rate in rates:
            # A bad step is run once more before it ends the search: one can be this
            # shared machine's noise (a p99 of 101 ms at 1,200/s between clean steps).
            for tries in (1, 2):
                result = await load(stack, rate, step_s, f"{name}-{int(rate)}-{tries}")
                summ = summarize(result, since=1.0)
                good = summ["errors"] == 0 and (summ["latency_ms"]["p99"] or 1e9) < 100 and \
                    summ["achieved_rate"] >= 0.97 * rate
                steps.append({"rate": rate, "try": tries, "good": good, **summ, "cpu": result["resources"]})
                if good:
                    break
            if not good:
                break
            last_good = rate
    doc = {"scenario": name, "target": target,
           "title": "rate stepped up until p99 > 100 ms, errors or a missed rate (twice at one rate)",
           "max_good_rate": last_good, "steps": steps, "timeline": []}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return doc


async def impaired(work: Path, rate: float, name: str, changes: dict[str, Any], restore: dict[str, Any]) -> dict[str, Any]:
    async with Stack(work / name, "orchestrator") as stack:
        task = asyncio.create_task(load(stack, rate, 60.0, name))
        await asyncio.sleep(20.2)
        await stack.behave("alipay_direct", **changes)
        await asyncio.sleep(20.0)
        await stack.behave("alipay_direct", **restore)
        result = await task
    window = (20.0, 40.0)
    doc = {"scenario": name, "target": "orchestrator", "title": f"alipay_direct {changes} from 20 s to 40 s",
           "summary": summarize(result, since=2.0), "in_window": summarize(result, *window),
           "errors": result["errors"], "timeline": timeline(result), "resources": result["resources"]}
    recs = [r for r in result["records"] if window[0] <= r[0] < window[1]]
    doc["in_window"]["success_ratio"] = round(sum(r[2] in (200, 201) for r in recs) / max(1, len(recs)), 5)
    save(name, doc, window)
    return doc


def report(docs: dict[str, dict[str, Any]]) -> str:
    lines = ["# Benchmark results", "",
             f"Machine: {psutil.cpu_count()} cores, {round(psutil.virtual_memory().total / 2**30)} GiB; "
             f"Python {sys.version.split()[0]}; channel latency {CHANNEL_MS:.0f} ms (simulator).", "",
             "| scenario | target | rate/s sent | ok | p50 ms | p99 ms | p99 added ms | notes |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, d in docs.items():
        if "summary" in d:
            s = d["summary"]
            note = ""
            if "in_window" in d:
                note = f"success in window {d['in_window']['success_ratio']:.2%}"
            if d.get("resources"):
                rss = [r["rss_mb"] for r in d["resources"]]
                note += f" RSS {rss[0]}->{rss[-1]} MB, CPU med {statistics.median(r['cpu_percent'] for r in d['resources']):.0f}%"
            lines.append(f"| {name} | {d['target']} | {s['achieved_rate']} | {s['ok']}/{s['sent']} | "
                         f"{s['latency_ms']['p50']} | {s['latency_ms']['p99']} | {s['added_latency_ms']['p99']} | {note} |")
        else:
            lines.append(f"| {name} | {d['target']} | max good {d['max_good_rate']} | | | | | "
                         + ", ".join(f"{st['rate']:.0f}/s p99 {st['latency_ms']['p99']}" for st in d["steps"]) + " |")
    base, mx, pg = docs.get("baseline-max"), docs.get("max"), docs.get("max-postgres")
    if base and mx and base.get("max_good_rate") and mx.get("max_good_rate"):
        lines += ["", f"Max sustainable throughput: orchestrator on SQLite {mx['max_good_rate']:.0f}/s, bare proxy "
                  f"{base['max_good_rate']:.0f}/s, ratio {mx['max_good_rate'] / base['max_good_rate']:.2f}."]
    if pg and mx:
        lines += [f"On PostgreSQL: {pg.get('max_good_rate')}/s (SQLite {mx.get('max_good_rate')}/s)."]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    work = ROOT / "data" / "bench"
    docs: dict[str, dict[str, Any]] = {}
    wanted = args.scenarios.split(",")
    rates = [float(r) for r in args.max_rates.split(",")]
    t0 = time.monotonic()
    if "micro" in wanted:
        # Routing decision (SPEC: p99 < 50 us) and risk + pricing (p99 < 200 us), each
        # in its own process, before any load.
        RESULTS.mkdir(parents=True, exist_ok=True)
        for module, out in (("bench.routing_sim", "routing_sim.md"), ("bench.pricing_risk_bench", "pricing_risk.json")):
            extra = ["--quick"] if module == "bench.routing_sim" else []
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, *extra, "--out",
                                                        str(RESULTS / out), cwd=ROOT)
            if await proc.wait() != 0:
                raise SystemExit(f"{module} failed")
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
    if args.soak:
        docs["soak"] = await steady(work, "orchestrator", args.soak_rate or args.rate, args.soak_seconds, "soak")
    text = report(docs)
    (RESULTS / "summary.md").write_text(text)
    print(text)
    print(f"bench finished in {time.monotonic() - t0:.0f} s; results in {RESULTS}")
    return 0


def main(argv: list[str] | None = None) -> int:
    global RESULTS
    p = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="micro,baseline,steady,max,outage,brownout,postgres")
    p.add_argument("--rate", type=float, default=1200)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--step", type=float, default=10, help="seconds per step of the max search")
    p.add_argument("--impair-rate", type=float, default=600,
                   help="rate of the outage and brownout scenarios (0: --rate)")
    p.add_argument("--max-rates", default="500,600,700,800,900,1000,1100,1200,1500,1800,2100,2400,2700,3000")
    p.add_argument("--soak", action="store_true", help="also a 10-minute steady run for memory")
    p.add_argument("--soak-rate", type=float, default=0, help="rate of the soak (0: --rate)")
    p.add_argument("--soak-seconds", type=float, default=600, help="length of the soak")
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON, charts and summary go")
    args = p.parse_args(argv)
    RESULTS = args.results.resolve()
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
