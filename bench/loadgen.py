"""Open-loop load generator: requests leave on schedule whether or not earlier ones came
back, so a stall shows up as latency and not as fewer requests (no coordinated
omission). Latency is measured from each request's *scheduled* send time.

Runs in its own process (``python -m bench.loadgen ...``) so it never shares the event
loop of what it measures. Writes one JSON document with every request's record.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import aiohttp
import orjson

MARKET = [("CNY", "CN", [600, 3000, 6800, 8500, 12800, 32800, 64800])]


async def run(url: str, rate: float, duration: float, key_prefix: str, token: str, users: int,
              timeout_s: float) -> dict:
    rng = random.Random(key_prefix)
    records: list[tuple[float, float, int, str | None, float | None]] = []
    errors: dict[str, int] = {}
    lag_max = 0.0
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        start = time.perf_counter() + 0.2
        n = int(rate * duration)

        async def one(i: int, scheduled: float) -> None:
            currency, country, amounts = MARKET[0]
            body = orjson.dumps({"user_id": f"u{rng.randrange(users)}", "amount_minor": rng.choice(amounts),
                                 "currency": currency, "country": country, "method": "ewallet",
                                 "instrument": {"token": f"tok_{i % 5000}"}})
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"{key_prefix}-{i}",
                       "Content-Type": "application/json"}
            try:
                async with s.post(url, data=body, headers=headers) as r:
                    raw = await r.read()
                    done = time.perf_counter()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                records.append((scheduled - start, (time.perf_counter() - scheduled) * 1000, 0, None, None))
                return
            channel = None
            channel_ms = None
            if status in (200, 201, 202):
                doc = orjson.loads(raw)
                attempts = doc.get("attempts") or []
                if attempts:
                    channel = attempts[-1].get("channel")
                    channel_ms = sum(a.get("latency_ms") or 0 for a in attempts)
            else:
                errors[f"http_{status}"] = errors.get(f"http_{status}", 0) + 1
            records.append((scheduled - start, (done - scheduled) * 1000, status, channel, channel_ms))

        for i in range(n):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag_max = max(lag_max, -delay)
            task = asyncio.create_task(one(i, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s + 5)
    return {"rate": rate, "duration": duration, "sent": n, "records": records, "errors": errors,
            "send_lag_max_ms": lag_max * 1000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.loadgen")
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--key-prefix", default="bench")
    p.add_argument("--token", required=True)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import uvloop

    result = uvloop.run(run(args.url, args.rate, args.duration, args.key_prefix, args.token, args.users, args.timeout))
    Path(args.out).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
