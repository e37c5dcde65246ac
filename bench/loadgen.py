"""Open-loop load generator: requests leave on schedule whether or not earlier ones came
back, so a stall shows up as latency and not as fewer requests (no coordinated
omission). Latency is measured from each request's *scheduled* send time and recorded
in HDR histograms (``hdrhistogram``: 3 significant digits, 1 us to 60 s), overall and
per second, with the per-second counts of statuses, outcomes and channels.

Runs in its own process (``python -m bench.loadgen ...``), never on the event loop of
what it measures. Its HTTP/1.1 client is a few dozen lines of asyncio protocol over
kept-alive connections instead of aiohttp's: it must cost the shared machine as little
as possible (docs/performance.md#load-generator-client), or it would take the CPU the
orchestrator is being measured with. A request never waits for a connection to be
free: past the idle ones it opens another (up to ``--max-connections``, then it
queues, and the queueing shows as latency).

Writes one JSON document (``--out``): totals, errors by kind, the send lag, and one
entry per second with encoded histograms (``bench.hist`` reads them).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from hdrh.histogram import HdrHistogram

from bench.hist import new_histogram

# Currencies, their share of traffic and typical recharge tiers (minor units): a
# live-streaming app's price points, between 5 and 2,000 CNY-equivalent.
MARKET: tuple[tuple[str, str, float, tuple[int, ...]], ...] = (
    ("CNY", "CN", 0.70, (600, 3000, 6800, 9800, 12800, 32800, 64800)),
    ("HKD", "HK", 0.10, (800, 3800, 7800, 16800, 38800)),
    ("USD", "US", 0.10, (99, 499, 999, 1999, 4999, 9999)),
    ("PHP", "PH", 0.10, (5500, 27500, 55000, 110000)),
)
# Small recharges are the common ones: weight tier i by 1 / (i + 1).
_TIER_WEIGHTS = {len(t): [1 / (i + 1) for i in range(len(t))] for *_, t in MARKET}
WHALE_SHARE = 0.2  # a fifth of the traffic comes from a tenth of the users


@dataclass(slots=True)
class Second:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    channels: Counter[str] = field(default_factory=Counter)
    latency: HdrHistogram = field(default_factory=new_histogram)
    added: HdrHistogram = field(default_factory=new_histogram)


class Recorder:
    def __init__(self) -> None:
        self.seconds: dict[int, Second] = {}
        self.latency = new_histogram()
        self.added = new_histogram()
        self.errors: Counter[str] = Counter()

    def record(self, offset_s: float, latency_ms: float, status: str, doc: dict[str, Any] | None) -> None:
        sec = self.seconds.get(int(offset_s))
        if sec is None:
            sec = self.seconds[int(offset_s)] = Second()
        sec.sent += 1
        sec.statuses[status] += 1
        us = max(1, int(latency_ms * 1000))
        sec.latency.record_value(us)
        self.latency.record_value(us)
        if doc is None:
            if status not in ("201", "202"):
                self.errors[status if not status.isdigit() else f"http_{status}"] += 1
            return
        sec.outcomes[str(doc.get("status"))] += 1
        attempts = doc.get("attempts") or []
        if attempts:
            sec.channels[str(attempts[-1].get("channel"))] += 1
            channel_ms = sum(a.get("latency_ms") or 0 for a in attempts)
            added_us = max(1, int((latency_ms - channel_ms) * 1000))
            sec.added.record_value(added_us)
            self.added.record_value(added_us)

    def document(self) -> dict[str, Any]:
        return {
            "errors": dict(self.errors),
            "latency": self.latency.encode().decode(),
            "added": self.added.encode().decode(),
            "seconds": [
                {"t": t, "sent": s.sent, "statuses": dict(s.statuses), "outcomes": dict(s.outcomes),
                 "channels": dict(s.channels), "latency": s.latency.encode().decode(),
                 "added": s.added.encode().decode()}
                for t, s in sorted(self.seconds.items())
            ],
        }


# -- the HTTP/1.1 client ----------------------------------------------------------------


class _Exchange:
    __slots__ = ("deadline", "offset_s", "request", "scheduled")

    def __init__(self, request: bytes, offset_s: float, scheduled: float, deadline: float) -> None:
        self.request = request
        self.offset_s = offset_s
        self.scheduled = scheduled
        self.deadline = deadline


class _Conn(asyncio.Protocol):
    """One kept-alive connection carrying one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.current: _Exchange | None = None
        self.head_end = -1
        self.length = -1
        self.status = ""
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, ex: _Exchange) -> None:
        assert self.transport is not None
        self.current = ex
        self.head_end = -1
        self.transport.write(ex.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_end = end + 4
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            self.status = head[0].split(" ", 2)[1] if head[0].startswith("HTTP/1.") else "bad_response"
            self.length = 0
            self.close_after = False
            for line in head[1:]:
                name, _, value = line.partition(":")
                lname = name.strip().lower()
                if lname == "content-length":
                    self.length = int(value)
                elif lname == "connection" and value.strip().lower() == "close":
                    self.close_after = True
                elif lname == "transfer-encoding":
                    self.status = "bad_response"  # the orchestrator always sends a length
                    self.close_after = True
        if len(self.buf) < self.head_end + self.length:
            return
        body = bytes(self.buf[self.head_end:self.head_end + self.length])
        del self.buf[:self.head_end + self.length]
        ex, self.current = self.current, None
        self.head_end = -1
        if ex is not None:
            self.pool.finished(self, ex, self.status, body)
        if self.close_after and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.lost(self)


class Pool:
    def __init__(self, host: str, port: int, recorder: Recorder, start: float, max_connections: int,
                 timeout_s: float) -> None:
        self.host, self.port = host, port
        self.recorder = recorder
        self.start = start
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.idle: deque[_Conn] = deque()
        self.busy: set[_Conn] = set()
        self.connecting = 0
        self.waiting: deque[_Exchange] = deque()
        self.outstanding = 0
        self.loop = asyncio.get_running_loop()

    def submit(self, ex: _Exchange) -> None:
        self.outstanding += 1
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                self.busy.add(conn)
                conn.send(ex)
                return
        self.waiting.append(ex)
        if len(self.busy) + self.connecting < self.max_connections and self.connecting < len(self.waiting):
            self.connecting += 1
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError as exc:
            self.connecting -= 1
            if self.waiting:  # nothing to connect to: the oldest waiting request fails
                self._done(self.waiting.popleft(), f"connect_{type(exc).__name__}", None)
            return
        self.connecting -= 1
        self._next(conn)

    def _next(self, conn: _Conn) -> None:
        if self.waiting and conn.transport is not None and not conn.transport.is_closing():
            self.busy.add(conn)
            conn.send(self.waiting.popleft())
        else:
            self.busy.discard(conn)
            if conn.transport is not None and not conn.transport.is_closing():
                self.idle.append(conn)

    def finished(self, conn: _Conn, ex: _Exchange, status: str, body: bytes) -> None:
        doc = None
        if status in ("200", "201", "202"):
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                status = "bad_response"
        self._done(ex, status, doc)
        self.busy.discard(conn)
        self._next(conn)

    def lost(self, conn: _Conn) -> None:
        self.busy.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        if conn.current is not None:
            ex, conn.current = conn.current, None
            self._done(ex, "connection_lost", None)

    def _done(self, ex: _Exchange, status: str, doc: dict[str, Any] | None) -> None:
        self.outstanding -= 1
        self.recorder.record(ex.offset_s, (time.perf_counter() - ex.scheduled) * 1000, status, doc)

    def expire(self, now: float) -> None:
        """Requests past their deadline fail as timeouts; their connections are closed."""
        for conn in list(self.busy):
            ex = conn.current
            if ex is not None and now > ex.deadline:
                conn.current = None
                self._done(ex, "timeout", None)
                self.busy.discard(conn)
                if conn.transport is not None:
                    conn.transport.close()
        while self.waiting and now > self.waiting[0].deadline:
            self._done(self.waiting.popleft(), "timeout", None)


# -- the schedule -------------------------------------------------------------------------


class Traffic:
    """Request bodies: users (a tenth of them heavier), currencies and amounts."""

    def __init__(self, seed: str, users: int) -> None:
        self.rng = random.Random(seed)
        self.users = users
        self.whales = max(1, users // 10)
        self.weights = [m[2] for m in MARKET]

    def body(self, i: int) -> bytes:
        rng = self.rng
        if rng.random() < WHALE_SHARE:
            n = rng.randrange(self.whales)
            user = f"w{n}"
        else:
            n = rng.randrange(self.users)
            user = f"u{n}"
        currency, country, _, tiers = rng.choices(MARKET, self.weights)[0]
        amount = rng.choices(tiers, _TIER_WEIGHTS[len(tiers)])[0]
        body = {"user_id": user, "amount_minor": amount, "currency": currency, "country": country,
                "method": "ewallet", "instrument": {"token": f"tok_{user}"}}
        if n % 2 == 0:  # half the front services send risk's optional signals
            body["device_id"], body["ip_country"] = f"dev_{user}", country
        return orjson.dumps(body)


async def run(url: str, rate: float, duration: float, key_prefix: str, token: str, users: int,
              timeout_s: float, max_connections: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n").encode()
    recorder = Recorder()
    traffic = Traffic(key_prefix, users)
    start = time.perf_counter() + 0.2
    pool = Pool(host, port, recorder, start, max_connections, timeout_s)
    n = int(rate * duration)
    lag_max = 0.0
    loop = asyncio.get_running_loop()
    last_expiry = start

    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag_max = max(lag_max, -delay)
            if -delay > 0.05:
                await asyncio.sleep(0)  # behind: still let answers in
        body = traffic.body(i)
        request = head + f"Idempotency-Key: {key_prefix}-{i}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        pool.submit(_Exchange(request, scheduled - start, scheduled, scheduled + timeout_s))
        now = time.perf_counter()
        if now - last_expiry > 0.1:
            pool.expire(now)
            last_expiry = now
    drain_until = time.perf_counter() + timeout_s + 1
    while pool.outstanding and time.perf_counter() < drain_until:
        await asyncio.sleep(0.05)
        pool.expire(time.perf_counter())
    for conn in [*pool.idle, *pool.busy]:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(0)
    del loop
    return {"rate": rate, "duration": duration, "sent": n, "send_lag_max_ms": round(lag_max * 1000, 2),
            **recorder.document()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.loadgen")
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--key-prefix", default="bench")
    p.add_argument("--token", required=True)
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--max-connections", type=int, default=4000)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    import uvloop

    result = uvloop.run(run(args.url, args.rate, args.duration, args.key_prefix, args.token, args.users,
                            args.timeout, args.max_connections))
    Path(args.out).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
