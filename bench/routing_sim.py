"""Routing simulator: the real ``routing`` + ``health`` code in virtual time.

    python bench/routing_sim.py [--quick] [--out bench/results/routing_sim.md]

Seven simulated channels like the product's (direct APIs ~28 ms, digital-currency
settlement ~1.2 s, banks ~4.8 s, each with its own fee) serve a Poisson stream of
recharges. Their latency and success rate change over time by scenario. Each policy
sees the same arrivals; every transaction tries its candidates in order with failover
(at most 3 attempts, 15 s deadline), as the orchestrator does. A failed attempt costs
its latency: the full timeout when the channel hangs. Traffic starts after a 4 s
probe-only warm-up (every channel probed at least once, as at start-up).

Nothing sleeps and nothing touches the network: an event heap orders arrivals, attempt
completions (fed back into ``HealthRegistry`` when they complete, not when they start,
so detection delays are real) and probes; the injected clock is the heap's time.

Policies:
- ``smart``    the product's default: ``decide`` with strategy ``smart`` over snapshots
               rebuilt from ``HealthRegistry.states()`` every 20 ms and on every change.
- ``priority`` ``decide`` with strategy ``priority`` (config order), same health/breakers.
- ``round_robin`` the eligible channels (same filters), rotated by one per transaction.
- ``oracle``   knows each channel's true current success rate, latency and outages
               and ranks by the same scoring weights as ``smart``, with no exploration
               and no breakers: the best any policy with ``smart``'s objective could do.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import sys
import time
from array import array
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from channels._protocol import AttemptOutcome
from health import HealthRegistry
from routing import (
    ChannelSpec,
    ChannelState,
    RoutingPolicy,
    ScoringWeights,
    Snapshot,
    Transaction,
    decide,
)

RATE_PER_S = 1000.0
SNAPSHOT_REFRESH_S = 0.02
PROBE_INTERVAL_S = 2.0
PROBE_JITTER = 0.1
WARMUP_S = 2 * PROBE_INTERVAL_S  # probes only, as at start-up, before the first recharge
MAX_ATTEMPTS = 3
DEADLINE_MS = 15_000.0
LATENCY_SIGMA = 0.25  # lognormal spread: p99 is ~1.8x the median
SEED = 20240601
BEST = "alipay_direct"

CAPTURED = AttemptOutcome.CAPTURED
NOT_PROCESSED = AttemptOutcome.NOT_PROCESSED
UNKNOWN = AttemptOutcome.UNKNOWN


@dataclass(frozen=True, slots=True)
class SimChannel:
    spec: ChannelSpec
    latency_ms: float  # median when healthy
    success: float  # probability the channel works when healthy


def _spec(name: str, kind: str, currencies: set[str], countries: set[str], *, fee_fixed: int,
          fee_percent: float, timeout_ms: int) -> ChannelSpec:
    return ChannelSpec(name=name, kind=kind, currencies=frozenset(currencies),
                       countries=frozenset(countries), methods=frozenset({"ewallet"}),
                       min_amount_minor=500, max_amount_minor=5_000_000,
                       fee_fixed_minor=fee_fixed, fee_percent=fee_percent, timeout_ms=timeout_ms)


CHANNELS: tuple[SimChannel, ...] = (
    SimChannel(_spec("alipay_direct", "direct_api", {"CNY"}, {"CN"}, fee_fixed=0, fee_percent=0.6,
                     timeout_ms=2000), 28.0, 0.997),
    SimChannel(_spec("wechat_direct", "direct_api", {"CNY"}, {"CN"}, fee_fixed=0, fee_percent=0.6,
                     timeout_ms=2000), 36.0, 0.996),
    SimChannel(_spec("gcash_direct", "direct_api", {"PHP"}, {"PH"}, fee_fixed=0, fee_percent=1.5,
                     timeout_ms=2000), 30.0, 0.996),
    SimChannel(_spec("usdt_settle", "digital_currency", {"CNY", "PHP"}, {"CN", "PH"}, fee_fixed=0,
                     fee_percent=0.3, timeout_ms=5000), 1200.0, 0.998),
    SimChannel(_spec("ecny_settle", "digital_currency", {"CNY"}, {"CN"}, fee_fixed=0,
                     fee_percent=0.2, timeout_ms=5000), 1200.0, 0.997),
    SimChannel(_spec("unionpay_bank", "bank", {"CNY"}, {"CN"}, fee_fixed=100, fee_percent=0.1,
                     timeout_ms=10000), 4800.0, 0.999),
    SimChannel(_spec("bdo_bank", "bank", {"PHP"}, {"PH"}, fee_fixed=1500, fee_percent=0.0,
                     timeout_ms=10000), 4800.0, 0.999),
)
BY_NAME = {c.spec.name: c for c in CHANNELS}
ORDER = tuple(BY_NAME)

# The recharge mix: 80 % CNY, 20 % PHP, typical denominations (5..2,000 CNY-equivalent).
TXNS: tuple[Transaction, ...] = tuple(
    [Transaction("CNY", "CN", "ewallet", a) for a in (600, 3000, 6800, 9800, 19800, 32800, 64800)] * 4
    + [Transaction("PHP", "PH", "ewallet", a) for a in (5000, 25000, 50000, 100000, 250000, 500000,
                                                        1000000)]
)


# -- scenarios ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Condition:
    """A channel's true state at one moment."""

    latency_factor: float = 1.0
    success: float | None = None  # None: the channel's healthy rate
    down: bool = False  # hangs: every attempt and probe times out


