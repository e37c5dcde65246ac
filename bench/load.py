"""One load run against a Stack: `bench.loadgen` processes driven and sampled, their
documents combined, and the run summarised over a window and per second."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from typing import Any

import orjson

from bench.hist import merge, percentiles_ms
from bench.sampler import Sampler
from bench.stack import TOKEN, Stack
from orchestrator.launch import ROOT


async def load(stack: Stack, rate: float, duration: float, tag: str, processes: int = 1) -> dict[str, Any]:
    """Run the load generator (``processes`` of them, sharing the rate) in processes of
    their own; sample every taking-part process's CPU and RSS once a second."""
    assert stack.server is not None
    procs = []
    outs = []
    for i in range(processes):
        out = stack.work / f"load-{tag}-{i}.json"
        outs.append(out)
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.loadgen", "--url", stack.server.url + "/v1/recharges",
            "--rate", str(rate / processes), "--duration", str(duration),
            "--key-prefix", f"{tag}-{i}-{time.time_ns()}", "--token", TOKEN, "--out", str(out), cwd=ROOT))
    sampler = Sampler(stack, [p.pid for p in procs])
    while any(p.returncode is None for p in procs):
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 1.0)
        except TimeoutError:
            pass
        sampler.sample()
    parts = [orjson.loads(out.read_bytes()) for out in outs]
    result = combine(parts)
    result["resources"] = sampler.samples
    return result


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several load generators' documents as one: per-second entries side by side (their
    histograms merged when read)."""
    seconds: dict[int, dict[str, Any]] = {}
    for part in parts:
        for sec in part["seconds"]:
            into = seconds.setdefault(sec["t"], {"t": sec["t"], "sent": 0, "statuses": Counter(),
                                                 "outcomes": Counter(), "channels": Counter(),
                                                 "latency": [], "added": []})
            into["sent"] += sec["sent"]
            for key in ("statuses", "outcomes", "channels"):
                into[key].update(sec[key])
            into["latency"].append(sec["latency"])
            into["added"].append(sec["added"])
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    return {"rate": sum(p["rate"] for p in parts), "duration": parts[0]["duration"],
            "sent": sum(p["sent"] for p in parts), "errors": dict(errors),
            "send_lag_max_ms": max(p["send_lag_max_ms"] for p in parts),
            "seconds": [seconds[t] for t in sorted(seconds)]}


def _encoded(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def summarize(result: dict[str, Any], since: float = 0.0, until: float | None = None) -> dict[str, Any]:
    """Totals and percentiles over the seconds in [since, until)."""
    secs = [s for s in result["seconds"] if s["t"] >= since and (until is None or s["t"] < until)]
    statuses: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    for s in secs:
        statuses.update(s["statuses"])
        outcomes.update(s["outcomes"])
        channels.update(s["channels"])
    sent = sum(s["sent"] for s in secs)
    answered = statuses.get("201", 0) + statuses.get("202", 0)
    succeeded = outcomes.get("succeeded", 0)
    span = (until if until is not None else result["duration"]) - since
    routed = sum(channels.values())
    return {
        "sent": sent, "answered": answered, "succeeded": succeeded, "errors": sent - answered,
        "error_kinds": {k if not k.isdigit() else f"http_{k}": n for k, n in statuses.items()
                        if k not in ("201", "202")},
        "outcomes": dict(outcomes),
        "achieved_rate": round(answered / span, 1) if span > 0 else None,
        "success_ratio": round(succeeded / sent, 5) if sent else None,
        "latency_ms": percentiles_ms(merge(e for s in secs for e in _encoded(s["latency"]))),
        "added_latency_ms": percentiles_ms(merge(e for s in secs for e in _encoded(s["added"]))),
        "channel_share": {ch: round(n / max(1, routed), 4) for ch, n in channels.most_common()},
    }


def timeline(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s in result["seconds"]:
        lat = percentiles_ms(merge(_encoded(s["latency"])))
        routed = sum(s["channels"].values())
        out.append({"t": s["t"], "sent": s["sent"], "succeeded": s["outcomes"].get("succeeded", 0),
                    "p50": lat["p50"], "p99": lat["p99"],
                    "share": {ch: round(n / max(1, routed), 3) for ch, n in s["channels"].items()}})
    return out
