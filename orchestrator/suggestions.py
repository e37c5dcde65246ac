"""Amount suggestions (SPEC 22): the amounts a user is most likely to recharge next.

Pure: no I/O, no clock; every time is a timestamp passed in. State is kept
incrementally, so ``suggest`` never reads a user's history, only a summary of it:

- per user and currency, a *book* of at most ``max_amounts`` amounts (the least weighty
  dropped first). Each amount has two weights (frequency and recency): a long memory that
  keeps ``event_decay`` of itself at each later recharge of the user, and a short one
  that keeps ``fast_decay``; both also halve every ``half_life_s``. Which memory to trust
  is learnt per user, by how well each foresaw the user's last recharges (a drifting user
  comes to trust the short one). Each amount also has the moments of when it is bought:
  the hour of the day (one harmonic) and the day of the month (two, so twice-a-month
  paydays show too), weighted by its own purchases and aged by time only. The repeats of
  a PK countdown (the same amount again within ``_SESSION_S``) count as purchases but
  neither age the user's other amounts nor add a moment: one countdown is one choice.
  At most ``max_users`` users, the least recently used dropped first.
- per (country, currency), and per currency over every country, a *cohort*: decayed
  counts of amounts (half-life ``cohort_half_life_s``, at most ``COHORT_AMOUNTS``), where
  a PK countdown counts once.

``suggest`` scores each amount of the user's book as a probability,

    p(a) ~ (trust x short(a) + (1 - trust) x long(a)) x hour(a)^h x day(a)^d

(memories normalised), where ``hour(a)`` and ``day(a)`` are the amount's density at this
hour and day relative to flat: a Fourier estimate from its moments, each harmonic shrunk
toward flat unless it stands out of chance (Rayleigh: ``hour_shrink``, ``day_shrink``).
It mixes them with a prior, the cohort's amounts or else the configured defaults:
``P(a) = (N p(a) + prior x q(a)) / (N + prior)``, N the user's long-memory weight. The
answer is the top k amounts the user can buy (within ``limits``), with those
probabilities as scores (so they sum to at most 1), and the basis: ``history`` when the
user has history in the currency, else ``cohort`` when the cohort of the user's country
(or, not enough, of the currency) holds at least ``cohort_min`` weight, else ``default``.

The weights are tuned on the training split of ``bench/suggestions_gen.py``'s histories
(``bench/suggestions_bench.py --tune``); ``bench/results/suggestions.md`` has the hit
rates they give on the held-out split. Boosts of the last amount, of a streak of it and
of an amount bought seconds ago were tried too and tuned to nothing (the short memory
already covers recency), so they are gone.
"""

from __future__ import annotations

import calendar
import heapq
import math
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

__all__ = ["COHORT_AMOUNTS", "Basis", "Past", "Settings", "Suggestion", "SuggestionModel", "Suggestions",
           "Weights", "default_amounts"]

Basis = Literal["history", "cohort", "default"]

# A cohort is the amounts a country buys: a few dozen price points at most.
COHORT_AMOUNTS = 48
_TAU = 2 * math.pi
# One row of a book, in one flat array of 8-byte fields: the amount; its weight in the long
# and the short memory; then the moments of when it is bought (their weight, the sum of
# their squared weights, the hour's (cos, sin), the day of the month's (cos, sin) and
# (cos 2x, sin 2x)). 96 bytes an amount.
_AMOUNT, _W, _WF, _WT, _W2, _HC, _HS, _DAY = range(8)
_DAY_HARMONICS = 2
_STRIDE = _DAY + 2 * _DAY_HARMONICS
_EMPTY_ROW = array("d", [0.0] * _STRIDE)
_PSEUDO = 0.1  # pseudo-count of every amount when the two memories are judged
_FLOOR = 0.05  # the least density an hour or a day may have (a Fourier estimate dips below 0)
# The same amount again this soon is one PK countdown: one choice, made once.
_SESSION_S = 600.0


