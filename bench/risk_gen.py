"""A seeded generator of labelled recharge traffic, to train and measure the risk model (issue 27).

``generate(seed)`` answers a ``Traffic``: every recharge of ``users`` good payers over
``days`` days from ``START`` (UTC), with the attacks of the families below mixed in after
the first ``warmup_days``, in time order. Each ``Event`` says what the orchestrator would
see (time, user, amount in base-currency units, country, a token or a whole card number,
device and IP country when the front service sends them), whether it is fraud (``label``)
and of which ``family``, and whether the provider declines it, so outcomes can be replayed.
``Traffic.prior`` is each established user's succeeded history before the window (what
the journal would answer as ``UserHistory``).

The warm-up days are good traffic only; replays run through them so the feature state
knows the users' habits, and count nothing there (``Traffic.measure_from``).

Markets, currencies, local hours and price points are those of ``bench/suggestions_gen.py``
(``MARKETS``, ``LADDERS``, ``POPULARITY``); amounts are converted to base units (USD) at the
example config's rates. Every payer, good or not, comes through a front service that sends
``device_id`` and ``ip_country`` on 95 % of its requests (the app, 55 % of payers) or on 5 %
(web and partners): about half the traffic carries them, and their absence says nothing.

Good payers (about 92 % of the measured events):

=================  ==========================================================================
habit              what a good payer does
=================  ==========================================================================
home               one country and its currency; 10 % join during the 10 days (a first
                   recharge on joining, no history), the rest have 1 to ~2,000 succeeded
                   recharges behind them (``Traffic.prior``).
instruments        one (65 %) or two tokens or card numbers (each a card number 10 % of the
                   time); the first carries 80 % of recharges; 3 % a week add a new one,
                   used 70 % of the time after.
devices            one; 20 % use a second one a quarter of the time; a phone change (a new
                   device for good) 1 % a week.
households         4 % share another payer's device (a family tablet, a second account),
                   half of them its main instrument too.
hour               a favourite local hour (evening 60 %, lunch 20 %, late night 20 %),
                   each recharge drawn around it with sigma 1.5 h.
amounts            one to three personal price points, each with its weight; 10 % of
                   recharges stray to any price point by popularity.
rate               0.2 to 3 habitual recharges a day (log-uniform, Poisson per day).
PK battles         35 % of payers join gift battles 0.05 to 0.5 evenings a day: 3 to 6
                   quick recharges of their small price point, 8 to 90 s apart, one
                   instrument (the velocity rules' classic false positive).
travel             5 % take a trip of 2 to 5 days (IP country abroad); 1 % of requests
                   come through a VPN (IP country anywhere).
declines           each payer 0.5 % to 8 % (log-uniform; insufficient funds); after a
                   decline, 60 % retry 15 to 120 s later (the other instrument if any,
                   half the time one price point lower), and 30 % of retries fail too.
=================  ==========================================================================

Attacks (``ATTACKS``: attacks per 10,000 good payers per measured week; about 8 % of the
measured events, over-represented so that each family's figures are stable):

==================  ======  ===========================================================
family              rate    what it does (share of fraud events, default size)
==================  ======  ===========================================================
card_testing        40      1 to 3 fresh accounts on one device (taking turns every 10 to
                            30 attempts) run 20 to 80 stolen card numbers (Luhn-valid),
                            20 % of them twice, at the smallest price point (15 %: the
                            next one), 1 to 20 s apart (the campaign's pace, +-50 %);
                            85 % declined; any hour; IP country the account's 60 %, else
                            a proxy abroad. (~28 %)
account_takeover    350     a good established payer's account, from a new device and
                            (80 %) an IP country abroad, at 1 to 6 am local 70 % of the
                            time: 2 to 6 recharges of the two largest price points, 20 to
                            180 s apart, on a new instrument (80 %; half card numbers) or
                            the victim's saved one; 20 % declined. (~16 %)
velocity_burst      110     1 or 2 fresh accounts on one device cycle 4 to 10 instruments
                            (30 % card numbers): 8 to 24 recharges of medium price points
                            (ladder 2 to 4), 10 to 60 s apart; 35 % declined; IP country
                            abroad half the time. (~21 %)
collusion_ring      35      10 to 30 fresh accounts share 2 or 3 devices and 2 to 5
                            instruments (mostly tokens) over 1 to 4 days: each makes its
                            first recharge (the first-recharge bonus) at the ring's medium
                            price point at a daytime hour, then 0 to 2 more hours apart;
                            IP country home 85 %; 3 % declined. HELD OUT. (~14 %)
slow_drift          200     a good established payer's account, compromised for the rest
                            of the window (3 days or more): a new instrument (40 % a card
                            number), at the victim's habitual hour, from the victim's own
                            device half the time (else a new one), IP country home; about
                            one recharge a day at first, a quarter more each day, whose
                            price point starts at the victim's largest and climbs one
                            step every 1 to 2 days; 5 % declined. HELD OUT. (~21 %)
==================  ======  ===========================================================

The victims' own recharges go on beside the attacks, labelled good.

    from bench.risk_gen import generate
    traffic = generate(seed=1)            # 14,000 payers, 10 days (3 of warm-up)
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path

from bench.suggestions_gen import LADDERS, MARKETS, POPULARITY
from config import load_file

__all__ = ["ATTACKS", "FAMILIES", "HELD_OUT", "START", "TRAINED", "USERS", "Event", "Traffic", "generate", "masked"]

START = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()
USERS = 14_000  # good payers by default: about 200,000 recharges over the 10 days
_DAY, _HOUR = 86_400.0, 3600.0
ROOT = Path(__file__).resolve().parent.parent

FAMILIES = ("card_testing", "account_takeover", "velocity_burst", "collusion_ring", "slow_drift")
TRAINED = FAMILIES[:3]
HELD_OUT = FAMILIES[3:]
ATTACKS = {"card_testing": 40, "account_takeover": 350, "velocity_burst": 110, "collusion_ring": 35,
           "slow_drift": 200}
# Where trips go, and where proxies and VPNs exit.
ABROAD = ("SG", "HK", "JP", "KR", "TH", "US", "AU", "GB", "MY", "PH", "ID", "VN", "AE", "NL", "DE", "BR", "NG")


@dataclass(frozen=True, slots=True)
class Event:
    at_s: float
    user_id: str
    amount_base: float  # base-currency (USD) units
    country: str  # the account's country
    instrument: str  # a token, or the whole card number when ``card_number``
    card_number: bool
    device_id: str | None
    ip_country: str | None
    label: int  # 1: fraud
    family: str  # "good" or an attack family
    declined: bool  # what the provider answers, if the recharge reaches it
    actor: str  # the good payer, or the attack (campaign, ring, takeover) it belongs to
    kind: str  # a good one's: "habit", "pk" (a battle's burst), "retry" or "join"; else the family


@dataclass(frozen=True, slots=True)
class Traffic:
    seed: int
    users: int
    days: int
    warmup_days: int
    events: list[Event]
    prior: dict[str, tuple[int, float]]  # user -> (succeeded recharges, their sum in base units)

    @property
    def measure_from(self) -> float:
        return START + self.warmup_days * _DAY


def masked(number: str) -> str:
    """A card number as the orchestrator stores it."""
    return f"{number[:6]}******{number[-4:]}"


@cache
def _rates() -> dict[str, Decimal]:
    return dict(load_file(ROOT / "config" / "orchestrator.example.yaml").config.pricing.rates)


def _amount(currency: str, level: int) -> float:
    ladder = LADDERS[currency]
    price = ladder[max(0, min(len(ladder) - 1, level))]
    return float(round(price * _rates()[currency], 6))


@dataclass(slots=True)
class _Payer:
    """A good payer's habits."""

    user_id: str
    country: str
    currency: str
    offset_h: float
    hour: float  # favourite local hour
    levels: list[int]
    weights: list[float]
    instruments: list[tuple[str, bool]]  # (token or number, is a card number)
    devices: list[str]  # the main one, then those used a quarter of the time (a second, a household's)
    sends: float  # share of requests carrying device_id and ip_country
    rate: float  # habitual recharges a day
    pk_rate: float  # PK battles a day
    decline_p: float
    joined: float | None  # None: established before the window
    prior: tuple[int, float] = (0, 0.0)
    trip: tuple[float, float, str] | None = None
    phone: tuple[float, str] | None = None  # (from, new device)
    added: tuple[float, tuple[str, bool]] | None = None  # (from, new instrument)

    @property
    def ladder_top(self) -> int:
        return len(LADDERS[self.currency]) - 1


