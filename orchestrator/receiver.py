"""A front service's notification endpoint, for the demo and the tests (SPEC 19):
``python -m orchestrator.receiver --secret S --port N [--host 127.0.0.1] [--out FILE]``.

    POST <any path>          a notification: signature checked first (401 bad_signature, nothing
                             recorded), then the body {"id","type","created_at","data"} (422
                             invalid_event), recorded, 200
    GET  /_received          {"deliveries": n, "events": [... in arrival order, repeats included]}
    PUT  /_receiver/mode     {"status": 200|503, "delay_ms": N}: answer deliveries 503, or late

It records every delivery, a repeat too: delivery is at least once, so a test counts
repeats here and deduplicates by ``id`` itself. With ``--out`` each delivery is also one
JSON line, flushed before the 200 (the sender may end the event on it), and a receiver
restarted on the same file reports everything it ever got.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from channels.webhooks import NOTIFY_SIGNATURE_HEADER, SignatureError, check_signature

__all__ = ["RECEIVER", "Receiver", "build_receiver_app", "main"]

TOLERANCE_S = 300
_MODE_STATUSES = (200, 503)
_MAX_DELAY_MS = 600_000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


def _event_problem(doc: Any) -> str | None:
    """What makes ``doc`` not a notification, or None."""
    if not isinstance(doc, dict):
        return "the body must be a JSON object"
    for key in ("id", "type"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            return f"{key} must be a non-empty string"
    created = doc.get("created_at")
    if isinstance(created, bool) or not isinstance(created, str | int | float):
        return "created_at must be a string or a number"
    if not isinstance(doc.get("data"), dict):
        return "data must be a JSON object"
    return None


def _mode_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "the body must be a JSON object"
    for key in doc:
        if key not in ("status", "delay_ms"):
            return f"unknown field {key!r}"
    if "status" in doc and doc["status"] not in _MODE_STATUSES:
        return f"status must be one of {list(_MODE_STATUSES)}"
    delay = doc.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= _MAX_DELAY_MS:
        return f"delay_ms must be a number from 0 to {_MAX_DELAY_MS}"
    return None


def _load(raw: bytes) -> list[dict[str, Any]]:
    """The deliveries a file holds. A line cut short by a crash mid-write is skipped: it
    was never answered 200, so its sender delivers it again."""
    events = []
    for line in raw.splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            events.append(doc)
    return events


class Receiver:
    """What the receiver got, and how it answers now. ``clock`` gives unix seconds: the
    signature's time window and ``received_at``."""

    def __init__(self, secret: str, out_path: str | Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.out_path = Path(out_path) if out_path is not None else None
        self.clock = clock
        self.events: list[dict[str, Any]] = []
        self.status = 200
        self.delay_ms: float = 0
        self._out: IO[bytes] | None = None

    async def lifespan(self, _app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx``: what the file holds is loaded, and it is open for
        appending, while the app runs."""
        if self.out_path is not None:
            raw = self.out_path.read_bytes() if self.out_path.exists() else b""
            self.events = _load(raw)
            self._out = self.out_path.open("ab")
            if raw and not raw.endswith(b"\n"):
                self._out.write(b"\n")  # a torn last line must not swallow the next record
        try:
            yield
        finally:
            if self._out is not None:
                self._out.close()
                self._out = None

    async def deliver(self, request: web.Request) -> web.Response:
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        if self.status != 200:
            return _error(self.status, "unavailable", "the receiver is set to refuse deliveries")
        body = await request.read()
        try:
            check_signature(self.secret, request.headers.get(NOTIFY_SIGNATURE_HEADER), body, self.clock(),
                            TOLERANCE_S, NOTIFY_SIGNATURE_HEADER)
        except SignatureError as exc:
            return _error(401, "bad_signature", exc.reason)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(422, "invalid_event", "the body is not JSON")
        if problem := _event_problem(doc):
            return _error(422, "invalid_event", problem)
        self._record({"id": doc["id"], "type": doc["type"], "created_at": doc["created_at"], "data": doc["data"],
                      "received_at": self.clock()})
        return _json({"received": doc["id"]})

    def _record(self, event: dict[str, Any]) -> None:
        # Written and flushed before the 200: a sender that ends the event on it must find
        # it here after a crash. A blocking write is fine at a test receiver's rates.
        if self._out is not None:
            self._out.write(orjson.dumps(event) + b"\n")
            self._out.flush()
        self.events.append(event)

    async def received(self, _request: web.Request) -> web.Response:
        return _json({"deliveries": len(self.events), "events": self.events})

    async def set_mode(self, request: web.Request) -> web.Response:
        try:
            doc = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "malformed_json", "the body is not JSON")
        if problem := _mode_problem(doc):
            return _error(422, "invalid_field", problem)
        self.status = doc.get("status", self.status)
        self.delay_ms = doc.get("delay_ms", self.delay_ms)
        return _json({"status": self.status, "delay_ms": self.delay_ms})


RECEIVER = web.AppKey("receiver", Receiver)


def build_receiver_app(secret: str, out_path: str | Path | None = None,
                       clock: Callable[[], float] = time.time) -> web.Application:
    """The receiver app; nothing is read or opened until it starts."""
    receiver = Receiver(secret, out_path, clock)
    app = web.Application()
    app[RECEIVER] = receiver
    app.cleanup_ctx.append(receiver.lifespan)
    app.router.add_get("/_received", receiver.received)
    app.router.add_put("/_receiver/mode", receiver.set_mode)
    app.router.add_post("/{path:.*}", receiver.deliver)  # last: every other path is a delivery
    return app


async def serve(secret: str, host: str, port: int, out_path: str | None) -> None:
    """Serve until SIGINT or SIGTERM; the ready line names the port really bound."""
    runner = web.AppRunner(build_receiver_app(secret, out_path), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        bound = runner.addresses[0][1]
        print(f"receiver listening on http://{host}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestrator.receiver",
                                     description="records signed notifications, as a front service would")
    parser.add_argument("--secret", required=True, help="the client's notify secret")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free one (named in the ready line)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--out", help="JSON lines file: appended to, and loaded again on restart")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.secret, args.host, args.port, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
