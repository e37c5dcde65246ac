"""Routing simulator: the real ``routing`` + ``health`` code in virtual time, in a market
where channels differ in what they approve, per segment, and in what they cost.

    python -m bench.routing_sim [--quick] [--out bench/results/routing_sim.md] [--workers N]

Nothing sleeps and nothing touches the network: an event heap orders arrivals, attempt
completions (fed to ``HealthRegistry`` when they complete, not when they start, so
detection delays are real), probes and config reloads; the injected clock is the heap's.
Every transaction tries its candidates in order with failover, as the orchestrator does:
a soft decline or a channel failure moves on to the next one, a hard decline ends the
recharge, at most 3 attempts and 15 s. Traffic starts after a 4 s probe-only warm-up.

The market (8 channels; ``new_channel`` adds a 9th). Latency is lognormal around the
median (sigma 0.25); a healthy channel fails outright (half not processed, half a hang to
its timeout) in 0.1-0.4 % of attempts; fees as configured:

    channel          markets    median   fee             approval (base, issuer, band b0/b1/b2)
    alipay_direct    CNY        28 ms    0.60 %          .94  icbc +3 ccb -5 abc +1 none -1  +1/0/-4
    wechat_direct    CNY        36 ms    0.45 %          .93  icbc -4 ccb +4 abc -1 cmb +2   +2/0/-5
    lianlian_direct  CNY        40 ms    1.00 %          .955 abc +1 cmb +1 none -2          0/+1/+2
    gcash_direct     PHP        30 ms    1.50 %          .95  bdo +2 metrobank -3 none +1    +1/0/-3
    maya_direct      PHP        34 ms    1.10 %          .93  bdo -2 bpi +3 metrobank +2 none -2  0/+1/-2
    usdt_settle      CNY, PHP   1.2 s    0.30 %          .90  none +2                        -2/0/+3
    unionpay_bank    CNY        4.8 s    1.00 + 0.1 %    .97                                 0/0/+1
    bdo_bank         PHP        4.8 s    15.00 fixed     .97  bdo +2
    yeepay_direct    CNY        32 ms    0.35 %          .95  icbc +1 ccb +1 cmb -1          +1/0/-2  (new_channel only)

True approval of a (channel, segment) is base + issuer + band points, 0.84-0.99 (the full
table is in the report; drift takes one to 0.78). Segments are currency/country/method, an
amount band (CNY: up to 100, 500, above; PHP: up to 1,000, 5,000, above) and the issuer:
CNY icbc 30 %, ccb 25 %, abc 15 %, cmb 15 %, none sent 15 %; PHP bdo 35 %, bpi 25 %,
metrobank 20 %, none 20 %. 80 % of recharges are CNY (6 .. 3,000 CNY), 20 % PHP
(50 .. 25,000 PHP), small ones far more often than large ones. Fees and amounts are summed
in CNY (8 PHP to the CNY).

Payers: 1.5 % are hard-declined by whichever channel they reach (the recharge ends; it
teaches nothing). The others are approved by a channel when their luck on it is under the
channel's approval for their segment; luck is uniform on each channel but correlated
across channels through the payer (a Gaussian copula, ``PAYER_CORRELATION`` 0.9): a payer
one channel soft-declines is likelier to be declined by the next, so failover recovers
about half of soft declines, not nearly all (with independent luck a decline would cost
only the time of one more attempt and approval would hardly matter). Each payer's luck is
drawn from the arrival stream, so every policy meets the same payers with the same luck.

Scenarios (fractions are of the run; alipay_direct is the busiest channel):
- ``steady``          the table above, unchanged.
- ``drift``           from 20 % to 80 %, alipay's approval of icbc slides down 15 points
                      and wechat's up 8 (capped at 99 %).
- ``segment_outage``  from 30 % to 60 %, alipay approves 20 % of icbc; nothing else changes.
- ``new_channel``     yeepay_direct (cheaper, as good) joins at a third: a config reload
                      (``Snapshot.with_config``, ``HealthRegistry.add_channel``).
- ``fee_change``      alipay's fee rises from 0.60 % to 1.20 % at 40 % (a reload).
- ``flapping``        from 20 % to 80 %, alipay hangs 10 s out of every 30.

Policies:
- ``oracle``       knows every true rate now (approval per segment, whether a channel is
                   down, latency) and ranks by the product's expected value with the same
                   ``ValueWeights``; no exploration, no learning, no breakers.
- ``smart``        the product: ``decide`` with objective ``value`` over snapshots of a real
                   ``HealthRegistry`` (breakers, probes, stall detection) republished every
                   100 ms and on every change, as the service does; approvals learnt as the
                   orchestrator learns them (``health.lessons`` on each capture, fed to
                   ``registry.record_approval`` under ``snapshot.policy.segments.key(txn)``).
- ``smart_score``  the same with objective ``score`` (the first version's score).
- ``juspay``       a success-rate router in the manner of Juspay's decision engine: per
                   (channel, segment) the success rate of the last ``JUSPAY_WINDOW`` attempts
                   (captured = success; any decline or failure = failure; an empty window
                   counts as 100 %); with probability 5 % a uniformly random eligible channel
                   first, otherwise the highest rate; channels whose latency estimate is over
                   ``JUSPAY_LATENCY_THRESHOLD_MS`` after the rest (its latency threshold).
                   Fees are ignored. Same filters and breakers (``decide``'s eligible set).
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import heapq
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from channels._protocol import AttemptOutcome
from health import ApprovalConfig, HealthRegistry, lessons
from routing import (
    ALL_SEGMENTS,
    ChannelSpec,
    ChannelState,
    RoutingPolicy,
    SegmentPolicy,
    Snapshot,
    Transaction,
    ValueWeights,
    decide,
)

RATE_PER_S = 500.0
SNAPSHOT_PERIOD_S = 0.1  # orchestrator/service.py SNAPSHOT_PERIOD_S
PROBE_INTERVAL_S = 2.0
PROBE_JITTER = 0.1
WARMUP_S = 2 * PROBE_INTERVAL_S  # probes only, as at start-up, before the first recharge
MAX_ATTEMPTS = 3
DEADLINE_MS = 15_000.0
LATENCY_SIGMA = 0.25  # lognormal spread: p99 is ~1.8x the median
HARD_DECLINE = 0.015  # payers every channel declines (insufficient funds, a blocked account)
# How much of a payer's luck is theirs rather than the channel's (a Gaussian copula): at
# 0.9 a second channel approves ~47 % of the payers a first one soft-declined at equal
# 94 % approval, where independent luck would approve 94 % and make failover free.
PAYER_CORRELATION = 0.9
SEEDS = (20240601, 20240602, 20240603)
TRANSACTIONS = 120_000  # per scenario, policy and seed: 240 s of virtual time at 500/s
QUICK_TRANSACTIONS = 20_000
JUSPAY_WINDOW = 200
JUSPAY_EXPLORE = 0.05
JUSPAY_LATENCY_THRESHOLD_MS = 2500.0
SEGMENTS = SegmentPolicy(amount_bands={"CNY": (10_000, 50_000), "PHP": (100_000, 500_000)})
# The product's defaults; the oracle ranks with the same weights.
VALUE = ValueWeights()
APPROVAL = ApprovalConfig()
POLICIES = ("oracle", "smart", "smart_score", "juspay")

# The goals (issue 26), judged on the mean over seeds. Against juspay, differences this
# small are noise at these volumes, so they neither fail the goal nor count as a win.
SUCCESS_VS_ORACLE_PP = 0.3
FEE_VS_ORACLE_BPS = 5.0
JUSPAY_SUCCESS_NOISE_PP = 0.02
JUSPAY_FEE_NOISE_BPS = 0.5
DECIDE_P99_US = 50.0

CAPTURED = AttemptOutcome.CAPTURED
DECLINED = AttemptOutcome.DECLINED
NOT_PROCESSED = AttemptOutcome.NOT_PROCESSED
UNKNOWN = AttemptOutcome.UNKNOWN


# -- the market ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SimChannel:
    spec: ChannelSpec
    latency_ms: float  # median when healthy
    works: float  # probability an attempt is answered at all when healthy
    approval: float  # base approval, before issuer and band adjustments
    by_issuer: Mapping[str | None, float] = field(default_factory=dict)
    by_band: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def approves(self, band: int, issuer: str | None) -> float:
        p = self.approval + self.by_issuer.get(issuer, 0.0) + self.by_band[band]
        return min(0.99, max(0.0, p))


def _spec(name: str, kind: str, currencies: set[str], *, fee_fixed: int = 0, fee_percent: float,
          timeout_ms: int) -> ChannelSpec:
    countries = {"CNY": "CN", "PHP": "PH"}
    return ChannelSpec(name=name, kind=kind, currencies=frozenset(currencies),
                       countries=frozenset(countries[c] for c in currencies), methods=frozenset({"ewallet"}),
                       min_amount_minor=500, max_amount_minor=5_000_000,
                       fee_fixed_minor=fee_fixed, fee_percent=fee_percent, timeout_ms=timeout_ms)


_DIRECT, _SETTLE, _BANK = 2000, 5000, 10000  # timeouts, ms
CHANNELS: tuple[SimChannel, ...] = (
    SimChannel(_spec("alipay_direct", "direct_api", {"CNY"}, fee_percent=0.6, timeout_ms=_DIRECT), 28.0, 0.997,
               0.94, {"icbc": 0.03, "ccb": -0.05, "abc": 0.01, None: -0.01}, (0.01, 0.0, -0.04)),
    SimChannel(_spec("wechat_direct", "direct_api", {"CNY"}, fee_percent=0.45, timeout_ms=_DIRECT), 36.0, 0.996,
               0.93, {"icbc": -0.04, "ccb": 0.04, "abc": -0.01, "cmb": 0.02}, (0.02, 0.0, -0.05)),
    SimChannel(_spec("lianlian_direct", "direct_api", {"CNY"}, fee_percent=1.0, timeout_ms=_DIRECT), 40.0, 0.996,
               0.955, {"abc": 0.01, "cmb": 0.01, None: -0.02}, (0.0, 0.01, 0.02)),
    SimChannel(_spec("gcash_direct", "direct_api", {"PHP"}, fee_percent=1.5, timeout_ms=_DIRECT), 30.0, 0.996,
               0.95, {"bdo": 0.02, "metrobank": -0.03, None: 0.01}, (0.01, 0.0, -0.03)),
    SimChannel(_spec("maya_direct", "direct_api", {"PHP"}, fee_percent=1.1, timeout_ms=_DIRECT), 34.0, 0.996,
               0.93, {"bdo": -0.02, "bpi": 0.03, "metrobank": 0.02, None: -0.02}, (0.0, 0.01, -0.02)),
    SimChannel(_spec("usdt_settle", "digital_currency", {"CNY", "PHP"}, fee_percent=0.3, timeout_ms=_SETTLE),
               1200.0, 0.998, 0.90, {None: 0.02}, (-0.02, 0.0, 0.03)),
    SimChannel(_spec("unionpay_bank", "bank", {"CNY"}, fee_fixed=100, fee_percent=0.1, timeout_ms=_BANK),
               4800.0, 0.999, 0.97, {}, (0.0, 0.0, 0.01)),
    SimChannel(_spec("bdo_bank", "bank", {"PHP"}, fee_fixed=1500, fee_percent=0.0, timeout_ms=_BANK),
               4800.0, 0.999, 0.97, {"bdo": 0.02}),
)
NEW_CHANNEL = SimChannel(_spec("yeepay_direct", "direct_api", {"CNY"}, fee_percent=0.35, timeout_ms=_DIRECT),
                         32.0, 0.997, 0.95, {"icbc": 0.01, "ccb": 0.01, "cmb": -0.01}, (0.01, 0.0, -0.02))
BY_NAME = {c.spec.name: c for c in (*CHANNELS, NEW_CHANNEL)}
INDEX = {name: i for i, name in enumerate(BY_NAME)}  # a payer's luck per channel
BUSIEST = "alipay_direct"

ISSUERS: dict[str, tuple[tuple[str | None, int], ...]] = {
    "CNY": (("icbc", 30), ("ccb", 25), ("abc", 15), ("cmb", 15), (None, 15)),
    "PHP": (("bdo", 35), ("bpi", 25), ("metrobank", 20), (None, 20)),
}
# (amount in minor units, weight): many small recharges, few large ones.
AMOUNTS: dict[str, tuple[tuple[int, int], ...]] = {
    "CNY": ((600, 25), (3000, 20), (6800, 15), (9800, 12), (19800, 10), (32800, 8), (64800, 5),
            (128800, 3), (300000, 2)),
    "PHP": ((5000, 25), (25000, 20), (50000, 15), (100000, 12), (250000, 10), (500000, 8),
            (1000000, 6), (2500000, 4)),
}
CURRENCY_SHARE = {"CNY": 80, "PHP": 20}
COUNTRY = {"CNY": "CN", "PHP": "PH"}
TO_CNY = {"CNY": 1.0, "PHP": 0.125}  # fees and amounts are summed in CNY (8 PHP to the CNY)


class Sample(NamedTuple):
    """One kind of recharge, with its segment worked out once."""

    txn: Transaction
    band: int
    issuer: str | None
    segment: str
    to_cny: float


def _samples() -> tuple[tuple[Sample, ...], tuple[float, ...]]:
    samples, weights = [], []
    for currency, share in CURRENCY_SHARE.items():
        amounts, issuers = AMOUNTS[currency], ISSUERS[currency]
        total = sum(w for _, w in issuers) * sum(w for _, w in amounts)
        bounds = SEGMENTS.amount_bands[currency]
        for amount, a_weight in amounts:
            band = bisect.bisect_left(bounds, amount)
            for issuer, i_weight in issuers:
                txn = Transaction(currency, COUNTRY[currency], "ewallet", amount, issuer=issuer)
                samples.append(Sample(txn, band, issuer, SEGMENTS.key(txn), TO_CNY[currency]))
                weights.append(share * a_weight * i_weight / total)
    return tuple(samples), tuple(itertools.accumulate(weights))


SAMPLES, CUM_WEIGHTS = _samples()


# -- scenarios -----------------------------------------------------------------------

ApprovalShift = Callable[[str, int, "str | None", float, float], float]  # (channel, band, issuer, frac, p) -> p


@dataclass(frozen=True, slots=True)
class Scenario:
    about: str
    approval: ApprovalShift | None = None
    down: Callable[[str, float, float], bool] | None = None  # (channel, t, duration)
    changes: tuple[tuple[float, ChannelSpec], ...] = ()  # (fraction of the run, spec joining or replacing)


def _ramp(frac: float, start: float, end: float) -> float:
    return min(1.0, max(0.0, (frac - start) / (end - start)))


def _drift(name: str, band: int, issuer: str | None, frac: float, p: float) -> float:
    if issuer != "icbc":
        return p
    if name == "alipay_direct":
        return p - 0.15 * _ramp(frac, 0.2, 0.8)
    if name == "wechat_direct":
        return min(0.99, p + 0.08 * _ramp(frac, 0.2, 0.8))
    return p


def _segment_outage(name: str, band: int, issuer: str | None, frac: float, p: float) -> float:
    return 0.2 if name == BUSIEST and issuer == "icbc" and 0.3 <= frac < 0.6 else p


def _flapping(name: str, t: float, d: float) -> bool:
    return name == BUSIEST and 0.2 * d <= t < 0.8 * d and (t - 0.2 * d) % 30.0 < 10.0


SCENARIOS: dict[str, Scenario] = {
    "steady": Scenario("heterogeneous approval per segment, nothing changes"),
    "drift": Scenario("alipay's icbc approval -15 points, wechat's +8, from 20 % to 80 % of the run",
                      approval=_drift),
    "segment_outage": Scenario("alipay approves 20 % of icbc from 30 % to 60 % of the run",
                               approval=_segment_outage),
    "new_channel": Scenario("yeepay_direct (0.35 %, approval .95) joins at a third of the run",
                            changes=((1 / 3, NEW_CHANNEL.spec),)),
    "fee_change": Scenario("alipay's fee 0.60 % -> 1.20 % at 40 % of the run",
                           changes=((0.4, dataclasses.replace(BY_NAME[BUSIEST].spec, fee_percent=1.2)),)),
    "flapping": Scenario("alipay hangs 10 s in every 30 s from 20 % to 80 % of the run", down=_flapping),
}


class World:
    """The truth of one scenario run: who is configured, what each channel approves now,
    whether it is down."""

    def __init__(self, scenario: Scenario, duration: float) -> None:
        self.scenario = scenario
        self.duration = duration
        self.specs: dict[str, ChannelSpec] = {c.spec.name: c.spec for c in CHANNELS}
        self._base = {(name, band, issuer): ch.approves(band, issuer)
                      for name, ch in BY_NAME.items() for band in range(3)
                      for issuer in {i for pairs in ISSUERS.values() for i, _ in pairs}}

    def approval(self, name: str, band: int, issuer: str | None, t: float) -> float:
        p = self._base[(name, band, issuer)]
        shift = self.scenario.approval
        return p if shift is None else shift(name, band, issuer, t / self.duration, p)

    def down(self, name: str, t: float) -> bool:
        down = self.scenario.down
        return down is not None and down(name, t, self.duration)

    def apply(self, spec: ChannelSpec) -> None:
        self.specs[spec.name] = spec


# -- policies ------------------------------------------------------------------------

class VirtualClock:
    __slots__ = ("now",)

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Txn:
    """One recharge in flight: what it is, the payer's luck, and how far it got."""

    __slots__ = ("attempts", "candidates", "first_soft", "hard", "luck", "next", "panic", "sample", "start", "tried")

    def __init__(self, start: float, sample: Sample, hard: bool, luck: list[float]) -> None:
        self.start = start
        self.sample = sample
        self.hard = hard
        self.luck = luck  # per channel: approved when below the channel's approval
        self.candidates: tuple[str, ...] = ()
        self.panic = False
        self.next = 0
        self.attempts = 0
        self.tried: list[tuple[str, bool]] = []  # (channel, soft-declined), as health.lessons takes them
        self.first_soft = False  # the first attempt was soft-declined


