"""The hand-kept histograms read back, through Prometheus' own parser, as histograms."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from channels import AttemptOutcome
from orchestrator.metrics import Metrics


def _samples(metrics: Metrics, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families[name].samples}


def test_commit_histograms_count_every_observation_in_its_bucket():
    m = Metrics()
    for batch, seconds in ((1, 0.0004), (3, 0.0015), (3, 0.03), (700, 2.0)):
        m.journal_commit(batch, seconds)
    lat = _samples(m, "orchestrator_journal_commit_seconds")
    assert lat[("orchestrator_journal_commit_seconds_bucket", (("le", "0.0005"),))] == 1
    assert lat[("orchestrator_journal_commit_seconds_bucket", (("le", "0.002"),))] == 2
    assert lat[("orchestrator_journal_commit_seconds_bucket", (("le", "0.05"),))] == 3
    assert lat[("orchestrator_journal_commit_seconds_bucket", (("le", "1.0"),))] == 3
    assert lat[("orchestrator_journal_commit_seconds_bucket", (("le", "+Inf"),))] == 4
    assert lat[("orchestrator_journal_commit_seconds_count", ())] == 4
    assert abs(lat[("orchestrator_journal_commit_seconds_sum", ())] - 2.0319) < 1e-9
    batch = _samples(m, "orchestrator_journal_batch_size")
    # A value on a bound counts in that bucket (le means <=).
    assert batch[("orchestrator_journal_batch_size_bucket", (("le", "1.0"),))] == 1
    assert batch[("orchestrator_journal_batch_size_bucket", (("le", "4.0"),))] == 3
    assert batch[("orchestrator_journal_batch_size_bucket", (("le", "512.0"),))] == 3
    assert batch[("orchestrator_journal_batch_size_count", ())] == 4


def test_attempt_latency_is_labelled_by_channel():
    m = Metrics()
    m.attempt_finished("a", AttemptOutcome.CAPTURED, 28.0)
    m.attempt_finished("a", AttemptOutcome.CAPTURED, 31.0)
    m.attempt_finished("b", AttemptOutcome.NOT_PROCESSED, 2000.0)
    lat = _samples(m, "orchestrator_attempt_latency_seconds")
    assert lat[("orchestrator_attempt_latency_seconds_count", (("channel", "a"),))] == 2
    assert lat[("orchestrator_attempt_latency_seconds_bucket", (("channel", "a"), ("le", "0.025")))] == 0
    assert lat[("orchestrator_attempt_latency_seconds_bucket", (("channel", "a"), ("le", "0.05")))] == 2
    assert lat[("orchestrator_attempt_latency_seconds_bucket", (("channel", "b"), ("le", "2.5")))] == 1
    attempts = _samples(m, "orchestrator_attempts")
    assert attempts[("orchestrator_attempts_total", (("channel", "a"), ("outcome", "captured")))] == 2


def test_an_empty_histogram_renders():
    assert "orchestrator_journal_commit_seconds" in Metrics().render().decode()
