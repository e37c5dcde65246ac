"""The deterministic simulation in the suite: a few thousand seeds of the real driver
against hostile providers, crashes and leases (``make dst SEEDS=N`` runs more); each seed
replays the same, whatever process runs it; and each fix of SPEC 7 taken back is caught."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import run  # noqa: E402

SEEDS = int(os.environ.get("DST_SEEDS", "4000"))


def test_every_seed_keeps_the_money_right_and_ends():
    outcomes, seconds = run.run_seeds(range(SEEDS))
    failed = [o for o in outcomes if o.violations]
    totals: dict[str, int] = {}
    for o in outcomes:
        for k, n in o.stats.items():
            totals[k] = totals.get(k, 0) + n
    print(f"\ndst: {len(outcomes)} seeds in {seconds:.1f} s ({len(outcomes) / seconds:.0f} seeds/s); {totals}")
    assert len(outcomes) == SEEDS
    assert not failed, "\n".join(f"seed {o.seed}: {o.violations[:3]}\n  replay: {run.replay_command(o.seed)}"
                                 for o in failed[:10])
    # The runs went through what they are for (else they prove little).
    for what in ("late_capture_refunded", "late charges refused by a tombstone", "amount_mismatch", "crashes",
                 "drivers that found their lease lost", "void_voided", "webhook_ignored", "reloads", "settled",
                 "clawed_back", "attempt_requires_action", "action_expiring", "step-ups captured",
                 "step-ups declined"):
        assert totals.get(what, 0) > 0, f"no seed saw {what}: {totals}"


def test_a_seed_replays_the_same_in_any_process():
    seeds = [3, 145, 259, 1110]
    pooled = {o.seed: o.digest for o in run.run_seeds(seeds, workers=2)[0]}
    for seed in seeds[:2]:
        for hash_seed in ("1", "2"):
            out = subprocess.run([sys.executable, str(Path(run.__file__)), "--seed", str(seed)], capture_output=True,
                                 text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": hash_seed})
            assert f"digest {pooled[seed]}" in out.stdout, (seed, hash_seed, out.stdout, out.stderr)
    again = {o.seed: o.digest for o in run.run_seeds(seeds, workers=1)[0]}
    assert again == pooled


@pytest.mark.parametrize("mutation", sorted(run.MUTATIONS))
def test_the_simulation_catches_each_fix_taken_back(mutation):
    outcomes, _ = run.run_seeds(range(3000), mutation, stop_at_first=True)
    failed = [o for o in outcomes if o.violations]
    assert failed, f"3000 seeds did not notice {mutation}"
    first = min(failed, key=lambda o: o.seed)
    print(f"\n{mutation}: seed {first.seed}: {first.violations[0]}")


@pytest.mark.parametrize("mutation", sorted(run.RARE_MUTATIONS))
def test_the_seeds_that_found_a_rare_defect_catch_its_fix_taken_back(mutation):
    patch, seeds = run.RARE_MUTATIONS[mutation]
    assert all(not run.run_seed(seed).violations for seed in seeds)
    with patch():
        assert all(run.run_seed(seed).violations for seed in seeds), f"{seeds} did not notice {mutation}"