class OracleRouter:
    """Ranks by the value objective on the true rates of this moment."""

    name = "oracle"

    def __init__(self, world: World, clock: VirtualClock, value: ValueWeights) -> None:
        self.world = world
        self.clock = clock
        self.value = value

    def order(self, st: Txn) -> tuple[tuple[str, ...], bool, bool]:
        world, now, v = self.world, self.clock.now, self.value
        txn, band, issuer = st.sample.txn, st.sample.band, st.sample.issuer
        amount = txn.amount_minor
        ranked = []
        for order, (name, spec) in enumerate(world.specs.items()):
            if (txn.currency not in spec.currencies or txn.country not in spec.countries
                    or not spec.min_amount_minor <= amount <= (spec.max_amount_minor or amount)
                    or world.down(name, now)):
                continue
            ch = BY_NAME[name]
            latency = ch.latency_ms * math.exp(LATENCY_SIGMA ** 2 / 2)
            latency_cost = v.latency_price_bps_per_s / 10_000.0 * max(0.0, latency - v.latency_slo_ms) / 1000.0
            approve = ch.works * world.approval(name, band, issuer, now)
            ranked.append((-(approve * (1.0 - spec.fee_minor(amount) / amount) - latency_cost), order, name))
        ranked.sort()
        return tuple(name for _, _, name in ranked), False, False

    def refresh(self) -> None:
        pass

    def begin(self, name: str, panic: bool) -> object:
        return True

    def end(self, ticket: object, outcome: AttemptOutcome, latency_ms: float) -> None:
        pass

    def probe(self, name: str, ok: bool, latency_ms: float) -> None:
        pass

    def reload(self, specs: Mapping[str, ChannelSpec]) -> None:
        pass

    def observe(self, st: Txn, name: str, captured: bool) -> None:
        pass

    def learn(self, st: Txn, approved_by: str) -> None:
        pass


