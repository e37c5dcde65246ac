"""The command line: ``python -m orchestrator`` (also installed as ``orchestrator``).

    orchestrator serve --config FILE [--db URL] [--host H] [--port N]
    orchestrator config check FILE
    orchestrator simulate --config FILE [--port N]
    orchestrator demo [--duration S] [--rate N] [--plain]
    orchestrator audit verify [--db URL | --config FILE]
    orchestrator ledger verify [--db URL | --config FILE]
    orchestrator reconcile --channel NAME --date YYYY-MM-DD [--config FILE] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

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

    ledger = sub.add_parser("ledger", help="the double-entry ledger of coins")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    lverify = ledger_sub.add_parser("verify", help="replay every transfer: balances, sums, zero total, audit chain")
    lverify.add_argument("--db", help="storage URL (default: the config's storage.url)")
    lverify.add_argument("--config", default="config/orchestrator.example.yaml", help="config whose storage to use")

    recon = sub.add_parser("reconcile", help="match a channel's settlement report of one day against the journal "
                           "(SPEC 21)")
    recon.add_argument("--channel", required=True, help="the channel's name in the config")
    recon.add_argument("--date", required=True, help="the day, YYYY-MM-DD (UTC)")
    recon.add_argument("--config", default="config/orchestrator.example.yaml", help="config with the channel")
    recon.add_argument("--db", help="storage URL (default: the config's storage.url)")

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


def _serve(args: argparse.Namespace) -> int:
    from config import ConfigError, load_file
    from orchestrator.logs import configure

    overrides = _overrides(args)
    try:
        loaded = load_file(args.config, overrides)
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
    from orchestrator.server import run_alone

    configure(args.log_level)
    return uvloop.run(run_alone(loaded, args.config, overrides))


def _storage_url(args: argparse.Namespace) -> str | None:
    from config import ConfigError, load_file

    if args.db is not None:
        return str(args.db)
    try:
        return load_file(args.config).config.storage.url
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return None


async def _with_journal(url: str, check: Any) -> int:
    """Open the journal at ``url`` (migrating it, as any start does), run ``check``, close."""
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
        return int(await check(journal))
    except JournalError as exc:
        print(f"cannot read the journal: {exc}", file=sys.stderr)
        return 1
    finally:
        await journal.close()


def _audit_verify(args: argparse.Namespace) -> int:
    url = _storage_url(args)
    if url is None:
        return 1

    async def check(journal: Any) -> int:
        from orchestrator.audit import verify_rows

        report = verify_rows(await journal.audit_rows())
        if report.ok:
            print(f"audit chain intact: {report.entries} entries verified")
            return 0
        print(f"audit chain BROKEN at entry {report.broken_at}: {report.reason} "
              f"({report.entries - 1} entries before it verified)")
        return 1

    return asyncio.run(_with_journal(url, check))


def _ledger_verify(args: argparse.Namespace) -> int:
    url = _storage_url(args)
    if url is None:
        return 1

    async def check(journal: Any) -> int:
        from orchestrator.ledger_check import verify_ledger

        report = await verify_ledger(journal)
        if report.problem is not None:
            print(f"ledger INCONSISTENT: {report.problem}")
        else:
            print(f"ledger balanced: {report.transfers} transfers, {report.accounts} accounts, sums to 0")
        if report.audit_problem is not None:
            print(f"audit chain BROKEN at {report.audit_problem}")
        else:
            print(f"audit chain intact: {report.audit_entries} entries verified")
        return 0 if report.ok else 1

    return asyncio.run(_with_journal(url, check))


def _reconcile(args: argparse.Namespace) -> int:
    from config import ConfigError, load_file

    try:
        cfg = load_file(args.config).config
    except ConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return 1
    url = args.db or cfg.storage.url

    async def run(journal: Any) -> int:
        from orchestrator import settlements
        from orchestrator.clock import SystemClock
        from orchestrator.errors import Refusal
        from orchestrator.metrics import Metrics
        from orchestrator.wiring import http_channel

        channel_cfg = cfg.channel(args.channel)
        channel = None if channel_cfg is None else http_channel(channel_cfg)

        async def channel_of(name: str) -> Any:
            return channel if name == args.channel else None

        async def config_of(name: str) -> Any:
            return channel_cfg if name == args.channel else None

        deps = settlements.ReconDeps(journal, SystemClock(), Metrics(), channel_of, config_of,
                                     lambda: cfg.reconciliation)
        try:
            done = await settlements.reconcile(args.channel, args.date, deps)
        except Refusal as exc:
            print(f"cannot reconcile: {exc}", file=sys.stderr)
            return 1
        finally:
            if channel is not None:
                await channel.close()
        assert done is not None
        summary = done.summary or {}
        print(f"reconciliation {done.id} of {done.channel} on {done.date}: {done.status}"
              + (f" ({done.reason})" if done.reason else "")
              + f"; {done.report_items} items in the report, {summary.get('discrepancies', 0)} discrepancies")
        for kind, c in (summary.get("classes") or {}).items():
            if c["count"]:
                print(f"  {kind}: {c['count']} ({', '.join(f'{v} {k}' for k, v in c['amount_minor'].items())})")
        for cur, c in (summary.get("currencies") or {}).items():
            rate = c["deviation_rate"]
            print(f"  {cur}: settled {c['settled_minor']}, discrepant {c['discrepant_minor']}, deviation "
                  + ("-" if rate is None else f"{rate:.4%}"))
        return 0 if done.status == "completed" else 1

    return asyncio.run(_with_journal(url, run))


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
    if args.command == "ledger":
        return _ledger_verify(args)
    if args.command == "reconcile":
        return _reconcile(args)
    if args.command == "simulate":
        from channels.simulator import main as simulate

        return int(simulate(["--config", args.config, "--host", args.host, "--port", str(args.port)]) or 0)
    return 2


if __name__ == "__main__":
    sys.exit(main())
