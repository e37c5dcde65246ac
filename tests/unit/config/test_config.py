"""The config schema: every error named by its path (`config check` run as a process:
tests/integration/config/test_config_cli.py)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from config import ConfigError, load_file, load_text, parse

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config" / "orchestrator.example.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def errors_of(doc) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(doc)
    return info.value.lines()


def test_the_example_config_is_valid_and_versioned():
    loaded = load_file(EXAMPLE)
    assert len(loaded.config.channels) >= 7
    assert {c.kind for c in loaded.config.channels} == {"direct_api", "digital_currency", "bank"}
    assert len(loaded.version) == 12
    assert loaded.config.pricing.rates["CNY"] == Decimal("0.1404")


def test_the_version_is_the_content_not_the_text():
    text = EXAMPLE.read_text()
    assert load_text(text).version == load_text("# a comment\n" + text).version
    doc = example()
    doc["routing"]["max_attempts"] = 2
    assert parse(doc).version != load_text(text).version


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["channels"][2].update(timeout_ms=0), "channels[2].timeout_ms: must be > 0"),
        (lambda d: d["channels"][0].update(kind="carrier_pigeon"), "channels[0].kind: must be one of"),
        (lambda d: d["channels"][0].pop("base_url"), "channels[0].base_url: is required"),
        (lambda d: d["channels"][1].update(colour="red"), "channels[1].colour: unknown key"),
        (lambda d: d["channels"][0].update(currencies=["XXX"]), "channels[0].currencies: unknown currency"),
        (lambda d: d["channels"][0].update(min_amount_minor=5, max_amount_minor=4), "channels[0]: max_amount_minor must be >= min_amount_minor"),
        (lambda d: d["routing"].update(max_attempts=0), "routing.max_attempts: must be >= 1"),
        (lambda d: d["routing"]["rules"][0].update(channels=["nope"]), "routing.rules[0].channels[0]: unknown channel 'nope'"),
        (lambda d: d["channels"][1].update(name=d["channels"][0]["name"]), "channels[1].name: duplicate channel name"),
        (lambda d: d["pricing"]["rates"].pop("PHP"), "channels[2].currencies[0]: currency PHP has no rate"),
        (lambda d: d["pricing"]["rates"].update(CNY=-1), "pricing.rates: rate for CNY must be > 0"),
        (lambda d: d["clients"][0].update(key_sha256="abc"), "clients[0].key_sha256: does not match"),
        (lambda d: d["clients"][0].update(scopes=["root"]), "clients[0].scopes[0]: must be one of"),
        (lambda d: d["storage"].update(url="mysql://x"), "storage.url: must start with sqlite:/// or postgresql://"),
        (lambda d: d["server"].update(port=70000), "server.port: must be <= 65535"),
    ],
)
def test_each_error_is_reported_with_its_path(mutate, expected):
    doc = example()
    mutate(doc)
    lines = errors_of(doc)
    assert any(line.startswith(expected) for line in lines), lines


def test_every_error_is_reported_not_just_the_first():
    doc = example()
    doc["channels"][0]["timeout_ms"] = -1
    doc["channels"][3]["weight"] = -2
    doc["routing"]["deadline_s"] = 0
    lines = errors_of(doc)
    assert len(lines) == 3, lines


def test_not_yaml_and_not_a_mapping_are_errors():
    with pytest.raises(ConfigError) as info:
        load_text("channels: [unclosed")
    assert "not valid YAML" in str(info.value)
    with pytest.raises(ConfigError):
        load_text("- a\n- b\n")


@pytest.mark.parametrize(("kind", "timeout_ms"), [("direct_api", 2000), ("digital_currency", 4000), ("bank", 10000)])
def test_a_channel_without_a_timeout_gets_its_kinds(kind, timeout_ms):
    """A bank answers in ~4.8 s: a 2 s default for every kind gave up on it while it
    was still working, and a charge landed after the failover."""
    doc = example()
    del doc["channels"][0]["timeout_ms"]
    doc["channels"][0]["kind"] = kind
    assert parse(doc).config.channels[0].timeout_ms == timeout_ms
    doc["channels"][0]["timeout_ms"] = 1234
    assert parse(doc).config.channels[0].timeout_ms == 1234


def test_a_lease_the_renewal_cannot_keep_or_shorter_than_a_call_is_refused():
    doc = example()
    doc["storage"] = {**doc.get("storage", {}), "lease_s": 6, "lease_renew_s": 4}
    lines = errors_of(doc)
    assert any(line.startswith("storage.lease_renew_s: must be at most half of storage.lease_s") for line in lines)
    assert any(line.startswith("channels[5].timeout_ms: must be shorter than storage.lease_s") for line in lines), lines
    doc["storage"].update(lease_s=30, lease_renew_s=10)
    assert parse(doc).config.storage.lease_renew_s == 10
