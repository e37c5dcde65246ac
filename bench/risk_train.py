"""Train the risk model (issue 27): a logistic regression over ``risk_features.FEATURES``,
written as the artefact ``orchestrator/risk_models/risk-lr-v1.json`` that serving reads.

A seed's traffic (``bench/risk_gen.py``) is replayed in time order through a
``FeatureBook``, as the engine would feed it with every recharge allowed: the features
first (what the model sees before deciding), then ``record``, then the outcome (the
provider's decline, when there is one). ``history_count`` / ``history_avg_base`` come from
the user's succeeded recharges (those before the window, ``Traffic.prior``, and those
replayed so far), ``limit_base`` is the example config's ``risk.max_amount_base``.

It is replayed twice. Once by a process running since before the window (``steady``), and
once by one restarted every 1 to 3 days (``restarted``: ``RESTART_GAP_DAYS``, drawn from
the seed), whose feature state starts empty at each restart while the journal's history
goes on: in production the state is per process and every deploy empties it. Without those
rows the model took a returning payer, just after a restart, for a fresh account
(bench/results/risk.md, *After a restart*).

The model learns from the measured window (after the warm-up) of good traffic and the
TRAINED families only, both replays pooled: the training seed is generated without the
HELD_OUT families (collusion rings, slow drift), so not even their traces in the feature
state are seen, and the evaluation (``bench/risk_eval.py``) says how it does on attacks it
never met. Scaling is scikit-learn's ``StandardScaler``, classes are weighted by
``CLASS_WEIGHT``, and the thresholds suggested for the config are read off the steady
replay's good recharges: ``challenge_at`` the lowest that challenges at most
``CHALLENGE_BUDGET`` of them, ``block_at`` the lowest that blocks at most ``BLOCK_BUDGET``.

The artefact is deterministic: the same seed, size and ``--date`` give the same bytes
(sorted keys, floats to 8 significant digits), in any process.

    python -m bench.risk_train [--seed 1] [--out orchestrator/risk_models/risk-lr-v1.json] [--date 2026-12-04]
    python -m bench.risk_train --compare     # C, class weights and restarts on a time split of the seed
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script

from bench.risk_gen import FAMILIES, HELD_OUT, START, TRAINED, USERS, Traffic, generate  # noqa: E402
from config import load_file  # noqa: E402
from orchestrator.risk_features import FEATURES, FeatureBook, Signals  # noqa: E402
from orchestrator.risk_model import FORMAT, RiskModel, from_document  # noqa: E402

VERSION = "risk-lr-v1"
ARTEFACT = ROOT / "orchestrator" / "risk_models" / f"{VERSION}.json"
C = 0.1  # L2 strength; from 0.01 to 10 they score alike on a time split of the training seed (--compare)
# Balanced: unweighted classes challenge fewer new payers' first recharges but more returning
# payers just after a restart, at the same budget (--compare, bench/results/risk.md#training-choices).
CLASS_WEIGHT: str | None = "balanced"
CHALLENGE_BUDGET = 0.005  # of good recharges the model may challenge (or block)
BLOCK_BUDGET = 0.0005  # of good recharges it may block
RESTART_GAP_DAYS = (1.0, 3.0)  # the restarted replay's process lives this long, drawn uniformly
_DAY = 86_400.0


def training_traffic(seed: int, users: int = USERS, **size: Any) -> Traffic:
    """A seed's traffic with the TRAINED families only."""
    return generate(seed, users=users, families=TRAINED, **size)


def limit_base() -> float:
    limit = load_file(ROOT / "config" / "orchestrator.example.yaml").config.risk.max_amount_base
    return float(limit) if limit is not None else 0.0


def instrument_key(instrument: str, card_number: bool) -> str:
    """The key the engine would use: only identity matters to the features."""
    return ("acct:" if card_number else "tok:") + instrument


def restarts(traffic: Traffic) -> tuple[float, ...]:
    """When the restarted replay empties its feature state: every ``RESTART_GAP_DAYS`` from
    the traffic's start, drawn from its seed (a string seed: the same in every process)."""
    rng = random.Random(f"bench.risk_train.restarts/{traffic.seed}")
    end = START + traffic.days * _DAY
    at, out = START + rng.uniform(*RESTART_GAP_DAYS) * _DAY, []
    while at < end:
        out.append(at)
        at += rng.uniform(*RESTART_GAP_DAYS) * _DAY
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Replayed:
    """One row per event of the measured window."""

    x: np.ndarray  # (n, len(FEATURES))
    label: np.ndarray  # 0 / 1
    family: np.ndarray  # "good" or the family's name
    kind: np.ndarray  # a good one's kind ("join": a new payer's first recharge), else the family
    at_s: np.ndarray  # when
    uptime_s: np.ndarray  # since the feature state was last emptied (the replay's start, or a restart)

    @staticmethod
    def pooled(*parts: Replayed) -> Replayed:
        return Replayed(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Replayed)))

    def where(self, keep: np.ndarray) -> Replayed:
        return Replayed(*(getattr(self, f.name)[keep] for f in fields(Replayed)))


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """The training seed's measured recharges, as two processes saw them."""

    steady: Replayed  # running since before the window
    restarted: Replayed  # restarted at ``restarts(traffic)``


