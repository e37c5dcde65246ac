"""Production wiring: the Service with HTTP channels (protocol v1) for every configured
channel. Tests build ``Service`` directly with in-process channels instead."""

from __future__ import annotations

from channels.http import HttpChannel
from config import ChannelConfig, LoadedConfig
from orchestrator.cluster import WorkerLink
from orchestrator.service import Service

__all__ = ["build_service", "http_channel"]


def http_channel(cfg: ChannelConfig) -> HttpChannel:
    return HttpChannel(cfg.name, cfg.kind, cfg.base_url, api_key=cfg.api_key, timeout_ms=cfg.timeout_ms,
                       max_in_flight=cfg.max_in_flight, ca_file=cfg.ca_file)


def build_service(loaded: LoadedConfig, *, config_path: str | None = None, cluster: WorkerLink | None = None) -> Service:
    return Service(loaded, channel_factory=http_channel, config_path=config_path, cluster=cluster)
