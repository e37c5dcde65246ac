"""A per-channel circuit breaker in the manner of Envoy's outlier detection.

    closed ──(N consecutive failures, or success rate < threshold with volume)──> open
    open ──(ejection time elapsed, or M probe successes in a row after min_open_s)──> half_open
    half_open ──(S trial successes)──> closed
    half_open ──(any trial or probe failure)──> open (longer)

Ejection time is ``base_ejection_s x ejections``, capped at ``max_ejection_s``; each
``ejection_decay_s`` spent closed forgives one past ejection, so a channel that failed
once long ago is not punished like one that flaps.

Probes count too: a failed probe is a failure (towards the consecutive count, and it
re-opens a half-open breaker); while open, ``probe_successes_to_half_open`` successful
probes in a row end the ejection early (but not before ``min_open_s``), because a
recovered channel should not sit out a long ejection when we can see it answering.
Probes never close the breaker from open directly: only half-open trials, real or
probes, do, and they are capped at ``half_open_max_trials`` live requests.

A pure state machine: time comes from the injected clock, and the open -> half_open
transition happens lazily when the state is next read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from health._stats import Monotonic
from health._window import SlidingCounts

__all__ = ["Breaker", "BreakerConfig", "Permit"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Thresholds; defaults follow Envoy's (5 consecutive, 30 s base ejection)."""

    consecutive_failures: int = 5
    success_rate_threshold: float = 0.85
    success_rate_min_volume: int = 50
    success_rate_window_s: float = 30.0
    success_rate_bucket_s: float = 5.0
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    ejection_decay_s: float = 30.0
    half_open_max_trials: int = 3
    half_open_successes: int = 2
    probe_successes_to_half_open: int = 2
    min_open_s: float = 5.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be >= 1")
        if not 0 <= self.success_rate_threshold <= 1:
            raise ValueError("success_rate_threshold must be within [0, 1]")
        if self.base_ejection_s <= 0 or self.max_ejection_s < self.base_ejection_s:
            raise ValueError("need 0 < base_ejection_s <= max_ejection_s")
        if self.ejection_decay_s <= 0:
            raise ValueError("ejection_decay_s must be > 0")
        if not 1 <= self.half_open_successes <= self.half_open_max_trials:
            raise ValueError("need 1 <= half_open_successes <= half_open_max_trials")
        if self.probe_successes_to_half_open < 0 or self.min_open_s < 0:
            raise ValueError("probe_successes_to_half_open and min_open_s must be >= 0")


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to send one request. A trial permit belongs to one half-open period: its
    result counts only for that period (a late answer to an old trial does not)."""

    trial: bool
    period: int


_REGULAR = Permit(trial=False, period=-1)


class Breaker:
    """One channel's breaker. ``on_transition(old, new)`` is called on every change."""

    def __init__(self, clock: Monotonic, config: BreakerConfig = BreakerConfig(),
                 on_transition: Callable[[str, str], None] | None = None) -> None:
        self._clock = clock
        self.config = config
        self.on_transition = on_transition
        self._state = CLOSED
        self._ejections = 0
        self._opened_at = 0.0
        self._open_until = 0.0
        self._closed_at = clock()
        self._consecutive = 0
        self._window = SlidingCounts(config.success_rate_window_s, config.success_rate_bucket_s)
        self._probe_streak = 0
        self._period = 0
        self._trials_issued = 0
        self._trial_successes = 0

    # -- reading -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` as of now (may transition open -> half_open)."""
        if self._state == OPEN:
            self._maybe_half_open(self._clock())
        return self._state

    @property
    def ejections(self) -> int:
        """The ejection multiplier as of the last ejection."""
        return self._ejections

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    @property
    def trials_available(self) -> bool:
        """False only when half-open with every trial permit out."""
        return self.state != HALF_OPEN or self._trials_issued < self.config.half_open_max_trials

    def open_remaining_s(self) -> float:
        """Seconds left in the current ejection (0 unless open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def describe(self) -> dict[str, object]:
        state = self.state
        return {
            "state": state,
            "ejections": self._ejections,
            "open_remaining_s": round(self.open_remaining_s(), 3),
            "consecutive_failures": self._consecutive,
            "trials_issued": self._trials_issued if state == HALF_OPEN else 0,
            "trials_max": self.config.half_open_max_trials,
        }

    # -- admission -----------------------------------------------------------------

    def try_acquire(self) -> Permit | None:
        """Leave to send a live request: always when closed, never when open, and at most
        ``half_open_max_trials`` trial permits per half-open period."""
        state = self.state
        if state == CLOSED:
            return _REGULAR
        if state == HALF_OPEN and self._trials_issued < self.config.half_open_max_trials:
            self._trials_issued += 1
            return Permit(trial=True, period=self._period)
        return None

    def release(self, permit: Permit) -> None:
        """Give back a permit whose request was never sent (or was cancelled unanswered),
        so the trial can go to another request."""
        if permit.trial and permit.period == self._period and self._state == HALF_OPEN:
            self._trials_issued = max(0, self._trials_issued - 1)

    # -- feeding -------------------------------------------------------------------

    def record(self, ok: bool, permit: Permit = _REGULAR) -> None:
        """A live request's result (``ok``: the channel worked, see ``channel_worked``)."""
        state = self.state
        now = self._clock()
        if state == CLOSED:
            self._record_closed(ok, now)
        elif state == HALF_OPEN and permit.trial and permit.period == self._period:
            self._record_trial(ok, now)
        # Open, or a non-trial answer while half-open: a request sent before the ejection
        # tells nothing about the channel now.

    def record_probe(self, ok: bool) -> None:
        state = self.state
        now = self._clock()
        if state == CLOSED:
            # A good ping does not reset the count: /ping may answer while payments fail.
            if not ok:
                self._consecutive += 1
                if self._consecutive >= self.config.consecutive_failures:
                    self._open(now)
        elif state == HALF_OPEN:
            self._record_trial(ok, now)
        else:
            self._probe_streak = self._probe_streak + 1 if ok else 0
            self._maybe_half_open(now)

    # -- transitions ---------------------------------------------------------------

    def _record_closed(self, ok: bool, now: float) -> None:
        self._window.add(ok, now)
        if ok:
            self._consecutive = 0
            return
        self._consecutive += 1
        if self._consecutive >= self.config.consecutive_failures or self._rate_too_low(now):
            self._open(now)

    def _rate_too_low(self, now: float) -> bool:
        ok, failed = self._window.counts(now)
        total = ok + failed
        return total >= self.config.success_rate_min_volume and ok < self.config.success_rate_threshold * total

    def _record_trial(self, ok: bool, now: float) -> None:
        if not ok:
            self._open(now)
            return
        self._trial_successes += 1
        if self._trial_successes >= self.config.half_open_successes:
            self._close(now)

    def _maybe_half_open(self, now: float) -> None:
        cfg = self.config
        early = (cfg.probe_successes_to_half_open > 0
                 and self._probe_streak >= cfg.probe_successes_to_half_open
                 and now - self._opened_at >= cfg.min_open_s)
        if now >= self._open_until or early:
            self._period += 1
            self._trials_issued = 0
            self._trial_successes = 0
            self._transition(HALF_OPEN)

    def _open(self, now: float) -> None:
        cfg = self.config
        if self._state == CLOSED:
            forgiven = math.floor((now - self._closed_at) / cfg.ejection_decay_s)
            self._ejections = max(0, self._ejections - forgiven)
        self._ejections += 1
        self._opened_at = now
        self._open_until = now + min(cfg.base_ejection_s * self._ejections, cfg.max_ejection_s)
        self._probe_streak = 0
        self._consecutive = 0
        self._window.clear()
        self._transition(OPEN)

    def _close(self, now: float) -> None:
        self._closed_at = now
        self._consecutive = 0
        self._window.clear()
        self._transition(CLOSED)

    def _transition(self, new: str) -> None:
        old, self._state = self._state, new
        if self.on_transition is not None and old != new:
            self.on_transition(old, new)
