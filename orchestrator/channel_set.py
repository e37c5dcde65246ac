"""The channels one orchestrator process talks to: the live ones of its running config,
and the retired ones (removed or replaced by a reload) whose attempts may still hold
money.

A retired channel takes no new attempt, but inquiries, voids, refunds and webhooks for
its attempts keep working. The journal keeps every channel's config for good (the
config's at start, a reload's before its swap), so any instance, after any restart,
builds one its config does not name when an attempt or a webhook needs it: also one
another instance still ran, or one removed from the file while no instance ran. Once
idle here, its object is closed; the journal's row stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from channels import Channel
from config import ChannelConfig
from orchestrator.journal import Journal

__all__ = ["ChannelFactory", "ChannelSet", "Retired", "identity"]

log = structlog.get_logger("orchestrator.channels")

ChannelFactory = Callable[[ChannelConfig], Channel]


def identity(ch: ChannelConfig) -> tuple[object, ...]:
    """What, when changed, needs a new channel object (new session, new timeouts, a
    new CA pin)."""
    return (ch.kind, ch.base_url, ch.api_key, ch.timeout_ms, ch.max_in_flight, ch.ca_file)


@dataclass(slots=True)
class Retired:
    channel: Channel
    config: ChannelConfig
    since: float


class ChannelSet:
    def __init__(self, factory: ChannelFactory, journal: Journal) -> None:
        self._factory = factory
        self._journal = journal
        self.live: dict[str, Channel] = {}
        self._configs: dict[str, ChannelConfig] = {}
        # Removed from the config: kept (and in the journal) while their attempts may
        # hold money.
        self.retired: dict[str, Retired] = {}
        # Replaced by a new object of the same name: closed once calls in flight on
        # them have had time to end.
        self._draining: list[tuple[Channel, float]] = []

    async def open(self, configs: Iterable[ChannelConfig], now: float) -> None:
        """Build the live channels; mark retired those the journal kept as live that the
        config no longer names (removed from the file while no instance ran). The
        journal learns the config's channels before any attempt."""
        configs = list(configs)
        for cfg in configs:
            self.live[cfg.name] = self._factory(cfg)
            self._configs[cfg.name] = cfg
        for row in await self._journal.kept_channels():
            if row.name not in self.live and row.retired_at is None:
                await self._journal.keep_channel(row.name, row.config, now)
        for cfg in configs:
            await self._journal.keep_channel(cfg.name, cfg.model_dump(mode="json"), None)

    async def find(self, name: str, now: float) -> Channel | None:
        """A live or retired channel, built from the journal's kept config if this
        instance has none: what settles an attempt already made."""
        found = self.any(name)
        if found is None and await self._adopt(name, now):
            found = self.any(name)
        return found

    async def find_config(self, name: str, now: float) -> ChannelConfig | None:
        """A channel's config, live or kept (webhooks for retired ones still land)."""
        cfg = self.config(name)
        if cfg is None and await self._adopt(name, now):
            cfg = self.config(name)
        return cfg

    async def _adopt(self, name: str, now: float) -> bool:
        row = next((r for r in await self._journal.kept_channels() if r.name == name), None)
        if row is None or name in self.live or name in self.retired:
            return row is not None
        try:
            cfg = ChannelConfig.model_validate(row.config)
            self.retired[name] = Retired(self._factory(cfg), cfg, now)
        except (ValueError, OSError) as exc:
            log.error("retired_channel_unusable", channel=name, error=str(exc))
            return False
        log.info("retired_channel_adopted", channel=name)
        return True

    def get(self, name: str) -> Channel | None:
        """A live channel: new attempts go only there."""
        return self.live.get(name)

    def any(self, name: str) -> Channel | None:
        """A live or retired channel: what settles an attempt already made."""
        live = self.live.get(name)
        if live is not None:
            return live
        retired = self.retired.get(name)
        return None if retired is None else retired.channel

    def config(self, name: str) -> ChannelConfig | None:
        cfg = self._configs.get(name)
        if cfg is None and name in self.retired:
            cfg = self.retired[name].config
        return cfg

    def prepare(self, configs: Iterable[ChannelConfig]) -> dict[str, Channel]:
        """The channel objects a new config needs made (new, or changed in what makes
        one). ValueError or OSError if one cannot be made (a CA file that does not load)."""
        fresh: dict[str, Channel] = {}
        for cfg in configs:
            prev = self._configs.get(cfg.name)
            if prev is None or identity(prev) != identity(cfg) or cfg.name not in self.live:
                fresh[cfg.name] = self._factory(cfg)
        return fresh

    async def record(self, configs: Iterable[ChannelConfig], now: float) -> None:
        """Before the swap to ``configs``: the journal learns its channels, and which it
        removes, so a crash right after the swap still finds them."""
        configs = list(configs)
        names = {c.name for c in configs}
        for name, cfg in self._configs.items():
            if name not in names:
                await self._journal.keep_channel(name, cfg.model_dump(mode="json"), now)
        for cfg in configs:
            prev = self._configs.get(cfg.name)
            if prev is None or prev != cfg or cfg.name in self.retired:
                await self._journal.keep_channel(cfg.name, cfg.model_dump(mode="json"), None)

    def swap(self, configs: Iterable[ChannelConfig], fresh: dict[str, Channel], now: float) -> None:
        """Make ``configs`` the live set, without awaiting anything."""
        configs = list(configs)
        names = {c.name for c in configs}
        for name in list(self.live):
            if name not in names:
                self.retired[name] = Retired(self.live.pop(name), self._configs[name], now)
            elif name in fresh:
                self._draining.append((self.live[name], now))
        for name, channel in fresh.items():
            self.live[name] = channel
            old = self.retired.pop(name, None)
            if old is not None:  # live again: the live object answers for its attempts
                self._draining.append((old.channel, now))
        self._configs = {c.name: c for c in configs}

    async def close_idle(self, now: float, grace_s: float) -> None:
        """Close replaced channel objects ``grace_s`` after the swap, and retired channels
        once no recharge with work left has an attempt on them (and ``grace_s`` passed):
        built again by ``find`` if one ever needs them."""
        keep = []
        for channel, since in self._draining:
            if now - since > grace_s:
                await channel.close()
            else:
                keep.append((channel, since))
        self._draining = keep
        for name, r in list(self.retired.items()):
            if now - r.since <= grace_s or await self._journal.channel_busy(name):
                continue
            if self.retired.get(name) is r:
                del self.retired[name]
                await r.channel.close()
                log.info("retired_channel_closed", channel=name)

    async def close(self) -> None:
        for channel in [*self.live.values(), *(r.channel for r in self.retired.values()),
                        *(c for c, _ in self._draining)]:
            await channel.close()
        self.live.clear()
        self.retired.clear()
        self._draining.clear()
