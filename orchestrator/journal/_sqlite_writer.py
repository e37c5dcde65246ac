"""The SQLite journal's one writer, in a process of its own, and the client that talks to it.

Why a process: a writer *thread* must retake the GIL, held by the busy event loop, after
every statement; a process never waits for it (docs/performance.md#writer-process).

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
import selectors
import signal
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

__all__ = ["ProcessWriter", "socket_address", "spawn", "wait_ready"]

_ROOT = Path(__file__).resolve().parents[2]
_READY_TIMEOUT_S = 60.0
_SEND_TIMEOUT_S = 10.0
_RECV_BYTES = 1 << 20


def _error_of(value: list[str]) -> BaseException:
    kind, message = value
    if kind == "integrity":
        # What a constraint refused (a duplicate reference): the caller's own bug,
        # raised as the driver would see it from sqlite3 itself.
        return sqlite3.IntegrityError(message)
    if kind == "bug":
        # A fault in an op, not in the store: retrying will not help, so not a JournalError.
        return RuntimeError(f"journal writer: {message}")
    return JournalError(message)


def socket_address(name: str) -> str:
    """A unix socket address as given on a command line: ``@name`` is Linux's abstract
    namespace (no file to leave behind when a process is killed), else a path."""
    return "\0" + name[1:] if name.startswith("@") else name


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


def spawn(path: str, max_batch: int, commit_interval_s: float = 0.0,
          listen: str | None = None) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a writer process on ``path``; return it and this side of its owner socket.

    The owner socket is the writer's lifeline: it exits when it closes. Ops sent on it
    are answered on it; with ``listen`` (a unix socket path) the writer also accepts
    other clients there (the worker processes of one orchestrator)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "orchestrator.journal._sqlite_writer", "--db", path, "--fd", str(theirs.fileno()),
            "--max-batch", str(max_batch), "--commit-interval-ms", str(commit_interval_s * 1000)]
    if listen is not None:
        args += ["--listen", listen]
    try:
        proc = subprocess.Popen(args, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
    finally:
        theirs.close()
    return proc, mine


def wait_ready(sock: socket.socket, timeout_s: float = _READY_TIMEOUT_S) -> int:
    """Block until a writer on the owner socket ``sock`` answers ready; its pid."""
    sock.settimeout(timeout_s)
    buf = bytearray()
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                raise JournalError("the journal writer exited before it was ready")
            buf += data
            for frame in _wire.frames(buf):
                doc = orjson.loads(frame)
                if doc[0] != "ready":
                    raise JournalError(f"cannot open journal: {doc[1]}")
                return int(doc[1])
    except TimeoutError:
        raise JournalError("the journal writer did not start in time") from None
    finally:
        sock.settimeout(None)


class ProcessWriter:
    """The client side: ``submit`` queues one write op and returns its future.

    It starts a writer process of its own, or with ``connect`` (a unix socket path)
    uses the one an orchestrator's supervisor runs for all its workers."""

    def __init__(self, path: str, max_batch: int, on_commit: Callable[[int, float], None] | None,
                 commit_interval_s: float = 0.0,
                 on_lost: Callable[[ProcessWriter], None] | None = None,
                 connect: str | None = None) -> None:
        self._path = path
        self._connect = connect
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
        self._ready = loop.create_future()
        if self._connect is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # Connected by hand: uvloop does not take abstract-namespace paths.
                sock.setblocking(False)
                await loop.sock_connect(sock, socket_address(self._connect))
                self._transport, _ = await loop.create_unix_connection(lambda: _Client(self), sock=sock)
            except OSError as exc:
                sock.close()
                raise JournalError(f"cannot reach the journal writer at {self._connect}: {exc}") from exc
        else:
            self._proc, mine = spawn(self._path, self._max_batch, self._commit_interval_s)
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
        """Everything queued in this loop turn goes in one write, in frames of at most
        ``_wire.FRAME_BUDGET`` bytes (a frame over the writer's limit would be refused)."""
        if not self._outbox or self._transport is None or self._transport.is_closing():
            return
        frames, part, size = [], [], 0
        for request in self._outbox:
            if part and size + len(request) > _wire.FRAME_BUDGET:
                frames.append(_wire.pack(b"[" + b",".join(part) + b"]"))
                part, size = [], 0
            part.append(request)
            size += len(request) + 1
        frames.append(_wire.pack(b"[" + b",".join(part) + b"]"))
        self._outbox.clear()
        self._transport.write(b"".join(frames))

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
    if isinstance(exc, sqlite3.IntegrityError):
        kind = "integrity"
    elif isinstance(exc, (sqlite3.Error, JournalError)):
        kind = "journal"
    else:
        kind = "bug"
    return [kind, str(exc) if isinstance(exc, JournalError) else f"{type(exc).__name__}: {exc}"]


WRITER_NICE = -5

# Enter batching (commits wait up to the commit interval) at BUSY_BATCH steps in a commit,
# leave below CALM_BATCH, so a loaded writer does not flap (docs/performance.md#batching).
BUSY_BATCH = 6
CALM_BATCH = 4


