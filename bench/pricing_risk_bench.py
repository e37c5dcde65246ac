"""Pricing + risk microbenchmark: the CPU a recharge spends in ``price`` and ``screen``.

A realistic mix at the example config: currencies weighted like the traffic the spec
describes (CNY first, then PHP, MYR and the long tail), the catalogue denominations,
a pool of users with histories spread over new users, membership tiers and monthly
regulars, one recharge in ten by card number (a card per user: Luhn, keyed hash), blocklists with a few
thousand entries, and the example's velocity rules fed by every accepted recharge on a
clock advancing at 1,200 recharges/s. Prints p50/p99/p99.9 in microseconds for each
part and for the pair, and writes ``bench/results/pricing_risk.json``.

    python bench/pricing_risk_bench.py [--n 200000] [--users 50000]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script

from config import load_file, parse  # noqa: E402
from orchestrator.clock import VirtualClock  # noqa: E402
from orchestrator.pricing import PricingError, RateBook, UserHistory, denomination_limits, price  # noqa: E402
from orchestrator.risk import RiskEngine, RiskInput  # noqa: E402

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


def build(users: int, seed: int) -> tuple:  # type: ignore[type-arg]
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
    return cfg, clock, book, risk, histories


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
        instrument = (number[:6] + "******" + number[-4:]) if number else f"tok_{rng.randrange(users * 2)}"
        out.append((f"u{user}", user, amount, currency, country, instrument, number))
    return out


def run(n: int, users: int, seed: int) -> dict:  # type: ignore[type-arg]
    cfg, clock, book, risk, histories = build(users, seed)
    reqs = requests(cfg, book, n, users, seed)
    pricing = cfg.pricing
    step = 1 / 1200  # the clock moves as if at 1,200 recharges/s
    perf = time.perf_counter_ns
    price_ns: list[int] = []
    risk_ns: list[int] = []
    both_ns: list[int] = []
    actions = {"allow": 0, "review": 0, "block": 0}
    errors = 0
    warmup = min(20_000, n // 5)
    gc.collect()
    for i, (user_id, user, amount, currency, country, instrument, number) in enumerate(reqs):
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
        decision = risk.screen(RiskInput(user_id, p.base_amount, country, instrument, number, history))
        t2 = perf()
        if i >= warmup:
            price_ns.append(t1 - t0)
            risk_ns.append(t2 - t1)
            both_ns.append(t2 - t0)
            actions[decision.action] += 1
    result: dict = {"n": len(both_ns), "users": users, "pricing_errors": errors, "actions": actions,
                    "tracked_keys": risk.tracked(), "python": platform.python_version(),
                    "machine": platform.machine()}
    for name, series in (("price", price_ns), ("risk", risk_ns), ("price_plus_risk", both_ns)):
        series.sort()
        result[name] = {"p50_us": round(percentile(series, 0.50), 2), "p99_us": round(percentile(series, 0.99), 2),
                        "p999_us": round(percentile(series, 0.999), 2),
                        "mean_us": round(sum(series) / len(series) / 1000.0, 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="recharges (default 200000)")
    parser.add_argument("--users", type=int, default=50_000, help="distinct users (default 50000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pricing_risk.json"))
    args = parser.parse_args()
    result = run(args.n, args.users, args.seed)
    for name in ("price", "risk", "price_plus_risk"):
        r = result[name]
        print(f"{name:>16}: p50 {r['p50_us']:7.2f} us  p99 {r['p99_us']:7.2f} us  p99.9 {r['p999_us']:7.2f} us"
              f"  mean {r['mean_us']:6.2f} us")
    target = result["price_plus_risk"]["p99_us"] < 200
    print(f"actions {result['actions']}, {result['n']} measured; target p99 < 200 us: {'met' if target else 'MISSED'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