@dataclass(frozen=True, slots=True)
class Weights:
    """How the features combine: the defaults are tuned on the generator's training split
    (bench/results/suggestions.md)."""

    # The long and the short memory: the weight an amount keeps at each later recharge of
    # the user, and half of it every half_life_s; neither is trusted less than trust_floor.
    event_decay: float = 0.98
    fast_decay: float = 0.7
    trust_floor: float = 0.01
    half_life_s: float = 90 * 86_400.0
    # Exponents of the hour-of-day and day-of-month densities, and their shrinkage.
    hour: float = 5.0
    hour_shrink: float = 0.5
    day: float = 1.0
    day_shrink: float = 3.0
    # The weight of the cohort (or defaults) mixed into a user's own amounts.
    prior: float = 0.5


@dataclass(frozen=True, slots=True)
class Settings:
    max_users: int = 100_000
    max_amounts: int = 8
    cohort_half_life_s: float = 30 * 86_400.0
    cohort_min: float = 20.0
    # currency -> common amounts in minor units, for users and countries nothing is known of
    defaults: Mapping[str, Sequence[int]] = field(default_factory=dict)
    weights: Weights = Weights()


@dataclass(frozen=True, slots=True)
class Suggestion:
    amount_minor: int
    score: float


@dataclass(frozen=True, slots=True)
class Suggestions:
    amounts: tuple[Suggestion, ...]
    basis: Basis


class Past(Protocol):
    """A past succeeded recharge (``orchestrator.journal.PastRecharge``)."""

    @property
    def amount_minor(self) -> int: ...

    @property
    def currency(self) -> str: ...

    @property
    def country(self) -> str: ...

    @property
    def created_at(self) -> float: ...


# -- time features ------------------------------------------------------------------------


def _phases(at: float) -> tuple[float, ...]:
    """(cos, sin) of the hour of the day, then of the day of the month's harmonics 1 ..
    ``_DAY_HARMONICS``, at ``at`` (UTC: a user's own time zone is a constant shift,
    which the per-user moments absorb)."""
    hour = _TAU * ((at % 86_400.0) / 86_400.0)
    d = datetime.fromtimestamp(at, UTC)
    length = calendar.monthrange(d.year, d.month)[1]
    day = _TAU * (d.day - 1 + (at % 86_400.0) / 86_400.0) / length
    out = [math.cos(hour), math.sin(hour)]
    for k in range(1, _DAY_HARMONICS + 1):
        out += (math.cos(k * day), math.sin(k * day))
    return tuple(out)


def _harmonic(c: float, s: float, pc: float, ps: float, weight: float, squares: float, shrink: float) -> float:
    """One harmonic's term of a density relative to flat, 2 (m . p), from the moments
    (c, s) of observations weighing ``weight`` in all (``squares``: the sum of their
    squared weights) at phase p. Scattered observations have c^2 + s^2 of about
    ``squares`` by chance alone (Rayleigh), so the term is shrunk toward 0 (flat) by
    ``1 - shrink x squares / (c^2 + s^2)``: a few scattered days say nothing."""
    power = c * c + s * s
    if power <= shrink * squares:
        return 0.0
    return 2.0 * (c * pc + s * ps) / weight * (1.0 - shrink * squares / power)


# -- a user's book ------------------------------------------------------------------------


