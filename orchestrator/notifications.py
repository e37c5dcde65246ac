"""Notifications to front services (SPEC 19): the notices a change makes, and the
dispatcher that delivers them from the journal's outbox.

A notice is written in the transaction of the change it reports (``Step.notices`` and
the refund and dispute writes), so no change is made without its notice and a crash
loses none. Delivery is at least once: a dispatcher claims a notice for a while, posts
it signed, and marks it delivered only after a 2xx; a claim that runs out (a crash, a
hung endpoint) lets any instance take it again. The store hands out only the oldest
pending notice of each recharge, so each recharge's notices arrive in order.

    claim (store: one claimer, oldest of its key) -> wait for a slot of its destination
      -> post, signed -> 2xx: delivered | else: again after backoff with jitter,
                                            or dead once retry_for_s has passed
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import orjson
import structlog

from config import ClientConfig, NotificationsConfig
from orchestrator.clock import Clock, iso
from orchestrator.journal import Journal, NoticeRow, OutboxStats
from orchestrator.metrics import Metrics
from orchestrator.model import TERMINAL, Notice, Recharge, RechargeStatus, Settlement, Step
from orchestrator.transitions import reduce
from orchestrator.views import recharge_view

__all__ = ["Dispatcher", "Notifier", "Sender", "backoff_s", "new_event_id"]

log = structlog.get_logger(__name__)

_GAUGE_PERIOD_S = 5.0  # how often the outbox's figures are read for the metrics
_DEFAULT_RETRY_FOR_S = 86_400.0  # a notice whose client lost its notify config: as long as the default


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


class Notifier:
    """Which client hears of what: the notices of one change, for the clients whose
    ``notify.events`` name it. Reads the running config's clients at each call."""

    def __init__(self, clients: Callable[[], Sequence[ClientConfig]],
                 new_id: Callable[[], str] = new_event_id) -> None:
        self._clients = clients
        self._new_id = new_id
        self._seen: Sequence[ClientConfig] | None = None
        self._events: dict[str, frozenset[str]] = {}
        # Told when notices were written (the dispatcher looks at once, not at its next poll).
        self.on_written: Callable[[], None] | None = None

    def written(self) -> None:
        if self.on_written is not None:
            self.on_written()

    def wants(self, client: str, event: str) -> bool:
        clients = self._clients()
        if clients is not self._seen:  # a reload: the subscriptions are read again
            self._events = {c.name: frozenset(c.notify.events) for c in clients if c.notify is not None}
            self._seen = clients
        events = self._events.get(client)
        return events is not None and event in events

    def notice(self, client: str, key: str, event: str, at: float, data: dict[str, Any]) -> Notice:
        nid = self._new_id()
        body = orjson.dumps({"id": nid, "type": event, "created_at": iso(at), "data": data}).decode()
        return Notice(nid, client, key, event, at, body)

    def of_step(self, rec: Recharge, step: Step) -> tuple[Notice, ...]:
        """The notice of a step that changes ``rec``'s status, or the settlement of its
        instant credit (``rec`` as it was before)."""
        if step.status is not None and step.status is not rec.status:
            event = f"recharge.{step.status.value}"
        elif step.settlement in (Settlement.SETTLED, Settlement.FAILED) and step.settlement is not rec.settlement:
            event = "recharge.settled" if step.settlement is Settlement.SETTLED else "recharge.settlement_failed"
        else:
            return ()
        if not self.wants(rec.client, event):
            return ()
        after = replace(rec, attempts=list(rec.attempts))
        reduce(after, step)
        return (self.notice(rec.client, rec.id, event, step.at, recharge_view(after)),)

    def of_created(self, rec: Recharge) -> tuple[Notice, ...]:
        """A recharge created in a status worth a notice (blocked by risk at once)."""
        if rec.status not in TERMINAL and rec.status is not RechargeStatus.PENDING:
            return ()
        event = f"recharge.{rec.status.value}"
        if not self.wants(rec.client, event):
            return ()
        return (self.notice(rec.client, rec.id, event, rec.created_at, recharge_view(rec)),)


class Sender(Protocol):
    """The wire (``channels.notify.NotifySender``): one signed POST, never raising; its
    answer has ``ok`` (a 2xx), ``status`` and ``error``."""

    async def send(self, url: str, secret: str, body: bytes, now: float) -> Any: ...

    async def close(self) -> None: ...


