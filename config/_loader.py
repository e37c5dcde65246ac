"""Load and validate a config document; turn every problem into ``path: message``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from config._schema import Config, reference_errors, timing_errors

__all__ = ["ConfigError", "LoadedConfig", "load_file", "load_text", "parse"]


class ConfigError(Exception):
    """A config that cannot be used; ``errors`` lists every problem as (path, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))

    def lines(self) -> list[str]:
        return [f"{path}: {message}" if path else message for path, message in self.errors]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config with its version: the content hash of its canonical form, so
    the same settings written differently (key order, comments) share one version."""

    config: Config
    version: str
    source: str


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    match kind:
        case "greater_than":
            return f"must be > {ctx['gt']}"
        case "greater_than_equal":
            return f"must be >= {ctx['ge']}"
        case "less_than":
            return f"must be < {ctx['lt']}"
        case "less_than_equal":
            return f"must be <= {ctx['le']}"
        case "missing":
            return "is required"
        case "extra_forbidden":
            return "unknown key"
        case "string_pattern_mismatch":
            return f"does not match {ctx['pattern']}"
        case "literal_error":
            return f"must be one of {ctx['expected']}"
        case "too_short":
            return f"must have at least {ctx.get('min_length')} item(s)"
        case "value_error":
            return str(ctx.get("error", err["msg"]))
    return err["msg"][0].lower() + err["msg"][1:]


def _errors_of(exc: ValidationError) -> list[tuple[str, str]]:
    return [(_path(err["loc"]), _message(err)) for err in exc.errors()]


def parse(document: Any, source: str = "<memory>") -> LoadedConfig:
    """Validate an already-parsed document (a dict from YAML or JSON)."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([("", "the config must be a mapping at the top level")])
    errors = reference_errors(document)
    try:
        cfg = Config.model_validate(document)
    except ValidationError as exc:
        errors = _errors_of(exc) + errors
    else:
        errors += timing_errors(cfg)
    if errors:
        raise ConfigError(errors)
    canonical = orjson.dumps(cfg.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return LoadedConfig(cfg, hashlib.sha256(canonical).hexdigest()[:12], source)


def load_text(text: str | bytes, source: str = "<memory>") -> LoadedConfig:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    return parse(document, source)


def load_file(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> LoadedConfig:
    """The config in ``path``, with ``overrides`` (section -> keys, e.g. the command
    line's ``--port``) on top; a reload of the file keeps them."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {p}: {exc.strerror}")]) from None
    loaded = load_text(text, str(p))
    if not overrides:
        return loaded
    doc = loaded.config.model_dump(mode="json")
    for section, values in overrides.items():
        doc[section].update(values)
    return parse(doc, loaded.source)
