"""The provider simulator (SPEC section 16): many protocol-v1 channels on one port, with
live-changeable behaviour, signed webhooks and a ledger of what was really charged.

    python -m channels.simulator --config config/simulator.example.yaml --port 9000
    python -m orchestrator simulate --config FILE --port N      (the same ``main``)

In-process (tests): ``build_app(config)`` gives the aiohttp app to run on any port.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog
import uvloop
from aiohttp import web

from channels.simulator._app import SIMULATOR, Simulator, build_app
from channels.simulator._behaviour import (
    KIND_DEFAULTS,
    LATENCY_DISTRIBUTIONS,
    OUTAGE_MODES,
    REPORT_FAULTS,
    Behaviour,
    BehaviourError,
    Fate,
)
from channels.simulator._config import ChannelSpec, SimConfig, SimConfigError, load_config, parse_config
from channels.simulator._ledger import COUNTERS, DISCREPANCIES, Challenge, Dispute, Payment, Refund, SimChannel
from channels.simulator._segments import MAX_SEGMENTS, Segment, SegmentMatch

__all__ = [
    "COUNTERS",
    "DISCREPANCIES",
    "KIND_DEFAULTS",
    "LATENCY_DISTRIBUTIONS",
    "MAX_SEGMENTS",
    "OUTAGE_MODES",
    "REPORT_FAULTS",
    "SIMULATOR",
    "Behaviour",
    "BehaviourError",
    "Challenge",
    "ChannelSpec",
    "Dispute",
    "Fate",
    "Payment",
    "Refund",
    "Segment",
    "SegmentMatch",
    "SimChannel",
    "SimConfig",
    "SimConfigError",
    "Simulator",
    "build_app",
    "configure_logging",
    "load_config",
    "main",
    "parse_config",
    "run",
    "serve",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000


async def serve(config: SimConfig | Mapping[str, Any], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly (webhook deliveries cancelled)."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
        await site.start()
        channels = len(app[SIMULATOR].channels)
        print(f"simulator listening on http://{host}:{port} ({channels} channels)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await runner.cleanup()


def configure_logging(level: int = logging.INFO) -> None:
    """JSON log lines on stderr, as the orchestrator writes them, for a simulator run as its
    own process (in-process users keep whatever logging they set up)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.BytesLoggerFactory(file=sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )


def run(config_path: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Load, validate and serve a config file; 1 (with the error on stderr) when it is invalid."""
    configure_logging()
    try:
        config = load_config(config_path)
    except SimConfigError as exc:
        print(f"simulator config {config_path}: {exc}", file=sys.stderr)
        return 1
    _tune_gc()
    uvloop.run(_serve_process(config, host, port))
    return 0


FREEZE_INTERVAL_S = 2.0


async def _serve_process(config: SimConfig, host: str, port: int) -> None:
    """``serve``, as the simulator's own process: with the ledger kept out of the
    garbage collector (``_freeze_survivors``)."""
    keeper = asyncio.get_running_loop().create_task(_freeze_survivors(FREEZE_INTERVAL_S))
    try:
        await serve(config, host, port)
    finally:
        keeper.cancel()


async def _freeze_survivors(interval_s: float) -> None:
    """Every ``interval_s``: a full collection, then what survived it is frozen (moved
    out of every generation the collector scans).

    The ledger only grows, and collecting the generation that holds it stalls every call in
    flight; frozen, it is left out of every collection (docs/performance.md#simulator-gc).

    The price: a reference cycle that becomes garbage after it was frozen is never
    collected (refcounting still frees everything else, frozen or not). The ledger's
    payments hold none; what does (a connection, an exception in flight) is short-lived,
    so most such cycles are gone by the next round's collection."""
    while True:
        await asyncio.sleep(interval_s)
        gc.collect()
        gc.freeze()


def _tune_gc() -> None:
    """Start-up's objects frozen out of collections, and fewer automatic ones: with the
    default thresholds a full collection of the growing ledger came each time it grew by
    a quarter (docs/performance.md#simulator-gc). Between the
    rounds of ``_freeze_survivors``, which keeps the ledger itself out of collections,
    the young generation still reclaims cycles. The server's ``tune_gc``
    (``orchestrator/server.py``) is alike; it is not imported here because ``channels``
    does not depend on ``orchestrator``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 1000)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="simulate", description="provider simulator (protocol v1)")
    parser.add_argument("--config", required=True, help="simulator YAML (see config/simulator.example.yaml)")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    return run(args.config, args.host, args.port)
