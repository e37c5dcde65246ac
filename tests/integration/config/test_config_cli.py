"""`orchestrator config check` as an operator runs it, in a process of its own: ok for the
example, every error with its path and exit 1 for a bad file (the schema itself:
tests/unit/config/test_config.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config" / "orchestrator.example.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, check=False)


def test_config_check_accepts_the_example():
    proc = _cli("config", "check", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_config_check_prints_every_error_with_its_path_and_exits_1(tmp_path):
    doc = example()
    doc["channels"][2]["timeout_ms"] = 0
    doc["routing"]["rules"][0]["channels"] = ["gcash_direct", "ghost"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    proc = _cli("config", "check", str(bad))
    assert proc.returncode == 1
    assert "channels[2].timeout_ms: must be > 0" in proc.stderr
    assert "routing.rules[0].channels[1]: unknown channel 'ghost'" in proc.stderr
    missing = _cli("config", "check", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
