"""Evaluate risk (issue 27) the way it runs: the real ``RiskEngine``, per recharge, in time order.

Each seed's traffic (``bench/risk_gen.py``; seeds other than the training one, so other
users and other attackers) goes through two engines on the example config's ``risk``
section: the rules alone (``model: None``), and the rules with the model
(``RiskModelConfig(artefact, challenge_at, block_at)``). A ``VirtualClock`` is moved to each
recharge's time; then ``assess``; a blocked recharge is ``refused``, any other is
``record``-ed and its end told to ``outcome``: a failure when the provider declines it, or
when it was challenged and is fraud (the fraudster fails the 3-D Secure step-up; a good
payer passes it). The user's ``UserHistory`` is their succeeded recharges, before the window
and replayed so far. The warm-up days run through the engines but are not counted.

Counted per recharge of the measured window: *intercepted* = challenged or blocked. For
fraud, per family (seen in training, or held out) and overall, also by amount and by
attack (an attack with at least one of its recharges intercepted); for good recharges, the
share *misjudged* (challenged or blocked; each also alone), and the share of good payers
with at least one misjudged recharge. The model's ROC AUC per family (that family's
recharges against the good ones) is taken from the scores the engine gave. And the first
seed once more with no warm-up, day by day (``after_restart``): a process that starts with
an empty feature state while the journal's history is there, as after a deploy.

Every engine gets the same ``PEPPER``, so card numbers key the same velocity and feature
slots in every run: two runs give the same figures.

    python -m bench.risk_eval [--seeds 2,3] [--artefact risk-lr-v1] [--challenge-at 0.7 --block-at 0.98]

Without thresholds, those the artefact suggests (chosen on its training seed) are used.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script

from bench.risk_gen import FAMILIES, HELD_OUT, TRAINED, USERS, Event, Traffic, generate, masked  # noqa: E402
from config import RiskConfig, RiskModelConfig, load_file  # noqa: E402
from orchestrator.clock import VirtualClock  # noqa: E402
from orchestrator.pricing import UserHistory  # noqa: E402
from orchestrator.risk import RiskDecision, RiskEngine, RiskInput  # noqa: E402
from orchestrator.risk_model import load  # noqa: E402

SEEDS = (2, 3)
# The engine's key for account numbers is fresh per process unless given: fixed here, so which
# slot a card number's key lands in (and every feature after it) is the same from run to run.
PEPPER = b"bench.risk_eval/pepper"
ENGINES = ("rules", "model")  # the rules alone; the rules with the model
_CODE = {"allow": 0, "review": 1, "challenge": 2, "block": 3}
# Challenge budgets (share of good recharges the model alone would flag) for the trade-off table.
BUDGETS = (0.001, 0.0025, 0.005, 0.01, 0.02)
# Spans of the restart run, in days from the restart: the first day, the second, once settled.
RESTART_SPANS = {"day 0": (0, 1), "day 1": (1, 2), "days 3-9": (3, 10)}


def risk_configs(artefact: str, challenge_at: float, block_at: float) -> dict[str, RiskConfig]:
    """The example config's rules, alone and with the model."""
    base = load_file(ROOT / "config" / "orchestrator.example.yaml").config.risk
    model = RiskModelConfig(artefact=artefact, challenge_at=challenge_at, block_at=block_at)
    return {"rules": base.model_copy(update={"model": None}), "model": base.model_copy(update={"model": model})}


@dataclass(frozen=True, slots=True)
class Run:
    """One engine over one seed's measured recharges: what it did to each."""

    traffic: Traffic
    index: np.ndarray  # positions in traffic.events of the measured recharges
    action: np.ndarray  # 0 allow, 1 review, 2 challenge, 3 block
    score: np.ndarray  # the decision's score (the model's, when it has one)
    by_model: np.ndarray  # bool: "model_score" among the reasons
    reasons: Counter  # reason -> good recharges misjudged with it among their reasons
    # (family, feature) -> recharges where the feature was among the five pushing the score up;
    # for good ones, only those the model flagged ("good" family).
    pushed: Counter
    seconds: float