def replay(traffic: Traffic, limit: float | None = None, restart_at: tuple[float, ...] = ()) -> Replayed:
    """The features of every measured event, every event allowed (see the module's doc); the
    feature state is emptied at each of ``restart_at``, the journal's history is not."""
    limit = limit_base() if limit is None else limit
    history = {user: list(prior) for user, prior in traffic.prior.items()}
    start = traffic.measure_from
    # A state emptied before the window opens is never read: begin at the last such restart.
    began = max((t for t in restart_at if t <= start), default=traffic.events[0].at_s)
    ahead = [t for t in restart_at if t > began]
    book: FeatureBook | None = None
    rows: list[list[float]] = []
    meta: list[tuple[int, str, str, float, float]] = []
    for i, e in enumerate(traffic.events):
        while ahead and e.at_s >= ahead[0]:
            began, book = ahead.pop(0), None
        if e.at_s >= began:
            if book is None:
                book = FeatureBook()
            count, total = history.get(e.user_id, (0, 0.0))
            s = Signals(e.user_id, e.amount_base, e.country, e.at_s, instrument_key(e.instrument, e.card_number),
                        e.card_number, e.device_id, e.ip_country, count, total / count if count else None, limit)
            if e.at_s >= start:
                rows.append(book.features(s))
                meta.append((e.label, e.family, e.kind, e.at_s, e.at_s - began))
            rid = str(i)
            book.record(s, rid)
            book.outcome(rid, e.declined, e.at_s)
        if not e.declined:
            h = history.setdefault(e.user_id, [0, 0.0])
            h[0] += 1
            h[1] += e.amount_base
    label, family, kind, at_s, uptime_s = zip(*meta, strict=True) if meta else ((),) * 5
    return Replayed(np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES)), np.asarray(label),
                    np.asarray(family), np.asarray(kind), np.asarray(at_s), np.asarray(uptime_s))


def training_set(traffic: Traffic) -> TrainingSet:
    return TrainingSet(replay(traffic), replay(traffic, restart_at=restarts(traffic)))


def fit(data: Replayed, c: float = C, weight: str | None = CLASS_WEIGHT) -> tuple[Any, Any]:
    """(scaler, classifier) on good traffic and the TRAINED families."""
    keep = np.isin(data.family, ("good", *TRAINED))
    x, y = data.x[keep], data.label[keep]
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, class_weight=weight, max_iter=5000, random_state=0)
    clf.fit(scaler.transform(x), y)
    return scaler, clf


def _g(v: float) -> float:
    return float(f"{float(v):.8g}")


def document(scaler: Any, clf: Any, trained: dict[str, Any]) -> dict[str, Any]:
    """The artefact, as ``risk_model.from_document`` reads it."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "features": list(FEATURES),
        "mean": [_g(v) for v in scaler.mean_],
        "scale": [_g(v) for v in scaler.scale_],
        "coef": [_g(v) for v in clf.coef_[0]],
        "intercept": _g(clf.intercept_[0]),
        "trained": trained,
    }


def scores(model: RiskModel, x: np.ndarray) -> np.ndarray:
    """The served model's P(fraud) for each row, vectorised."""
    z = model.bias + x @ np.asarray(model.weights)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


# Thresholds are picked from a grid of round numbers, finer towards 1.
_GRID = sorted({round(i / 1000, 3) for i in range(10, 1000)} | {round(0.999 + i / 10_000, 4) for i in range(1, 10)}
               | {round(0.9999 + i / 100_000, 5) for i in range(1, 10)})


def threshold(good_scores: np.ndarray, budget: float, above: float = 0.0) -> float:
    """The lowest grid threshold (above ``above``) that flags at most ``budget`` of good."""
    ordered = np.sort(good_scores)
    n = len(ordered)
    for t in _GRID:
        if t > above and n - np.searchsorted(ordered, t, side="left") <= budget * n:
            return t
    return 1.0


