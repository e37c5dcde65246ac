"""Several worker processes behind one port: what a worker knows of the others.

With ``server.workers: N`` (N > 1), ``orchestrator serve`` runs a supervisor
(``orchestrator.supervisor``) and N worker processes. Each worker is a whole
orchestrator (API, driver, health, routing) on its own listening socket (SO_REUSEPORT:
the kernel spreads connections over them), sharing the journal (on SQLite, through the
one writer process the supervisor runs) and the control state, which the supervisor
holds:

- the config and its history: every change (``PUT /v1/admin/config``, rollback,
  SIGHUP) goes to the supervisor, which applies it to every worker in the same order,
  so all of them run the same config, with the same history, and a worker that
  restarts is brought up to date before it takes traffic;
- drains: ``POST /v1/admin/channels/{name}/drain|enable`` applies to every worker;
- metrics: ``GET /metrics`` on any worker gathers every worker's samples, each
  labelled ``worker``.

What stays per worker (as with several instances on one PostgreSQL): health
statistics and breakers (each worker measures the traffic it sends and probes every
channel), the routing snapshot, rate-limit buckets (each enforces 1/N of the limit),
risk velocity windows, and the recharges it drives (leased in the journal; a worker
that dies is restarted and resumes its own at once, and the others take over any
lease left to expire).

The link is JSON lines over a socketpair, one per worker::

    worker -> supervisor   {"id": n, "op": "hello", "worker": i}
    supervisor -> worker   {"id": n, "op": "init", "history": [[doc, source, applied_at], ...], "drained": [...]}
    worker -> supervisor   {"id": n, "op": "request", "action": {...}}   answered by
    supervisor -> worker   {"id": n, "op": "result", "results": [{"worker": i, ...}, ...]} | {"error": msg}
    supervisor -> worker   {"id": m, "op": "do", "action": {...}}        answered by
    worker -> supervisor   {"id": m, "op": "done", "result": {...}}

Actions: ``{"kind": "apply", "doc", "source"}``, ``{"kind": "rollback"}``,
``{"kind": "drain"|"enable", "channel"}``, ``{"kind": "metrics"}``.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog

from orchestrator.errors import ClusterError, Refused

__all__ = ["ClusterError", "Link", "Refused", "WorkerLink", "merge_metrics"]

log = structlog.get_logger("orchestrator.cluster")

REQUEST_TIMEOUT_S = 60.0


class Link:
    """One end of a control link: JSON lines, requests matched to answers by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_message: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self._reader = reader
        self._writer = writer
        self._on_message = on_message
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    @classmethod
    async def over(cls, sock: socket.socket, on_message: Callable[[dict[str, Any]], Awaitable[None]]) -> Link:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=64 << 20)
        return cls(reader, writer, on_message)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read_forever())

    def send(self, message: dict[str, Any]) -> None:
        if not self._writer.is_closing():
            self._writer.write(orjson.dumps(message) + b"\n")

    async def ask(self, message: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        if self.closed.is_set():  # nothing would ever answer it
            raise ClusterError("the control link closed")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self.send({**message, "id": rid})
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise ClusterError(f"no answer on the control link in {timeout_s:.0f} s") from None
        finally:
            self._waiting.pop(rid, None)

    def answer(self, request: dict[str, Any], op: str, **fields: Any) -> None:
        self.send({"id": request["id"], "op": op, **fields})

    async def _read_forever(self) -> None:
        try:
            while line := await self._reader.readline():
                message = orjson.loads(line)
                fut = self._waiting.get(message.get("id")) if message.get("op") in ("result", "done", "init") else None
                if fut is not None and not fut.done():
                    fut.set_result(message)
                else:
                    task = asyncio.get_running_loop().create_task(self._handle(message))
                    self._handling.add(task)
                    task.add_done_callback(self._handling.discard)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:  # ValueError: a line past the limit
            log.warning("control_link_broken", error=repr(exc))
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ClusterError("the control link closed"))

    async def _handle(self, message: dict[str, Any]) -> None:
        try:
            await self._on_message(message)
        except Exception:
            log.exception("control_message_failed", op=message.get("op"))

    async def close(self) -> None:
        self._writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class WorkerLink:
    """A worker's side: ``request`` asks the supervisor to act on every worker;
    ``perform`` is how this worker carries out what it is asked."""

    def __init__(self, index: int, workers: int, sock: socket.socket,
                 journal_socket: str | None = None) -> None:
        self.index = index
        self.workers = workers
        self.journal_socket = journal_socket
        self._sock = sock
        self._link: Link | None = None
        self.perform: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        # Set once the worker has replayed its init: actions wait for it, so they apply
        # after the history they follow, never between its entries.
        self.ready = asyncio.Event()

    async def connect(self) -> dict[str, Any]:
        """Say hello; the supervisor answers the control state to start from."""
        self._link = await Link.over(self._sock, self._on_message)
        self._link.start()
        return await self._link.ask({"op": "hello", "worker": self.index})

    @property
    def closed(self) -> asyncio.Event:
        assert self._link is not None
        return self._link.closed

    async def request(self, action: dict[str, Any]) -> list[dict[str, Any]]:
        """Have every worker carry out ``action``; their results, in worker order."""
        assert self._link is not None
        answer = await self._link.ask({"op": "request", "action": action})
        if "error" in answer:
            raise Refused(answer["error"])
        return list(answer["results"])

    def mine(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return next((r for r in results if r.get("worker") == self.index), {})

    def notify(self, message: dict[str, Any]) -> None:
        assert self._link is not None
        self._link.send(message)

    async def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("op") != "do" or self._link is None:
            return
        await self.ready.wait()
        assert self.perform is not None
        try:
            result = await self.perform(message["action"])
        except Exception as exc:
            log.exception("control_action_failed", action=message["action"].get("kind"))
            result = {"error": f"{type(exc).__name__}: {exc}"}
        self._link.answer(message, "done", result={"worker": self.index, **result})

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()


def merge_metrics(texts: list[tuple[int, str]]) -> bytes:
    """Several workers' Prometheus exposition texts as one, every sample labelled with
    its ``worker`` (one family per metric name, as the format requires)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    families: dict[str, Metric] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            into = families.get(family.name)
            if into is None:
                into = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                into.samples.append(Sample(s.name, {**s.labels, "worker": str(worker)}, s.value, s.timestamp,
                                           s.exemplar))

    class _Merged:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)
