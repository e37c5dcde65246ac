"""Running the orchestrator's HTTP server: ``orchestrator serve`` alone, and what a
worker of ``serve --workers N`` (orchestrator.worker) shares with it.

Before anything starts (no journal opened, no recharge resumed), what can fail at once
is checked: the TLS files load, and no other orchestrator holds the SQLite journal
(``JournalLock``: two orchestrators on one file would both drive its recharges under
the same lease names).
"""

from __future__ import annotations

import asyncio
import fcntl
import signal
import ssl
from pathlib import Path
from typing import IO, Any

import structlog
from aiohttp import web

from config import ConfigError, LoadedConfig, RiskConfig, ServerConfig, StorageConfig, load_file
from orchestrator.errors import StartError

__all__ = ["JournalLock", "StartError", "app_runner", "check_risk_models", "run_alone", "tls_context", "tune_gc"]

log = structlog.get_logger("orchestrator")


def check_risk_models(risk: RiskConfig) -> None:
    """StartError unless the risk models the config names can be served."""
    from orchestrator.risk import ModelError, RiskEngine

    try:
        RiskEngine.prepare(risk)
    except ModelError as exc:
        raise StartError(f"risk.model: {exc}") from exc


def tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    """HTTPS when the config names a certificate and its key; None for plain HTTP."""
    if not (server.tls_cert and server.tls_key):
        return None
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        tls.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise StartError(f"cannot load server.tls_cert / tls_key: {exc}") from exc
    return tls


class JournalLock:
    """An exclusive lock on ``<db>.lock`` beside a SQLite journal, held while this
    orchestrator runs (released by the kernel however the process ends). Nothing on
    PostgreSQL, where several instances are the point."""

    def __init__(self, storage: StorageConfig) -> None:
        self._path: Path | None = None
        if storage.url.startswith("sqlite:///"):
            self._path = Path(storage.url[len("sqlite:///"):] + ".lock")
        self._file: IO[bytes] | None = None

    def acquire(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self._path, "ab")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise StartError(f"another orchestrator is running on this journal ({self._path} is locked)") from None
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def app_runner(app: web.Application, service: Any) -> web.AppRunner:
    """The app's runner: connection limits read as each connection opens (a reload
    applies to new ones); the idle timeout fixed at start."""
    from orchestrator.api import connections

    return connections.runner(app, lambda: connections.Limits.of(service.config.server), access_log=None,
                              handle_signals=False, keepalive_timeout=service.config.server.idle_timeout_s)


def tune_gc() -> None:
    """Fewer, cheaper garbage collections on a long-running server: what start-up
    allocated (modules, config, app) is frozen out of every later collection, and the
    youngest generation is collected every 50,000 allocations instead of 700: under load
    the defaults' collections pause the event loop (docs/performance.md#server-gc)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_alone(loaded: LoadedConfig, path: str, overrides: dict[str, dict[str, object]]) -> int:
    """``orchestrator serve`` in one process: until SIGINT or SIGTERM; SIGHUP reloads."""
    from orchestrator.api.app import build_app
    from orchestrator.wiring import build_service

    server = loaded.config.server
    lock = JournalLock(loaded.config.storage)
    try:
        tls = tls_context(server)
        check_risk_models(loaded.config.risk)
        lock.acquire()
    except StartError as exc:
        log.error("cannot_start", error=str(exc))
        return 1
    try:
        service = build_service(loaded, config_path=path)
        app = build_app(service)
        runner = app_runner(app, service)
        await runner.setup()
        site = web.TCPSite(runner, server.host, server.port, backlog=1024, reuse_address=True, ssl_context=tls)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot_listen", host=server.host, port=server.port, error=str(exc))
            await runner.cleanup()
            return 1
        tune_gc()
        log.info("listening", host=server.host, port=server.port, tls=tls is not None,
                 config_version=service.loaded.version)

        async def reload_file() -> None:
            try:
                new = load_file(path, overrides)
            except ConfigError as exc:
                log.error("config_reload_refused", source=path, errors=exc.lines(),
                          config_version=service.loaded.version)
                return
            if new.version == service.loaded.version:
                log.info("config_reload_unchanged", config_version=new.version)
                return
            await service.reload(new, "file")

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = loop.create_task(reload_file())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await stop.wait()
        log.info("shutting_down")
        await runner.cleanup()
        return 0
    finally:
        lock.release()
