"""Risk: the in-process check every recharge passes before any channel is called.

``RiskEngine.assess`` runs the ``risk:`` rules of the config over one recharge and
the velocity state, and answers ``allow``, ``review``, ``challenge`` (a 3-D Secure
step-up, SPEC 22) or ``block`` with the reasons (every rule that fired, in a fixed
order) and a score in [0, 1]: the action is the most severe of the rules' own, raised to
``challenge`` or ``block`` when the score reaches ``challenge_score`` or ``block_score``.
The score combines what each fired rule adds (its ``score``, else 0.4 for review, 0.7
for challenge, 1 for block) as independent odds: 1 - prod(1 - s).

- ``user_blocked`` / ``instrument_blocked`` / ``country_blocked``: blocklists -> block;
- ``luhn_failed``: an account number (12..19 digits) that fails the Luhn check -> block;
- ``amount_over_limit``: above ``max_amount_base`` (base-currency units) -> block;
- ``amount_over_challenge_limit``: above ``challenge_amount_base`` -> challenge;
- ``velocity:<rule name>``: a ``velocity`` rule's count or amount would pass its limit
  within its sliding window, counting this recharge -> the rule's action;
- ``amount_above_history``: above ``multiple`` x the user's own average, with at least
  ``min_prior`` prior recharges -> ``history.action`` (review by default).

``assess`` reads the state; ``record`` adds an accepted recharge to it (call it once
per new recharge that was not blocked; never for an idempotent replay).

Velocity state is bounded: at most ``max_events_per_key`` events per user or
instrument (a count rule never needs more than its ``max_count``; an amount rule over
a busier key sees the newest events only) and at most ``max_keys`` keys of each kind,
the least recently recorded dropped first. Instruments are keyed by their token, or
by a keyed hash of the account number (never the number itself).

With ``risk.model`` configured, every recharge is also scored by the behaviour model
(``risk_model``, over ``risk_features``): P(fraud) at or above ``challenge_at`` raises the
action to ``challenge``, at or above ``block_at`` to ``block`` (reason ``model_score``); the
decision carries that score, the model's version and the features that moved it most. A
``shadow`` model scores too and is only counted and logged. The rules keep their own say:
a blocklisted user or a number failing Luhn is blocked whatever the score.

Hot reload: ``prepare(new_risk_config)`` loads its models (``ModelError`` if one cannot
be served) and ``configure(prepared)`` swaps rules and models whole, keeping every state.
Windows are measured on the injected clock's ``monotonic()``, the model's on ``now()``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

import structlog

from config import RiskConfig, VelocityRule
from orchestrator.clock import Clock
from orchestrator.pricing import UserHistory
from orchestrator.risk_features import FeatureBook, Signals
from orchestrator.risk_model import Contribution, ModelError, RiskModel, load

__all__ = ["ModelError", "PreparedRisk", "RiskDecision", "RiskEngine", "RiskInput", "luhn_ok"]

log = structlog.get_logger("orchestrator.risk")

Action = Literal["allow", "review", "challenge", "block"]
_SEVERITY = {"allow": 0, "review": 1, "challenge": 2, "block": 3}
_DEFAULT_SCORE = {"review": 0.4, "challenge": 0.7, "block": 1.0}
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class RiskInput:
    user_id: str
    amount_base: Decimal  # the recharge in base-currency units (Price.base_amount)
    country: str
    # The instrument as stored: its token, or the masked account number.
    instrument_id: str | None = None
    # The whole account number when one was given (for Luhn and the velocity key only).
    account_number: str | None = None
    history: UserHistory | None = None
    device_id: str | None = None  # optional request fields (SPEC 5): the payer's device
    ip_country: str | None = None  # and the country their IP address is in


@dataclass(frozen=True, slots=True)
class RiskDecision:
    action: Action
    reasons: tuple[str, ...] = ()
    score: float = 0.0
    model_version: str | None = None  # the model that scored it (None: rules alone)
    explain: tuple[Contribution, ...] = ()  # the features that moved the model's score most

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def challenged(self) -> bool:
        return self.action == "challenge"


ALLOW = RiskDecision("allow")


def luhn_ok(number: str) -> bool:
    """The Luhn (mod 10) check over a 12..19-digit number."""
    if not 12 <= len(number) <= 19 or not number.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class _Rules:
    """The config compiled for the hot path: sets for the blocklists, rules by key."""

    cfg: RiskConfig
    users: frozenset[str]
    instruments: frozenset[str]
    countries: frozenset[str]
    user_rules: tuple[VelocityRule, ...]
    instrument_rules: tuple[VelocityRule, ...]
    horizon_s: float  # the longest window: older events can go

    @classmethod
    def compile(cls, cfg: RiskConfig) -> _Rules:
        return cls(
            cfg=cfg,
            users=frozenset(cfg.blocklist.users),
            instruments=frozenset(cfg.blocklist.instruments),
            countries=frozenset(cfg.blocklist.countries),
            user_rules=tuple(r for r in cfg.velocity if r.key == "user"),
            instrument_rules=tuple(r for r in cfg.velocity if r.key == "instrument"),
            horizon_s=max((r.window_s for r in cfg.velocity), default=0.0),
        )


@dataclass(frozen=True, slots=True)
class PreparedRisk:
    """A risk config with its models loaded: what ``configure`` swaps in."""

    config: RiskConfig
    model: RiskModel | None = None
    shadow: RiskModel | None = None


_Events = deque[tuple[float, Decimal]]


class _Keyed:
    """Per-key event deques, LRU-capped on the number of keys."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: OrderedDict[str, _Events] = OrderedDict()

    def add(self, key: str, at: float, amount: Decimal, max_events: int, max_keys: int) -> None:
        q = self.events.get(key)
        if q is None or q.maxlen != max_events:  # new, or the bound was reloaded
            q = deque(q or (), maxlen=max_events)
            self.events[key] = q
        self.events.move_to_end(key)
        q.append((at, amount))
        while len(self.events) > max_keys:
            self.events.popitem(last=False)

    def prune(self, key: str, before: float) -> _Events | None:
        q = self.events.get(key)
        if q is not None:
            while q and q[0][0] <= before:
                q.popleft()
        return q