@dataclass(slots=True)
class _World:
    """The dice, the ids handed out, and the events so far."""

    rng: random.Random
    start: float
    end: float
    measure_from: float
    events: list[Event] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)

    def uid(self, prefix: str) -> str:
        while True:
            key = f"{prefix}_{self.rng.getrandbits(40):010x}"
            if key not in self._ids:
                self._ids.add(key)
                return key

    def card(self) -> str:
        """A fresh Luhn-valid 16-digit number."""
        while True:
            body = self.rng.choice(("4", "51", "52", "53", "54", "55"))
            body += "".join(self.rng.choice("0123456789") for _ in range(15 - len(body)))
            number = body + _luhn_digit(body)
            if number not in self._ids:
                self._ids.add(number)
                return number

    def instrument(self, card_share: float) -> tuple[str, bool]:
        return (self.card(), True) if self.rng.random() < card_share else (self.uid("tok"), False)

    def front(self) -> float:
        """The share of requests whose front service sends device_id and ip_country."""
        return 0.95 if self.rng.random() < 0.55 else 0.05

    def market(self) -> tuple[str, str, float, int]:
        currency, country, _, offset, exponent = self.rng.choices(MARKETS, [m[2] for m in MARKETS])[0]
        return currency, country, offset, exponent

    def abroad(self, home: str) -> str:
        return self.rng.choice([c for c in ABROAD if c != home])

    def emit(self, at: float, user: str, amount: float, country: str, instrument: tuple[str, bool],
             device: str | None, ip: str | None, family: str, declined: bool, actor: str,
             kind: str | None = None) -> None:
        if self.start <= at < self.end:
            self.events.append(Event(at, user, amount, country, instrument[0], instrument[1], device, ip,
                                     0 if family == "good" else 1, family, declined, actor, kind or family))


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def _poisson(rng: random.Random, lam: float) -> int:
    n, p, floor = 0, rng.random(), math.exp(-lam)
    while p > floor:
        n += 1
        p *= rng.random()
    return n