def _raise_priority() -> None:
    """Every durable step of every worker waits on this one process: when the machine is
    short of CPU it must not be the one left waiting (a starved writer makes batches
    and commits longer, which makes the backlog grow). Best effort: lowering a nice
    value needs CAP_SYS_NICE; without it the writer runs at the default priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, WRITER_NICE)
    except (PermissionError, OSError):
        pass


class _Conn:
    __slots__ = ("sock", "buf", "owner")

    def __init__(self, sock: socket.socket, owner: bool) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.owner = owner


def serve(path: str, fd: int, max_batch: int, commit_interval_s: float = 0.0, listen: str | None = None) -> int:
    """The writer's loop: read every request waiting on every connection, run them as
    one transaction, answer each connection its own. Exits when the owner socket closes."""
    from orchestrator.journal._sqlite_ops import WRITER_AUTOCHECKPOINT_PAGES, Checkpointer, connect, migrate, run_batch

    owner = socket.socket(fileno=fd)
    _raise_priority()
    try:
        conn = connect(path)
        migrate(conn)
        conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
    except Exception as exc:
        owner.sendall(_wire.pack(orjson.dumps(["failed", f"{type(exc).__name__}: {exc}"])))
        return 1
    # Ctrl-C and a terminal hangup reach the whole process group; the writer goes only
    # when its owner does (the lifeline), after the owner has drained what it can.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ready = _wire.pack(orjson.dumps(["ready", os.getpid()]))
    checkpointer = Checkpointer(path, on_error=lambda e: _log("journal_checkpoint_failed", error=e))
    checkpointer.start()
    sel = selectors.DefaultSelector()
    conns: dict[int, _Conn] = {owner.fileno(): _Conn(owner, True)}
    sel.register(owner, selectors.EVENT_READ)
    listener = None
    if listen is not None:
        address = socket_address(listen)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not address.startswith("\0"):
            if os.path.exists(address):
                os.unlink(address)
            listener.bind(address)
            os.chmod(address, 0o600)
        else:
            listener.bind(address)
        listener.listen(64)
        sel.register(listener, selectors.EVENT_READ)
    owner.sendall(ready)
    queued: deque[tuple[_Conn, int, str, Any]] = deque()
    last_start, busy = 0.0, False
    # One receive buffer for the writer's life: a fresh ``recv`` buffer per read fragments
    # the heap (docs/performance.md#writer-receive-buffer).
    inbox = bytearray(_RECV_BYTES)
    inbox_view = memoryview(inbox)

    def drop(c: _Conn) -> None:
        conns.pop(c.sock.fileno(), None)
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    try:
        while owner.fileno() in conns:
            # Idle: block until something arrives; busy: take only what is there.
            for key, _ in sel.select(None if not queued else 0):
                if key.fileobj is listener:
                    client, _ = listener.accept()
                    # A client that stops reading must not stall every other one's commits.
                    client.settimeout(_SEND_TIMEOUT_S)
                    conns[client.fileno()] = _Conn(client, False)
                    sel.register(client, selectors.EVENT_READ)
                    try:
                        client.sendall(ready)
                    except OSError:
                        drop(conns[client.fileno()])
                    continue
                c = conns.get(key.fd)
                if c is None:
                    continue
                try:
                    got = c.sock.recv_into(inbox)
                except OSError:
                    got = 0
                if not got:
                    # A client gone: its answers have nobody to go to (as after a crash).
                    queued = deque(q for q in queued if q[0] is not c)
                    drop(c)
                    continue
                c.buf += inbox_view[:got]
                try:
                    for frame in _wire.frames(c.buf):
                        queued.extend((c, rid, op, args) for rid, op, args in orjson.loads(frame))
                except (ValueError, TypeError) as exc:
                    # Not our protocol: that client goes; everyone else's work goes on.
                    _log("journal_client_dropped", reason=f"unreadable frame: {exc!r}"[:200])
                    queued = deque(q for q in queued if q[0] is not c)
                    drop(c)
            if not queued:
                continue
            # Under load, commits start at most every ``commit_interval_s``, so each fsync serves
            # more steps; lightly loaded, a wait only adds latency (docs/performance.md#batching).
            if commit_interval_s and busy and len(queued) < max_batch:
                wait = last_start + commit_interval_s - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                    continue  # read what came meanwhile first
            batch: list[tuple[str, tuple[Any, ...]]] = []
            meta: list[tuple[_Conn, int, str]] = []
            answers: dict[_Conn, list[list[Any]]] = {}
            while queued and len(batch) < max_batch:
                c, rid, op, args = queued.popleft()
                try:
                    batch.append((op, _wire.decode_args(op, args)))
                    meta.append((c, rid, op))
                except Exception as exc:  # a request that cannot be read fails alone
                    answers.setdefault(c, []).append([rid, False, ["journal", f"unreadable request: {exc!r}"]])
            started = last_start = time.perf_counter()
            busy = len(batch) >= (CALM_BATCH if busy else BUSY_BATCH)
            results = run_batch(conn, batch) if batch else []
            seconds = time.perf_counter() - started
            checkpointer.nudge()
            for (c, rid, op), (ok, value) in zip(meta, results):
                answers.setdefault(c, []).append(
                    [rid, True, _wire.encode_value(op, value)] if ok else [rid, False, _error_value(value)])
            for c, items in answers.items():
                try:
                    c.sock.sendall(_wire.pack(_wire.encode([len(batch), seconds, items])))
                except OSError:
                    drop(c)
    finally:
        checkpointer.stop()
        checkpointer.join()
        conn.close()
        for c in list(conns.values()):
            c.sock.close()
        if listener is not None:
            listener.close()
            if not socket_address(listen or "").startswith("\0"):
                try:
                    os.unlink(listen)  # type: ignore[arg-type]
                except OSError:
                    pass
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="orchestrator.journal._sqlite_writer")
    p.add_argument("--db", required=True)
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=512)
    p.add_argument("--commit-interval-ms", type=float, default=0.0)
    p.add_argument("--listen", help="also serve clients on this unix socket path")
    args = p.parse_args(argv)
    return serve(args.db, args.fd, args.max_batch, args.commit_interval_ms / 1000, args.listen)


if __name__ == "__main__":
    sys.exit(main())