def _history(counts: dict[str, list], user: str) -> UserHistory:
    h = counts.get(user)
    if h is None or not h[0]:
        return UserHistory()
    count, total = h
    return UserHistory(lifetime_spend_base=Decimal(f"{total:.6f}"), has_succeeded_before=True,
                       average_amount_base=Decimal(f"{total / count:.6f}"), count=count)


class _Tape:
    """What a run saw of the measured recharges, as it goes."""

    def __init__(self) -> None:
        self.index: list[int] = []
        self.action: list[int] = []
        self.score: list[float] = []
        self.by_model: list[bool] = []
        self.reasons: Counter = Counter()
        self.pushed: Counter = Counter()

    def add(self, i: int, e: Event, d: RiskDecision) -> None:
        flagged = d.action in ("challenge", "block")
        self.index.append(i)
        self.action.append(_CODE[d.action])
        self.score.append(d.score)
        self.by_model.append("model_score" in d.reasons)
        if e.label == 0 and flagged:
            self.reasons.update(d.reasons)
        if e.label == 1 or self.by_model[-1]:
            self.pushed.update((e.family, c.feature) for c in d.explain if c.log_odds > 0)


def run(traffic: Traffic, config: RiskConfig) -> Run:
    """Every recharge of ``traffic`` through a fresh engine on ``config``."""
    t0 = time.perf_counter()
    events = traffic.events
    clock = VirtualClock(events[0].at_s)
    engine = RiskEngine(config, clock, pepper=PEPPER)
    counts = {user: list(prior) for user, prior in traffic.prior.items()}
    amounts: dict[float, Decimal] = {}
    tape = _Tape()
    for i, e in enumerate(events):
        clock.advance(e.at_s - clock.now())
        amount = amounts.get(e.amount_base) or amounts.setdefault(e.amount_base, Decimal(repr(e.amount_base)))
        inp = RiskInput(e.user_id, amount, e.country, masked(e.instrument) if e.card_number else e.instrument,
                        e.instrument if e.card_number else None, _history(counts, e.user_id), e.device_id,
                        e.ip_country)
        d = engine.assess(inp)
        if d.action == "block":
            engine.refused(inp)
            failed = True
        else:
            engine.record(inp, f"r{i}")
            # A fraudster fails the step-up; a good payer passes it.
            failed = e.declined or (d.action == "challenge" and e.label == 1)
            engine.outcome(f"r{i}", failed)
        if not failed:
            h = counts.setdefault(e.user_id, [0, 0.0])
            h[0] += 1
            h[1] += e.amount_base
        if e.at_s >= traffic.measure_from:
            tape.add(i, e, d)
    return Run(traffic, np.asarray(tape.index), np.asarray(tape.action, dtype=np.int8), np.asarray(tape.score),
               np.asarray(tape.by_model, dtype=bool), tape.reasons, tape.pushed, time.perf_counter() - t0)


# -- figures ----------------------------------------------------------------------------------


def _columns(runs: list[Run]) -> dict[str, np.ndarray]:
    """The measured recharges of ``runs`` (pooled), column by column. ``first``: an account's
    first recharge ever (no journal history before the window, and none in it yet)."""
    events = [(r.traffic.seed, r.traffic.events[i]) for r in runs for i in r.index]
    return {"family": np.asarray([e.family for _, e in events]), "kind": np.asarray([e.kind for _, e in events]),
            "amount": np.asarray([e.amount_base for _, e in events]),
            "actor": np.asarray([f"{seed}/{e.actor}" for seed, e in events]),
            "first": np.concatenate([_firsts(r) for r in runs]) if runs else np.zeros(0, dtype=bool)}


