"""The alert rules Prometheus loads (deploy/prometheus/alerts.yml): valid for
``promtool check rules``, each one proven by ``promtool test rules`` on synthetic series
(deploy/prometheus/alerts_test.yml) firing and staying quiet, and each one documented
for whoever it pages."""

from __future__ import annotations

import re

import pytest
import yaml
from promtools import RULE_TESTS, RULES, binary, metric_names, promtool


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_promtool_is_installed():
    assert binary("promtool")
    version = promtool("--version")
    assert version.returncode == 0 and re.search(r"version 2\.\d+", version.stdout + version.stderr), version


def test_promtool_accepts_the_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout, done.stdout


def test_every_rule_passes_its_unit_tests():
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_promtool_test_rules_fails_when_a_rule_goes_wrong(tmp_path):
    """The unit tests can fail: the approval threshold halved, they do."""
    broken = RULES.read_text().replace(") < 0.80", ") < 0.40", 1)
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    done = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0 and "OrchestratorChannelApprovalLow" in done.stdout + done.stderr


def test_the_rules_read_only_metrics_the_orchestrator_exports(exposed):
    read = {name for rule in _rules() for name in metric_names(rule["expr"])}
    assert read, "nothing read: the name extraction is broken"
    assert read <= exposed, f"not exported: {sorted(read - exposed)}"


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for rule in _rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no test shows it firing"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no test shows it quiet"


def test_every_alert_says_how_urgent_it_is_and_what_to_do():
    for rule in _rules():
        name = rule["alert"]
        assert re.fullmatch(r"Orchestrator[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        notes = rule["annotations"]
        assert notes["summary"].strip(), name
        runbook = notes["runbook"]
        assert "Look at:" in runbook and "Do:" in runbook, f"{name}: a runbook says what to look at and what to do"
        if rule.get("for") is not None:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name


def test_the_issue_s_list_of_alerts_is_covered():
    """What pages a payments on-call (issue 28): each has its rule."""
    names = {r["alert"] for r in _rules()}
    assert {"OrchestratorChannelApprovalLow", "OrchestratorApprovalLow", "OrchestratorChannelBreakerOpen",
            "OrchestratorMarketUnroutable", "OrchestratorRechargesPastDeadline", "OrchestratorNotificationBacklog",
            "OrchestratorNotificationsDead", "OrchestratorReconciliationDiscrepancies", "OrchestratorPoolBelowLowWater",
            "OrchestratorJournalCommitSlow", "OrchestratorApiErrorRate", "OrchestratorInstanceDown"} <= names


def test_a_missing_promtool_fails_the_suite_and_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="apt-get install prometheus"):
        binary("promtool")
