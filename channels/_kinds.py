"""What differs between channel kinds: defaults, never code paths. The config fills a
channel's ``timeout_ms`` from here when it names none, and the HTTP adapter its poll
schedule; a kind's default timeout is well above its normal latency (direct API ~28 ms,
digital-currency settlement ~1.2 s, local bank ~4.8 s), so a healthy provider is never
given up on while it is still working."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KIND_DEFAULTS", "KindDefaults"]


@dataclass(frozen=True, slots=True)
class KindDefaults:
    """``poll_schedule_s`` is the gap before each inquiry when the outcome is pending or
    unknown."""

    timeout_ms: int
    connect_timeout_ms: int
    expects_pending: bool
    poll_schedule_s: tuple[float, ...]


KIND_DEFAULTS: dict[str, KindDefaults] = {
    "direct_api": KindDefaults(2_000, 500, expects_pending=False, poll_schedule_s=(0.2, 0.5, 1.0, 2.0, 4.0)),
    "digital_currency": KindDefaults(4_000, 1_000, expects_pending=True, poll_schedule_s=(1.0, 2.0, 4.0, 8.0)),
    "bank": KindDefaults(10_000, 1_000, expects_pending=True, poll_schedule_s=(2.0, 4.0, 8.0, 15.0)),
}