class HealthRouter:
    """A policy that sees the world only through a real ``HealthRegistry`` and snapshots
    rebuilt from it, as the orchestrator does."""

    name = "health"

    def __init__(self, world: World, clock: VirtualClock, rng: random.Random, policy: RoutingPolicy) -> None:
        self.clock = clock
        self.rng = rng
        self.registry = HealthRegistry(clock, on_change=self._changed, approval_config=APPROVAL)
        for name in world.specs:
            self.registry.add_channel(name)
        self.snapshot = Snapshot.build(list(world.specs.values()), policy=policy, version="sim-0")
        self.reloads = 0
        self.dirty = True
        self.next_refresh = 0.0

    def _changed(self, _name: str) -> None:
        self.dirty = True

    def refresh(self) -> None:
        now = self.clock.now
        if self.dirty or now >= self.next_refresh:
            self.snapshot = self.snapshot.with_states(self.registry.states())
            self.dirty = False
            self.next_refresh = now + SNAPSHOT_PERIOD_S

    def begin(self, name: str, panic: bool) -> object:
        return self.registry.begin_attempt(name, panic=panic)

    def end(self, ticket: object, outcome: AttemptOutcome, latency_ms: float) -> None:
        self.registry.end_attempt(ticket, outcome, latency_ms)  # type: ignore[arg-type]

    def probe(self, name: str, ok: bool, latency_ms: float) -> None:
        self.registry.record_probe(name, ok, latency_ms)

    def reload(self, specs: Mapping[str, ChannelSpec]) -> None:
        """A config reload: the new specs with the current health, new channels tracked."""
        self.reloads += 1
        self.registry.sync({name: None for name in specs})
        self.snapshot = self.snapshot.with_config(dict(specs), self.snapshot.policy, f"sim-{self.reloads}")
        self.dirty = True

    def observe(self, st: Txn, name: str, captured: bool) -> None:
        pass

    def learn(self, st: Txn, approved_by: str) -> None:
        pass