class _Book:
    """One user's amounts in one currency (see the module docstring): one row per amount
    in a flat array, the fields named by ``_AMOUNT`` .. ``_DAY``."""

    __slots__ = ("rows", "last_amount", "last_at", "updated_at", "total", "total_fast", "trust")

    def __init__(self) -> None:
        self.rows = array("d")
        self.last_amount = 0
        self.last_at = -math.inf
        self.updated_at = -math.inf
        self.total = 0.0  # of the long memory's weights
        self.total_fast = 0.0  # of the short memory's
        self.trust = 0.5  # in the short memory over the long one

    def __len__(self) -> int:
        return len(self.rows) // _STRIDE

    def repeat_in_session(self, amount: int, at: float) -> bool:
        """The same amount as the last, moments later: a PK countdown going on."""
        return amount == self.last_amount and 0 <= at - self.last_at < _SESSION_S

    def observe(self, amount: int, at: float, w: Weights, max_amounts: int) -> None:
        rows = self.rows
        repeat = self.repeat_in_session(amount, at)
        if at >= self.updated_at:
            gap = at - self.updated_at
            aged = 0.5 ** (gap / w.half_life_s) if gap != math.inf else 0.0
            slow, fast = (aged, aged) if repeat else (w.event_decay * aged, w.fast_decay * aged)
            if rows and not repeat:
                self._judge(amount, w)
            # When an amount is bought is learnt from its own purchases: what the user
            # buys in between does not age it, time does.
            for i in range(0, len(rows), _STRIDE):
                rows[i + _W] *= slow
                rows[i + _WF] *= fast
                if aged != 1.0:
                    for f in range(_WT, _STRIDE):
                        rows[i + f] *= aged
                    rows[i + _W2] *= aged  # squared weights: twice
            self.total *= slow
            self.total_fast *= fast
            self.updated_at = at
            e = 1.0
        else:  # news of an older recharge (it succeeded late): weighed as of its own time
            e = 0.5 ** ((self.updated_at - at) / w.half_life_s)
        i = self._row(amount)
        if i < 0:
            i = self._add(amount, max_amounts)
        rows[i + _W] += e
        rows[i + _WF] += e
        self.total += e
        self.total_fast += e
        if not repeat:  # a countdown's repeats fall at one moment: one observation of when
            rows[i + _WT] += e
            rows[i + _W2] += e * e
            for f, phase in enumerate(_phases(at), i + _HC):
                rows[f] += e * phase
        if at >= self.last_at:
            self.last_amount, self.last_at = amount, at

    def _judge(self, amount: int, w: Weights) -> None:
        """Move the trust toward the memory that gave ``amount`` the higher probability
        (Bayes), kept off the bounds so that either can win it back."""
        rows = self.rows
        i = self._row(amount)
        n = len(self) + 1
        slow = ((rows[i + _W] if i >= 0 else 0.0) + _PSEUDO) / (self.total + _PSEUDO * n)
        fast = ((rows[i + _WF] if i >= 0 else 0.0) + _PSEUDO) / (self.total_fast + _PSEUDO * n)
        t = self.trust * fast / (self.trust * fast + (1 - self.trust) * slow)
        self.trust = min(max(t, w.trust_floor), 1 - w.trust_floor)

    def _row(self, amount: int) -> int:
        rows = self.rows
        for i in range(0, len(rows), _STRIDE):
            if rows[i] == amount:
                return i
        return -1

    def _add(self, amount: int, max_amounts: int) -> int:
        rows = self.rows
        self.trim(max_amounts - 1)
        rows.extend(_EMPTY_ROW)
        rows[len(rows) - _STRIDE] = float(amount)
        return len(rows) - _STRIDE

    def trim(self, max_amounts: int) -> None:
        """Drop the least weighty amounts until at most ``max_amounts`` are left."""
        rows = self.rows
        while len(self) > max(max_amounts, 0):
            drop = min(range(0, len(rows), _STRIDE), key=lambda j: rows[j + _W])
            self.total -= rows[drop + _W]
            self.total_fast -= rows[drop + _WF]
            del rows[drop:drop + _STRIDE]

    def probabilities(self, now: float, w: Weights) -> list[tuple[float, int]]:
        """(p, amount) for every amount in the book, p summing to 1."""
        phases = _phases(now)
        hc, hs = phases[0], phases[1]
        rows = self.rows
        out = []
        total = 0.0
        slow = (1 - self.trust) / self.total if self.total > 0 else 0.0
        fast = self.trust / self.total_fast if self.total_fast > 0 else 0.0
        for i in range(0, len(rows), _STRIDE):
            v = slow * rows[i + _W] + fast * rows[i + _WF]
            if v <= 0.0:
                continue
            wt, squares = rows[i + _WT], rows[i + _W2]
            if wt > 0.0:
                hour = 1.0 + _harmonic(rows[i + _HC], rows[i + _HS], hc, hs, wt, squares, w.hour_shrink)
                day = 1.0
                for f in range(_DAY, _STRIDE, 2):
                    day += _harmonic(rows[i + f], rows[i + f + 1], phases[f - _HC], phases[f - _HC + 1], wt,
                                     squares, w.day_shrink)
                v *= max(hour, _FLOOR) ** w.hour * max(day, _FLOOR) ** w.day
            out.append((v, int(rows[i])))
            total += v
        return [(v / total, a) for v, a in out] if total > 0 else []


