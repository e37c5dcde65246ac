"""The SQLite journal's one writer, in a process of its own, and the client that talks to it.

Why a process: SQLite releases the GIL around every statement, and a writer *thread*
must take it back after each one. Under load the event loop holds the GIL, so each
reacquisition waited for it (up to the 5 ms switch interval): a commit of three steps
took 2.6 ms on average at 600 recharges/s, ten times its fsync. In its own process the
writer never waits for the event loop, runs on the other core, and many recharges'
steps still share each transaction and fsync (group commit).

    event loop (client)                         writer process
    submit(op, args) -> future                  blocks on the socket
      queued; one frame per loop turn  ----->   reads every frame waiting, runs them as
                                                one transaction (``run_batch``), COMMIT
      futures resolved, on_commit(n, s) <----   one answer frame per batch

The writer runs ``python -m orchestrator.journal._sqlite_writer`` on one end of a
socketpair; it exits when the socket closes (its owner exited or was killed), so a
kill -9 of the orchestrator never leaves a writer behind. Steps already sent may still
commit after such a kill, which is the same as their commit landing just before it:
every step is journaled before the outside call it guards, never after.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from orchestrator.journal import _wire
from orchestrator.journal._protocol import JournalError

__all__ = ["ProcessWriter"]

_ROOT = Path(__file__).resolve().parents[2]
_READY_TIMEOUT_S = 60.0


def _error_of(value: list[str]) -> BaseException:
    kind, message = value
    if kind == "integrity":
        # What a constraint refused (a duplicate reference): the caller's own bug,
        # raised as the driver would see it from sqlite3 itself.
        return sqlite3.IntegrityError(message)
    return JournalError(message)


class _Client(asyncio.Protocol):
    def __init__(self, owner: ProcessWriter) -> None:
        self._owner = owner
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        for frame in _wire.frames(self._buf):
            self._owner._answer(orjson.loads(frame))

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(exc)


class ProcessWriter:
    """The client side: ``submit`` queues one write op and returns its future."""

    def __init__(self, path: str, max_batch: int, on_commit: Callable[[int, float], None] | None,
                 commit_interval_s: float = 0.0,
                 on_lost: Callable[[ProcessWriter], None] | None = None) -> None:
        self._path = path
        self._on_lost = on_lost
        self._max_batch = max_batch
        self._commit_interval_s = commit_interval_s
        self._on_commit = on_commit
        self._proc: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._outbox: list[bytes] = []
        self._ready: asyncio.Future[Any] | None = None
        self._failure: str | None = None
        self._closing = False

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.journal._sqlite_writer", "--db", self._path,
                 "--fd", str(theirs.fileno()), "--max-batch", str(self._max_batch),
                 "--commit-interval-ms", str(self._commit_interval_s * 1000)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
            )
        finally:
            theirs.close()
        self._ready = loop.create_future()
        self._transport, _ = await loop.create_unix_connection(lambda: _Client(self), sock=mine)
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), _READY_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise

    def submit(self, op: str, args: tuple[Any, ...] = ()) -> asyncio.Future[Any]:
        if self._failure is not None or self._transport is None or self._closing:
            raise JournalError(self._failure or "journal is closed")
        loop = self._loop
        assert loop is not None
        rid = next(self._ids)
        request = _wire.encode_request(rid, op, args)  # a value that cannot be sent fails its caller alone
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[rid] = (op, fut)
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append(request)
        return fut

    def _flush(self) -> None:
        """Everything queued in this loop turn goes in one frame (one write)."""
        if not self._outbox or self._transport is None or self._transport.is_closing():
            return
        payload = b"[" + b",".join(self._outbox) + b"]"
        self._outbox.clear()
        self._transport.write(_wire.pack(payload))

    def _answer(self, doc: Any) -> None:
        if self._ready is not None and not self._ready.done():
            if doc[0] == "ready":
                self._ready.set_result(doc[1])
            else:
                self._ready.set_exception(JournalError(f"cannot open journal {self._path}: {doc[1]}"))
            return
        batch, seconds, results = doc
        if self._on_commit is not None:
            self._on_commit(batch, seconds)
        for rid, ok, value in results:
            op, fut = self._pending.pop(rid)
            if fut.done():  # its caller was cancelled; the write went ahead
                continue
            if ok:
                fut.set_result(_wire.decode_value(op, value))
            else:
                fut.set_exception(_error_of(value))

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._closing:
            # The writer died (killed, out of memory): what it was committing may or may
            # not be durable, as after a crash. Callers hear so; the reconciler resumes.
            self._failure = f"journal writer exited ({exc or 'connection closed'})"
        err = JournalError(self._failure or "journal is closed")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)
        for _op, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        if not self._closing and self._on_lost is not None:
            self._on_lost(self)

    async def stop(self) -> None:
        """Wait for every answer still due, then let the writer exit and reap it."""
        self._flush()
        waiting = [fut for _, fut in self._pending.values() if not fut.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=30)
        self._closing = True
        if self._transport is not None:
            self._transport.close()
        proc, self._proc = self._proc, None
        if proc is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                await loop.run_in_executor(None, proc.wait)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


# -- the writer process -------------------------------------------------------------------


def _log(event: str, **fields: Any) -> None:
    sys.stderr.buffer.write(orjson.dumps({"event": event, "logger": "journal-writer", **fields}) + b"\n")
    sys.stderr.flush()


def _error_value(exc: BaseException) -> list[str]:
    kind = "integrity" if isinstance(exc, sqlite3.IntegrityError) else "journal"
    return [kind, str(exc) if isinstance(exc, JournalError) else f"{type(exc).__name__}: {exc}"]


def serve(path: str, fd: int, max_batch: int, commit_interval_s: float = 0.0) -> int:
    from orchestrator.journal._sqlite_ops import WRITER_AUTOCHECKPOINT_PAGES, Checkpointer, connect, migrate, run_batch

    sock = socket.socket(fileno=fd)
    try:
        conn = connect(path)
        migrate(conn)
        conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
    except Exception as exc:
        sock.sendall(_wire.pack(orjson.dumps(["failed", f"{type(exc).__name__}: {exc}"])))
        return 1
    checkpointer = Checkpointer(path, on_error=lambda e: _log("journal_checkpoint_failed", error=e))
    checkpointer.start()
    sock.sendall(_wire.pack(orjson.dumps(["ready", os.getpid()])))
    buf = bytearray()
    queued: deque[list[Any]] = deque()
    open_ = True
    last_start = 0.0
    try:
        while True:
            if not queued:
                data = sock.recv(1 << 20)  # idle: block until the next request
                if not data:
                    break
                buf += data
            # Under load, let commits start at most every ``commit_interval_s``: the steps
            # arriving meanwhile join the batch, so each fsync and each rewrite of the
            # shared index pages serves more of them. Idle, a step commits at once.
            if commit_interval_s and len(queued) < max_batch:
                wait = last_start + commit_interval_s - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            # Take whatever else has arrived: it joins this batch.
            while open_:
                try:
                    data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if not data:
                    open_ = False
                    break
                buf += data
            if not open_:
                break  # the owner is gone: nobody waits for these answers, as after a crash
            for frame in _wire.frames(buf):
                queued.extend(orjson.loads(frame))
            if not queued:
                continue
            batch_ids: list[int] = []
            batch: list[tuple[str, tuple[Any, ...]]] = []
            answers: list[list[Any]] = []
            while queued and len(batch) < max_batch:
                rid, op, args = queued.popleft()
                try:
                    batch.append((op, _wire.decode_args(op, args)))
                    batch_ids.append(rid)
                except Exception as exc:  # a request that cannot be read fails alone
                    answers.append([rid, False, ["journal", f"unreadable request: {exc!r}"]])
            started = last_start = time.perf_counter()
            results = run_batch(conn, batch) if batch else []
            seconds = time.perf_counter() - started
            checkpointer.nudge()
            for rid, (op, _), (ok, value) in zip(batch_ids, batch, results):
                answers.append([rid, True, _wire.encode_value(op, value)] if ok else [rid, False, _error_value(value)])
            try:
                sock.sendall(_wire.pack(_wire.encode([len(batch), seconds, answers])))
            except OSError:
                break
    finally:
        checkpointer.stop()
        checkpointer.join()
        conn.close()
        sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="orchestrator.journal._sqlite_writer")
    p.add_argument("--db", required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--commit-interval-ms", type=float, default=0.0)
    args = p.parse_args(argv)
    return serve(args.db, args.fd, args.max_batch, args.commit_interval_ms / 1000)


if __name__ == "__main__":
    sys.exit(main())
