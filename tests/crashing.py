"""A journal that dies at a chosen write, as a kill -9 would leave it.

At write number ``at`` the process "dies": in mode ``before`` that write never reaches
the disk; in mode ``after`` it does, but its caller never hears back. From then on every
call raises ``SimulatedCrash`` (a BaseException, so no ``except Exception`` in the code
under test can swallow it), and the test abandons the whole instance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from orchestrator.journal import Journal
from orchestrator.model import Recharge, Step, TrailEntry

T = TypeVar("T")


class SimulatedCrash(BaseException):
    pass


class CrashingJournal:
    def __init__(self, inner: Journal, at: int | None = None, mode: str = "before") -> None:
        self.inner = inner
        self.at = at
        self.mode = mode
        self.writes = 0
        self.dead = False

    async def _write(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self.dead:
            raise SimulatedCrash
        self.writes += 1
        if self.writes == self.at:
            self.dead = True
            if self.mode == "after":
                await fn()
            raise SimulatedCrash
        return await fn()

    async def _read(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self.dead:
            raise SimulatedCrash
        return await fn()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, recharge: Recharge, trail: TrailEntry, lease: tuple[str, float] | None = None,
                     first: Any = None, started: Any = None, notices: tuple[Any, ...] = ()) -> Recharge | None:
        return await self._write(lambda: self.inner.create(recharge, trail, lease=lease, first=first,
                                                           started=started, notices=notices))

    async def apply(self, step: Step) -> bool:
        return await self._write(lambda: self.inner.apply(step))

    async def get(self, recharge_id: str) -> Recharge | None:
        return await self._read(lambda: self.inner.get(recharge_id))

    async def trail(self, recharge_id: str) -> list[TrailEntry]:
        return await self._read(lambda: self.inner.trail(recharge_id))

    async def wallet(self, user_id: str, limit: int = 100) -> Any:
        return await self._read(lambda: self.inner.wallet(user_id, limit))

    async def user_totals(self, user_id: str, since: float) -> Any:
        return await self._read(lambda: self.inner.user_totals(user_id, since))

    async def nonterminal(self) -> list[Recharge]:
        return await self._read(self.inner.nonterminal)

    async def refunds_due(self) -> list[Recharge]:
        return await self._read(self.inner.refunds_due)

    async def event_seen(self, channel: str, event_id: str) -> bool:
        return await self._read(lambda: self.inner.event_seen(channel, event_id))

    async def attempt(self, reference: str) -> Any:
        return await self._read(lambda: self.inner.attempt(reference))

    async def record(self, entry: TrailEntry) -> None:
        await self._write(lambda: self.inner.record(entry))

    async def audit_rows(self) -> list[tuple[Any, ...]]:
        return await self.inner.audit_rows()

    async def ping(self) -> None:
        await self._read(self.inner.ping)

    async def claim(self, owner: str, lease_s: float, now: float, limit: int = 500) -> list[Recharge]:
        return await self._write(lambda: self.inner.claim(owner, lease_s, now, limit))

    async def lease(self, owner: str, recharge_id: str, lease_s: float, now: float) -> bool:
        return await self._write(lambda: self.inner.lease(owner, recharge_id, lease_s, now))

    async def release(self, owner: str, recharge_id: str) -> None:
        await self._write(lambda: self.inner.release(owner, recharge_id))

    async def renew(self, owner: str, recharge_ids: Sequence[str], lease_s: float, now: float) -> None:
        await self._write(lambda: self.inner.renew(owner, recharge_ids, lease_s, now))

    async def put_fleet_stats(self, instance: str, blob: bytes, at: float) -> None:
        await self._write(lambda: self.inner.put_fleet_stats(instance, blob, at))

    async def fleet_stats(self, since: float, limit: int = 256) -> list[tuple[str, float, bytes]]:
        return await self._read(lambda: self.inner.fleet_stats(since, limit))

    async def purge_fleet_stats(self, before: float) -> int:
        return await self._write(lambda: self.inner.purge_fleet_stats(before))

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self.inner.query(sql, params)  # type: ignore[attr-defined]

    async def query_small(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self.inner.query_small(sql, params)  # type: ignore[attr-defined]
