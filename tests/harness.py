"""A core under test: the real driver on a real journal (SQLite or PostgreSQL), with
in-process providers (channels.memory) and virtual time. Shared by the core's tests."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from channels.memory import SOFT_CODE, MemoryChannel
from orchestrator.clock import VirtualClock
from orchestrator.driver import Driver, RunSettings
from orchestrator.invariants import LedgerPayment, Report, check
from orchestrator.journal import Journal, PostgresJournal, SqliteJournal
from orchestrator.journal.pgserver import PgServer
from orchestrator.journal.postgres import _numbered
from orchestrator.model import Recharge, RechargeStatus, TrailEntry

SETTINGS = RunSettings(
    version="test",
    max_attempts=3,
    deadline_s=15.0,
    soft_decline_codes=frozenset({SOFT_CODE}),
    inquiry_attempts=3,
    inquiry_initial_backoff_s=0.1,
    inquiry_max_backoff_s=1.0,
    reconcile_interval_s=5.0,
)


def make_recharge(clock: VirtualClock, key: str, *, user: str = "u1", amount: int = 8500,
                  client: str = "front", settings: RunSettings = SETTINGS) -> tuple[Recharge, TrailEntry]:
    now = clock.now()
    fp = hashlib.sha256(f"{user}|{amount}".encode()).hexdigest()
    rid = "rc_" + hashlib.sha256(f"{client}|{key}|{now}".encode()).hexdigest()[:24]
    rec = Recharge(
        id=rid, client=client, idempotency_key=key, fingerprint=fp, user_id=user, amount_minor=amount,
        currency="CNY", country="CN", method="ewallet", instrument={"token": "tok_1"}, metadata=None,
        coins=amount // 10, bonus_coins=amount // 100, status=RechargeStatus.PROCESSING,
        created_at=now, updated_at=now, deadline_at=now + settings.deadline_s, config_version=settings.version,
    )
    return rec, TrailEntry(rid, now, "created", "processing")


class Store:
    """Where a test's journal lives. Every ``journal()`` opens the same data, as a
    restarted instance (or a second instance) would."""

    kind: str

    def journal(self, **kw: Any) -> Journal:
        raise NotImplementedError

    def peek(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read through a connection of its own (``?`` placeholders), from sync code: what
        another process would see right now."""
        raise NotImplementedError

    def dispose(self) -> None:
        pass


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def journal(self, **kw: Any) -> Journal:
        return SqliteJournal(self.path, **kw)

    def peek(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


class PgStore(Store):
    kind = "postgres"

    def __init__(self, server: PgServer, url: str) -> None:
        self.server = server
        self.url = url

    @classmethod
    def fresh(cls, server: PgServer) -> PgStore:
        return cls(server, server.create_schema())

    def journal(self, **kw: Any) -> Journal:
        kw.setdefault("pool_min", 1)
        kw.setdefault("pool_max", 4)
        return PostgresJournal(self.url, **kw)

    def peek(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.server.execute(_numbered(sql), *params, url=self.url)

    def dispose(self) -> None:
        if not getattr(self, "_disposed", False):
            self._disposed = True
            self.server.drop(self.url)


class Core:
    """``where``: a Store, or a path for a SQLite journal there."""

    def __init__(self, where: Store | Path, channels: Sequence[MemoryChannel], *, settings: RunSettings = SETTINGS,
                 clock: VirtualClock | None = None, journal: Journal | None = None) -> None:
        self.store = where if isinstance(where, Store) else SqliteStore(where)
        self.clock = clock or VirtualClock()
        self.channels = {c.name: c for c in channels}
        self.order = [c.name for c in channels]
        self.settings = settings
        self.journal: Journal = journal or self.store.journal()
        self.driver = Driver(self.journal, self.channels.get, lambda rec: self.order, self.clock,
                             lambda: self.settings)

    async def __aenter__(self) -> Core:
        await self.journal.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.driver.stop()
        await self.journal.close()

    async def submit(self, key: str, **kw: object) -> tuple[Recharge, bool]:
        rec, trail = make_recharge(self.clock, key, settings=self.settings, **kw)  # type: ignore[arg-type]
        return await self.driver.submit(rec, trail, self.settings)

    async def run(self, key: str, **kw: object) -> Recharge:
        """Submit and wait until the driver stops (terminal, or pending and parked)."""
        rec, _ = await self.submit(key, **kw)
        live = self.driver.live(rec.id)
        if live is not None:
            await live[0]
        fresh = await self.journal.get(rec.id)
        assert fresh is not None
        return fresh

    async def idle(self) -> None:
        """Wait until the driver has nothing running (refunds and follow-ups included)."""
        while tasks := [t for t, _ in self.driver.running()]:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def settle_all(self, rounds: int = 20) -> None:
        """Let time pass and the reconciler run until nothing is left to drive."""
        for _ in range(rounds):
            await self.driver.recover()
            await self.idle()
            self.clock.advance(self.settings.reconcile_interval_s)

    def ledger(self) -> list[LedgerPayment]:
        return [LedgerPayment(c.name, p.reference, p.status, refunded_minor=p.refunded_minor)
                for c in self.channels.values() for p in c.ledger.values()]

    async def check(self, settled: bool = True) -> Report:
        return await check(self.journal, self.ledger(), settled=settled)  # type: ignore[arg-type]
