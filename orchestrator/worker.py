"""One worker process of ``orchestrator serve --workers N`` (see ``orchestrator.cluster``).

Started by the supervisor with its listening socket and its control link as inherited
file descriptors. It takes its config history and drains from the supervisor, replays
them (so its history is every other worker's), and only then accepts connections.
It stops on SIGTERM (the supervisor's) or when its link to the supervisor closes
(the supervisor is gone); SIGINT and SIGHUP are the supervisor's to handle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
from typing import Any

import structlog

__all__ = ["run_worker"]


def run_worker(args: argparse.Namespace) -> int:
    from orchestrator.logs import configure

    configure(args.log_level, static={"worker": args.index})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import uvloop

    return uvloop.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    from aiohttp import web

    from config import parse
    from orchestrator.api.app import build_app
    from orchestrator.cluster import WorkerLink
    from orchestrator.server import app_runner, tls_context, tune_gc
    from orchestrator.service import AppliedConfig
    from orchestrator.wiring import build_service

    log = structlog.get_logger("orchestrator.worker")
    link = WorkerLink(args.index, args.workers, socket.socket(fileno=args.control_fd), args.journal_socket)
    init = await link.connect()
    # Start on the cluster's running config with its whole history and drains, so the
    # recharges this worker resumes run on what every other worker runs.
    history = [AppliedConfig(parse(doc, source), applied_at, source) for doc, source, applied_at in init["history"]]
    service = build_service(history[-1].loaded, cluster=link)
    service.adopt(history, set(init["drained"]))
    tls = tls_context(service.config.server)
    app = build_app(service)
    runner = app_runner(app, service)
    await runner.setup()  # starts the service (journal, channels, probes, recovery)
    link.perform = lambda action: perform(service, action)
    site = web.SockSite(runner, socket.socket(fileno=args.listen_fd), ssl_context=tls)
    await site.start()
    tune_gc()
    link.ready.set()
    link.notify({"op": "ready", "config_version": service.loaded.version})
    log.info("worker_listening", config_version=service.loaded.version, workers=args.workers)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    gone = loop.create_task(link.closed.wait())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait((gone, stopping), return_when=asyncio.FIRST_COMPLETED)
    if gone.done():
        # The supervisor (on SQLite, the journal writer too) died: nothing can be made durable, nor
        # this worker restarted. Go at once: steps are journaled first, so the next start resumes.
        log.error("worker_stopping", reason="supervisor gone")
        os._exit(1)
    log.info("worker_stopping", reason="SIGTERM")
    stopping.cancel()
    gone.cancel()
    await runner.cleanup()
    await link.close()
    return 0


async def perform(service: Any, action: dict[str, Any]) -> dict[str, Any]:
    """Carry out one action the supervisor sends every worker."""
    from config import parse
    from orchestrator.api.app import metrics_text

    from orchestrator.errors import ReloadError

    kind = action["kind"]
    if kind == "apply":
        loaded = parse(action["doc"], action["source"])
        if loaded.version == service.loaded.version:
            return {"version": loaded.version, "applied": False, "lines": []}
        try:
            lines = await service.reload(loaded, action["source"])
        except ReloadError as exc:
            return {"error": str(exc), "version": service.loaded.version}
        return {"version": loaded.version, "applied": True, "lines": lines}
    if kind in ("drain", "enable"):
        name = action["channel"]
        if service.config.channel(name) is None:
            return {"error": f"no channel {name!r} in this worker's config"}
        (service.drain if kind == "drain" else service.enable)(name)
        return {"channel": name, "drained": kind == "drain"}
    if kind == "metrics":
        return {"text": metrics_text(service).decode()}
    return {"error": f"unknown action {kind!r}"}