class ProductRouter(HealthRouter):
    """``smart`` (objective ``value``) or ``smart_score`` (objective ``score``)."""

    def __init__(self, world: World, clock: VirtualClock, rng: random.Random, objective: str) -> None:
        super().__init__(world, clock, rng, RoutingPolicy(objective=objective, segments=SEGMENTS, value=VALUE))
        self.name = "smart" if objective == "value" else "smart_score"

    def order(self, st: Txn) -> tuple[tuple[str, ...], bool, bool]:
        decision = decide(self.snapshot, st.sample.txn, self.rng)
        c = decision.candidates
        explored = False
        if len(c) > 1:  # first choice not the greedy one: the fallbacks are in greedy order
            first, second = decision.scores[c[0]], decision.scores[c[1]]
            explored = second.total - second.exploration > first.total - first.exploration
        return c, explored, decision.panic

    def learn(self, st: Txn, approved_by: str) -> None:
        """What orchestrator/planner.py ``RoutePlanner.learn`` does on a success."""
        segment = self.snapshot.policy.segments.key(st.sample.txn)
        for channel, approved in lessons(st.tried, approved_by):
            self.registry.record_approval(channel, segment, approved)


class _Window:
    """The last ``JUSPAY_WINDOW`` outcomes of one (channel, segment)."""

    __slots__ = ("outcomes", "successes")

    def __init__(self) -> None:
        self.outcomes: deque[bool] = deque(maxlen=JUSPAY_WINDOW)
        self.successes = 0

    def add(self, ok: bool) -> None:
        if len(self.outcomes) == JUSPAY_WINDOW:
            self.successes -= self.outcomes[0]
        self.outcomes.append(ok)
        self.successes += ok

    def rate(self) -> float:
        return self.successes / len(self.outcomes) if self.outcomes else 1.0


