"""deploy/grafana/dashboard.json: a Grafana dashboard in the schema's shape (panels with
unique ids, a place on the 24-column grid that overlaps no other, Prometheus targets),
every query valid PromQL (each is checked by ``promtool check rules`` as a recording
rule, the dashboard's variables set to what they stand for) that reads only metrics the
orchestrator exports, and the views an on-call needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from promtools import DASHBOARD, metric_names, promtool

PANEL_KINDS = {"row", "stat", "timeseries", "state-timeline", "table", "bargauge", "gauge", "text"}
BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _targets() -> list[tuple[dict, dict]]:
    return [(p, t) for p in _panels() for t in p["targets"]]


def as_promql(expr: str) -> str:
    """A panel's query as Prometheus receives it: Grafana's intervals as durations, a
    variable as its "All" value (every variable here sits in a label matcher)."""
    expr = re.sub(r"\$(__rate_interval|__interval|__range)\b", "5m", expr)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def _check_as_rules(exprs: dict[str, str], tmp: Path):
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": name, "expr": e} for name, e in exprs.items()]}]}
    path = tmp / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return promtool("check", "rules", str(path))


def test_the_dashboard_has_the_schema_s_shape():
    d = _dashboard()
    assert isinstance(d["uid"], str) and d["uid"] and d["title"]
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["time"]["from"] and d["time"]["to"]
    ids = [p["id"] for p in d["panels"]]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), "panel ids are unique integers"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        assert p["type"] in PANEL_KINDS, p["type"]
        assert p["title"], p["id"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["id"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, (p["id"], g)
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['id']} overlaps another"
        cells |= mine
    for p in _panels():
        assert p["datasource"]["type"] == "prometheus", p["id"]
        assert p["targets"], f"panel {p['id']} ({p['title']}) has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["id"]
        assert all(t["expr"].strip() for t in p["targets"]), p["id"]
        assert p["description"], f"panel {p['id']} ({p['title']}) says what it shows"


def test_the_dashboard_s_variables_are_defined_and_the_queries_use_no_other():
    variables = {v["name"] for v in _dashboard()["templating"]["list"]}
    assert {"datasource", "job", "instance", "channel"} <= variables
    used = {m for _, t in _targets() for m in re.findall(r"\$\{?(\w+)\}?", t["expr"])}
    assert used <= variables | BUILTINS, used - variables - BUILTINS


def test_every_query_is_valid_promql(tmp_path):
    exprs = {f"dashboard:panel_{p['id']}_{t['refId']}": as_promql(t["expr"]) for p, t in _targets()}
    assert all("$" not in e for e in exprs.values())
    done = _check_as_rules(exprs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout, done.stdout


def test_promtool_catches_a_query_that_is_not(tmp_path):
    done = _check_as_rules({"dashboard:broken": "sum(rate(orchestrator_attempts_total[5m])"}, tmp_path)
    assert done.returncode != 0


def test_every_query_reads_only_metrics_the_orchestrator_exports(exposed):
    read = {name for _, t in _targets() for name in metric_names(t["expr"])}
    assert read, "nothing read: the name extraction is broken"
    assert read <= exposed, f"not exported: {sorted(read - exposed)}"


@pytest.mark.parametrize("metric", [
    "orchestrator_attempts_total",  # traffic, approval and share per channel
    "orchestrator_recharges_total",  # traffic and success per market
    "orchestrator_attempt_latency_seconds_bucket",  # latency percentiles
    "orchestrator_routing_decisions_total",  # failovers
    "orchestrator_breaker_state",
    "orchestrator_market_routable_channels",
    "orchestrator_recharges_open",  # the pending backlog
    "orchestrator_pool_coins",
    "orchestrator_notifications_pending",
    "orchestrator_journal_commit_seconds_bucket",
    "orchestrator_http_requests_total",
])
def test_the_dashboard_shows_what_on_call_looks_at(metric):
    assert any(metric in metric_names(t["expr"]) for _, t in _targets()), metric