class _User:
    __slots__ = ("country", "loaded_at", "books")

    def __init__(self, country: str, loaded_at: float | None) -> None:
        self.country = country
        self.loaded_at = loaded_at
        self.books: dict[str, _Book] = {}


# -- cohorts ------------------------------------------------------------------------------


class _Cohort:
    """Decayed counts of the amounts a cohort buys. Weights are stored scaled up by
    2^((t - epoch) / half_life) instead of decaying every one at each recharge; the scale
    is rebased before it overflows."""

    __slots__ = ("weights", "total", "epoch", "_top")

    def __init__(self, epoch: float) -> None:
        self.weights: dict[int, float] = {}
        self.total = 0.0
        self.epoch = epoch
        self._top: list[tuple[float, int]] | None = None

    def add(self, amount: int, at: float, half_life_s: float) -> None:
        exponent = (at - self.epoch) / half_life_s
        if exponent > 500:  # rebase: 2^500 is near the float range's middle
            scale = 0.5 ** exponent
            self.weights = {a: v * scale for a, v in self.weights.items()}
            self.total *= scale
            self.epoch, exponent = at, 0.0
        inc = 2.0 ** max(exponent, -1000.0)
        weights = self.weights
        if amount not in weights and len(weights) >= COHORT_AMOUNTS:
            drop = min(weights, key=weights.__getitem__)
            self.total -= weights.pop(drop)
        weights[amount] = weights.get(amount, 0.0) + inc
        self.total += inc
        self._top = None

    def weight(self, now: float, half_life_s: float) -> float:
        """The decayed number of recharges behind the cohort, as of ``now``."""
        return self.total * 0.5 ** ((now - self.epoch) / half_life_s)

    def top(self, n: int) -> list[tuple[float, int]]:
        """The n most bought amounts: (share, amount), largest share first."""
        top = self._top
        if top is None or len(top) < min(n, len(self.weights)):
            total = self.total
            top = [(v / total, a) for v, a in heapq.nlargest(n, ((v, -a) for a, v in self.weights.items()))]
            top = [(p, -a) for p, a in top]
            self._top = top
        return top[:n]


def default_amounts(defaults: Sequence[int] | None, limits: tuple[int, int] | None) -> list[int]:
    """The configured amounts within ``limits``; without any, three round amounts from the
    smallest one can buy (1-2-5 steps: 5, 20, 50 CNY for a 5 CNY minimum)."""
    if defaults:
        return [a for a in defaults if limits is None or limits[0] <= a <= limits[1]]
    if limits is None:
        return []
    lo, hi = limits
    out: list[int] = []
    for factor in (1, 4, 10):
        a = _round_up(max(lo, 1) * factor)
        if a <= hi and a not in out:
            out.append(a)
    return out