class JuspayRouter(HealthRouter):
    """Highest windowed success rate per segment, 5 % uniform exploration."""

    name = "juspay"

    def __init__(self, world: World, clock: VirtualClock, rng: random.Random) -> None:
        # ``priority`` only to get decide's filters, breakers and panic: the order is ours.
        super().__init__(world, clock, rng, RoutingPolicy(strategy="priority", segments=SEGMENTS))
        self.windows: dict[tuple[str, str], _Window] = {}

    def _slow(self, name: str) -> bool:
        state = self.snapshot.states.get(name)
        latency = state.latency_ewma_ms if state is not None else None
        if latency is None:
            latency = float(self.snapshot.channels[name].timeout_ms)
        return latency > JUSPAY_LATENCY_THRESHOLD_MS

    def order(self, st: Txn) -> tuple[tuple[str, ...], bool, bool]:
        decision = decide(self.snapshot, st.sample.txn, self.rng)
        segment, windows = st.sample.segment, self.windows
        keyed = []
        for pos, name in enumerate(decision.candidates):
            w = windows.get((name, segment))
            keyed.append((self._slow(name), -(w.rate() if w is not None else 1.0), pos, name))
        keyed.sort()
        ranked = [k[3] for k in keyed]
        explored = False
        if len(ranked) > 1 and self.rng.random() < JUSPAY_EXPLORE:
            fast = [k[3] for k in keyed if not k[0]] or ranked
            pick = fast[self.rng.randrange(len(fast))]
            if pick != ranked[0]:
                explored = True
                ranked.remove(pick)
                ranked.insert(0, pick)
        return tuple(ranked), explored, decision.panic

    def observe(self, st: Txn, name: str, captured: bool) -> None:
        key = (name, st.sample.segment)
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = _Window()
        w.add(captured)


Router = OracleRouter | ProductRouter | JuspayRouter


def make_router(policy: str, world: World, clock: VirtualClock, rng: random.Random) -> Router:
    if policy == "oracle":
        return OracleRouter(world, clock, VALUE)
    if policy == "juspay":
        return JuspayRouter(world, clock, rng)
    return ProductRouter(world, clock, rng, "value" if policy == "smart" else "score")


# -- the event loop ------------------------------------------------------------------

@dataclass(slots=True)
class Result:
    scenario: str
    policy: str
    seed: int
    transactions: int
    succeeded: int
    first_approved: int
    first_soft: int  # recharges whose first attempt was soft-declined
    recovered: int  # ... and that another channel then captured
    explored: int
    attempts: int
    fee_cny_minor: float  # succeeded recharges, in CNY minor units
    amount_cny_minor: float
    value_cny_minor: float  # the value objective, realised: see ``net_value_bps``
    offered_cny_minor: float  # every recharge's amount
    latency_mean_ms: float
    latency_p99_ms: float
    wall_s: float
    captures: dict[str, int] = field(default_factory=dict)  # recharges each channel captured

    @property
    def success_pct(self) -> float:
        return 100.0 * self.succeeded / self.transactions

    @property
    def fee_bps(self) -> float:
        return 10_000.0 * self.fee_cny_minor / self.amount_cny_minor if self.amount_cny_minor else 0.0

    @property
    def net_value_bps(self) -> float:
        """What the value objective scores, realised: amount minus fee of every succeeded
        recharge, minus the latency price on every recharge's time past the SLO, in basis
        points of the amount offered. Trades fees, approval and latency as smart does."""
        return 10_000.0 * self.value_cny_minor / self.offered_cny_minor if self.offered_cny_minor else 0.0

    @property
    def first_approval_pct(self) -> float:
        return 100.0 * self.first_approved / self.transactions

    @property
    def recovered_pct(self) -> float:
        """Of the recharges a first channel soft-declined, the share another then captured."""
        return 100.0 * self.recovered / self.first_soft if self.first_soft else 0.0

    @property
    def explored_pct(self) -> float:
        return 100.0 * self.explored / self.transactions

    @property
    def attempts_per_txn(self) -> float:
        return self.attempts / self.transactions


_ARRIVAL, _DONE, _PROBE, _RELOAD = 0, 1, 2, 3
_SQRT2 = math.sqrt(2.0)
# Attempt results, as the payer and the channel see them.
_CAPTURED, _SOFT, _HARD, _FAILED = 0, 1, 2, 3


