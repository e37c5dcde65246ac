"""The simulator's YAML config, validated whole; every error names the path of its key.

    seed: 7                         # optional, default 0: the base of every channel's RNG seed
    channels:                       # one entry per simulated channel, served at /{name}/...
      - name: alipay_direct         # letters, digits, '_', '-', '.'; must not start with '_'
        kind: direct_api            # direct_api | digital_currency | bank: the behaviour defaults
        webhook_secret: whsec_...   # signs webhooks (at least 8 characters)
        api_key: ...                # optional: when set, requests need "Authorization: Bearer <key>"
        seed: 11                    # optional: this channel's own seed (default "<seed>:<name>")
        currencies: [CNY]           # optional: other currencies are rejected with 422
        behaviour: {...}            # optional: overrides of the kind's defaults (see _behaviour.py)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from channels.simulator._behaviour import KIND_DEFAULTS, Behaviour, BehaviourError

__all__ = ["ChannelSpec", "SimConfig", "SimConfigError", "load_config", "parse_config"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_KEYS = frozenset({"name", "kind", "webhook_secret", "api_key", "seed", "currencies", "behaviour"})


class SimConfigError(ValueError):
    """An unusable simulator config; the message starts with the path of the bad key."""


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One channel as configured: what ``POST /_sim/reset`` returns it to."""

    name: str
    kind: str
    webhook_secret: str
    behaviour: Behaviour
    seed: str
    api_key: str | None = None
    currencies: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class SimConfig:
    channels: tuple[ChannelSpec, ...]


def load_config(path: str | Path) -> SimConfig:
    """Read and validate a simulator config file."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimConfigError(f"cannot read simulator config {path}: {exc}") from None
    return parse_config(doc)


def parse_config(doc: Any) -> SimConfig:
    """Validate a parsed config document (the YAML above, as Python data)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("channels"), list) or not doc["channels"]:
        raise SimConfigError("channels: a non-empty list is required")
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, str)):
        raise SimConfigError("seed: must be an integer or a string")
    specs: list[ChannelSpec] = []
    for i, entry in enumerate(doc["channels"]):
        spec = _channel(f"channels[{i}]", entry, seed)
        if any(s.name == spec.name for s in specs):
            raise SimConfigError(f"channels[{i}].name: duplicate channel {spec.name!r}")
        specs.append(spec)
    return SimConfig(tuple(specs))


def _channel(path: str, entry: Any, seed: int | str) -> ChannelSpec:
    if not isinstance(entry, Mapping):
        raise SimConfigError(f"{path}: must be a mapping")
    if unknown := sorted(set(entry) - _KEYS, key=str):
        raise SimConfigError(f"{path}.{unknown[0]}: unknown key")
    name, kind = entry.get("name"), entry.get("kind")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SimConfigError(f"{path}.name: 1 to 64 letters, digits, '_', '-' or '.', not starting with '_'")
    if kind not in KIND_DEFAULTS:
        raise SimConfigError(f"{path}.kind: must be one of {sorted(KIND_DEFAULTS)}")
    secret = entry.get("webhook_secret")
    if not isinstance(secret, str) or len(secret) < 8:
        raise SimConfigError(f"{path}.webhook_secret: a string of at least 8 characters is required")
    api_key = entry.get("api_key")
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise SimConfigError(f"{path}.api_key: must be a non-empty string")
    own_seed = entry.get("seed")
    if own_seed is not None and (isinstance(own_seed, bool) or not isinstance(own_seed, (int, str))):
        raise SimConfigError(f"{path}.seed: must be an integer or a string")
    try:
        behaviour = KIND_DEFAULTS[kind].updated(entry.get("behaviour") or {})
    except BehaviourError as exc:
        where = f"{path}.behaviour" if exc.field == "body" else f"{path}.behaviour.{exc.field}"
        raise SimConfigError(f"{where}: {exc.message}") from None
    return ChannelSpec(name, kind, secret, behaviour, str(own_seed) if own_seed is not None else f"{seed}:{name}",
                       api_key, _currencies(f"{path}.currencies", entry.get("currencies")))


def _currencies(path: str, value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    codes_ok = isinstance(value, list) and value and all(isinstance(c, str) and _CURRENCY.fullmatch(c) for c in value)
    if not codes_ok:
        raise SimConfigError(f"{path}: a non-empty list of ISO 4217 codes is required")
    return frozenset(value)
