"""The store's unfinished recharges, read every few seconds for the metrics: how many
wait in each status, and how far past its deadline the most overdue one is.

A recharge past its deadline should be voided or settled within a reconcile interval;
one that stays there holds a payer's money in doubt (a provider that cannot confirm a
void, a channel no longer configured, no instance driving it). The alert rule
``OrchestratorRechargesPastDeadline`` (deploy/prometheus/alerts.yml) pages on it."""

from __future__ import annotations

import asyncio

import structlog

from orchestrator.clock import Clock
from orchestrator.journal import Journal, OpenRecharges
from orchestrator.metrics import Metrics
from orchestrator.model import TERMINAL, RechargeStatus

__all__ = ["BacklogWatch"]

log = structlog.get_logger(__name__)

_OPEN_STATUSES = tuple(s.value for s in RechargeStatus if s not in TERMINAL)


class BacklogWatch:
    PERIOD_S = 5.0

    def __init__(self, journal: Journal, metrics: Metrics, clock: Clock) -> None:
        self._journal = journal
        self._metrics = metrics
        self._clock = clock

    async def run_forever(self) -> None:
        while True:
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: the gauges keep their last values
                log.warning("backlog_watch_failed", error=str(exc))
            await self._clock.sleep(self.PERIOD_S)

    async def once(self) -> OpenRecharges:
        now = self._clock.now()
        found = await self._journal.open_recharges(now)
        m = self._metrics
        for status in _OPEN_STATUSES:  # a status with none is 0, not a missing series
            m.recharges_open.labels(status).set(found.by_status.get(status, 0))
        m.recharges_past_deadline.set(found.past_deadline)
        earliest = found.earliest_deadline
        m.recharges_oldest_past_deadline.set(0.0 if earliest is None else max(0.0, now - earliest))
        return found