NORMAL = Condition()
DOWN = Condition(down=True)

Scenario = Callable[[float, float], Condition]  # (t, duration) -> the best channel's state


def steady(t: float, d: float) -> Condition:
    return NORMAL


def outage(t: float, d: float) -> Condition:
    return DOWN if 0.3 * d <= t < 0.6 * d else NORMAL


def brownout(t: float, d: float) -> Condition:
    return Condition(latency_factor=20.0) if 0.3 * d <= t < 0.6 * d else NORMAL


def decay(t: float, d: float) -> Condition:
    """Success rate sliding from 99.7 % to 85 % between 20 % and 80 % of the run."""
    start, end = 0.2 * d, 0.8 * d
    frac = min(1.0, max(0.0, (t - start) / (end - start)))
    return Condition(success=0.997 - frac * (0.997 - 0.85))


def recovery(t: float, d: float) -> Condition:
    """Down from the start (so it gets ejected), healthy again from 25 % of the run."""
    return DOWN if t < 0.25 * d else NORMAL


def flapping(t: float, d: float) -> Condition:
    """Between 20 % and 80 % of the run: down 10 s, up 20 s, over and over."""
    if not 0.2 * d <= t < 0.8 * d:
        return NORMAL
    return DOWN if (t - 0.2 * d) % 30.0 < 10.0 else NORMAL


SCENARIOS: dict[str, Scenario] = {
    "steady": steady, "outage": outage, "brownout": brownout,
    "decay": decay, "recovery": recovery, "flapping": flapping,
}
CHANGING = ("outage", "brownout", "decay", "recovery", "flapping")
POLICIES = ("smart", "priority", "round_robin", "oracle")


def condition(scenario: Scenario, name: str, t: float, d: float) -> Condition:
    return scenario(t, d) if name == BEST else NORMAL


def draw_attempt(ch: SimChannel, cond: Condition, rng: random.Random) -> tuple[AttemptOutcome, float]:
    """One attempt's outcome and latency. Failures are half fast rejections (503: not
    processed) and half hangs that cost the whole timeout (unknown)."""
    timeout = float(ch.spec.timeout_ms)
    if cond.down:
        return UNKNOWN, timeout
    latency = ch.latency_ms * cond.latency_factor * math.exp(rng.gauss(0.0, LATENCY_SIGMA))
    success = ch.success if cond.success is None else cond.success
    if rng.random() < success:
        return (CAPTURED, latency) if latency < timeout else (UNKNOWN, timeout)
    return (NOT_PROCESSED, min(latency, timeout)) if rng.random() < 0.5 else (UNKNOWN, timeout)


# -- policies ----------------------------------------------------------------------