class _Run:
    """The event loop of one (scenario, policy, seed)."""

    def __init__(self, scenario: str, policy: str, n: int, seed: int) -> None:
        self.n = n
        self.world = World(SCENARIOS[scenario], n / RATE_PER_S)
        self.clock = VirtualClock(-WARMUP_S)
        self.arrivals = random.Random(seed)  # the same recharges and payers for every policy
        self.outcomes = random.Random(seed + 1)
        self.probes = random.Random(seed + 3)
        self.router = make_router(policy, self.world, self.clock, random.Random(seed + 2))
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = itertools.count()
        self.latencies = array("d")
        self.succeeded = self.first_approved = self.explored = self.attempts = 0
        self.first_soft = self.recovered = 0
        self.captures: dict[str, int] = dict.fromkeys(BY_NAME, 0)
        self.fee_sum = self.amount_sum = self.value_sum = self.offered_sum = 0.0
        v = VALUE
        self._slow_price = v.latency_price_bps_per_s / 10_000.0 / 1000.0  # per ms of the amount
        self._slo_ms = v.latency_slo_ms
        for name in self.world.specs:
            self._push(-WARMUP_S + self.probes.uniform(0, PROBE_INTERVAL_S), _PROBE, name)
        for frac, spec in self.world.scenario.changes:
            self._push(frac * self.world.duration, _RELOAD, spec)

    def _push(self, at: float, kind: int, payload: object) -> None:
        heapq.heappush(self.heap, (at, next(self.seq), kind, payload))

    def run(self) -> None:
        arrived, next_arrival = 0, 0.0
        heap, clock = self.heap, self.clock
        while arrived < self.n or heap:
            if arrived < self.n and (not heap or next_arrival <= heap[0][0]):
                clock.now = next_arrival
                self._arrive(next_arrival)
                arrived += 1
                next_arrival += self.arrivals.expovariate(RATE_PER_S)
                continue
            t, _, kind, payload = heapq.heappop(heap)
            clock.now = t
            if kind == _DONE:
                self._done(t, *payload)  # type: ignore[misc]
            elif kind == _PROBE:
                if arrived < self.n:
                    self._probe(t, payload)  # type: ignore[arg-type]
            else:
                self._reload(t, payload)  # type: ignore[arg-type]

    def _reload(self, now: float, spec: ChannelSpec) -> None:
        """A config reload: a channel joins (and the prober starts on it) or changes."""
        joining = spec.name not in self.world.specs
        self.world.apply(spec)
        self.router.reload(self.world.specs)
        if joining:
            self._push(now + self.probes.uniform(0, 0.2), _PROBE, spec.name)

    def _arrive(self, now: float) -> None:
        rnd, gauss = self.arrivals.random, self.arrivals.gauss
        sample = SAMPLES[bisect.bisect(CUM_WEIGHTS, rnd() * CUM_WEIGHTS[-1])]
        payer = PAYER_CORRELATION * gauss(0.0, 1.0)
        own = math.sqrt(1.0 - PAYER_CORRELATION ** 2)
        luck = [0.5 * math.erfc(-(payer + own * gauss(0.0, 1.0)) / _SQRT2) for _ in INDEX]
        st = Txn(now, sample, rnd() < HARD_DECLINE, luck)
        self.router.refresh()
        st.candidates, explored, st.panic = self.router.order(st)
        self.explored += explored
        if not self._start_next(st, now):
            self._finish(st, now, None)

    def _start_next(self, st: Txn, now: float) -> bool:
        """Start the transaction's next attempt; False when none is left."""
        while st.next < len(st.candidates) and st.attempts < MAX_ATTEMPTS:
            name = st.candidates[st.next]
            st.next += 1
            ticket = self.router.begin(name, st.panic)
            if ticket is None:
                continue  # refused at send time (half-open trials all out)
            result, latency = self._attempt(st, name, now)
            st.attempts += 1
            self.attempts += 1
            fee = self.world.specs[name].fee_minor(st.sample.txn.amount_minor)
            self._push(now + latency / 1000.0, _DONE, (st, name, ticket, result, latency, fee))
            return True
        return False

    def _attempt(self, st: Txn, name: str, now: float) -> tuple[int, float]:
        """One attempt's result and latency. A down channel hangs to its timeout; a healthy
        one fails outright now and then (half fast rejections, half hangs)."""
        ch, rng = BY_NAME[name], self.outcomes
        timeout = float(ch.spec.timeout_ms)
        if self.world.down(name, now):
            return _FAILED, timeout
        latency = ch.latency_ms * math.exp(rng.gauss(0.0, LATENCY_SIGMA))
        if rng.random() >= ch.works:
            return _FAILED, (min(latency, timeout) if rng.random() < 0.5 else timeout)
        if latency >= timeout:
            return _FAILED, timeout
        if st.hard:
            return _HARD, latency
        s = st.sample
        approved = st.luck[INDEX[name]] < self.world.approval(name, s.band, s.issuer, now)
        return (_CAPTURED if approved else _SOFT), latency

    def _done(self, now: float, st: Txn, name: str, ticket: object, result: int, latency: float, fee: float) -> None:
        outcome = (CAPTURED if result == _CAPTURED else DECLINED if result in (_SOFT, _HARD)
                   else NOT_PROCESSED if latency < BY_NAME[name].spec.timeout_ms else UNKNOWN)
        self.router.end(ticket, outcome, latency)
        self.router.observe(st, name, result == _CAPTURED)
        if result == _CAPTURED:
            self.first_approved += st.attempts == 1
            self.recovered += st.first_soft
            self.captures[name] += 1
            self.router.learn(st, name)
            self._finish(st, now, fee)
        elif result == _HARD:
            self._finish(st, now, None)
        else:
            if result == _SOFT and st.attempts == 1:
                st.first_soft = True
                self.first_soft += 1
            st.tried.append((name, result == _SOFT))
            if (now - st.start) * 1000.0 >= DEADLINE_MS or not self._start_next(st, now):
                self._finish(st, now, None)

    def _finish(self, st: Txn, now: float, fee: float | None) -> None:
        latency = (now - st.start) * 1000.0
        self.latencies.append(latency)
        amount = st.sample.txn.amount_minor * st.sample.to_cny
        self.offered_sum += amount
        self.value_sum -= amount * self._slow_price * max(0.0, latency - self._slo_ms)
        if fee is not None:
            self.succeeded += 1
            self.fee_sum += fee * st.sample.to_cny
            self.amount_sum += amount
            self.value_sum += amount - fee * st.sample.to_cny

    def _probe(self, now: float, name: str) -> None:
        """A ping travels the channel's path: it hangs when the channel is down and is as
        slow as the channel's payments otherwise."""
        ch = BY_NAME[name]
        if self.world.down(name, now):
            self.router.probe(name, False, float(ch.spec.timeout_ms))
        else:
            self.router.probe(name, True, ch.latency_ms * math.exp(self.probes.gauss(0.0, LATENCY_SIGMA)))
        self._push(now + PROBE_INTERVAL_S * (1 + self.probes.uniform(-PROBE_JITTER, PROBE_JITTER)), _PROBE, name)


def simulate(scenario: str, policy: str, n: int, seed: int = SEEDS[0]) -> Result:
    """Run ``n`` transactions of one scenario under one policy."""
    started = time.perf_counter()
    run = _Run(scenario, policy, n, seed)
    run.run()
    ordered = sorted(run.latencies)
    return Result(
        scenario=scenario, policy=policy, seed=seed, transactions=n, succeeded=run.succeeded,
        first_approved=run.first_approved, first_soft=run.first_soft, recovered=run.recovered,
        explored=run.explored, attempts=run.attempts,
        fee_cny_minor=run.fee_sum, amount_cny_minor=run.amount_sum,
        value_cny_minor=run.value_sum, offered_cny_minor=run.offered_sum,
        latency_mean_ms=sum(ordered) / len(ordered),
        latency_p99_ms=ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
        wall_s=time.perf_counter() - started,
        captures={name: k for name, k in run.captures.items() if k},
    )


# -- microbenchmark ------------------------------------------------------------------

