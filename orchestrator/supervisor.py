"""``orchestrator serve`` with ``server.workers: N`` (N > 1): the supervisor process.

It owns what the workers share and nothing of the request path:

- the journal writer (SQLite): one writer process for all workers, on a unix socket
  in a private directory, so their steps share transactions and fsyncs;
- the listening sockets: one per worker, all bound to the configured address with
  SO_REUSEPORT (bound here, so a port already taken fails at once, and a worker that
  restarts gets its socket back with the connections waiting on it);
- the control state (``orchestrator.cluster``): the config history and the drains,
  applied to every worker in one order;
- the workers' lives: a worker that exits is started again (backoff 1 s, doubling up
  to 30 s while it keeps failing) and resumes the recharges it was driving at once.

Signals: SIGHUP reloads the config file into every worker; SIGINT or SIGTERM stops
the workers (each finishes what it can, every step being journaled first), then the
writer. If the supervisor itself is killed, the workers and the writer see their link
to it close and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from config import ConfigError, LoadedConfig, load_file
from orchestrator.cluster import Link
from orchestrator.service import HISTORY_LENGTH

__all__ = ["Supervisor"]

log = structlog.get_logger("orchestrator.supervisor")

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 30.0
START_TIMEOUT_S = 60.0
METRICS_TIMEOUT_S = 5.0  # under a Prometheus scrape's timeout; a slow worker is left out
HISTORY = HISTORY_LENGTH


def listening_sockets(host: str, port: int, count: int, backlog: int = 1024) -> list[socket.socket]:
    """``count`` sockets on (host, port) with SO_REUSEPORT, refused if anything listens
    there already; with ``port`` 0, the probe's bind picks the port they share."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    # Probed without SO_REUSEPORT, which would let the group join a second start of the service
    # (its own journal writer on the same file, same lease names): fails if anything listens.
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        address = probe.getsockname()
    finally:
        probe.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(family, kind, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(address)
            address = s.getsockname()
            s.listen(backlog)
            s.set_inheritable(True)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


@dataclass
class _Worker:
    index: int
    sock: socket.socket
    proc: asyncio.subprocess.Process | None = None
    link: Link | None = None
    member: bool = False  # has its init: broadcasts reach it from then on
    started_at: float = 0.0
    backoff_s: float = 1.0
    watcher: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(self, loaded: LoadedConfig, config_path: str, overrides: dict[str, dict[str, object]],
                 workers: int, log_level: str) -> None:
        self._loaded = loaded
        self._config_path = config_path
        self._overrides = overrides
        self._count = workers
        self._log_level = log_level
        # (config document, source, applied at): what every worker runs and has run.
        self.history: deque[tuple[dict[str, Any], str, float]] = deque(maxlen=HISTORY)
        self.history.append((loaded.config.model_dump(mode="json"), "start", time.time()))
        self.drained: set[str] = set()
        self._workers: list[_Worker] = []
        self._lock = asyncio.Lock()
        self._stopping = False
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Linux's abstract namespace: nothing on disk to leave behind when killed.
        self._journal_socket: str | None = None
        self._writer: tuple[subprocess.Popen[bytes], socket.socket] | None = None
        self._writer_watch: asyncio.Task[None] | None = None

    # -- life -------------------------------------------------------------------------

    async def run(self) -> int:
        from orchestrator.server import JournalLock, StartError, check_risk_models, tls_context

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload_file()))
        server = self._loaded.config.server
        lock = JournalLock(self._loaded.config.storage)
        try:
            tls_context(server)  # the workers load it; fail here, before any of them starts
            check_risk_models(self._loaded.config.risk)
            lock.acquire()
        except StartError as exc:
            log.error("cannot_start", error=str(exc))
            return 1
        try:
            socks = listening_sockets(server.host, server.port, self._count)
        except OSError as exc:
            log.error("cannot_listen", host=server.host, port=server.port, error=str(exc))
            lock.release()
            return 1
        try:
            await self._start_writer()
            self._workers = [_Worker(i, s) for i, s in enumerate(socks)]
            for w in self._workers:
                await self._start(w)
            if not await self._all_ready():
                return 1
            log.info("supervisor_started", workers=self._count, host=server.host, port=socks[0].getsockname()[1],
                     config_version=self._loaded.version, journal_writer=self._writer is not None)
            await self._stop.wait()
        finally:
            await self._shutdown()
            for s in socks:
                s.close()
            lock.release()
        return 0

    async def _all_ready(self) -> bool:
        """Every worker's first start reached ready; one that exits first is a broken
        start (its config, its files): the supervisor stops rather than restart it forever."""
        for w in self._workers:
            assert w.proc is not None
            ready = asyncio.ensure_future(w.ready.wait())
            exited = asyncio.ensure_future(w.proc.wait())
            done, _ = await asyncio.wait((ready, exited, asyncio.ensure_future(self._stop.wait())),
                                         timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            exited.cancel()
            if not w.ready.is_set():
                if not self._stop.is_set():
                    log.error("worker_did_not_start", worker=w.index,
                              returncode=w.proc.returncode, timeout_s=START_TIMEOUT_S)
                return False
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _shutdown(self) -> None:
        self._stopping = True
        log.info("supervisor_stopping")
        for w in self._workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self._workers:
            if w.proc is None:
                continue
            try:
                await asyncio.wait_for(w.proc.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("worker_killed", worker=w.index, reason="did not stop in time")
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
            if w.watcher is not None:
                w.watcher.cancel()
            if w.link is not None:
                await w.link.close()
        if self._writer_watch is not None:
            self._writer_watch.cancel()
        if self._writer is not None:
            proc, lifeline = self._writer
            lifeline.close()  # the writer's lifeline: it finishes and exits
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)

    # -- the journal writer -----------------------------------------------------------

    async def _start_writer(self) -> None:
        storage = self._loaded.config.storage
        if not storage.url.startswith("sqlite:///"):
            return  # PostgreSQL: each worker has its own pool; the database orders them
        from orchestrator.journal import path_from_url, spawn_writer, wait_writer_ready

        if self._journal_socket is None:
            self._journal_socket = f"@orchestrator-journal-{os.getpid()}-{secrets.token_hex(4)}"
        path = path_from_url(storage.url)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        proc, lifeline = spawn_writer(path, storage.group_commit_max_batch, storage.commit_interval_ms / 1000,
                               listen=self._journal_socket)
        try:
            pid = await asyncio.get_running_loop().run_in_executor(None, wait_writer_ready, lifeline)
        except BaseException:
            lifeline.close()
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)
            raise
        self._writer = (proc, lifeline)
        self._writer_watch = asyncio.get_running_loop().create_task(self._watch_writer(proc))
        log.info("journal_writer_started", pid=pid, socket=self._journal_socket)

    async def _watch_writer(self, proc: Any) -> None:
        returncode = await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        if self._stopping:
            return
        log.error("journal_writer_exited", returncode=returncode)
        if self._writer is not None:
            self._writer[1].close()
        delay = 0.2
        while not self._stopping:
            try:
                await self._start_writer()  # the workers' journals reconnect to it
                return
            except Exception as exc:
                log.error("journal_writer_restart_failed", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # -- workers ----------------------------------------------------------------------

    async def _start(self, w: _Worker) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        args = [sys.executable, "-m", "orchestrator", "_worker", "--index", str(w.index), "--workers",
                str(self._count), "--listen-fd", str(w.sock.fileno()), "--control-fd", str(theirs.fileno()),
                "--log-level", self._log_level]
        if self._journal_socket is not None:
            args += ["--journal-socket", self._journal_socket]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            w.proc = await asyncio.create_subprocess_exec(*args, pass_fds=(w.sock.fileno(), theirs.fileno()),
                                                          stdin=asyncio.subprocess.DEVNULL, env=env)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        w.member = False
        w.ready.clear()
        w.started_at = time.monotonic()
        link = await Link.over(mine, lambda message: self._on_message(w, link, message))
        w.link = link
        link.start()
        w.watcher = asyncio.get_running_loop().create_task(self._watch(w))
        log.info("worker_started", worker=w.index, pid=w.proc.pid)

    async def _watch(self, w: _Worker) -> None:
        assert w.proc is not None
        returncode = await w.proc.wait()
        w.member = False
        if w.link is not None:
            await w.link.close()
            w.link = None
        if self._stopping:
            return
        lived = time.monotonic() - w.started_at
        if lived > 60:
            w.backoff_s = 1.0
        log.error("worker_exited", worker=w.index, returncode=returncode, lived_s=round(lived, 1),
                  restart_in_s=w.backoff_s)
        while True:
            await asyncio.sleep(w.backoff_s)
            w.backoff_s = min(w.backoff_s * 2, 30.0)
            if self._stopping:
                return
            try:
                await self._start(w)
                return
            except Exception:  # a fork refused now (EAGAIN, ENOMEM) may work later
                log.exception("worker_start_failed", worker=w.index, retry_in_s=w.backoff_s)

    async def _on_message(self, w: _Worker, link: Link, message: dict[str, Any]) -> None:
        """A message from ``w`` on ``link`` (answered on that link: after a restart,
        ``w.link`` is another process's)."""
        op = message.get("op")
        if op == "hello":
            async with self._lock:  # no change can slip between this state and membership
                link.answer(message, "init", history=[list(h) for h in self.history], drained=sorted(self.drained))
                if link is w.link:
                    w.member = True
        elif op == "request":
            action = message["action"]
            try:
                results = await self._carry_out(action)
            except _Refused as exc:
                link.answer(message, "result", error=str(exc))
            else:
                link.answer(message, "result", results=results)
        elif op == "ready" and link is w.link:
            w.ready.set()
            w.backoff_s = 1.0
            log.info("worker_ready", worker=w.index, config_version=message.get("config_version"))

    async def _carry_out(self, action: dict[str, Any]) -> list[dict[str, Any]]:
        kind = action.get("kind")
        if kind == "metrics":
            return await self._broadcast(action, timeout_s=METRICS_TIMEOUT_S)
        async with self._lock:
            if kind in ("apply", "rollback"):
                if kind == "rollback":
                    if len(self.history) < 2:
                        raise _Refused("no previous config to roll back to")
                    action = {"kind": "apply", "doc": self.history[-2][0], "source": "rollback"}
                results = await self._broadcast(action)
                if all("error" in r for r in results if r.get("error") != "not running"):
                    errors = [r["error"] for r in results if r.get("error") not in (None, "not running")]
                    if errors:  # applied nowhere: it is no part of the history
                        raise _Refused(errors[0])
                # The config already current (two workers asked for it at once) is not a
                # change: as alone, it is not history again, or a rollback would stay on it.
                if action["doc"] != self.history[-1][0]:
                    self.history.append((action["doc"], action["source"], time.time()))
                return results
            if kind == "drain":
                self.drained.add(action["channel"])
            elif kind == "enable":
                self.drained.discard(action["channel"])
            else:
                raise _Refused(f"unknown action {kind!r}")
            return await self._broadcast(action)

    async def _broadcast(self, action: dict[str, Any], timeout_s: float = 30.0) -> list[dict[str, Any]]:
        async def one(w: _Worker) -> dict[str, Any]:
            if not w.member or w.link is None:
                return {"worker": w.index, "error": "not running"}
            try:
                answer = await w.link.ask({"op": "do", "action": action}, timeout_s)
            except Exception as exc:
                return {"worker": w.index, "error": f"no answer: {type(exc).__name__}"}
            return dict(answer.get("result") or {"worker": w.index, "error": "empty answer"})

        return list(await asyncio.gather(*(one(w) for w in self._workers)))

    async def _reload_file(self) -> None:
        try:
            new = load_file(self._config_path, self._overrides)
        except ConfigError as exc:
            log.error("config_reload_refused", source=self._config_path, errors=exc.lines())
            return
        doc = new.config.model_dump(mode="json")
        if doc == self.history[-1][0]:
            log.info("config_reload_unchanged", config_version=new.version)
            return
        try:
            results = await self._carry_out({"kind": "apply", "doc": doc, "source": "file"})
        except _Refused as exc:
            log.error("config_reload_refused", source=self._config_path, errors=[str(exc)])
            return
        log.info("config_reloaded", config_version=new.version, workers=results)


class _Refused(Exception):
    """A request the supervisor turns down (answered to the asking worker)."""