def _local(start: float, day: int, hour: float, offset_h: float) -> float:
    """UTC time of local ``hour`` on ``day`` (days from ``start``)."""
    return start + day * _DAY + (hour - offset_h) * _HOUR


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _popular(rng: random.Random, currency: str) -> int:
    n = len(LADDERS[currency])
    return rng.choices(range(n), POPULARITY[:n])[0]


# -- good payers ----------------------------------------------------------------------------


def _payer(w: _World, span_days: int) -> _Payer:
    rng = w.rng
    currency, country, offset, _ = w.market()
    hour = rng.choices((rng.uniform(19, 23), rng.uniform(11.5, 14), rng.uniform(23, 26)), (0.6, 0.2, 0.2))[0]
    levels = sorted({_popular(rng, currency) for _ in range(rng.choice((1, 2, 2, 3)))})
    instruments = [w.instrument(0.10) for _ in range(1 if rng.random() < 0.65 else 2)]
    devices = [w.uid("dev")] + ([w.uid("dev")] if rng.random() < 0.20 else [])
    joined = w.start + rng.uniform(0, span_days) * _DAY if rng.random() < 0.10 else None
    p = _Payer(w.uid("u"), country, currency, offset, hour, levels, [rng.uniform(0.5, 2) for _ in levels],
               instruments, devices, w.front(), _log_uniform(rng, 0.2, 3),
               _log_uniform(rng, 0.05, 0.5) if rng.random() < 0.35 else 0.0, _log_uniform(rng, 0.005, 0.08), joined)
    if joined is None:
        count = max(1, min(2000, round(p.rate * _log_uniform(rng, 14, 720) * rng.uniform(0.3, 1.0))))
        usual = sum(_amount(currency, lv) * wt for lv, wt in zip(levels, p.weights)) / sum(p.weights)
        p.prior = (count, count * usual * rng.uniform(0.8, 1.25))
    weeks = span_days / 7
    if rng.random() < 0.05:
        t0 = w.start + rng.uniform(0, span_days) * _DAY
        p.trip = (t0, t0 + rng.uniform(2, 5) * _DAY, w.abroad(country))
    if rng.random() < 0.01 * weeks:
        p.phone = (w.start + rng.uniform(0, span_days) * _DAY, w.uid("dev"))
    if rng.random() < 0.03 * weeks:
        p.added = (w.start + rng.uniform(0, span_days) * _DAY, w.instrument(0.10))
    return p