class VirtualClock:
    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class SimulatedRouter:
    """A policy with the health machinery it uses (none for the oracle)."""

    def __init__(self, policy: str, scenario: Scenario, duration: float, clock: VirtualClock,
                 rng: random.Random) -> None:
        self.policy = policy
        self.scenario = scenario
        self.duration = duration
        self.clock = clock
        self.rng = rng
        self.weights = ScoringWeights()
        self.registry: HealthRegistry | None = None
        self.rotation = 0
        if policy != "oracle":
            self.registry = HealthRegistry(clock, on_change=self._changed)
            for name in ORDER:
                self.registry.add_channel(name)
            strategy = "priority" if policy in ("priority", "round_robin") else "smart"
            self.snapshot = Snapshot.build([c.spec for c in CHANNELS],
                                           policy=RoutingPolicy(strategy=strategy), version="sim")
        self.dirty = True
        self.next_refresh = 0.0

    def _changed(self, _name: str) -> None:
        self.dirty = True

    def refresh(self) -> None:
        now = self.clock.now
        if self.registry is not None and (self.dirty or now >= self.next_refresh):
            self.snapshot = self.snapshot.with_states(self.registry.states())
            self.dirty = False
            self.next_refresh = now + SNAPSHOT_REFRESH_S

    def order(self, txn: Transaction) -> tuple[str, ...]:
        if self.policy == "oracle":
            return self._oracle(txn)
        candidates = decide(self.snapshot, txn, self.rng).candidates
        if self.policy == "round_robin" and candidates:
            self.rotation += 1
            k = self.rotation % len(candidates)
            candidates = candidates[k:] + candidates[:k]
        return candidates

    def _oracle(self, txn: Transaction) -> tuple[str, ...]:
        w, now, amount = self.weights, self.clock.now, txn.amount_minor
        scored = []
        for ch in CHANNELS:
            spec = ch.spec
            if txn.currency not in spec.currencies or txn.country not in spec.countries:
                continue
            cond = condition(self.scenario, spec.name, now, self.duration)
            if cond.down:
                p, latency = 0.0, float(spec.timeout_ms)
            else:
                p = ch.success if cond.success is None else cond.success
                latency = ch.latency_ms * cond.latency_factor * math.exp(LATENCY_SIGMA ** 2 / 2)
            score = (w.success * p - w.latency * math.log10(latency / w.latency_ref_ms)
                     - w.cost * spec.fee_minor(amount) / amount)
            scored.append((-score, spec.name))
        scored.sort()
        return tuple(name for _, name in scored)


# -- the event loop ----------------------------------------------------------------

@dataclass(slots=True)
class Result:
    scenario: str
    policy: str
    transactions: int
    succeeded: int
    latency_mean_ms: float
    latency_p99_ms: float
    attempts_mean: float
    fee_bps: float
    wall_s: float

    @property
    def success_pct(self) -> float:
        return 100.0 * self.succeeded / self.transactions


_ARRIVAL, _DONE, _PROBE = 0, 1, 2


