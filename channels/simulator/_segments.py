"""Approval rates that differ by segment: a behaviour's ``segments``, each a ``match`` and
the decline rate (and codes) of the charges it matches.

    segments:
      - match:                        # every key optional; all those given must hold
          issuer: icbc                # the charge's instrument.issuer, exactly
          bin_prefix: "622202"        # a prefix of instrument.account_number (1 to 19 digits)
          min_amount_minor: 1         # amount_minor within these, both inclusive
          max_amount_minor: 50000
          currency: CNY
          method: ewallet
        decline_rate: 0.3             # 0 to 1: replaces the channel's for a matching charge
        decline_codes: {do_not_honor: 1}   # optional: the channel's decline_codes

The first entry that matches wins; a charge no entry matches meets the channel's own
``decline_rate`` and ``decline_codes``. Matching draws nothing from the RNG, so a run stays
repeatable from its seed however the segments are set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["MAX_SEGMENTS", "Segment", "SegmentError", "SegmentMatch", "codes_ok", "parse_segments"]

MAX_SEGMENTS = 100
"""Matching is a scan per charge: a bound keeps it cheap and a mistake from growing it."""

_ISSUER = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")  # as the orchestrator's API takes it
_BIN_PREFIX = re.compile(r"[0-9]{1,19}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_METHOD_MAX = 64  # as a charge's method (_app.py)
_MAX_AMOUNT = 10**15
_ENTRY_KEYS = frozenset({"match", "decline_rate", "decline_codes"})


class SegmentError(ValueError):
    """A bad ``segments`` entry; ``field`` is its path (``segments[0].match.issuer``)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_amount(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_AMOUNT


def codes_ok(codes: Any) -> bool:
    """Whether ``codes`` maps decline codes to positive weights (a behaviour's ``decline_codes``)."""
    return isinstance(codes, dict) and bool(codes) and all(
        isinstance(code, str) and code and _is_number(weight) and weight > 0 for code, weight in codes.items())


@dataclass(frozen=True, slots=True)
class SegmentMatch:
    """What a charge must be to fall in a segment; None: anything."""

    issuer: str | None = None
    bin_prefix: str | None = None
    min_amount_minor: int | None = None
    max_amount_minor: int | None = None
    currency: str | None = None
    method: str | None = None

    def holds(self, charge: Mapping[str, Any]) -> bool:
        """Whether a charge request (its protocol-v1 body, already checked) matches."""
        instrument = charge.get("instrument") or {}
        if self.issuer is not None and instrument.get("issuer") != self.issuer:
            return False
        if self.bin_prefix is not None:
            number = instrument.get("account_number")
            if not isinstance(number, str) or not number.startswith(self.bin_prefix):
                return False
        amount = charge["amount_minor"]
        if self.min_amount_minor is not None and amount < self.min_amount_minor:
            return False
        if self.max_amount_minor is not None and amount > self.max_amount_minor:
            return False
        return (self.currency is None or charge["currency"] == self.currency) and (
            self.method is None or charge["method"] == self.method)

    def to_json(self) -> dict[str, Any]:
        return {f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not None}


@dataclass(frozen=True, slots=True)
class Segment:
    match: SegmentMatch
    decline_rate: float
    decline_codes: dict[str, float] | None = None  # None: the channel's

    def to_json(self) -> dict[str, Any]:
        """As it is written in a config or a control request."""
        doc: dict[str, Any] = {"match": self.match.to_json(), "decline_rate": self.decline_rate}
        if self.decline_codes is not None:
            doc["decline_codes"] = dict(self.decline_codes)
        return doc


def parse_segments(value: Any) -> tuple[Segment, ...]:
    """``segments`` as a config or control request writes it (module doc), checked whole;
    ``SegmentError`` names the first bad entry's key."""
    if isinstance(value, (list, tuple)) and all(isinstance(s, Segment) for s in value):
        return tuple(value)  # already parsed (a behaviour built in code)
    if not isinstance(value, list):
        raise SegmentError("segments", "must be a list of {match, decline_rate, decline_codes} entries")
    if len(value) > MAX_SEGMENTS:
        raise SegmentError("segments", f"at most {MAX_SEGMENTS} entries, not {len(value)}")
    return tuple(_segment(f"segments[{i}]", entry) for i, entry in enumerate(value))


def _segment(path: str, entry: Any) -> Segment:
    if not isinstance(entry, dict):
        raise SegmentError(path, "must be an object with match and decline_rate (and optionally decline_codes)")
    if unknown := sorted(set(entry) - _ENTRY_KEYS, key=str):
        raise SegmentError(f"{path}.{unknown[0]}", "unknown segment key (match, decline_rate, decline_codes)")
    if "match" not in entry:
        raise SegmentError(f"{path}.match", "is required (an object; {} matches every charge)")
    rate = entry.get("decline_rate")
    if not _is_number(rate) or not 0 <= rate <= 1:
        raise SegmentError(f"{path}.decline_rate", "must be a number from 0 to 1")
    codes = entry.get("decline_codes")
    if codes is not None and not codes_ok(codes):
        raise SegmentError(f"{path}.decline_codes", "must map decline codes to positive weights")
    return Segment(_match(f"{path}.match", entry["match"]), rate, None if codes is None else dict(codes))


_MATCH_RULES: dict[str, tuple[Callable[[Any], object], str]] = {
    "issuer": (lambda v: isinstance(v, str) and _ISSUER.fullmatch(v),
               "must be an issuer code: 1 to 32 of a-z 0-9 _ . -, starting with a letter or digit"),
    "bin_prefix": (lambda v: isinstance(v, str) and _BIN_PREFIX.fullmatch(v),
                   "must be a string of 1 to 19 digits (quoted in YAML)"),
    "min_amount_minor": (_is_amount, f"must be an integer of minor units from 0 to {_MAX_AMOUNT}"),
    "max_amount_minor": (_is_amount, f"must be an integer of minor units from 0 to {_MAX_AMOUNT}"),
    "currency": (lambda v: isinstance(v, str) and _CURRENCY.fullmatch(v), "must be an ISO 4217 code (CNY)"),
    "method": (lambda v: isinstance(v, str) and 0 < len(v) <= _METHOD_MAX,
               f"must be a string of 1 to {_METHOD_MAX} characters"),
}


def _match(path: str, value: Any) -> SegmentMatch:
    if not isinstance(value, dict):
        raise SegmentError(path, "must be an object")
    for key, given in value.items():
        if key not in _MATCH_RULES:
            raise SegmentError(f"{path}.{key}", f"unknown match key ({', '.join(_MATCH_RULES)})")
        ok, message = _MATCH_RULES[key]
        if not ok(given):
            raise SegmentError(f"{path}.{key}", message)
    low, high = value.get("min_amount_minor"), value.get("max_amount_minor")
    if low is not None and high is not None and low > high:
        raise SegmentError(f"{path}.max_amount_minor", f"must be at least min_amount_minor ({low}), not {high}")
    return SegmentMatch(**value)