def _good_recharge(w: _World, p: _Payer, at: float, level: int, kind: str,
                   instrument: tuple[str, bool] | None = None) -> None:
    """One recharge of ``p`` (and, after a decline, maybe its retry)."""
    rng = w.rng
    if p.joined is not None and at < p.joined:
        return
    if instrument is None:
        instrument = _usual_instrument(rng, p, at)
    device, ip = None, None
    if rng.random() < p.sends:
        device = p.phone[1] if p.phone and at >= p.phone[0] else p.devices[0]
        if len(p.devices) > 1 and rng.random() < 0.25:
            device = rng.choice(p.devices[1:])
        ip = p.country
        if p.trip and p.trip[0] <= at < p.trip[1]:
            ip = p.trip[2]
        elif rng.random() < 0.01:
            ip = rng.choice(ABROAD)
    retry = kind == "retry"
    declined = rng.random() < (0.3 if retry else p.decline_p)
    w.emit(at, p.user_id, _amount(p.currency, level), p.country, instrument, device, ip, "good", declined,
           p.user_id, kind)
    if declined and not retry and rng.random() < 0.6:
        others = [i for i in p.instruments if i != instrument]
        again = rng.choice(others) if others else instrument
        lower = level - 1 if level > 0 and rng.random() < 0.5 else level
        _good_recharge(w, p, at + rng.uniform(15, 120), lower, "retry", again)


def _usual_instrument(rng: random.Random, p: _Payer, at: float) -> tuple[str, bool]:
    if p.added and at >= p.added[0] and rng.random() < 0.7:
        return p.added[1]
    if len(p.instruments) == 1 or rng.random() < 0.8:
        return p.instruments[0]
    return rng.choice(p.instruments[1:])


def _good_events(w: _World, p: _Payer, days: int) -> None:
    rng = w.rng
    if p.joined is not None:  # a new payer recharges on joining
        _good_recharge(w, p, p.joined, _habitual(rng, p), "join")
    for day in range(-1, days + 1):  # a day either side: local days straddle UTC ones
        for _ in range(_poisson(rng, p.rate)):
            at = _local(w.start, day, p.hour + rng.gauss(0, 1.5), p.offset_h)
            _good_recharge(w, p, at, _habitual(rng, p), "habit")
        for _ in range(_poisson(rng, p.pk_rate)):
            at = _local(w.start, day, rng.uniform(19.5, 23.5), p.offset_h)
            instrument = _usual_instrument(rng, p, at)
            small = p.levels[0] if rng.random() < 0.85 else 0
            for _ in range(rng.randint(3, 6)):
                _good_recharge(w, p, at, small, "pk", instrument)
                at += rng.uniform(8, 90)