def simulate(scenario_name: str, policy: str, n: int, seed: int = SEED) -> Result:
    """Run ``n`` transactions of one scenario under one policy."""
    started = time.perf_counter()
    scenario = SCENARIOS[scenario_name]
    duration = n / RATE_PER_S
    clock = VirtualClock(-WARMUP_S)
    arrivals_rng = random.Random(seed)  # same arrivals for every policy
    outcome_rng = random.Random(seed + 1)
    router = SimulatedRouter(policy, scenario, duration, clock, random.Random(seed + 2))
    registry = router.registry
    heap: list[tuple[float, int, int, object]] = []
    seq = 0
    if registry is not None:
        for name in ORDER:
            seq += 1
            first = -WARMUP_S + arrivals_rng.uniform(0, PROBE_INTERVAL_S)
            heapq.heappush(heap, (first, seq, _PROBE, name))

    latencies = array("d")
    succeeded = attempts_total = 0
    fee_sum = amount_sum = 0.0
    arrived = 0
    next_arrival = 0.0

    def start_next(txn_state: list, now: float) -> bool:
        """Start the transaction's next attempt; False when none is left."""
        nonlocal seq, attempts_total
        candidates = txn_state[2]
        while txn_state[3] < len(candidates) and txn_state[4] < MAX_ATTEMPTS:
            name = candidates[txn_state[3]]
            txn_state[3] += 1
            ticket = None
            if registry is not None:
                ticket = registry.begin_attempt(name)
                if ticket is None:
                    continue  # refused at send time (e.g. half-open trials all out)
            ch = BY_NAME[name]
            outcome, latency = draw_attempt(ch, condition(scenario, name, now, duration), outcome_rng)
            txn_state[4] += 1
            attempts_total += 1
            seq += 1
            heapq.heappush(heap, (now + latency / 1000.0, seq, _DONE,
                                  (txn_state, name, ticket, outcome, latency)))
            return True
        return False

    def finish(txn_state: list, now: float, ok: bool, fee: float) -> None:
        nonlocal succeeded, fee_sum, amount_sum
        latencies.append((now - txn_state[0]) * 1000.0)
        if ok:
            succeeded += 1
            fee_sum += fee
            amount_sum += txn_state[1].amount_minor

    while arrived < n or heap:
        if arrived < n and (not heap or next_arrival <= heap[0][0]):
            now = clock.now = next_arrival
            router.refresh()
            txn = TXNS[arrivals_rng.randrange(len(TXNS))]
            state = [now, txn, router.order(txn), 0, 0]
            if not start_next(state, now):
                finish(state, now, False, 0.0)
            arrived += 1
            next_arrival += arrivals_rng.expovariate(RATE_PER_S)
            continue
        t, _, kind, payload = heapq.heappop(heap)
        now = clock.now = t
        if kind == _PROBE:
            if arrived < n:
                _probe(registry, payload, scenario, now, duration, outcome_rng)
                seq += 1
                delay = PROBE_INTERVAL_S * (1 + outcome_rng.uniform(-PROBE_JITTER, PROBE_JITTER))
                heapq.heappush(heap, (now + delay, seq, _PROBE, payload))
            continue
        txn_state, name, ticket, outcome, latency = payload
        if ticket is not None:
            registry.end_attempt(ticket, outcome, latency)
        if outcome is CAPTURED:
            finish(txn_state, now, True, BY_NAME[name].spec.fee_minor(txn_state[1].amount_minor))
        elif (now - txn_state[0]) * 1000.0 >= DEADLINE_MS or not start_next(txn_state, now):
            finish(txn_state, now, False, 0.0)

    ordered = sorted(latencies)
    return Result(
        scenario=scenario_name, policy=policy, transactions=n, succeeded=succeeded,
        latency_mean_ms=sum(ordered) / len(ordered),
        latency_p99_ms=ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
        attempts_mean=attempts_total / n,
        fee_bps=10_000.0 * fee_sum / amount_sum if amount_sum else 0.0,
        wall_s=time.perf_counter() - started,
    )


def _probe(registry: HealthRegistry | None, name: str, scenario: Scenario, now: float,
           duration: float, rng: random.Random) -> None:
    """A ping travels the channel's path: it hangs when the channel is down and is as
    slow as the channel's payments otherwise (so a brownout shows in probes too)."""
    if registry is None:
        return
    ch = BY_NAME[name]
    cond = condition(scenario, name, now, duration)
    if cond.down:
        registry.record_probe(name, False, float(ch.spec.timeout_ms))
        return
    latency = ch.latency_ms * cond.latency_factor * math.exp(rng.gauss(0.0, LATENCY_SIGMA))
    registry.record_probe(name, True, latency)


# -- microbenchmark ----------------------------------------------------------------

