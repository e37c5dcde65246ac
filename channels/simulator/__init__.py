"""The provider simulator: many protocol-v1 channels on one port, with live-changeable
behaviour, signed webhooks and a ledger of what was really charged."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from channels.simulator._app import SIMULATOR, Payment, SimConfigError, Simulator, build_app, load_config
from channels.simulator._behaviour import KIND_DEFAULTS, OUTAGE_MODES, Behaviour, BehaviourError

__all__ = [
    "KIND_DEFAULTS",
    "OUTAGE_MODES",
    "SIMULATOR",
    "Behaviour",
    "BehaviourError",
    "Payment",
    "SimConfigError",
    "Simulator",
    "build_app",
    "load_config",
    "main",
    "serve",
]


async def serve(doc: dict, host: str, port: int, ready: "asyncio.Event | None" = None) -> None:
    from aiohttp import web

    runner = web.AppRunner(build_app(doc), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    print(f"simulator listening on http://{host}:{port} ({len(doc['channels'])} channels)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="simulate", description="provider simulator (protocol v1)")
    p.add_argument("--config", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    args = p.parse_args(argv)
    try:
        doc = load_config(args.config)
        build_app(doc)  # validate before binding the port
    except SimConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    import uvloop

    uvloop.run(serve(doc, args.host, args.port))
    return 0