def train(traffic: Traffic, c: float = C, date: str | None = None, *, data: TrainingSet | None = None,
          weight: str | None = CLASS_WEIGHT, with_restarts: bool = True) -> tuple[dict[str, Any], TrainingSet]:
    """The artefact's document for ``traffic``, and the replays it was fitted on
    (``with_restarts=False``: the steady replay alone, as before restarts were replayed)."""
    data = data or training_set(traffic)
    rows = Replayed.pooled(data.steady, data.restarted) if with_restarts else data.steady
    scaler, clf = fit(rows, c, weight)
    counts = Counter(e.family for e in traffic.events if e.at_s >= traffic.measure_from)
    at = restarts(traffic) if with_restarts else ()
    trained = {
        "generator": {"module": "bench.risk_gen", "seed": traffic.seed, "users": traffic.users,
                      "days": traffic.days, "warmup_days": traffic.warmup_days},
        "events_total": len(traffic.events),
        "events_measured": {f: counts.get(f, 0) for f in ("good", *FAMILIES)},  # after the warm-up
        "families_trained": list(TRAINED),
        "families_held_out": list(HELD_OUT),
        "replays": {"steady": "one process from the first event",
                    "restarted": (f"the feature state emptied every {RESTART_GAP_DAYS[0]:g} to "
                                  f"{RESTART_GAP_DAYS[1]:g} days, the journal's history kept")
                    if with_restarts else None,
                    "restart_days": [round((t - START) / _DAY, 3) for t in at]},
        "rows": int(np.isin(rows.family, ("good", *TRAINED)).sum()),
        "model": {"kind": "LogisticRegression", "C": c, "class_weight": weight, "scaler": "StandardScaler",
                  "solver": clf.solver, "random_state": 0},
        "scikit_learn": sklearn.__version__,
        "date": date or dt.datetime.now(dt.UTC).date().isoformat(),
    }
    doc = document(scaler, clf, trained)
    good = scores(from_document(doc), data.steady.x[data.steady.family == "good"])
    challenge_at = threshold(good, CHALLENGE_BUDGET)
    trained["thresholds"] = {
        "challenge_at": challenge_at, "block_at": threshold(good, BLOCK_BUDGET, above=challenge_at),
        "chosen_on": f"seed {traffic.seed}'s good recharges as the steady replay sees them: challenge or block "
                     f"<= {CHALLENGE_BUDGET:.2%}, block <= {BLOCK_BUDGET:.2%}"}
    return doc, data


# (label, C, class weight, with the restarted replay): the training as done, then one choice
# changed. The bench reports the first three (C hardly moves anything: --compare).
VARIANTS: tuple[tuple[str, float, str | None, bool], ...] = (
    ("as trained", C, CLASS_WEIGHT, True),
    ("without the restarted replay (before)", C, CLASS_WEIGHT, False),
    ("classes unweighted", C, None, True),
    ("C=0.01", 0.01, CLASS_WEIGHT, True),
    ("C=1", 1.0, CLASS_WEIGHT, True),
    ("C=10", 10.0, CLASS_WEIGHT, True),
)
# How risk-lr-v1 was trained until restarts were replayed: the bench's "before".
BEFORE: dict[str, Any] = {"weight": CLASS_WEIGHT, "with_restarts": False}


def compare(data: TrainingSet, variants: tuple[tuple[str, float, str | None, bool], ...] = VARIANTS,
            cut_day: int = 7) -> list[dict[str, Any]]:
    """Training choices on a time split of the training seed only: fit on both replays
    before ``cut_day``, then score what came after at the challenge threshold that flags
    CHALLENGE_BUDGET of the steady replay's later good recharges. (The evaluation seeds and
    held-out families are not looked at.)"""
    cut = START + cut_day * _DAY
    early = [d.where(d.at_s < cut) for d in (data.steady, data.restarted)]
    late, late_restarted = data.steady.where(data.steady.at_s >= cut), data.restarted.where(data.restarted.at_s >= cut)
    good, joins = late.family == "good", late.kind == "join"
    trained = np.isin(late.family, TRAINED)
    fresh = late_restarted.uptime_s < _DAY  # the first day after a restart
    out = []
    for label, c, weight, with_restarts in variants:
        scaler, clf = fit(Replayed.pooled(*early) if with_restarts else early[0], c, weight)
        s = clf.predict_proba(scaler.transform(late.x))[:, 1]
        sr = clf.predict_proba(scaler.transform(late_restarted.x))[:, 1]
        t = np.quantile(s[good], 1 - CHALLENGE_BUDGET)
        out.append({
            "variant": label, "C": c, "class_weight": weight, "restarts": with_restarts,
            "trained": float((s[trained] > t).mean()),
            **{f: float((s[late.family == f] > t).mean()) for f in TRAINED},
            "join": float((s[good & joins] > t).mean()),
            "restart_day_good": float((sr[fresh & (late_restarted.family == "good")] > t).mean()),
            "restart_day_trained": float((sr[fresh & np.isin(late_restarted.family, TRAINED)] > t).mean()),
        })
    return out


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--users", type=int, default=USERS)
    ap.add_argument("--C", type=float, default=C, dest="c")
    ap.add_argument("--date", help="the training date recorded (default: today, UTC)")
    ap.add_argument("--out", type=Path, default=ARTEFACT)
    ap.add_argument("--compare", action="store_true",
                    help="compare C, class weights and restarts on a time split; no artefact")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    traffic = training_traffic(args.seed, args.users)
    if args.compare:
        for row in compare(training_set(traffic)):
            print(f"{row['variant']:38s} C={row['C']:<5} class_weight={row['class_weight']!s:9s} "
                  + " ".join(f"{f} {row[f]:.2%}" for f in TRAINED)
                  + f"  first recharges {row['join']:.2%}  day after a restart: good {row['restart_day_good']:.2%},"
                    f" trained families {row['restart_day_trained']:.2%}")
        return
    doc, _ = train(traffic, args.c, args.date)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(dumps(doc))
    th = doc["trained"]["thresholds"]
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s: challenge_at {th['challenge_at']}, "
          f"block_at {th['block_at']}")


if __name__ == "__main__":
    main()
