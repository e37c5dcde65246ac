"""Pricing + risk microbenchmark: the CPU a recharge spends in ``price`` and ``screen``.

A realistic mix at the example config: currencies weighted like the traffic the spec
describes (CNY first, then PHP, MYR and the long tail), the catalogue denominations,
a pool of users with histories spread over new users, membership tiers and monthly
regulars, a token or two per user and one recharge in ten by card number (a card per
user: Luhn, keyed hash), blocklists with a few thousand entries, and the example's
velocity rules fed by every accepted recharge on a clock advancing at 1,200 recharges/s.
Prints p50/p99/p99.9 in microseconds for each part and for the pair, and writes
``bench/results/pricing_risk.json``.

Risk is measured twice on the same inputs: the rules alone (``risk``, ``price_plus_risk``)
and the rules + the behaviour model (``risk_model``, ``price_plus_risk_model``: the example's
risk section with ``model=RiskModelConfig(artefact=...)``, the trained ``risk-lr-v1`` or,
until it exists, a same-shaped document with random coefficients; ``model`` names which).
Half the inputs carry ``device_id`` and ``ip_country``; every recharge the model engine
accepts gets an id, and 2 s later its outcome (8 % declined), timed as ``model_outcome``.

    python bench/pricing_risk_bench.py [--n 200000] [--users 50000]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script

from config import RiskModelConfig, load_file, parse  # noqa: E402
from orchestrator.clock import VirtualClock  # noqa: E402
from orchestrator.pricing import PricingError, RateBook, UserHistory, denomination_limits, price  # noqa: E402
from orchestrator.risk import RiskEngine, RiskInput  # noqa: E402

from bench.risk_serving_bench import artefact_ref  # noqa: E402

# (currency, country, share, denominations in whole units)
MIX = [
    ("CNY", "CN", 0.55, [6, 30, 68, 85, 128, 328, 648]),
    ("PHP", "PH", 0.12, [50, 100, 250, 500, 1000]),
    ("MYR", "MY", 0.08, [5, 10, 50, 100]),
    ("IDR", "ID", 0.06, [15000, 50000, 150000, 500000]),
    ("VND", "VN", 0.04, [20000, 100000, 500000]),
    ("THB", "TH", 0.04, [35, 100, 350]),
    ("USD", "US", 0.04, [1, 5, 20, 50]),
    ("INR", "IN", 0.03, [80, 400, 1600]),
    ("JPY", "JP", 0.02, [160, 800, 3000]),
    ("KRW", "KR", 0.02, [1400, 7000, 30000]),
]


def card_for(user: int) -> str:
    """A Luhn-valid 16-digit number per user: one card each, as in real traffic."""
    payload = f"411111{user:09d}"
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return payload + str((10 - total % 10) % 10)


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def build(users: int, seed: int, model_ref: str) -> tuple:  # type: ignore[type-arg]
    loaded = load_file(ROOT / "config" / "orchestrator.example.yaml").config
    doc = loaded.model_dump(mode="json")
    rng = random.Random(seed)
    doc["risk"]["blocklist"] = {
        "users": [f"banned_{i}" for i in range(2000)],
        "instruments": [f"tok_stolen_{i}" for i in range(2000)],
        "countries": ["KP", "IR", "SY"],
    }
    cfg = parse(doc).config
    clock = VirtualClock()
    book = RateBook(cfg.pricing, clock)
    risk = RiskEngine(cfg.risk, clock)
    with_model = RiskEngine(cfg.risk.model_copy(update={"model": RiskModelConfig(artefact=model_ref)}), clock)
    histories: list[UserHistory] = []
    for _ in range(users):
        kind = rng.random()
        if kind < 0.2:
            histories.append(UserHistory())
        else:
            count = rng.randint(1, 400)
            avg = Decimal(rng.choice([1, 5, 12, 40]))
            histories.append(UserHistory(lifetime_spend_base=avg * count, recharges_this_month=rng.randint(0, 12),
                                         has_succeeded_before=True, average_amount_base=avg, count=count))
    return cfg, clock, book, risk, with_model, histories


def requests(cfg, book, n: int, users: int, seed: int) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    from config import exponent

    rng = random.Random(seed + 1)
    weights = [m[2] for m in MIX]
    out = []
    for _ in range(n):
        currency, country, _, units = rng.choices(MIX, weights)[0]
        amount = rng.choice(units) * 10 ** exponent(currency)
        lo, hi = denomination_limits(cfg.pricing, book, currency)
        amount = min(max(amount, lo), hi)
        user = rng.randrange(users)
        card = rng.random() < 0.1
        number = card_for(user) if card else None
        # A user pays with their own token or two, as returning payers do (a fresh token per
        # recharge would look like card testing to the model).
        token = f"tok_{user}" if rng.random() < 0.9 else f"tok_{user}_{rng.randrange(2)}"
        instrument = (number[:6] + "******" + number[-4:]) if number else token
        device = ip = None
        if rng.random() < 0.5:  # the front service sends them on about half the requests
            device = f"dev_{user}" if rng.random() < 0.9 else f"dev_{user}_{rng.randrange(3)}"
            ip = country if rng.random() < 0.97 else "SG"
        out.append((f"u{user}", user, amount, currency, country, instrument, number, device, ip))
    return out


def run(n: int, users: int, seed: int) -> dict:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as work:  # the artefact is read once, as the engine is built
        model_ref, which = artefact_ref(Path(work))
        cfg, clock, book, risk, with_model, histories = build(users, seed, model_ref)
    reqs = requests(cfg, book, n, users, seed)
    pricing = cfg.pricing
    step = 1 / 1200  # the clock moves as if at 1,200 recharges/s
    perf = time.perf_counter_ns
    price_ns: list[int] = []
    risk_ns: list[int] = []
    both_ns: list[int] = []
    model_ns: list[int] = []
    both_model_ns: list[int] = []
    outcome_ns: list[int] = []
    actions = {"allow": 0, "review": 0, "challenge": 0, "block": 0}
    actions_model = dict(actions)
    outcomes: deque[tuple[float, str, bool]] = deque()  # (when, recharge id, declined)
    rng = random.Random(seed + 2)
    errors = 0
    warmup = min(20_000, n // 5)
    gc.collect()
    for i, (user_id, user, amount, currency, country, instrument, number, device, ip) in enumerate(reqs):
        clock.advance(step)
        history = histories[user]
        now = clock.now()
        t0 = perf()
        try:
            p = price(pricing, amount, currency, history, rates=book, now=now)
        except PricingError:
            errors += 1
            continue
        t1 = perf()
        inp = RiskInput(user_id, p.base_amount, country, instrument, number, history, device, ip)
        decision = risk.screen(inp)
        t2 = perf()
        rid = f"r{i}"
        scored = with_model.screen(inp, rid)
        t3 = perf()
        if scored.action != "block":
            outcomes.append((now + 2.0, rid, rng.random() < 0.08))
        took = _outcomes_due(with_model, outcomes, now, perf)
        if i >= warmup:
            price_ns.append(t1 - t0)
            risk_ns.append(t2 - t1)
            both_ns.append(t2 - t0)
            model_ns.append(t3 - t2)
            both_model_ns.append(t1 - t0 + t3 - t2)
            outcome_ns.extend(took)
            actions[decision.action] += 1
            actions_model[scored.action] += 1
    assert with_model.features is not None
    result: dict = {"n": len(both_ns), "users": users, "pricing_errors": errors, "actions": actions,
                    "actions_model": actions_model, "tracked_keys": risk.tracked(), "model": which,
                    "feature_state": with_model.features.sizes(), "python": platform.python_version(),
                    "machine": platform.machine()}
    for name, series in (("price", price_ns), ("risk", risk_ns), ("price_plus_risk", both_ns),
                         ("risk_model", model_ns), ("price_plus_risk_model", both_model_ns),
                         ("model_outcome", outcome_ns)):
        result[name] = _summary(series)
    return result


def _summary(series: list[int]) -> dict[str, float]:
    series.sort()
    return {"p50_us": round(percentile(series, 0.50), 2), "p99_us": round(percentile(series, 0.99), 2),
            "p999_us": round(percentile(series, 0.999), 2), "mean_us": round(sum(series) / len(series) / 1000.0, 2)}


def _outcomes_due(engine: RiskEngine, outcomes: deque[tuple[float, str, bool]], now: float,
                  perf: Callable[[], int]) -> list[int]:
    """Tell ``engine`` the outcomes whose time has come; how long each call took."""
    took = []
    while outcomes and outcomes[0][0] <= now:
        _, rid, declined = outcomes.popleft()
        t0 = perf()
        engine.outcome(rid, declined)
        took.append(perf() - t0)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="recharges (default 200000)")
    parser.add_argument("--users", type=int, default=50_000, help="distinct users (default 50000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pricing_risk.json"))
    args = parser.parse_args()
    result = run(args.n, args.users, args.seed)
    print(f"model: {result['model']}")
    for name in ("price", "risk", "price_plus_risk", "risk_model", "price_plus_risk_model", "model_outcome"):
        r = result[name]
        print(f"{name:>21}: p50 {r['p50_us']:7.2f} us  p99 {r['p99_us']:7.2f} us  p99.9 {r['p999_us']:7.2f} us"
              f"  mean {r['mean_us']:6.2f} us")
    target = result["price_plus_risk"]["p99_us"] < 200
    print(f"rules: actions {result['actions']}, {result['n']} measured; "
          f"target p99 < 200 us: {'met' if target else 'MISSED'}")
    print(f"rules + model: p99 {result['risk_model']['p99_us']} us (rules alone {result['risk']['p99_us']} us), "
          f"actions {result['actions_model']}, feature state {result['feature_state']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
