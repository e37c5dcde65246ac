"""The risk model's traffic and training (bench/risk_gen.py, bench/risk_train.py,
bench/risk_eval.py): the traffic replays from its seed and is labelled in the documented
shares; the training replays it as a restarted process too, which forgets the feature state
but not the journal; a tiny training run gives an artefact the engine serves, byte for byte
the same from the same seed, that tells card testing from good traffic on users it never saw."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bench import risk_eval, risk_gen, risk_train
from orchestrator.risk import luhn_ok
from orchestrator.risk_features import FEATURES
from orchestrator.risk_model import from_document

TINY = {"users": 1500, "days": 6, "warmup_days": 2}
# The docstring's shares of fraud events at the default size, by family.
DOCUMENTED = {"card_testing": 0.28, "account_takeover": 0.16, "velocity_burst": 0.21, "collusion_ring": 0.14,
              "slow_drift": 0.21}


@pytest.fixture(scope="module")
def traffic() -> risk_gen.Traffic:
    return risk_gen.generate(7, users=4000)


@pytest.fixture(scope="module")
def trained() -> dict:
    doc, _ = risk_train.train(risk_train.training_traffic(21, **TINY), date="2026-01-01")
    return doc


def test_the_same_seed_gives_the_same_traffic():
    first = risk_gen.generate(5, users=300, days=4, warmup_days=1)
    again = risk_gen.generate(5, users=300, days=4, warmup_days=1)
    assert first.events == again.events and first.prior == again.prior
    assert risk_gen.generate(6, users=300, days=4, warmup_days=1).events != first.events


def test_events_are_in_time_order_labelled_and_attacks_come_after_the_warm_up(traffic):
    times = [e.at_s for e in traffic.events]
    assert times == sorted(times)
    assert all(e.label == (e.family != "good") for e in traffic.events)
    assert all(e.at_s >= traffic.measure_from for e in traffic.events if e.label)
    assert all(luhn_ok(e.instrument) for e in traffic.events if e.card_number)
    assert all(e.kind in ("habit", "pk", "retry", "join") for e in traffic.events if not e.label)


def test_families_and_habits_come_in_the_documented_shares(traffic):
    measured = [e for e in traffic.events if e.at_s >= traffic.measure_from]
    fraud = Counter(e.family for e in measured if e.label)
    total = sum(fraud.values())
    assert 0.04 < total / len(measured) < 0.12
    for family, share in DOCUMENTED.items():
        assert fraud[family] / total == pytest.approx(share, abs=0.08), family
    good = [e for e in measured if not e.label]
    kinds = Counter(e.kind for e in good)
    assert 0.15 < kinds["pk"] / len(good) < 0.30
    assert kinds["join"] and kinds["retry"]
    assert 0.015 < sum(e.declined for e in good) / len(good) < 0.06
    assert 0.06 < sum(e.card_number for e in good) / len(good) < 0.15
    # Half the requests carry a device id, whatever their label: its absence must say nothing.
    for side in (good, [e for e in measured if e.label]):
        assert 0.4 < sum(e.device_id is not None for e in side) / len(side) < 0.7
    assert sum(e.declined for e in measured if e.family == "card_testing") / fraud["card_testing"] > 0.75


def test_a_tiny_training_run_is_a_servable_artefact_and_deterministic(trained):
    model = from_document(trained)
    assert model.version == risk_train.VERSION
    assert trained["trained"]["families_held_out"] == ["collusion_ring", "slow_drift"]
    th = trained["trained"]["thresholds"]
    assert 0 < th["challenge_at"] < th["block_at"] <= 1
    again, _ = risk_train.train(risk_train.training_traffic(21, **TINY), date="2026-01-01")
    assert risk_train.dumps(again) == risk_train.dumps(trained)


def test_the_held_out_families_are_not_trained_on(trained):
    counts = trained["trained"]["events_measured"]
    assert all(counts[f] == 0 for f in risk_gen.HELD_OUT)
    assert all(counts[f] > 0 for f in risk_gen.TRAINED)
    # Each measured recharge twice: as the steady process saw it, and as the restarted one did.
    assert trained["trained"]["rows"] == 2 * (counts["good"] + sum(counts[f] for f in risk_gen.TRAINED))


def test_the_restarted_replay_forgets_the_feature_state_but_not_the_journal():
    traffic = risk_gen.generate(22, **TINY)
    at = risk_train.restarts(traffic)
    gaps = np.diff((risk_gen.START, *at)) / 86_400
    assert at == risk_train.restarts(traffic) and len(at) >= 2 and ((gaps >= 1) & (gaps <= 3)).all()
    steady, restarted = risk_train.replay(traffic), risk_train.replay(traffic, restart_at=at)
    assert (steady.family == restarted.family).all()  # the same recharges
    col = FEATURES.index
    assert (steady.x[:, col("user_history")] == restarted.x[:, col("user_history")]).all()
    # In the hour after a restart most payers are unknown to the process, as they are not to the steady one.
    just = restarted.uptime_s < 3600
    assert just.sum() > 20
    assert (restarted.x[just, col("user_recharges")] == 0).mean() > 0.7
    assert (steady.x[just, col("user_recharges")] == 0).mean() < 0.2


def test_the_model_tells_card_testing_from_good_traffic_on_unseen_users(trained):
    data = risk_train.replay(risk_gen.generate(22, **TINY))
    scores = risk_train.scores(from_document(trained), data.x)
    keep = np.isin(data.family, ("good", "card_testing"))
    assert (data.family == "card_testing").sum() > 50
    assert roc_auc_score(data.family[keep] == "card_testing", scores[keep]) > 0.9


def test_the_threshold_keeps_within_its_budget():
    scores = np.random.default_rng(0).random(10_000) ** 8
    t = risk_train.threshold(scores, 0.005)
    assert (scores >= t).mean() <= 0.005 < (scores >= t - 0.002).mean()


def test_the_engine_with_the_model_intercepts_what_the_rules_alone_miss(trained, tmp_path):
    path = tmp_path / "tiny.json"
    path.write_bytes(risk_train.dumps(trained))
    th = trained["trained"]["thresholds"]
    configs = risk_eval.risk_configs(str(path), th["challenge_at"], th["block_at"])
    traffic = risk_gen.generate(22, **TINY)
    rules, model = (risk_eval.figures([risk_eval.run(traffic, configs[name])]) for name in ("rules", "model"))
    assert rules["families"]["card_testing"]["rate"] < 0.2 < 0.9 < model["families"]["card_testing"]["rate"]
    assert model["good"]["raised_by_model_rate"] < 0.03