def _round_up(x: int) -> int:
    """The smallest 1, 2 or 5 x 10^n at least ``x``."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale >= x:
                return m * scale
        scale *= 10


# -- the model ----------------------------------------------------------------------------


class SuggestionModel:
    """Users' books and the cohorts, bounded; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._users: OrderedDict[str, _User] = OrderedDict()
        self._cohorts: dict[tuple[str | None, str], _Cohort] = {}

    def __len__(self) -> int:
        return len(self._users)

    def configure(self, settings: Settings) -> None:
        """New settings (a reload); the state is kept, trimmed to the new bounds."""
        self.settings = settings
        self._trim()
        for user in self._users.values():
            for book in user.books.values():
                book.trim(settings.max_amounts)

    # -- learning ---------------------------------------------------------------------

    def observe(self, user_id: str, country: str, currency: str, amount_minor: int, at: float, *,
                create: bool = True) -> None:
        """A succeeded recharge. Without ``create`` a user not yet known only feeds the
        cohorts (their history is loaded whole when first asked for)."""
        user = self._users.get(user_id)
        if user is None and create:
            user = self._users[user_id] = _User(country, None)
            self._trim()
        if user is None:
            self._to_cohorts(country, currency, amount_minor, at)
            return
        self._users.move_to_end(user_id)
        user.country = country
        self._learn(user, country, currency, amount_minor, at, feed_cohorts=True)

    def load(self, user_id: str, past: Iterable[Past], now: float) -> None:
        """Replace what is known of a user with their history (any order). Recharges newer
        than any already known of them feed the cohorts too."""
        old = self._users.pop(user_id, None)
        known = max((b.last_at for b in old.books.values()), default=-math.inf) if old is not None else -math.inf
        user = _User(old.country if old is not None else "", now)
        for r in sorted(past, key=lambda r: r.created_at):
            user.country = r.country
            self._learn(user, r.country, r.currency, r.amount_minor, r.created_at, feed_cohorts=r.created_at > known)
        self._users[user_id] = user
        self._trim()

    def loaded_at(self, user_id: str) -> float | None:
        """When the user's history was last loaded (None: never, or forgotten since)."""
        user = self._users.get(user_id)
        return None if user is None else user.loaded_at

    def country_of(self, user_id: str) -> str | None:
        user = self._users.get(user_id)
        return user.country or None if user is not None else None

    def _learn(self, user: _User, country: str, currency: str, amount: int, at: float, *, feed_cohorts: bool) -> None:
        s = self.settings
        book = user.books.get(currency)
        if book is None:
            book = user.books[currency] = _Book()
        # A PK countdown is one choice, made once: it counts once in the cohorts.
        if feed_cohorts and not book.repeat_in_session(amount, at):
            self._to_cohorts(country, currency, amount, at)
        book.observe(amount, at, s.weights, s.max_amounts)

    def _to_cohorts(self, country: str, currency: str, amount: int, at: float) -> None:
        for key in ((country, currency), (None, currency)):
            cohort = self._cohorts.get(key)
            if cohort is None:
                cohort = self._cohorts[key] = _Cohort(at)
            cohort.add(amount, at, self.settings.cohort_half_life_s)

    def _trim(self) -> None:
        while len(self._users) > self.settings.max_users:
            self._users.popitem(last=False)

    # -- answering --------------------------------------------------------------------

    def suggest(self, user_id: str, country: str | None, currency: str, now: float, k: int = 3,
                limits: tuple[int, int] | None = None) -> Suggestions:
        """The top ``k`` amounts for the user's next recharge in ``currency`` (see the
        module docstring); ``country`` None: the user's own, as last seen."""
        s = self.settings
        user = self._users.get(user_id)
        book = None
        if user is not None:
            self._users.move_to_end(user_id)
            book = user.books.get(currency)
            country = country or user.country or None
        prior, basis = self._prior(country, currency, now, k + (len(book) if book is not None else 0), limits)
        scores: dict[int, float] = {}
        if book is not None and book.total > 0:
            n, m = book.total, s.weights.prior
            own = n / (n + m)
            for p, amount in book.probabilities(now, s.weights):
                scores[amount] = own * p
            for q, amount in prior:
                scores[amount] = scores.get(amount, 0.0) + (1 - own) * q
            basis = "history"
        else:
            scores = {amount: q for q, amount in prior}
        ranked = sorted(((-p, a) for a, p in scores.items() if a > 0 and (limits is None or limits[0] <= a <= limits[1])))
        return Suggestions(tuple(Suggestion(a, min(1.0, max(0.0, -p))) for p, a in ranked[:k]), basis)

    def _prior(self, country: str | None, currency: str, now: float, n: int,
               limits: tuple[int, int] | None) -> tuple[list[tuple[float, int]], Basis]:
        """The amounts anyone in the user's country (or currency) would buy: (q, amount),
        and where they came from."""
        s = self.settings
        for key in ((country, currency), (None, currency)) if country else ((None, currency),):
            cohort = self._cohorts.get(key)
            if cohort is not None and cohort.weight(now, s.cohort_half_life_s) >= s.cohort_min:
                return cohort.top(n), "cohort"
        amounts = default_amounts(s.defaults.get(currency), limits)
        return [(1 / len(amounts), a) for a in amounts], "default"

    # -- for the bench and the tests ----------------------------------------------------

    def amounts_of(self, user_id: str) -> int:
        """How many amounts are kept for a user, over their currencies."""
        user = self._users.get(user_id)
        return 0 if user is None else sum(len(b) for b in user.books.values())
