"""The composition root: one orchestrator process's object graph, built in one place.

Nothing connects to anything at import time. ``Service.start`` opens the journal,
builds the channels, resumes every unfinished recharge, and starts the reconciler;
``Service.stop`` undoes it in reverse order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from channels import Channel
from config import ChannelConfig, Config, LoadedConfig
from orchestrator.api.auth import Authenticator
from orchestrator.clock import Clock, SystemClock
from orchestrator.engine import Engine, RunSettings
from orchestrator.journal import Journal, open_journal
from orchestrator.metrics import Metrics
from orchestrator.model import Recharge

__all__ = ["ChannelFactory", "Router", "Service"]

log = structlog.get_logger("orchestrator.service")

ChannelFactory = Callable[[ChannelConfig], Channel]
Router = Callable[["Service", Recharge], Sequence[str]]


class Service:
    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        channel_factory: ChannelFactory,
        router: Router,
        journal: Journal | None = None,
        clock: Clock | None = None,
        reconcile: bool = True,
    ) -> None:
        self.loaded = loaded
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.journal = journal or open_journal(
            loaded.config.storage.url,
            max_batch=loaded.config.storage.group_commit_max_batch,
            on_commit=self.metrics.journal_commit,
        )
        self.auth = Authenticator(loaded.config.clients)
        self.channels: dict[str, Channel] = {}
        self._channel_factory = channel_factory
        self._router = router
        self._reconcile = reconcile
        self._reconciler: asyncio.Task[None] | None = None
        self.settings = RunSettings.from_config(loaded.config, loaded.version)
        self.engine = Engine(
            self.journal,
            self.channels.get,
            lambda rec: self._router(self, rec),
            self.clock,
            lambda: self.settings,
            observer=self.metrics,
            callback_url=self.callback_url,
        )

    @property
    def config(self) -> Config:
        return self.loaded.config

    def callback_url(self, channel: str) -> str:
        server = self.config.server
        base = server.public_url or f"http://{server.host}:{server.port}"
        return f"{base.rstrip('/')}/v1/webhooks/{channel}"

    async def start(self) -> None:
        await self.journal.open()
        for ch in self.config.channels:
            self.channels[ch.name] = self._channel_factory(ch)
        resumed = await self.engine.recover()
        log.info("service_started", config_version=self.loaded.version, resumed=resumed,
                 channels=len(self.channels))
        if self._reconcile:
            self._reconciler = asyncio.get_running_loop().create_task(self._reconcile_forever())

    async def stop(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
        await self.engine.stop()
        for ch in self.channels.values():
            await ch.close()
        self.channels.clear()
        await self.journal.close()

    async def _reconcile_forever(self) -> None:
        """Resume what no driver is working on: recharges left pending with an unknown
        outcome, or abandoned by a failed driver."""
        while True:
            await self.clock.sleep(self.settings.reconcile_interval_s)
            try:
                await self.engine.recover()
            except Exception:
                log.exception("reconcile_failed")
