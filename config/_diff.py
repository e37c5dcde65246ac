"""What an SRE needs around a reload: a readable diff, the config with its secrets
redacted, and warnings (legal but probably not meant)."""

from __future__ import annotations

from typing import Any

from config._schema import Config

__all__ = ["diff", "redacted", "warnings"]

_SECRETS = frozenset({"api_key", "webhook_secret", "key_sha256", "secret"})
REDACTED = "[redacted]"
_ITEM = object()  # marks the path of a whole named item


def redacted(cfg: Config) -> dict[str, Any]:
    """The config as JSON-ready data, secrets replaced (their presence still shows)."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (REDACTED if k in _SECRETS and v is not None else walk(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(cfg.model_dump(mode="json"))


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else k, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        # Named items (channels, clients, rules) are matched by name, not position, so
        # inserting one channel does not show every later one as changed.
        for i, v in enumerate(value):
            key = v.get("name") if isinstance(v.get("name"), str) else i
            out[f"{path}[{key}]"] = _ITEM
            _flatten(v, f"{path}[{key}]", out)
    else:
        out[path] = value


def diff(old: Config, new: Config) -> list[str]:
    """One line per changed setting: ``path: old -> new``, ``+ path: new``, ``- path: old``.
    Secrets are compared but never printed."""
    raw_old, raw_new = old.model_dump(mode="json"), new.model_dump(mode="json")
    shown_old, shown_new = redacted(old), redacted(new)
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    sa: dict[str, Any] = {}
    sb: dict[str, Any] = {}
    _flatten(raw_old, "", a)
    _flatten(raw_new, "", b)
    _flatten(shown_old, "", sa)
    _flatten(shown_new, "", sb)
    lines = []
    gone = {p for p in a if a[p] is _ITEM and p not in b}
    new_items = {p for p in b if b[p] is _ITEM and p not in a}
    for path in sorted(set(a) | set(b)):
        if any(path != p and path.startswith(p) for p in gone | new_items):
            continue  # inside a whole item added or removed: its one line says it
        if path in gone:
            lines.append(f"- {path}")
        elif path in new_items:
            lines.append(f"+ {path}")
        elif a.get(path) is _ITEM or b.get(path) is _ITEM:
            continue
        elif path not in b:
            lines.append(f"- {path}: {sa[path]!r}")
        elif path not in a:
            lines.append(f"+ {path}: {sb[path]!r}")
        elif a[path] != b[path]:
            secret = sa[path] == REDACTED
            lines.append(f"~ {path}: changed" if secret else f"~ {path}: {sa[path]!r} -> {sb[path]!r}")
    return lines


def warnings(cfg: Config) -> list[str]:
    """Legal configs that are probably mistakes."""
    out = []
    rules = cfg.routing.rules
    catch_all = next((i for i, r in enumerate(rules) if r.match.model_dump(exclude_none=True) == {}), None)
    if catch_all is not None and rules[catch_all].channels is not None:
        reachable = {n for r in rules[: catch_all + 1] for n in (r.channels or [c.name for c in cfg.channels])}
        for i, ch in enumerate(cfg.channels):
            if ch.name not in reachable:
                out.append(f"channels[{i}]: channel {ch.name!r} is reachable by no rule (routing.rules[{catch_all}] "
                           f"matches everything first)")
    for i, ch in enumerate(cfg.channels):
        served = [c for c in ch.currencies if cfg.pricing.rate(c) is not None]
        if not served:
            out.append(f"channels[{i}]: channel {ch.name!r} serves no priced currency")
    if not cfg.channels:
        out.append("channels: none configured; every recharge will fail with no_route")
    return out
