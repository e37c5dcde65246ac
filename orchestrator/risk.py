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

Hot reload: ``configure(new_risk_config)`` swaps the compiled rules whole and keeps
the state. Windows are measured on the injected clock's ``monotonic()``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from config import RiskConfig, VelocityRule
from orchestrator.clock import Clock
from orchestrator.pricing import UserHistory

__all__ = ["RiskDecision", "RiskEngine", "RiskInput", "luhn_ok"]

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


@dataclass(frozen=True, slots=True)
class RiskDecision:
    action: Action
    reasons: tuple[str, ...] = ()
    score: float = 0.0

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
    def __init__(self, config: RiskConfig, clock: Clock) -> None:
        self._clock = clock
        self._rules = _Rules.compile(config)
        self._users = _Keyed()
        self._instruments = _Keyed()
        # Velocity keys for account numbers: a keyed hash, fresh per process, so no
        # number (nor an offline-guessable hash of one) is ever held.
        self._pepper = secrets.token_bytes(16)

    @property
    def config(self) -> RiskConfig:
        return self._rules.cfg

    def configure(self, config: RiskConfig) -> None:
        """Swap in new rules; the velocity state stays."""
        if config is not self._rules.cfg:
            self._rules = _Rules.compile(config)

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

    def record(self, inp: RiskInput) -> None:
        """Count an accepted recharge in the velocity windows."""
        rules = self._rules
        cfg = rules.cfg
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

    def screen(self, inp: RiskInput) -> RiskDecision:
        """``assess``, then ``record`` unless blocked: the one call for a new recharge."""
        decision = self.assess(inp)
        if decision.action != "block":
            self.record(inp)
        return decision
