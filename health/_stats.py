"""Passive per-channel statistics, fed by live attempts and by probes.

What routing needs to know is whether the *channel* worked, not whether the payment
did: a decline is the issuer's answer delivered by a working channel, while
``not_processed`` and ``unknown`` (timeouts, resets, 5xx) are the channel failing.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from channels import AttemptOutcome
from health._window import LatencyWindow, SlidingCounts, TimeDecayedEwma

__all__ = ["ChannelStats", "Monotonic", "ProbeResult", "StatsConfig", "channel_worked"]

Monotonic = Callable[[], float]
"""Monotonic seconds. Injected everywhere so tests and the simulator run in virtual time."""

_CHANNEL_FAILURES = frozenset({AttemptOutcome.NOT_PROCESSED, AttemptOutcome.UNKNOWN})


def channel_worked(outcome: AttemptOutcome | str) -> bool:
    """True when the channel answered (captured, pending, declined, voided, refunded);
    False for ``not_processed`` and ``unknown``, which are the channel's own failures."""
    return AttemptOutcome(outcome) not in _CHANNEL_FAILURES


@dataclass(frozen=True, slots=True)
class StatsConfig:
    """Window sizes. Defaults: 60 s of 2 s buckets for success counts, decayed with a
    10 s half-life for routing; the last 512 answers (max 60 s old) for quantiles."""

    window_s: float = 60.0
    bucket_s: float = 2.0
    half_life_s: float = 10.0
    latency_samples: int = 512
    ewma_tau_s: float = 2.0
    ewma_min_alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.bucket_s <= 0 or self.half_life_s <= 0:
            raise ValueError("window_s, bucket_s and half_life_s must be > 0")
        if self.latency_samples < 1:
            raise ValueError("latency_samples must be >= 1")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    at: float
    ok: bool
    latency_ms: float


class ChannelStats:
    """Latency (EWMA and windowed p50/p95/p99), success counts over a sliding window,
    outcome counts, the in-flight gauge and the last probe, for one channel.

    Latency figures describe answers only: a failure is already counted by the success
    rate, and folding a 2 s timeout into a 28 ms channel's latency would count it twice.
    A hang still shows, as ``stalled_ms``.
    """

    def __init__(self, clock: Monotonic, config: StatsConfig = StatsConfig(), *,
                 ping_like_payment: bool = True) -> None:
        self._clock = clock
        self.config = config
        # Whether a ping takes about as long as a payment (a direct API: same server, same
        # path) or not (a bank's ping is 40 ms, its payments 4.8 s).
        self.ping_like_payment = ping_like_payment
        self._counts = SlidingCounts(config.window_s, config.bucket_s, config.half_life_s)
        self._latency = LatencyWindow(config.latency_samples, config.window_s)
        self._ewma = TimeDecayedEwma(config.ewma_tau_s, config.ewma_min_alpha)
        self._outcomes: dict[str, int] = {outcome.value: 0 for outcome in AttemptOutcome}
        self._in_flight: OrderedDict[int, float] = OrderedDict()
        self._tokens = itertools.count(1)
        self._last_probe: ProbeResult | None = None
        self._last_answer_at = -math.inf
        self._last_live_latency_at: float | None = None
        self._probes = {"ok": 0, "failed": 0}

    # -- feeding -------------------------------------------------------------------

    def record(self, outcome: AttemptOutcome | str, latency_ms: float) -> bool:
        """Count one live attempt's outcome; returns whether the channel worked."""
        outcome = AttemptOutcome(outcome)
        now = self._clock()
        worked = outcome not in _CHANNEL_FAILURES
        self._outcomes[outcome.value] += 1
        self._counts.add(worked, now)
        if outcome is not AttemptOutcome.UNKNOWN:
            self._last_answer_at = now  # a reply, even a refusal, proves it is not hung
        if worked:
            self._add_latency(latency_ms, now)
            self._last_live_latency_at = now
        return worked

    def record_probe(self, ok: bool, latency_ms: float) -> None:
        """A probe says the channel answers, not how long a payment takes: a bank's
        ``/ping`` takes 40 ms and its payments 4.8 s. So a probe's latency stands in for
        payment latency only on a channel that has carried traffic before but none for a
        half-life (ejected, or idle): that keeps a recovered channel from being judged
        on its outage forever. A channel never measured stays unmeasured (routing scores
        it at its timeout) rather than looking as fast as its ping."""
        now = self._clock()
        self._last_probe = ProbeResult(now, ok, latency_ms)
        self._probes["ok" if ok else "failed"] += 1
        if ok:
            self._last_answer_at = now
            live = self._last_live_latency_at
            if self.ping_like_payment or (live is not None and now - live > self.config.half_life_s):
                self._add_latency(latency_ms, now)

    def _add_latency(self, latency_ms: float, now: float) -> None:
        self._ewma.add(latency_ms, now)
        self._latency.add(latency_ms, now)

    def enter(self) -> int:
        """An attempt starts; returns the token to pass to ``exit``."""
        token = next(self._tokens)
        self._in_flight[token] = self._clock()
        return token

    def exit(self, token: int) -> None:
        """An attempt ended (whatever its outcome). Unknown tokens are ignored, so a
        cleanup path may call this twice."""
        self._in_flight.pop(token, None)

    def reset_success_window(self) -> None:
        """Forget the success/failure window (lifetime outcome counts are kept)."""
        self._counts.clear()

    # -- reading -------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def stalled_ms(self) -> float:
        """How long the channel has had attempts outstanding without answering anything:
        since the later of its last answer and its oldest outstanding attempt's start."""
        if not self._in_flight:
            return 0.0
        oldest = next(iter(self._in_flight.values()))
        return max(0.0, self._clock() - max(oldest, self._last_answer_at)) * 1000.0

    @property
    def latency_ewma_ms(self) -> float | None:
        return self._ewma.value

    def latency_quantiles(self, *, fresh: bool = False) -> tuple[float | None, float | None, float | None]:
        """(p50, p95, p99) over the window, possibly cached for a moment unless ``fresh``."""
        p50, p95, p99 = self._latency.quantiles(self._clock(), (0.50, 0.95, 0.99), fresh=fresh)
        return p50, p95, p99

    def window_counts(self) -> tuple[int, int]:
        """(successes, failures) of live attempts in the window."""
        return self._counts.counts(self._clock())

    def decayed_counts(self) -> tuple[float, float]:
        """(successes, failures) weighted by recency: the routing estimate's input."""
        return self._counts.decayed(self._clock())

    def success_rate(self) -> float | None:
        ok, failed = self.window_counts()
        total = ok + failed
        return ok / total if total else None

    def outcome_counts(self) -> dict[str, int]:
        """Lifetime count of each attempt outcome."""
        return dict(self._outcomes)

    def probe_counts(self) -> dict[str, int]:
        return dict(self._probes)

    @property
    def last_probe(self) -> ProbeResult | None:
        return self._last_probe

    @property
    def latency_window_size(self) -> int:
        """Samples held for quantiles: never more than ``config.latency_samples``."""
        return len(self._latency)
