"""The command line: ``python -m orchestrator`` (also installed as ``orchestrator``).

    orchestrator serve --config FILE [--db URL] [--host H] [--port N]
    orchestrator config check FILE
    orchestrator simulate --config FILE [--port N]
    orchestrator demo [--duration S] [--rate N] [--plain]
    orchestrator audit verify [--db URL | --config FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator", description="Smart-routing recharge orchestrator")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the orchestrator HTTP API")
    serve.add_argument("--config", required=True, help="YAML config file")
    serve.add_argument("--db", help="storage URL, overrides storage.url (sqlite:///path or postgresql://...)")
    serve.add_argument("--host", help="overrides server.host")
    serve.add_argument("--port", type=int, help="overrides server.port")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS only (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", type=int, help="worker processes behind the port (overrides server.workers)")

    # A worker process of `serve --workers N`, started by the supervisor (not for people).
    worker = sub.add_parser("_worker")
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--workers", type=int, required=True)
    worker.add_argument("--listen-fd", type=int, required=True)
    worker.add_argument("--control-fd", type=int, required=True)
    worker.add_argument("--journal-socket")
    worker.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    cfg = sub.add_parser("config", help="config tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file; every error with its path")
    check.add_argument("file")

    sub.add_parser("demo", help="the product in three minutes (simulator + orchestrator + traffic); "
                   "see `orchestrator demo --help`")

    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the whole chain; name the first broken entry")
    verify.add_argument("--db", help="storage URL (default: the config's storage.url)")
    verify.add_argument("--config", default="config/orchestrator.example.yaml", help="config whose storage to use")

    sim = sub.add_parser("simulate", help="run the provider simulator")
    sim.add_argument("--config", required=True, help="simulator YAML config")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9000)
    return p


def _config_check(path: str) -> int:
    from config import ConfigError, load_file

    try:
        loaded = load_file(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        print(f"{path}: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    cfg = loaded.config
    print(f"{path}: ok (version {loaded.version}, {len(cfg.channels)} channels, {len(cfg.routing.rules)} rules, "
          f"{len(cfg.clients)} clients)")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    if args.db:
        out.setdefault("storage", {})["url"] = args.db
    if args.host:
        out.setdefault("server", {})["host"] = args.host
    if args.port is not None:
        out.setdefault("server", {})["port"] = args.port
    if args.tls_cert or args.tls_key:
        out.setdefault("server", {}).update(tls_cert=args.tls_cert, tls_key=args.tls_key)
    if getattr(args, "workers", None) is not None:
        out.setdefault("server", {})["workers"] = args.workers
    return out


def load_with_overrides(path: str, overrides: dict[str, dict[str, object]]):  # type: ignore[no-untyped-def]
    """The config file with the command line's overrides on top (they survive reloads)."""
    from config import load_file, parse

    loaded = load_file(path)
    if not overrides:
        return loaded
    doc = loaded.config.model_dump(mode="json")
    for section, values in overrides.items():
        doc[section].update(values)
    return parse(doc, loaded.source)


def _serve(args: argparse.Namespace) -> int:
    from config import ConfigError
    from orchestrator.logs import configure

    overrides = _overrides(args)
    try:
        loaded = load_with_overrides(args.config, overrides)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    import uvloop

    if loaded.config.server.workers > 1:
        from orchestrator.supervisor import Supervisor

        configure(args.log_level, static={"process": "supervisor"})
        supervisor = Supervisor(loaded, args.config, overrides, loaded.config.server.workers, args.log_level)
        return uvloop.run(supervisor.run())
    configure(args.log_level)
    uvloop.run(_run_server(loaded, args.config, overrides))
    return 0


async def _run_server(loaded: object, path: str, overrides: dict[str, dict[str, object]]) -> None:
    import structlog
    from aiohttp import web

    from config import ConfigError
    from orchestrator.api.app import build_app
    from orchestrator.wiring import build_service

    log = structlog.get_logger("orchestrator")
    service = build_service(loaded, config_path=path)  # type: ignore[arg-type]
    app = build_app(service)
    server = service.config.server
    # Limits are read as each connection opens (a reload applies to new ones); the
    # idle timeout is fixed at start.
    runner = app_runner(app, service)
    await runner.setup()
    tls = tls_context(server)
    site = web.TCPSite(runner, server.host, server.port, backlog=1024, reuse_address=True, ssl_context=tls)
    await site.start()
    tune_gc()
    log.info("listening", host=server.host, port=server.port, tls=tls is not None,
             config_version=service.loaded.version)

    async def reload_file() -> None:
        try:
            new = load_with_overrides(path, overrides)
        except ConfigError as exc:
            log.error("config_reload_refused", source=path, errors=exc.lines(), config_version=service.loaded.version)
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


def app_runner(app: object, service: object) -> object:
    """The app's runner: connection limits read as each connection opens (a reload
    applies to new ones); the idle timeout fixed at start."""
    from orchestrator.api import connections

    server = service.config.server  # type: ignore[attr-defined]
    return connections.runner(app, lambda: connections.Limits.of(service.config.server),  # type: ignore[arg-type,attr-defined]
                              access_log=None, handle_signals=False, keepalive_timeout=server.idle_timeout_s)


def tls_context(server: object) -> object:
    """HTTPS when the config names a certificate and its key; None for plain HTTP."""
    if not (server.tls_cert and server.tls_key):  # type: ignore[attr-defined]
        return None
    import ssl

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(server.tls_cert, server.tls_key)  # type: ignore[attr-defined]
    return tls


def tune_gc() -> None:
    """Fewer, cheaper garbage collections on a long-running server: what start-up
    allocated (modules, config, app) is frozen out of every later collection, and the
    youngest generation is collected every 50,000 allocations instead of 700. Under
    load the default settings paused the event loop every few seconds (a full
    collection up to 60 ms at 500 recharges/s); with these, none in 2 s windows. The
    bench's 10-minute soak checks memory stays flat."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _audit_verify(args: argparse.Namespace) -> int:
    from config import ConfigError, load_file

    url = args.db
    if url is None:
        try:
            url = load_file(args.config).config.storage.url
        except ConfigError as exc:
            print("\n".join(exc.lines()), file=sys.stderr)
            return 1

    async def run() -> int:
        from orchestrator.audit import verify_rows
        from orchestrator.journal import JournalError, open_journal

        if url.startswith("sqlite:///"):
            from pathlib import Path

            from orchestrator.journal import path_from_url

            if not Path(path_from_url(url)).exists():
                print(f"no journal at {url}", file=sys.stderr)
                return 1
        journal = open_journal(url)
        try:
            await journal.open()
            rows = await journal.audit_rows()  # type: ignore[attr-defined]
        except JournalError as exc:
            print(f"cannot read the journal: {exc}", file=sys.stderr)
            return 1
        finally:
            await journal.close()
        report = verify_rows(rows)
        if report.ok:
            print(f"audit chain intact: {report.entries} entries verified")
            return 0
        print(f"audit chain BROKEN at entry {report.broken_at}: {report.reason} "
              f"({report.entries - 1} entries before it verified)")
        return 1

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # the demo has its own options
        from orchestrator.demo import main as demo_main

        return demo_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "config":
        return _config_check(args.file)
    if args.command == "serve":
        return _serve(args)
    if args.command == "_worker":
        from orchestrator.worker import run_worker

        return run_worker(args)
    if args.command == "audit":
        return _audit_verify(args)
    if args.command == "simulate":
        from channels.simulator import main as simulate

        return int(simulate(["--config", args.config, "--host", args.host, "--port", str(args.port)]) or 0)
    return 2


if __name__ == "__main__":
    sys.exit(main())
