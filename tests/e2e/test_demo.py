"""`make demo` runs non-interactively (no TTY, as in CI): plain progress lines, and a
summary whose exactly-once check passes against the simulator's ledger, and that ends
with every notification delivered at least once to the front service's receiver."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.launch import ROOT

pytestmark = pytest.mark.slow


def test_the_demo_runs_unattended_and_its_exactly_once_check_passes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", "--duration", "12", "--rate", "60", "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=170, stdin=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "] steady traffic: sent" in out, "plain progress lines when there is no terminal"
    assert "OUTAGE of" in out
    assert "refunds and disputes included): PASSED" in out
    assert "coin pools (coins now" in out
    assert "errors logged by the orchestrator: none" in out
    assert "settlement reconciliation of today's reports: 8 of 8 channels completed" in out
    summary = out[out.index("== summary =="):].strip().splitlines()
    assert summary[-1].endswith("every notification delivered at least once"), summary[-1]
    assert "refunds: {" in out, "refunds were made"
    assert "then a recharge from each: 404 template_not_found, as it must" in out
    assert "amount suggestions: asked before" in out
    assert "3-D Secure step-ups: " in out and "succeeded " in out.split("3-D Secure step-ups: ")[1]
    assert (tmp_path / "orchestrator.db").exists() and (tmp_path / "orchestrator.log").exists()
    assert "\x1b[" not in out, "no terminal escapes in a non-interactive run"