def _firsts(r: Run) -> np.ndarray:
    seen = set(r.traffic.prior)
    first = np.zeros(len(r.traffic.events), dtype=bool)
    for i, e in enumerate(r.traffic.events):
        if e.user_id not in seen:
            seen.add(e.user_id)
            first[i] = True
    return first[r.index]


def _share(part: float, whole: float) -> float | None:
    return round(float(part) / float(whole), 6) if whole else None


def _tally(action: np.ndarray, amount: np.ndarray, actor: np.ndarray) -> dict[str, Any]:
    hit = action >= 2
    attacks = set(actor.tolist())
    touched = set(actor[hit].tolist())
    return {"events": int(len(action)), "intercepted": int(hit.sum()), "challenged": int((action == 2).sum()),
            "blocked": int((action == 3).sum()), "rate": _share(hit.sum(), len(action)),
            "amount_rate": _share(float(amount[hit].sum()), float(amount.sum())),
            "attacks": len(attacks), "attacks_touched": len(touched), "attack_rate": _share(len(touched), len(attacks))}


def _auc(good: np.ndarray, bad: np.ndarray) -> float | None:
    if not len(good) or not len(bad):
        return None
    return round(float(roc_auc_score(np.r_[np.zeros(len(good)), np.ones(len(bad))], np.r_[good, bad])), 4)


def figures(runs: list[Run]) -> dict[str, Any]:
    """What one engine did over ``runs`` (seeds), pooled. AUCs are of the decisions' scores."""
    col = _columns(runs)
    action = np.concatenate([r.action for r in runs])
    score = np.concatenate([r.score for r in runs])
    fam = col["family"]
    good = fam == "good"
    out: dict[str, Any] = {"families": {}, "fraud": {}}
    for f in FAMILIES:
        m = fam == f
        out["families"][f] = {**_tally(action[m], col["amount"][m], col["actor"][m]),
                              "auc": _auc(score[good], score[m]), "seen": f in TRAINED}
    for name, fams in (("all", FAMILIES), ("trained", TRAINED), ("held_out", HELD_OUT)):
        m = np.isin(fam, fams)
        out["fraud"][name] = {**_tally(action[m], col["amount"][m], col["actor"][m]), "auc": _auc(score[good], score[m])}
    by_model = np.concatenate([r.by_model for r in runs])
    fresh = col["first"] & np.isin(fam, FAMILIES)  # a fresh fraud account's first recharge
    out["fraud"]["first_recharge"] = {"events": int(fresh.sum()),
                                      "rate": _share((action[fresh] >= 2).sum(), fresh.sum())}
    out["good"] = _good_figures(action[good], col["actor"][good], col["kind"][good], runs)
    out["good"]["raised_by_model"] = int(by_model[good].sum())
    out["good"]["raised_by_model_rate"] = _share(by_model[good].sum(), good.sum())
    pushed: Counter = Counter()
    for r in runs:
        pushed.update(r.pushed)
    out["pushed"] = {f: dict(Counter({feat: n for (fam2, feat), n in pushed.items() if fam2 == f}).most_common(6))
                     for f in ("good", *FAMILIES)}
    out["seconds"] = round(sum(r.seconds for r in runs), 2)
    return out