class RiskEngine:
    def __init__(self, config: RiskConfig | PreparedRisk, clock: Clock,
                 on_shadow: Callable[[str, str, str], None] = lambda version, shadow, live: None,
                 pepper: bytes | None = None) -> None:
        self._clock = clock
        prepared = config if isinstance(config, PreparedRisk) else self.prepare(config)
        self._rules = _Rules.compile(prepared.config)
        self._model, self._shadow = prepared.model, prepared.shadow
        self._book = self._new_book(prepared.config)
        self._last: tuple[RiskInput, Signals] | None = None
        self._on_shadow = on_shadow  # (shadow version, its action, the live action): counted
        self._users = _Keyed()
        self._instruments = _Keyed()
        # Velocity keys for account numbers: a keyed hash, fresh per process, so no
        # number (nor an offline-guessable hash of one) is ever held.
        self._pepper = pepper if pepper is not None else secrets.token_bytes(16)

    @property
    def config(self) -> RiskConfig:
        return self._rules.cfg

    @property
    def model(self) -> RiskModel | None:
        return self._model

    @property
    def features(self) -> FeatureBook | None:
        return self._book

    @staticmethod
    def prepare(config: RiskConfig) -> PreparedRisk:
        """``config`` with its models loaded; ModelError if one cannot be served."""
        m = config.model
        if m is None:
            return PreparedRisk(config)
        return PreparedRisk(config, load(m.artefact), load(m.shadow) if m.shadow else None)

    @staticmethod
    def _new_book(config: RiskConfig) -> FeatureBook | None:
        m = config.model
        return None if m is None else FeatureBook(m.max_users, m.max_instruments, m.max_devices)

    def configure(self, config: RiskConfig | PreparedRisk) -> None:
        """Swap in new rules and models; the velocity and feature state stay (a book
        whose bounds changed starts again: its maps are sized at creation)."""
        prepared = config if isinstance(config, PreparedRisk) else self.prepare(config)
        old = self._rules.cfg.model
        if prepared.config is not self._rules.cfg:
            self._rules = _Rules.compile(prepared.config)
        self._model, self._shadow = prepared.model, prepared.shadow
        new = prepared.config.model
        if new is None:
            self._book = None
        elif (self._book is None or old is None or (old.max_users, old.max_instruments, old.max_devices)
              != (new.max_users, new.max_instruments, new.max_devices)):
            self._book = self._new_book(prepared.config)

    def tracked(self) -> tuple[int, int]:
        """(users, instruments) with velocity state: bounded by ``max_keys`` each."""
        return len(self._users.events), len(self._instruments.events)

    def events_held(self) -> int:
        return sum(len(q) for q in self._users.events.values()) + sum(
            len(q) for q in self._instruments.events.values())

    def _instrument_key(self, inp: RiskInput) -> str | None:
        if inp.account_number is not None:
            digest = hashlib.blake2b(inp.account_number.encode(), key=self._pepper, digest_size=16).hexdigest()
            return "acct:" + digest
        return None if inp.instrument_id is None else "tok:" + inp.instrument_id

    def assess(self, inp: RiskInput) -> RiskDecision:
        rules = self._rules
        cfg = rules.cfg
        if not cfg.enabled:
            return ALLOW
        fired: list[tuple[str, str, float | None]] = []  # (reason, action, score or None: by action)
        if inp.user_id in rules.users:
            fired.append(("user_blocked", "block", None))
        if inp.instrument_id is not None and inp.instrument_id in rules.instruments:
            fired.append(("instrument_blocked", "block", None))
        if inp.country in rules.countries:
            fired.append(("country_blocked", "block", None))
        if cfg.luhn and inp.account_number is not None and not luhn_ok(inp.account_number):
            fired.append(("luhn_failed", "block", None))
        if cfg.max_amount_base is not None and inp.amount_base > cfg.max_amount_base:
            fired.append(("amount_over_limit", "block", None))
        elif cfg.challenge_amount_base is not None and inp.amount_base > cfg.challenge_amount_base:
            fired.append(("amount_over_challenge_limit", "challenge", None))
        now = self._clock.monotonic()
        if rules.user_rules:
            self._velocity(self._users, inp.user_id, rules.user_rules, inp.amount_base, now, fired)
        if rules.instrument_rules:
            key = self._instrument_key(inp)
            if key is not None:
                self._velocity(self._instruments, key, rules.instrument_rules, inp.amount_base, now, fired)
        h, hist = cfg.history, inp.history
        if (h.enabled and hist is not None and hist.average_amount_base is not None and hist.count >= h.min_prior
                and inp.amount_base > hist.average_amount_base * h.multiple):
            fired.append(("amount_above_history", h.action, h.score))
        ruled = self._ruled(cfg, fired)
        if self._model is None or self._book is None:
            return ruled
        return self._scored(cfg, inp, ruled)

    @staticmethod
    def _ruled(cfg: RiskConfig, fired: list[tuple[str, str, float | None]]) -> RiskDecision:
        """The rules' verdict: the most severe action, raised by their combined score."""
        if not fired:
            return ALLOW
        action = max((a for _, a, _ in fired), key=_SEVERITY.__getitem__)
        clear = 1.0
        for _, a, sc in fired:
            clear *= 1.0 - (sc if sc is not None else _DEFAULT_SCORE[a])
        score = round(1.0 - clear, 4)
        if cfg.block_score is not None and score >= cfg.block_score:
            action = "block"
        elif cfg.challenge_score is not None and score >= cfg.challenge_score and _SEVERITY[action] < 2:
            action = "challenge"
        return RiskDecision(action, tuple(r for r, _, _ in fired), score)  # type: ignore[arg-type]

    def _scored(self, cfg: RiskConfig, inp: RiskInput, ruled: RiskDecision) -> RiskDecision:
        """The rules' verdict, raised by the model's score where it reaches a threshold."""
        model, book, m = self._model, self._book, cfg.model
        assert model is not None and book is not None and m is not None
        x = book.features(self._signals(inp))
        score = model.score(x)
        by_model = _by_score(score, m.challenge_at, m.block_at)
        action, reasons = ruled.action, ruled.reasons
        if m.enforce and _SEVERITY[by_model] > _SEVERITY[action]:
            action, reasons = by_model, (*reasons, "model_score")
        if self._shadow is not None:
            self._shade(x, action, m.challenge_at, m.block_at, inp.user_id)
        return RiskDecision(action, reasons, round(score, 4), model.version,  # type: ignore[arg-type]
                            tuple(model.explain(x)))

    def _shade(self, x: list[float], live: str, challenge_at: float, block_at: float, user_id: str) -> None:
        shadow = self._shadow
        assert shadow is not None
        score = shadow.score(x)
        action = _by_score(score, challenge_at, block_at)
        self._on_shadow(shadow.version, action, live)
        if action != live:  # agreements are only counted: a line per recharge would cost more than the score
            log.info("risk_shadow_disagrees", shadow_version=shadow.version, shadow_action=action,
                     shadow_score=round(score, 4), live_action=live, user_id=user_id)

    def _signals(self, inp: RiskInput) -> Signals:
        """``inp`` as the features read it; the one ``assess`` made is reused by ``record``."""
        last = self._last
        if last is not None and last[0] is inp:
            return last[1]
        signals = self._signals_of(inp)
        self._last = (inp, signals)
        return signals

    def _signals_of(self, inp: RiskInput) -> Signals:
        hist, limit = inp.history, self._rules.cfg.max_amount_base
        avg = hist.average_amount_base if hist is not None else None
        return Signals(
            user_id=inp.user_id, amount_base=float(inp.amount_base), country=inp.country, at_s=self._clock.now(),
            instrument_key=self._instrument_key(inp), card_number=inp.account_number is not None,
            device_id=inp.device_id, ip_country=inp.ip_country, history_count=hist.count if hist else 0,
            history_avg_base=float(avg) if avg is not None else None,
            limit_base=float(limit) if limit is not None else None)

    @staticmethod
    def _velocity(state: _Keyed, key: str, rules: tuple[VelocityRule, ...], amount: Decimal, now: float,
                  fired: list[tuple[str, str, float | None]]) -> None:
        q = state.events.get(key)
        for rule in rules:
            since = now - rule.window_s
            count, total = 1, amount  # this recharge counts
            if q:
                for at, amt in reversed(q):
                    if at <= since:
                        break
                    count += 1
                    total += amt
            if rule.max_count is not None:
                over = count > rule.max_count
            else:
                over = total > rule.max_amount_base  # type: ignore[operator]
            if over:
                fired.append(("velocity:" + rule.name, rule.action, rule.score))

    def record(self, inp: RiskInput, recharge_id: str | None = None) -> None:
        """Count an accepted recharge in the velocity windows and the model's features
        (its outcome, told to ``outcome``, is matched by ``recharge_id``)."""
        rules = self._rules
        cfg = rules.cfg
        if self._book is not None and cfg.enabled:
            self._book.record(self._signals(inp), recharge_id)
        if not rules.user_rules and not rules.instrument_rules:
            return
        now = self._clock.monotonic()
        before = now - rules.horizon_s
        if rules.user_rules:
            self._users.prune(inp.user_id, before)
            self._users.add(inp.user_id, now, inp.amount_base, cfg.max_events_per_key, cfg.max_keys)
        if rules.instrument_rules:
            key = self._instrument_key(inp)
            if key is not None:
                self._instruments.prune(key, before)
                self._instruments.add(key, now, inp.amount_base, cfg.max_events_per_key, cfg.max_keys)

    def refused(self, inp: RiskInput) -> None:
        """A recharge risk blocked: it counts against its user in the model's features."""
        if self._book is not None and self._rules.cfg.enabled:
            self._book.blocked(self._signals(inp))

    def outcome(self, recharge_id: str, declined: bool) -> None:
        """A recorded recharge ended; a decline counts against its user, instrument and device."""
        if self._book is not None:
            self._book.outcome(recharge_id, declined, self._clock.now())

    def screen(self, inp: RiskInput, recharge_id: str | None = None) -> RiskDecision:
        """``assess``, then ``record`` (or ``refused``): the one call for a new recharge."""
        decision = self.assess(inp)
        if decision.action != "block":
            self.record(inp, recharge_id)
        else:
            self.refused(inp)
        return decision


def _by_score(score: float, challenge_at: float, block_at: float) -> Action:
    return "block" if score >= block_at else "challenge" if score >= challenge_at else "allow"