def backoff_s(attempts: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential with full jitter (AWS's advice): after the n-th failure, a uniform wait
    up to initial * 2^(n-1), capped, so many failed notices do not retry in step."""
    ceiling = min(max_s, initial_s * 2 ** min(max(attempts - 1, 0), 30))
    return max(initial_s / 10, rng.uniform(0, ceiling))


class Dispatcher:
    """Delivers the outbox, on every instance; the store makes each notice one claimer's
    at a time. ``settings`` and ``clients`` are the running config's, read per pass."""

    def __init__(self, journal: Journal, sender: Sender, clients: Callable[[], Sequence[ClientConfig]],
                 settings: Callable[[], NotificationsConfig], clock: Clock, metrics: Metrics, *,
                 owner: str | None = None, rng: random.Random | None = None, max_in_flight: int = 64,
                 clock_skew_s: float = 0.0) -> None:
        self._journal = journal
        self._sender = sender
        self._clients = clients
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._owner = owner or "dispatch-" + secrets.token_hex(6)
        self._rng = rng or random.Random()
        self._max_in_flight = max_in_flight
        self._clock_skew_s = clock_skew_s
        self._in_flight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._gauges_at = float("-inf")
        self._stats: OutboxStats | None = None

    def nudge(self) -> None:
        """Something was written to the outbox: look now, not at the next poll."""
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                claimed = await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: try again later, never die
                log.warning("notify_pass_failed", error=str(exc))
                claimed = 0
            if self._clock.monotonic() - self._gauges_at >= _GAUGE_PERIOD_S:
                self._gauges_at = self._clock.monotonic()
                try:
                    await self.gauges()
                except Exception as exc:
                    log.warning("notify_gauges_failed", error=str(exc))
            if claimed == 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._settings().poll_interval_s)
                except TimeoutError:
                    pass

    async def pass_once(self) -> int:
        """Claim what is due (as many as there is room for) and start delivering it."""
        room = self._max_in_flight - len(self._in_flight)
        if room <= 0:
            await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            return 1
        s = self._settings()
        lease_s = self._lease_s(s)
        now = self._clock.now()
        rows = await self._journal.claim_notices(self._owner, now, lease_s, room)
        for row in rows:
            task = asyncio.get_running_loop().create_task(self._deliver(row))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(rows)

    async def drain(self) -> None:
        """Wait for the deliveries under way (tests, shutdown)."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _lease_s(self, s: NotificationsConfig) -> float:
        # A send ends within the timeout; then room for the writes around it, and for the
        # instances' clocks disagreeing (the claim is timed by the claimer's clock).
        return s.timeout_ms / 1000 + 10 + 2 * self._clock_skew_s

    async def _deliver(self, row: NoticeRow) -> None:
        n = row.notice
        s = self._settings()
        client = next((c for c in self._clients() if c.name == n.client), None)
        if client is None or client.notify is None:
            # A reload dropped it, maybe for a moment: retried as a failed delivery would be.
            await self._retry(row, s, _DEFAULT_RETRY_FOR_S, "the client has no notify config")
            return
        # The sender caps each destination's concurrent posts and bounds a send, its wait
        # for a slot included, by the timeout: the claim outlasts it.
        done = await self._sender.send(client.notify.url, client.notify.secret, n.body.encode(), self._clock.now())
        now = self._clock.now()
        if done.ok:
            if await self._journal.notice_delivered(n.id, self._owner, now):
                self._metrics.notifications.labels("delivered").inc()
            return
        await self._retry(row, s, client.notify.retry_for_s, done.error or f"HTTP {done.status}")

    async def _retry(self, row: NoticeRow, s: NotificationsConfig, retry_for_s: float, error: str) -> None:
        now = self._clock.now()
        delay = backoff_s(row.attempts + 1, s.initial_backoff_s, s.max_backoff_s, self._rng)
        again = now + delay if now + delay <= row.window_start + retry_for_s else None
        await self._failed(row, again, error)

    async def _failed(self, row: NoticeRow, next_at: float | None, error: str) -> None:
        if await self._journal.notice_failed(row.notice.id, self._owner, next_at, error):
            self._metrics.notifications.labels("retried" if next_at is not None else "dead").inc()
            if next_at is None:
                log.warning("notification_dead", notice=row.notice.id, type=row.notice.type, key=row.notice.key,
                            client=row.notice.client, error=error, attempts=row.attempts + 1)

    def figures(self) -> dict[str, Any]:
        """The outbox as last read (every few seconds), for the status page; {} before."""
        stats = self._stats
        if stats is None:
            return {}
        oldest = stats.oldest_pending_at
        return {"pending": stats.pending, "dead": stats.dead,
                "oldest_pending_age_s": 0.0 if oldest is None else max(0.0, self._clock.now() - oldest)}

    async def gauges(self) -> None:
        """The outbox's figures for the metrics scrape."""
        stats = self._stats = await self._journal.outbox_stats()
        self._metrics.notifications_pending.set(stats.pending)
        self._metrics.notifications_dead.set(stats.dead)
        oldest = stats.oldest_pending_at
        self._metrics.notifications_oldest_age.set(0 if oldest is None else max(0.0, self._clock.now() - oldest))