def _good_figures(action: np.ndarray, user: np.ndarray, kind: np.ndarray, runs: list[Run]) -> dict[str, Any]:
    hit = action >= 2
    users = set(user.tolist())
    misjudged_users = set(user[hit].tolist())
    reasons: Counter = Counter()
    for r in runs:
        reasons.update(r.reasons)
    return {
        "events": int(len(action)), "misjudged": int(hit.sum()), "rate": _share(hit.sum(), len(action)),
        "challenged": int((action == 2).sum()), "challenged_rate": _share((action == 2).sum(), len(action)),
        "blocked": int((action == 3).sum()), "blocked_rate": _share((action == 3).sum(), len(action)),
        "users": len(users), "users_misjudged": len(misjudged_users),
        "users_rate": _share(len(misjudged_users), len(users)),
        "by_kind": {k: {"events": int((kind == k).sum()), "misjudged": int(hit[kind == k].sum()),
                        "rate": _share(hit[kind == k].sum(), (kind == k).sum())}
                    for k in sorted(set(kind.tolist()))},
        "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def tradeoff(rules: list[Run], model: list[Run]) -> list[dict[str, Any]]:
    """Other challenge thresholds, approximately: the rules' own run, or the model's score
    (from the run at the chosen thresholds) at or above the threshold that flags each
    budget of good recharges. The engine's state would differ a little at other thresholds.
    ``join``: new payers' first recharges; ``fraud_first``: fresh fraud accounts' first ones."""
    col = _columns(model)
    fam = col["family"]
    ruled = np.concatenate([r.action for r in rules]) >= 2
    score = np.concatenate([r.score for r in model])
    good = fam == "good"
    ordered = np.sort(score[good])[::-1]
    out = []
    for budget in BUDGETS:
        t = float(ordered[min(len(ordered) - 1, int(budget * len(ordered)))]) + 1e-4
        hit = ruled | (score >= t)
        row = {"budget": budget, "challenge_at": round(t, 4), "good_rate": _share(hit[good].sum(), good.sum()),
               "model_good_rate": _share((score[good] >= t).sum(), good.sum())}
        for name, m in (("join", good & (col["kind"] == "join")), ("fraud_first", col["first"] & ~good)):
            row[name] = _share(hit[m].sum(), m.sum())
        for name, fams in (("trained", TRAINED), ("held_out", HELD_OUT), ("all", FAMILIES)):
            m = np.isin(fam, fams)
            row[name] = _share(hit[m].sum(), m.sum())
        for f in FAMILIES:
            row[f] = _share(hit[fam == f].sum(), (fam == f).sum())
        out.append(row)
    return out


def evaluate(seeds: tuple[int, ...], artefact: str, challenge_at: float, block_at: float,
             users: int = USERS, before: tuple[str, float, float] | None = None) -> dict[str, Any]:
    """Both engines over each seed: figures per seed and pooled, by engine; and the first
    seed again after a restart, with the model and (``before``: artefact, challenge_at,
    block_at) another one beside it."""
    configs = risk_configs(artefact, challenge_at, block_at)
    runs: dict[str, list[Run]] = defaultdict(list)
    traffic: dict[str, Any] = {}
    for seed in seeds:
        t = generate(seed, users=users)
        traffic[str(seed)] = describe(t)
        for name in ENGINES:
            runs[name].append(run(t, configs[name]))
    restart_models = {"model": configs["model"]}
    if before is not None:
        restart_models["before"] = risk_configs(*before)["model"]
    return {
        "seeds": list(seeds), "artefact": artefact,
        "thresholds": {"challenge_at": challenge_at, "block_at": block_at},
        "traffic": traffic,
        "pooled": {name: figures(runs[name]) for name in ENGINES},
        "per_seed": {str(s): {name: figures([runs[name][k]]) for name in ENGINES} for k, s in enumerate(seeds)},
        "tradeoff": tradeoff(runs["rules"], runs["model"]),
        "after_restart": after_restart(seeds[0], restart_models, users),
    }


def after_restart(seed: int, configs: dict[str, RiskConfig], users: int = USERS) -> dict[str, Any]:
    """A restart: ``seed``'s traffic with no warm-up (the feature state starts empty, the
    journal's history is there, attacks from the first day) through each engine of
    ``configs``, day by day and over ``RESTART_SPANS``."""
    traffic = generate(seed, users=users, warmup_days=0)
    out: dict[str, Any] = {"seed": seed, "days": traffic.days, "models": {}}
    for name, config in configs.items():
        r = run(traffic, config)
        col = _columns([r])
        day = np.asarray([int((traffic.events[i].at_s - traffic.measure_from) // 86_400) for i in r.index])
        out["models"][name] = {
            "days": [{"day": d, **_span(r, col, day == d)} for d in range(traffic.days)],
            "spans": {k: _span(r, col, (day >= lo) & (day < hi)) for k, (lo, hi) in RESTART_SPANS.items()},
            "all": _span(r, col, np.ones(len(day), dtype=bool)), "seconds": round(r.seconds, 2)}
    return out


def _span(r: Run, col: dict[str, np.ndarray], m: np.ndarray) -> dict[str, Any]:
    """What ``r`` did to its recharges ``m``: good ones misjudged (and by the model), new
    payers' first recharges challenged, fraud intercepted."""
    fam = col["family"]
    good = m & (fam == "good")
    join = good & (col["kind"] == "join")
    out = {"good": int(good.sum()), "good_rate": _share((r.action[good] >= 2).sum(), good.sum()),
           "raised_by_model_rate": _share(r.by_model[good].sum(), good.sum()),
           "join": int(join.sum()), "join_rate": _share((r.action[join] >= 2).sum(), join.sum())}
    for name, fams in (("fraud", FAMILIES), ("trained", TRAINED), ("held_out", HELD_OUT)):
        f = m & np.isin(fam, fams)
        out[f"{name}_rate"] = _share((r.action[f] >= 2).sum(), f.sum())
    return out


def describe(t: Traffic) -> dict[str, Any]:
    """The size of a seed's traffic."""
    measured = [e for e in t.events if e.at_s >= t.measure_from]
    good = [e for e in measured if e.label == 0]
    return {
        "events": len(t.events), "measured": len(measured), "good_payers": t.users,
        "by_family": dict(Counter(e.family for e in measured)),
        "attacks": {f: len({e.actor for e in measured if e.family == f}) for f in FAMILIES},
        "good_by_kind": dict(Counter(e.kind for e in good)),
        "good_declined": _share(sum(e.declined for e in good), len(good)),
        "with_device": _share(sum(e.device_id is not None for e in measured), len(measured)),
        "good_card_numbers": _share(sum(e.card_number for e in good), len(good)),
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    p = result["pooled"]
    lines = [f"seeds {result['seeds']}, challenge_at {result['thresholds']['challenge_at']}, "
             f"block_at {result['thresholds']['block_at']}",
             f"{'':18s} {'rules':>9s} {'+model':>9s} {'AUC':>7s}"]
    for f in FAMILIES:
        r, m = p["rules"]["families"][f], p["model"]["families"][f]
        lines.append(f"{f:18s} {_pct(r['rate']):>9s} {_pct(m['rate']):>9s} {m['auc'] or 0:7.4f}")
    r, m = p["rules"]["fraud"]["all"], p["model"]["fraud"]["all"]
    lines.append(f"{'fraud, all':18s} {_pct(r['rate']):>9s} {_pct(m['rate']):>9s}")
    r, m = p["rules"]["good"], p["model"]["good"]
    lines.append(f"{'good misjudged':18s} {_pct(r['rate']):>9s} {_pct(m['rate']):>9s}")
    lines.append(f"{'good payers':18s} {_pct(r['users_rate']):>9s} {_pct(m['users_rate']):>9s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--users", type=int, default=USERS)
    ap.add_argument("--artefact", default="risk-lr-v1", help="a name in orchestrator/risk_models/, or a .json path")
    ap.add_argument("--challenge-at", type=float)
    ap.add_argument("--block-at", type=float)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    suggested = load(args.artefact).trained.get("thresholds", {})
    challenge_at = args.challenge_at or suggested["challenge_at"]
    block_at = args.block_at or suggested["block_at"]
    seeds = tuple(int(s) for s in args.seeds.split(","))
    result = evaluate(seeds, args.artefact, challenge_at, block_at, args.users)
    print(summary(result))
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")


if __name__ == "__main__":
    main()