def bench_decide(iterations: int = 50_000) -> dict[str, tuple[float, float]]:
    """decide() p50/p99 in microseconds over 8 eligible channels with approval tallies for
    every segment, per strategy (``smart`` is the value objective, the default)."""
    specs = [ChannelSpec(f"ch{i}", ("direct_api", "digital_currency", "bank")[i % 3],
                         frozenset({"CNY"}), frozenset({"CN"}), frozenset({"ewallet"}),
                         min_amount_minor=100, max_amount_minor=10_000_000,
                         fee_fixed_minor=10 * i, fee_percent=0.2 + 0.1 * i, weight=1.0 + i / 10)
             for i in range(8)]
    segments = {s.segment for s in SAMPLES if s.txn.currency == "CNY"}
    states = {}
    for i, s in enumerate(specs):
        tallies = {seg: (900.0 - 10 * i - j, 60.0 + i + j) for j, seg in enumerate(sorted(segments))}
        tallies[ALL_SEGMENTS] = (sum(a for a, _ in tallies.values()), sum(d for _, d in tallies.values()))
        states[s.name] = ChannelState(latency_ewma_ms=(28.0, 1200.0, 4800.0)[i % 3] * (1 + i / 20),
                                      latency_p99_ms=(60.0, 2400.0, 9000.0)[i % 3],
                                      successes=5000.0 / (i + 1), failures=5.0 + i, in_flight=i,
                                      approvals=tallies)
    txn = Transaction("CNY", "CN", "ewallet", 8500, issuer="icbc")
    rng = random.Random(7)
    policies = {
        "smart": RoutingPolicy(segments=SEGMENTS),
        "smart_score": RoutingPolicy(objective="score", segments=SEGMENTS),
        **{s: RoutingPolicy(strategy=s, segments=SEGMENTS) for s in ("priority", "weighted", "cheapest")},
    }
    out = {}
    for label, policy in policies.items():
        snap = Snapshot.build(specs, states, policy, "bench")
        for _ in range(2000):  # warm up (memo, caches)
            decide(snap, txn, rng)
        samples = array("d")
        clock = time.perf_counter_ns
        for _ in range(iterations):
            t0 = clock()
            decide(snap, txn, rng)
            samples.append((clock() - t0) / 1000.0)
        ordered = sorted(samples)
        out[label] = (ordered[len(ordered) // 2], ordered[int(0.99 * len(ordered))])
    return out


# -- goals and the report --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Summary:
    """A policy's figures in one scenario, averaged over seeds."""

    success_pct: float
    fee_bps: float
    net_value_bps: float = 0.0
    latency_mean_ms: float = 0.0
    latency_p99_ms: float = 0.0
    attempts_per_txn: float = 0.0
    first_approval_pct: float = 0.0
    recovered_pct: float = 0.0
    explored_pct: float = 0.0


def summarise(results: list[Result]) -> dict[str, dict[str, Summary]]:
    """scenario -> policy -> the mean over seeds of every figure."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.policy), []).append(r)
    out: dict[str, dict[str, Summary]] = {}
    for (scenario, policy), rs in groups.items():
        out.setdefault(scenario, {})[policy] = Summary(**{
            f.name: statistics.fmean(getattr(r, f.name) for r in rs) for f in dataclasses.fields(Summary)})
    return out


@dataclass(frozen=True, slots=True)
class Goal:
    scenario: str
    goal: str
    measured: str
    held: bool


def check_goals(means: Mapping[str, Mapping[str, Summary]]) -> list[Goal]:
    """The issue's goals for ``smart``, on the means over seeds, per scenario:
    success no more than 0.3 pp under the oracle's; fee no more than 5 bps over the
    oracle's; against juspay, not behind on either (beyond noise: 0.02 pp, 0.5 bps) and
    ahead on at least one by more than that noise."""
    goals = []
    for scenario, by in means.items():
        smart, oracle, juspay = by["smart"], by["oracle"], by["juspay"]
        d_success = smart.success_pct - oracle.success_pct
        d_fee = smart.fee_bps - oracle.fee_bps
        goals.append(Goal(scenario, f"success within {SUCCESS_VS_ORACLE_PP} pp of oracle",
                          f"{d_success:+.3f} pp", d_success >= -SUCCESS_VS_ORACLE_PP))
        goals.append(Goal(scenario, f"fee within {FEE_VS_ORACLE_BPS:g} bps of oracle",
                          f"{d_fee:+.2f} bps", d_fee <= FEE_VS_ORACLE_BPS))
        j_success = smart.success_pct - juspay.success_pct
        j_fee = smart.fee_bps - juspay.fee_bps
        not_behind = j_success >= -JUSPAY_SUCCESS_NOISE_PP and j_fee <= JUSPAY_FEE_NOISE_BPS
        ahead = j_success > JUSPAY_SUCCESS_NOISE_PP or j_fee < -JUSPAY_FEE_NOISE_BPS
        goals.append(Goal(scenario, "ahead of juspay on success or fee, not behind on the other",
                          f"{j_success:+.3f} pp, {j_fee:+.2f} bps", not_behind and ahead))
    return goals


def _approval_table() -> list[str]:
    lines = []
    for currency in CURRENCY_SHARE:
        names = [n for n, ch in BY_NAME.items() if currency in ch.spec.currencies]
        lines += [f"| {currency} segment | " + " | ".join(names) + " |",
                  "| --- |" + " ---: |" * len(names)]
        for band in range(3):
            for issuer, _ in ISSUERS[currency]:
                cells = " | ".join(f"{BY_NAME[n].approves(band, issuer):.3f}" for n in names)
                lines.append(f"| b{band}/{issuer or 'none'} | {cells} |")
        lines.append("")
    return lines


def render(results: list[Result], timing: dict[str, tuple[float, float]], n: int, seeds: tuple[int, ...],
           wall_s: float, workers: int) -> str:
    means = summarise(results)
    goals = check_goals(means)
    held = sum(g.held for g in goals)
    lines = [
        "# Routing simulation (issue 26)",
        "",
        f"Reproduce: `.venv/bin/python -m bench.routing_sim --workers {workers}` "
        f"(`--quick`: {QUICK_TRANSACTIONS:,} transactions, one seed, goals not enforced).",
        "",
        (f"{n:,} transactions per scenario, policy and seed at {RATE_PER_S:.0f}/s of virtual time "
         f"({n / RATE_PER_S:.0f} s after a {WARMUP_S:.0f} s probe-only warm-up); seeds "
         f"{', '.join(map(str, seeds))}; {len(CHANNELS)} channels (9 in new_channel); failover up to "
         f"{MAX_ATTEMPTS} attempts within {DEADLINE_MS / 1000:.0f} s; {HARD_DECLINE:.1%} of payers "
         f"hard-declined everywhere. Wall time {wall_s:.0f} s on {workers} worker(s). The market, the "
         "scenarios and the policies are described in `bench/routing_sim.py`'s docstring."),
        "",
        ("Success: share of recharges captured. Fee: basis points of the amount of succeeded "
         "recharges (in CNY). Net value: what the value objective scores, realised: amount minus fee "
         "of succeeded recharges minus the latency price (100 bps of the amount per second past "
         "500 ms) on every recharge, in bps of the amount offered; it weighs fees, approval and "
         "latency as smart does. Latency: arrival to the end of the recharge's last attempt (a hang "
         "costs the channel's timeout). First-approval: captured on the first attempt. Recovered: "
         "of recharges soft-declined on their first attempt, the share another channel captured. "
         "Explored: decisions whose first choice is not the policy's greedy one (Thompson draws "
         "for smart, the 5 % uniform pick for juspay)."),
        "",
        "## Means over seeds",
        "",
        "| scenario | policy | success % | fee bps | net value bps | mean latency ms | p99 latency ms "
        "| attempts/txn | first-approval % | recovered % | explored % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, by in means.items():
        for policy in POLICIES:
            s = by[policy]
            lines.append(f"| {scenario} | {policy} | {s.success_pct:.3f} | {s.fee_bps:.2f} | {s.net_value_bps:.1f} | "
                         f"{s.latency_mean_ms:.1f} | {s.latency_p99_ms:.0f} | {s.attempts_per_txn:.3f} | "
                         f"{s.first_approval_pct:.2f} | {s.recovered_pct:.1f} | {s.explored_pct:.2f} |")
    lines += [
        "",
        f"## Goals ({held} of {len(goals)} held)",
        "",
        (f"On the means over seeds. Oracle: smart's success no more than {SUCCESS_VS_ORACLE_PP} pp "
         f"below, its fee no more than {FEE_VS_ORACLE_BPS:g} bps above (being cheaper or more "
         f"successful than the oracle is no failure: the oracle maximises expected value, latency "
         f"included, not either figure alone). Juspay: smart is not behind on success by more than "
         f"{JUSPAY_SUCCESS_NOISE_PP} pp nor on fee by more than {JUSPAY_FEE_NOISE_BPS} bps (noise at "
         f"these volumes), and is ahead on at least one by more than that. `main()` exits 1 when "
         f"any goal fails. Why some fail, and what was tuned: docs/routing.md#what-the-simulator-shows."),
        "",
        "| scenario | goal | smart minus reference | held |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [f"| {g.scenario} | {g.goal} | {g.measured} | {'yes' if g.held else 'NO'} |" for g in goals]
    lines += ["", "## Per seed", "",
              "| scenario | policy | seed | success % | fee bps | mean latency ms | p99 latency ms | explored % |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(results, key=lambda r: (list(SCENARIOS).index(r.scenario), POLICIES.index(r.policy), r.seed)):
        lines.append(f"| {r.scenario} | {r.policy} | {r.seed} | {r.success_pct:.3f} | {r.fee_bps:.2f} | "
                     f"{r.latency_mean_ms:.1f} | {r.latency_p99_ms:.0f} | {r.explored_pct:.2f} |")
    lines += ["", "## True approval at the start (before the payer's hard decline)", ""]
    lines += _approval_table()
    lines += [f"## decide() microbenchmark (8 eligible channels, approval tallies for "
              f"{len({s.segment for s in SAMPLES if s.txn.currency == 'CNY'})} segments each; "
              f"target p99 < {DECIDE_P99_US:g} us)", "",
              "| strategy | p50 us | p99 us |", "| --- | ---: | ---: |"]
    lines += [f"| {s} | {p50:.1f} | {p99:.1f} |" for s, (p50, p99) in timing.items()]
    lines += ["", "`smart` is the value objective (the default), `smart_score` the first version's score."]
    return "\n".join(lines) + "\n"


def _run_job(job: tuple[str, str, int, int]) -> Result:
    return simulate(*job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_TRANSACTIONS:,} transactions, one seed; goals not enforced")
    parser.add_argument("--out", type=Path, default=Path("bench/results/routing_sim.md"))
    parser.add_argument("--transactions", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--micro-iterations", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = args.transactions or (QUICK_TRANSACTIONS if args.quick else TRANSACTIONS)
    seeds = SEEDS[: args.seeds or (1 if args.quick else len(SEEDS))]
    started = time.perf_counter()
    jobs = [(scenario, policy, n, seed) for scenario in SCENARIOS for seed in seeds for policy in POLICIES]
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            results = list(pool.map(_run_job, jobs))
    else:
        results = [_run_job(job) for job in jobs]
    timing = bench_decide(args.micro_iterations or (10_000 if args.quick else 50_000))
    text = render(results, timing, n, seeds, time.perf_counter() - started, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({
        "transactions": n, "seeds": list(seeds), "rate_per_s": RATE_PER_S,
        "results": [dataclasses.asdict(r) | {"success_pct": r.success_pct, "fee_bps": r.fee_bps} for r in results],
        "means": {s: {p: dataclasses.asdict(m) for p, m in by.items()} for s, by in summarise(results).items()},
        "decide_us": {k: {"p50": p50, "p99": p99} for k, (p50, p99) in timing.items()},
    }, indent=1) + "\n")
    print(text)
    held = all(g.held for g in check_goals(summarise(results))) and timing["smart"][1] < DECIDE_P99_US
    return 0 if held or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
