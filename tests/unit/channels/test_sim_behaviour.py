"""The simulator's behaviour model and config, without a network: validation names the
bad field or key path, draws follow the configured rates and distributions, and a seed
makes them repeatable."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from pathlib import Path

import pytest

from channels.simulator import (
    KIND_DEFAULTS,
    Behaviour,
    BehaviourError,
    Fate,
    SimConfigError,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "config" / "simulator.example.yaml"


def test_kind_defaults_have_the_latencies_of_the_systems_replaced():
    assert {k: b.latency_ms for k, b in KIND_DEFAULTS.items()} == \
        {"direct_api": 28, "digital_currency": 1200, "bank": 4800}
    assert KIND_DEFAULTS["direct_api"].pending_rate == 0
    assert KIND_DEFAULTS["digital_currency"].pending_rate > 0 and KIND_DEFAULTS["bank"].pending_rate > 0


def test_fates_follow_their_rates():
    b = Behaviour(decline_rate=0.2, not_processed_rate=0.1, pending_rate=0.3, reset_rate=0.1)
    rng = random.Random(3)
    counts = Counter(b.fate(rng) for _ in range(20_000))
    shares = {fate: n / 20_000 for fate, n in counts.items()}
    for fate, rate in ((Fate.DECLINE, 0.2), (Fate.NOT_PROCESSED, 0.1), (Fate.PENDING, 0.3), (Fate.RESET, 0.1),
                       (Fate.CAPTURE, 0.3)):
        assert abs(shares[fate] - rate) < 0.02, (fate, shares)
    assert Fate.TIMEOUT_AFTER_CAPTURE not in counts


def test_every_fate_is_reachable_at_rate_one():
    for fate in Fate:
        b = Behaviour() if fate is Fate.CAPTURE else Behaviour().updated({f"{fate.value}_rate": 1.0})
        assert b.fate(random.Random(0)) is fate


def test_decline_codes_follow_their_weights():
    b = Behaviour(decline_codes={"hard": 3, "soft": 1})
    rng = random.Random(1)
    share = Counter(b.decline_code(rng) for _ in range(8000))["hard"] / 8000
    assert abs(share - 0.75) < 0.03


@pytest.mark.parametrize("distribution", ["normal", "lognormal"])
def test_random_latencies_have_the_configured_mean_and_spread(distribution):
    b = Behaviour(latency_ms=100, latency_jitter_ms=20, latency_distribution=distribution)
    rng = random.Random(2)
    draws = [b.latency_s(rng) * 1000 for _ in range(20_000)]
    assert abs(statistics.fmean(draws) - 100) < 2
    assert abs(statistics.stdev(draws) - 20) < 2
    assert min(draws) >= 0


def test_lognormal_has_the_longer_right_tail():
    rng = random.Random(4)
    tails = {}
    for distribution in ("normal", "lognormal"):
        b = Behaviour(latency_ms=100, latency_jitter_ms=30, latency_distribution=distribution)
        draws = sorted(b.latency_s(rng) for _ in range(20_000))
        tails[distribution] = draws[int(0.999 * len(draws))]
    assert tails["lognormal"] > tails["normal"]


def test_fixed_latency_and_the_brownout_multiplier():
    b = Behaviour(latency_ms=28, latency_jitter_ms=10, latency_distribution="fixed", latency_multiplier=20)
    assert b.latency_s(random.Random(0)) == pytest.approx(0.56)
    assert Behaviour(ping_latency_ms=5, latency_multiplier=4).ping_latency_s() == pytest.approx(0.02)


def test_the_same_seed_draws_the_same_sequence():
    b = Behaviour(decline_rate=0.3, pending_rate=0.3)

    def run(seed: int) -> list[tuple[Fate, float]]:
        rng = random.Random(seed)
        return [(b.fate(rng), b.latency_s(rng)) for _ in range(50)]

    assert run(9) == run(9) and run(9) != run(10)


def test_an_update_is_validated_whole_and_leaves_the_original_alone():
    b = Behaviour()
    with pytest.raises(BehaviourError) as exc:
        b.updated({"decline_rate": 0.5, "latency_ms": -3})
    assert exc.value.field == "latency_ms"
    assert b.updated({"decline_rate": 0.5}).decline_rate == 0.5 and b.decline_rate == 0


def test_parse_config_applies_kind_defaults_under_overrides():
    config = parse_config({"seed": 3, "channels": [
        {"name": "a", "kind": "bank", "webhook_secret": "whsec_aaaa", "behaviour": {"pending_rate": 0.5}},
        {"name": "b", "kind": "direct_api", "webhook_secret": "whsec_bbbb", "seed": 42, "currencies": ["PHP"],
         "api_key": "k"},
    ]})
    a, b = config.channels
    assert (a.behaviour.latency_ms, a.behaviour.pending_rate, a.seed) == (4800, 0.5, "3:a")
    assert (b.seed, b.currencies, b.api_key) == ("42", frozenset({"PHP"}), "k")


@pytest.mark.parametrize(("doc", "path"), [
    (None, "channels"),
    ({"channels": []}, "channels"),
    ({"seed": 1.5, "channels": [{}]}, "seed"),
    ({"channels": ["x"]}, "channels[0]"),
    ({"channels": [{"name": "_sim", "kind": "bank", "webhook_secret": "whsec_xxxx"}]}, "channels[0].name"),
    ({"channels": [{"name": "a/b", "kind": "bank", "webhook_secret": "whsec_xxxx"}]}, "channels[0].name"),
    ({"channels": [{"name": "a", "kind": "atm", "webhook_secret": "whsec_xxxx"}]}, "channels[0].kind"),
    ({"channels": [{"name": "a", "kind": "bank", "webhook_secret": "short"}]}, "channels[0].webhook_secret"),
    ({"channels": [{"name": "a", "kind": "bank", "webhook_secret": "whsec_xxxx", "api_key": ""}]},
     "channels[0].api_key"),
    ({"channels": [{"name": "a", "kind": "bank", "webhook_secret": "whsec_xxxx", "currencies": ["cny"]}]},
     "channels[0].currencies"),
    ({"channels": [{"name": "a", "kind": "bank", "webhook_secret": "whsec_xxxx", "colour": "red"}]},
     "channels[0].colour"),
    ({"channels": [{"name": "a", "kind": "bank", "webhook_secret": "whsec_xxxx",
                    "behaviour": {"decline_rate": 7}}]}, "channels[0].behaviour.decline_rate"),
    ({"channels": [{"name": "a", "kind": "bank", "webhook_secret": "whsec_xxxx"},
                   {"name": "a", "kind": "bank", "webhook_secret": "whsec_xxxx"}]}, "channels[1].name"),
])
def test_config_errors_name_the_path_of_the_bad_key(doc, path):
    with pytest.raises(SimConfigError) as exc:
        parse_config(doc)
    assert str(exc.value).startswith(f"{path}:"), str(exc.value)


def test_an_unreadable_config_file_is_a_config_error(tmp_path):
    with pytest.raises(SimConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: [")
    with pytest.raises(SimConfigError, match="cannot read"):
        load_config(bad)


def test_the_example_config_has_the_named_channels_of_all_three_kinds():
    config = load_config(EXAMPLE)
    kinds = {spec.name: spec.kind for spec in config.channels}
    assert kinds == {
        "alipay_direct": "direct_api", "wechat_direct": "direct_api", "gcash_direct": "direct_api",
        "boost_direct": "direct_api", "usdt_settle": "digital_currency", "unionpay_bank": "bank",
        "bdo_bank": "bank", "maybank_bank": "bank",
    }
    assert all(spec.webhook_secret == f"whsec_{spec.name}" for spec in config.channels)
    currencies = {spec.name: spec.currencies for spec in config.channels}
    assert currencies["gcash_direct"] == {"PHP"} and currencies["boost_direct"] == {"MYR"}
    assert {"CNY", "PHP", "MYR", "USD"} <= currencies["usdt_settle"]
