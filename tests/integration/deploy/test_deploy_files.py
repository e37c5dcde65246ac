"""The rest of deploy/ says what the product really does: the config passes ``orchestrator
config check``, the systemd units call the real CLI and Prometheus's real flags, the
Prometheus config is valid and scrapes the instances the load balancer serves, and the
README covers every file."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import yaml
from promtools import DEPLOY, ROOT, binary, promtool

from orchestrator.__main__ import _parser

UNIT = DEPLOY / "systemd" / "orchestrator@.service"
PROM_UNIT = DEPLOY / "systemd" / "orchestrator-prometheus.service"


def _directives(unit: str, key: str) -> list[str]:
    """A unit's ``key=`` lines, continuation lines joined, as the instance @1 sees them."""
    text = re.sub(r"\\\n\s*", " ", unit.replace("%i", "1"))
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def _orchestrator_args(command: str) -> list[str]:
    argv = shlex.split(command)
    assert argv[1:3] == ["-m", "orchestrator"], argv
    return argv[3:]


def test_the_deploy_config_passes_config_check():
    done = subprocess.run([sys.executable, "-m", "orchestrator", "config", "check", str(DEPLOY / "orchestrator.yaml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "ok (version" in done.stdout, done.stdout + done.stderr
    doc = yaml.safe_load((DEPLOY / "orchestrator.yaml").read_text())
    assert doc["storage"]["url"].startswith("postgresql://"), "two instances share PostgreSQL"
    assert doc["server"]["workers"] >= 2 and doc["server"]["public_url"].startswith("https://")
    assert "metrics" not in doc["server"].get("restrict", []), "Prometheus scrapes without a key"


def test_the_orchestrator_unit_runs_the_real_cli():
    unit = UNIT.read_text()
    (start,) = _directives(unit, "ExecStart")
    args = _parser().parse_args(_orchestrator_args(start))
    assert args.command == "serve" and args.config == "/etc/orchestrator/orchestrator.yaml" and args.port == 8081
    (check,) = _directives(unit, "ExecStartPre")
    checked = _parser().parse_args(_orchestrator_args(check))
    assert (checked.command, checked.file) == ("config", args.config)
    assert _directives(unit, "ExecReload") == ["/bin/kill -HUP $MAINPID"], "SIGHUP reloads the config file"
    assert _directives(unit, "KillMode") == ["mixed"], "SIGTERM to the supervisor, which stops its workers"


def test_the_prometheus_unit_uses_flags_prometheus_has():
    unit = PROM_UNIT.read_text()
    (start,) = _directives(unit, "ExecStart")
    argv = shlex.split(start)
    assert argv[0] == "/usr/bin/prometheus"
    flags = {a.split("=", 1)[0] for a in argv[1:]}
    assert "--config.file" in flags
    helped = subprocess.run([binary("prometheus"), "--help"], capture_output=True, text=True, timeout=60)
    known = set(re.findall(r"(--[a-z][a-z0-9.-]+)", helped.stdout + helped.stderr))
    assert flags <= known, flags - known


def test_the_prometheus_config_is_valid_and_scrapes_what_the_load_balancer_serves():
    config = DEPLOY / "prometheus" / "prometheus.yml"
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    doc = yaml.safe_load(config.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in doc["scrape_configs"] if j["job_name"] == "orchestrator"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    servers = set(re.findall(r"^\s*server \S+ (\S+)", (DEPLOY / "haproxy" / "haproxy.cfg").read_text(), re.M))
    assert targets == servers and all(t.endswith(":8081") for t in targets), (targets, servers)


def test_the_grafana_provisioning_loads_the_dashboard_from_where_the_readme_puts_it():
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "orchestrator.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"deploy/grafana/dashboard.json {path}/" in (DEPLOY / "README.md").read_text()
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "orchestrator.yaml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"


def test_the_readme_covers_every_file_and_every_alert():
    readme = (DEPLOY / "README.md").read_text()
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.name != "README.md":
            rel = path.relative_to(DEPLOY)
            assert str(rel) in readme or (rel.parts[0] == "grafana" and "grafana/provisioning/" in readme), rel
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert f"`{rule['alert']}` | {rule['labels']['severity']} |" in readme, rule["alert"]