def bench_decide(iterations: int = 50_000) -> dict[str, tuple[float, float]]:
    """decide() p50/p99 in microseconds over 8 eligible channels, per strategy."""
    specs = [ChannelSpec(f"ch{i}", ("direct_api", "digital_currency", "bank")[i % 3],
                         frozenset({"CNY"}), frozenset({"CN"}), frozenset({"ewallet"}),
                         min_amount_minor=100, max_amount_minor=10_000_000,
                         fee_fixed_minor=10 * i, fee_percent=0.2 + 0.1 * i, weight=1.0 + i / 10)
             for i in range(8)]
    states = {s.name: ChannelState(latency_ewma_ms=(28.0, 1200.0, 4800.0)[i % 3] * (1 + i / 20),
                                   latency_p99_ms=(60.0, 2400.0, 9000.0)[i % 3],
                                   successes=5000.0 / (i + 1), failures=5.0 + i, in_flight=i)
              for i, s in enumerate(specs)}
    txn = Transaction("CNY", "CN", "ewallet", 8500)
    rng = random.Random(7)
    out = {}
    for strategy in ("smart", "priority", "weighted", "cheapest"):
        snap = Snapshot.build(specs, states, RoutingPolicy(strategy=strategy), "bench")
        for _ in range(2000):  # warm up (memo, caches)
            decide(snap, txn, rng)
        samples = array("d")
        clock = time.perf_counter_ns
        for _ in range(iterations):
            t0 = clock()
            decide(snap, txn, rng)
            samples.append((clock() - t0) / 1000.0)
        ordered = sorted(samples)
        out[strategy] = (ordered[len(ordered) // 2], ordered[int(0.99 * len(ordered))])
    return out


# -- reporting ---------------------------------------------------------------------

def _run_scenario(args: tuple[str, int]) -> list[Result]:
    scenario, n = args
    return [simulate(scenario, policy, n) for policy in POLICIES]


def check_goals(results: dict[str, dict[str, Result]]) -> list[tuple[str, str, bool]]:
    """(scenario, goal, held) for: smart within 0.5 pp of the oracle's success rate and
    within 10 % of its mean latency everywhere; ahead of priority and round-robin
    (not worse by more than 0.05 pp in success, and faster on average) where things change."""
    checks = []
    for scenario, by_policy in results.items():
        smart, oracle = by_policy["smart"], by_policy["oracle"]
        checks.append((scenario, "success within 0.5 pp of oracle",
                       smart.success_pct >= oracle.success_pct - 0.5))
        checks.append((scenario, "mean latency within 10 % of oracle",
                       smart.latency_mean_ms <= 1.10 * oracle.latency_mean_ms))
        if scenario in CHANGING:
            for other in ("priority", "round_robin"):
                o = by_policy[other]
                ahead = (smart.success_pct >= o.success_pct - 0.05
                         and smart.latency_mean_ms < o.latency_mean_ms)
                checks.append((scenario, f"ahead of {other}", ahead))
    return checks


def render(results: dict[str, dict[str, Result]], timing: dict[str, tuple[float, float]],
           n: int, wall_s: float) -> str:
    lines = [
        "# Routing simulation",
        "",
        (f"{n:,} transactions per scenario and policy at {RATE_PER_S:.0f}/s of virtual time "
         f"({n / RATE_PER_S:.0f} s); 7 channels; failover up to {MAX_ATTEMPTS} attempts; "
         f"seed {SEED}. Latency is the sum of a transaction's attempts (a hang costs the "
         f"channel's timeout). Fee is in basis points of the amount of succeeded recharges. "
         f"Wall time {wall_s:.1f} s."),
        "",
        "| scenario | policy | success % | mean latency ms | p99 latency ms | attempts/txn | fee bps |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, by_policy in results.items():
        for policy in POLICIES:
            r = by_policy[policy]
            lines.append(f"| {scenario} | {policy} | {r.success_pct:.3f} | {r.latency_mean_ms:.1f} | "
                         f"{r.latency_p99_ms:.0f} | {r.attempts_mean:.3f} | {r.fee_bps:.1f} |")
    lines += ["", "## Goals", "", "| scenario | goal | held |", "| --- | --- | --- |"]
    lines += [f"| {s} | {g} | {'yes' if ok else 'NO'} |" for s, g, ok in check_goals(results)]
    lines += ["", "## decide() microbenchmark (8 eligible channels)", "",
              "| strategy | p50 us | p99 us |", "| --- | ---: | ---: |"]
    lines += [f"| {s} | {p50:.1f} | {p99:.1f} |" for s, (p50, p99) in timing.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 transactions per scenario")
    parser.add_argument("--out", type=Path, default=Path("bench/results/routing_sim.md"))
    parser.add_argument("--transactions", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    n = args.transactions or (20_000 if args.quick else 200_000)
    started = time.perf_counter()
    jobs = [(scenario, n) for scenario in SCENARIOS]
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            batches = list(pool.map(_run_scenario, jobs))
    else:
        batches = [_run_scenario(job) for job in jobs]
    results = {batch[0].scenario: {r.policy: r for r in batch} for batch in batches}
    timing = bench_decide(10_000 if args.quick else 50_000)
    text = render(results, timing, n, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    held = all(ok for _, _, ok in check_goals(results))
    return 0 if held or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
