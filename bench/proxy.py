"""The baseline: a bare aiohttp pass-through proxy. It takes the same recharge requests
as the orchestrator and makes the same single call to the same simulator channel, with
nothing else (no validation, no journal, no routing): what the orchestrator's overhead is
measured against, on the same machine in the same run."""

from __future__ import annotations

import argparse
import sys
import time

import aiohttp
import orjson
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def recharge(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    ref = request.headers.get("Idempotency-Key", "")
    payment = orjson.dumps({"reference": ref, "amount_minor": body["amount_minor"], "currency": body["currency"],
                            "method": body["method"], "instrument": body["instrument"], "callback_url": None})
    started = time.perf_counter()
    async with request.app[SESSION].post(request.app[UPSTREAM] + "/payments", data=payment,
                                         headers={"Idempotency-Key": ref, "Content-Type": "application/json"}) as r:
        answer = orjson.loads(await r.read())
    latency = (time.perf_counter() - started) * 1000
    channel = request.app[UPSTREAM].rsplit("/", 1)[-1]
    # The answer in the recharge's shape, as far as a pass-through can tell it.
    status = "succeeded" if answer.get("status") == "captured" else answer.get("status")
    return web.Response(body=orjson.dumps({"status": status, "attempts": [
        {"channel": channel, "latency_ms": latency}]}), status=201, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.proxy")
    p.add_argument("--upstream", required=True, help="the simulator channel's base URL")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")

    async def life(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(life)
    app.router.add_post("/v1/recharges", recharge)
    app.router.add_get("/healthz", healthz)
    import uvloop

    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=uvloop.new_event_loop())
    return 0


if __name__ == "__main__":
    sys.exit(main())
