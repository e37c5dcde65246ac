"""Journal microbenchmark: sustained durable recharges/s with N concurrent writers.

Each writer loops over the journal's share of a typical recharge: ``create`` with its
first attempt started, and the captured step with its credit (2 durable writes). Prints
recharges/s, steps/s and the group-commit batch sizes. Stores keep their durable
settings: SQLite WAL with ``synchronous=FULL``; a throwaway PostgreSQL (started here on
a temp dir and a unix socket) with ``fsync`` and ``synchronous_commit`` on.

    python bench/journal_bench.py --store sqlite
    python bench/journal_bench.py --store postgres --concurrency 256 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from orchestrator.journal import Journal, PostgresJournal, SqliteJournal  # noqa: E402
from orchestrator.journal.pgserver import running  # noqa: E402
from orchestrator.model import (  # noqa: E402
    Attempt,
    AttemptState,
    Credit,
    Recharge,
    RechargeStatus,
    Step,
    TrailEntry,
)

OPEN = frozenset({RechargeStatus.PROCESSING, RechargeStatus.PENDING})


class Stats:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.commit_s: list[float] = []
        self.recharges = 0
        self.measuring = False

    def on_commit(self, n: int, seconds: float) -> None:
        if self.measuring:
            self.batches.append(n)
            self.commit_s.append(seconds)


async def one_recharge(journal: Journal, worker: int, i: int, users: int) -> None:
    now = time.time()
    rid = "rc_" + hashlib.sha256(f"{worker}|{i}|{now}".encode()).hexdigest()[:24]
    user = f"u{(worker * 7919 + i) % users}"
    rec = Recharge(
        id=rid, client="bench", idempotency_key=f"{worker}-{i}-{now}", fingerprint="f" * 64, user_id=user,
        amount_minor=8500, currency="CNY", country="CN", method="ewallet", instrument={"token": "tok_1"},
        metadata=None, coins=850, bonus_coins=85, status=RechargeStatus.PROCESSING, created_at=now,
        updated_at=now, deadline_at=now + 15, config_version="bench",
    )
    # As the engine does: the first attempt is journaled with the recharge.
    att = Attempt(f"{rid}.1", rid, 1, "a", AttemptState.STARTED, now, now)
    started = (att, TrailEntry(rid, now, "attempt_started", "processing", att.reference, "a"))
    assert await journal.create(rec, TrailEntry(rid, now, "created", "processing"), started=started) is None
    done = time.time()
    captured = Attempt(att.reference, rid, 1, "a", AttemptState.CAPTURED, now, done, provider_ref="pr", latency_ms=28.0)
    finish = Step(
        rid, done, status=RechargeStatus.SUCCEEDED, expect_status=OPEN, channel="a", attempt=captured,
        expect_attempt=frozenset({AttemptState.STARTED}), credit=Credit(rid, user, 935, done),
        trail=(TrailEntry(rid, done, "attempt_captured", "succeeded", att.reference, "a"),
               TrailEntry(rid, done, "credited", "succeeded")),
    )
    assert await journal.apply(finish)


async def measure(journal: Journal, stats: Stats, concurrency: int, seconds: float, warmup: float,
                  users: int) -> float:
    stop = asyncio.Event()

    async def worker(w: int) -> None:
        i = 0
        while not stop.is_set():
            await one_recharge(journal, w, i, users)
            i += 1
            if stats.measuring:
                stats.recharges += 1

    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    await asyncio.sleep(warmup)
    stats.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    stats.measuring = False
    elapsed = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    return elapsed


def report(store: str, stats: Stats, elapsed: float, concurrency: int) -> None:
    b = sorted(stats.batches) or [0]
    steps = sum(stats.batches)
    print(f"store={store} concurrency={concurrency} seconds={elapsed:.1f}")
    print(f"  recharges/s   {stats.recharges / elapsed:10.0f}   (2 durable writes each)")
    print(f"  steps/s       {steps / elapsed:10.0f}")
    print(f"  commits/s     {len(stats.batches) / elapsed:10.0f}")
    print(f"  batch size    mean {statistics.fmean(b):.1f}  p50 {b[len(b) // 2]}  "
          f"p95 {b[int(len(b) * 0.95)]}  max {b[-1]}")
    if stats.commit_s:
        c = sorted(stats.commit_s)
        print(f"  batch time    p50 {c[len(c) // 2] * 1000:.2f} ms  p95 {c[int(len(c) * 0.95)] * 1000:.2f} ms")


async def run_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stats = Stats()
        journal = SqliteJournal(Path(tmp) / "bench.db", on_commit=stats.on_commit)
        await journal.open()
        try:
            elapsed = await measure(journal, stats, args.concurrency, args.seconds, args.warmup, args.users)
        finally:
            await journal.close()
        report("sqlite", stats, elapsed, args.concurrency)


async def run_postgres(args: argparse.Namespace, url: str) -> None:
    stats = Stats()
    journal = PostgresJournal(url, writers=args.pg_writers, pool_max=args.pg_writers + 4, on_commit=stats.on_commit)
    await journal.open()
    try:
        elapsed = await measure(journal, stats, args.concurrency, args.seconds, args.warmup, args.users)
    finally:
        await journal.close()
    report(f"postgres (writers={args.pg_writers})", stats, elapsed, args.concurrency)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", choices=["sqlite", "postgres"], required=True)
    p.add_argument("--concurrency", type=int, default=128, help="concurrent recharges in flight")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--pg-writers", type=int, default=1, help="PostgreSQL writer connections")
    p.add_argument("--pg-url", help="an existing database instead of a throwaway server")
    args = p.parse_args()
    if args.store == "sqlite":
        asyncio.run(run_sqlite(args))
    elif args.pg_url:
        asyncio.run(run_postgres(args, args.pg_url))
    else:
        with running() as server:
            asyncio.run(run_postgres(args, server.create_database("bench")))


if __name__ == "__main__":
    main()
