"""A seeded generator of users' recharge histories, to measure amount suggestions (SPEC 22).

Every user has one habit, one country and its currency, a time zone and a favourite hour
of the day; amounts are the app's price points of that currency (``LADDERS``, in whole
units, emitted in minor units), drawn by popularity (``POPULARITY``) where a habit does
not say otherwise. Times are spread over ``DAYS`` days from ``START`` (UTC); a user's
hours and days of the month are local, so the model sees them shifted by the time zone,
as it would in production.

The habits, and their share of users:

=========  =====  ==========================================================================
habit      share  what the user does
=========  =====  ==========================================================================
fixed      25 %   one amount, 2 to 10 recharges a month (log-uniform), at a favourite hour;
                  one in twenty is a neighbouring price point.
payday     15 %   a small amount (one time in ten the next point up) 3 to 8 times a month,
                  and one larger amount within the two days after each payday (85 % of
                  paydays; one in five of those twice); paydays: monthly (1st, 10th, 15th,
                  25th or 28th) or, for 30 % of them, twice a month (15th and the last day,
                  as in the Philippines).
drift      15 %   a current amount that moves one price point up every 1 to 2.5 months
                  (up to 3 steps); 85 % the current amount, 15 % the one before; 3 to 10
                  recharges a month.
pk_burst   15 %   1 to 4 PK-countdown sessions a month in the evening: 2 or more quick
                  recharges (mean 4) 5 to 40 s apart, of one small amount (85 %, else the
                  next point up); between sessions 0.5 to 2 recharges a month of a medium
                  amount.
one_off    15 %   one recharge (70 %) or two (the second the same amount half the time),
                  at any time, amounts by popularity: never enough history to learn from.
mixed      15 %   two or three favourite amounts, each with its own weight and its own
                  hour of the day (e.g. a small one at lunch, a large one at night), 3 to
                  12 recharges a month.
=========  =====  ==========================================================================

And whatever the habit, each user strays: 2 % to 25 % of their habitual recharges (uniform
per user; not a countdown's quick repeats) are any price point, by popularity, so no
history is perfectly regular.

Shares of users are not shares of recharges: PK bursts make many recharges, one-off users
few (``python bench/suggestions_bench.py`` prints both).

    from bench.suggestions_gen import generate
    users = generate(seed=1, users=20_000)
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DAYS", "HABITS", "LADDERS", "MARKETS", "START", "Recharge", "User", "generate"]

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
DAYS = 180
_DAY = 86_400.0

# (currency, country, share of users, UTC offset in hours, minor-unit exponent)
MARKETS = [
    ("CNY", "CN", 0.50, 8.0, 2),
    ("PHP", "PH", 0.12, 8.0, 2),
    ("MYR", "MY", 0.08, 8.0, 2),
    ("IDR", "ID", 0.08, 7.0, 2),
    ("VND", "VN", 0.05, 7.0, 0),
    ("THB", "TH", 0.05, 7.0, 2),
    ("USD", "US", 0.05, -5.0, 2),
    ("INR", "IN", 0.04, 5.5, 2),
    ("JPY", "JP", 0.03, 9.0, 0),
]
# Price points in whole units, smallest first; all inside the example config's limits
# (5 to 2,000 CNY-equivalent).
LADDERS = {
    "CNY": [6, 30, 68, 98, 198, 328, 648],
    "PHP": [50, 100, 250, 500, 1000, 2500],
    "MYR": [5, 10, 20, 50, 100, 200],
    "IDR": [15_000, 30_000, 50_000, 100_000, 250_000, 500_000],
    "VND": [20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000],
    "THB": [35, 100, 350, 700, 1500],
    "USD": [1, 5, 10, 20, 50, 100],
    "INR": [80, 160, 400, 800, 1600, 4000],
    "JPY": [160, 480, 800, 1600, 3000, 5000],
}
# How often each price point is chosen by someone with no habit for it (by ladder index).
POPULARITY = [0.22, 0.28, 0.17, 0.12, 0.10, 0.07, 0.04]
HABITS = [("fixed", 0.25), ("payday", 0.15), ("drift", 0.15), ("pk_burst", 0.15), ("one_off", 0.15),
          ("mixed", 0.15)]


@dataclass(frozen=True, slots=True)
class Recharge:
    at: float  # UTC timestamp
    amount_minor: int


@dataclass(slots=True)
class User:
    user_id: str
    habit: str
    country: str
    currency: str
    recharges: list[Recharge] = field(default_factory=list)


@dataclass(slots=True)
class _Ctx:
    """One user being generated: the dice, the market and the local clock."""

    rng: random.Random
    currency: str
    offset_h: float
    exponent: int
    hour: float  # favourite local hour
    stray: float  # share of recharges that are any price point, whatever the habit

    @property
    def ladder(self) -> list[int]:
        return LADDERS[self.currency]

    def minor(self, level: int) -> int:
        level = max(0, min(len(self.ladder) - 1, level))
        return self.ladder[level] * 10**self.exponent

    def habitual(self, level: int) -> int:
        """The amount of ``level``, or (``stray`` of the time) one by popularity."""
        return self.minor(self.popular() if self.rng.random() < self.stray else level)

    def popular(self) -> int:
        """A ladder index by popularity."""
        n = len(self.ladder)
        return self.rng.choices(range(n), POPULARITY[:n])[0]

    def at(self, day: float, hour: float | None = None, spread_h: float = 1.5) -> float:
        """A UTC time on local ``day`` (days from START), near ``hour`` local."""
        h = (self.hour if hour is None else hour) + self.rng.gauss(0, spread_h)
        return START + math.floor(day) * _DAY + (h % 24) * 3600 - self.offset_h * 3600

    def days(self, per_month: float) -> list[float]:
        """Days of a Poisson process of ``per_month`` events a month over the span."""
        out, t = [], self.rng.expovariate(per_month / 30)
        while t < DAYS:
            out.append(t)
            t += self.rng.expovariate(per_month / 30)
        return out

    def log_uniform(self, lo: float, hi: float) -> float:
        return math.exp(self.rng.uniform(math.log(lo), math.log(hi)))


def _fixed(c: _Ctx) -> list[Recharge]:
    habit = c.popular()
    out = []
    for day in c.days(c.log_uniform(2, 10)):
        level = habit if c.rng.random() < 0.95 else habit + c.rng.choice((-1, 1))
        out.append(Recharge(c.at(day), c.habitual(level)))
    return out


def _paydays(c: _Ctx) -> Callable[[int, int], list[int]]:
    """Local paydays of a month (year, month) -> days of that month."""
    if c.rng.random() < 0.3:
        def twice(year: int, month: int) -> list[int]:
            return [15, _month_days(year, month)]
        return twice
    day = c.rng.choice((1, 10, 15, 25, 28))
    return lambda year, month: [day]


def _payday(c: _Ctx) -> list[Recharge]:
    small = c.rng.choice((0, 1, 1, 2))
    big = c.rng.randint(max(3, small + 2), len(c.ladder) - 1)
    paydays = _paydays(c)
    out = [Recharge(c.at(day), c.habitual(small if c.rng.random() < 0.9 else small + 1))
           for day in c.days(c.log_uniform(3, 8))]
    for d in range(DAYS):
        date = dt.datetime.fromtimestamp(START + d * _DAY, dt.UTC)
        if date.day in paydays(date.year, date.month) and c.rng.random() < 0.85:
            for _ in range(2 if c.rng.random() < 0.2 else 1):
                out.append(Recharge(c.at(d + c.rng.uniform(0, 2)), c.habitual(big)))
    return out


def _drift(c: _Ctx) -> list[Recharge]:
    start = c.rng.choice((0, 1, 1, 2))
    every = c.rng.uniform(30, 75)  # days per step up
    phase = c.rng.uniform(0, every)
    out = []
    for day in c.days(c.log_uniform(3, 10)):
        current = start + min(3, int((day + phase) // every))
        level = current if c.rng.random() < 0.85 else current - 1
        out.append(Recharge(c.at(day), c.habitual(level)))
    return out


def _pk_burst(c: _Ctx) -> list[Recharge]:
    small = c.rng.choice((0, 0, 1))
    medium = c.rng.randint(2, min(4, len(c.ladder) - 1))
    out = []
    for day in c.days(c.log_uniform(1, 4)):
        t = c.at(day, hour=c.rng.uniform(20, 23.5), spread_h=0.3)
        for _ in range(2 + _geometric(c.rng, 1 / 3)):
            out.append(Recharge(t, c.minor(small if c.rng.random() < 0.85 else small + 1)))
            t += c.rng.uniform(5, 40)
    for day in c.days(c.log_uniform(0.5, 2)):
        out.append(Recharge(c.at(day), c.habitual(medium)))
    return out


def _one_off(c: _Ctx) -> list[Recharge]:
    first = c.popular()
    out = [Recharge(c.at(c.rng.uniform(0, DAYS)), c.minor(first))]
    if c.rng.random() < 0.3:
        second = first if c.rng.random() < 0.5 else c.popular()
        out.append(Recharge(c.at(c.rng.uniform(0, DAYS)), c.minor(second)))
    return out


def _mixed(c: _Ctx) -> list[Recharge]:
    n = c.rng.choice((2, 3))
    levels = sorted(c.rng.sample(range(len(c.ladder)), n))
    weights = [c.rng.uniform(0.5, 2) for _ in levels]
    # Smaller amounts earlier in the day, the largest at night.
    hours = sorted(c.rng.uniform(9, 23) for _ in levels)
    out = []
    for day in c.days(c.log_uniform(3, 12)):
        i = c.rng.choices(range(n), weights)[0]
        out.append(Recharge(c.at(day, hour=hours[i], spread_h=1.0), c.habitual(levels[i])))
    return out


_MAKERS: dict[str, Callable[[_Ctx], list[Recharge]]] = {
    "fixed": _fixed, "payday": _payday, "drift": _drift, "pk_burst": _pk_burst, "one_off": _one_off,
    "mixed": _mixed,
}


def generate(seed: int, users: int) -> list[User]:
    """``users`` users with their recharges in time order, the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for i in range(users):
        habit = rng.choices([h for h, _ in HABITS], [w for _, w in HABITS])[0]
        currency, country, _, offset, exponent = rng.choices(MARKETS, [m[2] for m in MARKETS])[0]
        # Most recharge in the evening; some at lunch, some late at night.
        hour = rng.choices((rng.uniform(19, 23), rng.uniform(11.5, 14), rng.uniform(23, 26)), (0.6, 0.2, 0.2))[0]
        ctx = _Ctx(random.Random(rng.getrandbits(64)), currency, offset, exponent, hour, rng.uniform(0.02, 0.25))
        made = [r for r in _MAKERS[habit](ctx) if START <= r.at < START + DAYS * _DAY]
        if made:
            out.append(User(f"u{seed}_{i}", habit, country, currency, sorted(made, key=lambda r: r.at)))
    return out


def _geometric(rng: random.Random, p: float) -> int:
    """Failures before the first success: mean (1 - p) / p."""
    n = 0
    while rng.random() > p:
        n += 1
    return n


def _month_days(year: int, month: int) -> int:
    nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
    return (nxt - dt.timedelta(days=1)).day