def _habitual(rng: random.Random, p: _Payer) -> int:
    if rng.random() < 0.10:
        return _popular(rng, p.currency)
    return rng.choices(p.levels, p.weights)[0]


# -- attacks --------------------------------------------------------------------------------


def _attack_start(w: _World, tail_s: float) -> float:
    """A time in the measured window leaving ``tail_s`` before its end."""
    return w.rng.uniform(w.measure_from, max(w.measure_from, w.end - tail_s))


def _sent(w: _World, sends: float, device: str, ip: str) -> tuple[str | None, str | None]:
    return (device, ip) if w.rng.random() < sends else (None, None)


def _card_testing(w: _World, actor: str) -> None:
    rng = w.rng
    currency, country, _, _ = w.market()
    accounts = [w.uid("u") for _ in range(rng.randint(1, 3))]
    device, sends = w.uid("dev"), w.front()
    ip = country if rng.random() < 0.6 else w.abroad(country)
    gap, turn = rng.uniform(1, 20), rng.randint(10, 30)
    at, n = _attack_start(w, 2 * _HOUR), 0
    for _ in range(rng.randint(20, 80)):
        card = (w.card(), True)
        for _ in range(2 if rng.random() < 0.2 else 1):
            user = accounts[(n // turn) % len(accounts)]
            level = 0 if rng.random() < 0.85 else 1
            w.emit(at, user, _amount(currency, level), country, card, *_sent(w, sends, device, ip),
                   "card_testing", rng.random() < 0.85, actor)
            at += rng.uniform(0.5, 1.5) * gap
            n += 1


def _account_takeover(w: _World, actor: str, victim: _Payer) -> None:
    rng = w.rng
    start = _attack_start(w, _HOUR)
    hour = rng.uniform(1, 6) if rng.random() < 0.7 else rng.uniform(0, 24)
    day = int((start - w.start) // _DAY)
    at = max(w.measure_from, _local(w.start, day, hour, victim.offset_h))
    device, sends = w.uid("dev"), w.front()
    ip = w.abroad(victim.country) if rng.random() < 0.8 else victim.country
    instrument = w.instrument(0.5) if rng.random() < 0.8 else victim.instruments[0]
    for _ in range(rng.randint(2, 6)):
        level = victim.ladder_top - rng.randint(0, 1)
        w.emit(at, victim.user_id, _amount(victim.currency, level), victim.country, instrument,
               *_sent(w, sends, device, ip), "account_takeover", rng.random() < 0.2, actor)
        at += rng.uniform(20, 180)


def _velocity_burst(w: _World, actor: str) -> None:
    rng = w.rng
    currency, country, _, _ = w.market()
    accounts = [w.uid("u") for _ in range(rng.randint(1, 2))]
    instruments = [w.instrument(0.3) for _ in range(rng.randint(4, 10))]
    device, sends = w.uid("dev"), w.front()
    ip = country if rng.random() < 0.5 else w.abroad(country)
    top = len(LADDERS[currency]) - 1
    at = _attack_start(w, _HOUR)
    for _ in range(rng.randint(8, 24)):
        level = min(top, rng.randint(2, 4))
        w.emit(at, rng.choice(accounts), _amount(currency, level), country, rng.choice(instruments),
               *_sent(w, sends, device, ip), "velocity_burst", rng.random() < 0.35, actor)
        at += rng.uniform(10, 60)


def _collusion_ring(w: _World, actor: str) -> None:
    rng = w.rng
    currency, country, offset, _ = w.market()
    devices = [w.uid("dev") for _ in range(rng.randint(2, 3))]
    instruments = [w.instrument(0.2) for _ in range(rng.randint(2, 5))]
    sends = w.front()
    level = rng.choice((2, 3))
    start = _attack_start(w, _DAY)
    days = min(rng.uniform(1, 4), (w.end - start) / _DAY)
    for _ in range(rng.randint(10, 30)):
        user = w.uid("u")
        day = int((start - w.start) // _DAY + rng.uniform(0, days))
        at = _local(w.start, day, rng.uniform(9, 22), offset)
        for k in range(1 + rng.choice((0, 0, 1, 2))):
            ip = country if rng.random() < 0.85 else w.abroad(country)
            amount = _amount(currency, level if k == 0 or rng.random() < 0.7 else level - 1)
            w.emit(at, user, amount, country, rng.choice(instruments), *_sent(w, sends, rng.choice(devices), ip),
                   "collusion_ring", rng.random() < 0.03, actor)
            at += rng.uniform(2, 20) * _HOUR


def _slow_drift(w: _World, actor: str, victim: _Payer) -> None:
    rng = w.rng
    start = _attack_start(w, 3 * _DAY)
    first_day = int((start - w.start) // _DAY)
    last_day = int((w.end - w.start) // _DAY)
    instrument = w.instrument(0.4)
    device = victim.devices[0] if rng.random() < 0.5 else w.uid("dev")
    level, step_every = max(victim.levels), rng.uniform(1, 2)
    for i, day in enumerate(range(first_day, last_day + 1)):
        current = min(victim.ladder_top, level + int(i / step_every))
        for _ in range(_poisson(rng, 1 + 0.25 * i)):
            at = max(start, _local(w.start, day, victim.hour + rng.gauss(0, 1.5), victim.offset_h))
            w.emit(at, victim.user_id, _amount(victim.currency, current), victim.country, instrument,
                   *_sent(w, victim.sends, device, victim.country), "slow_drift", rng.random() < 0.05, actor)


def _actors(rate: float, users: int, measured_days: int, scale: float) -> int:
    n = rate * users / 10_000 * measured_days / 7 * scale
    return max(2, round(n)) if rate and scale else 0


def generate(seed: int, users: int = USERS, days: int = 10, warmup_days: int = 3, fraud_scale: float = 1.0,
             families: tuple[str, ...] = FAMILIES) -> Traffic:
    """The traffic of ``users`` good payers over ``days`` days, with the attacks of
    ``families`` after ``warmup_days``, in time order; the same for the same arguments."""
    rng = random.Random(seed)
    w = _World(rng, START, START + days * _DAY, START + warmup_days * _DAY)
    payers = [_payer(w, days) for _ in range(users)]
    for p in payers:  # households and second accounts: another payer's device, maybe its instrument
        if rng.random() < 0.04:
            other = rng.choice(payers)
            if other is not p:
                p.devices.append(other.devices[0])
                if rng.random() < 0.5:
                    p.instruments.append(other.instruments[0])
    for p in payers:
        _good_events(w, p, days)
    attacks = {f: _actors(ATTACKS[f], users, days - warmup_days, fraud_scale) if f in families else 0
               for f in FAMILIES}
    established = [p for p in payers if p.joined is None and p.prior[0] >= 3]
    victims = rng.sample(established, min(len(established), sum(attacks[f] for f in _VICTIMISED)))
    for family in FAMILIES:
        for i in range(attacks[family]):
            actor = f"{family}#{i}"
            if family in _VICTIMISED:
                _VICTIMISED[family](w, actor, victims.pop())
            else:
                _FRESH[family](w, actor)
    w.events.sort(key=lambda e: e.at_s)
    prior = {p.user_id: p.prior for p in payers if p.prior[0]}
    return Traffic(seed, users, days, warmup_days, w.events, prior)


_FRESH = {"card_testing": _card_testing, "velocity_burst": _velocity_burst, "collusion_ring": _collusion_ring}
_VICTIMISED = {"account_takeover": _account_takeover, "slow_drift": _slow_drift}
