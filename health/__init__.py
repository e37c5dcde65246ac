"""Channel health: passive statistics, circuit breakers, active probing.

``HealthRegistry`` holds a ``ChannelStats`` and a ``Breaker`` per channel; the
orchestrator admits and records attempts through it, the ``Prober`` feeds it pings,
and ``registry.states()`` becomes the ``routing.ChannelState``s of the next snapshot.
Every clock is injected, so all of it runs in virtual time in tests and the simulator.
"""

from health._approval import ApprovalBook, ApprovalConfig, lessons
from health._breaker import Breaker, BreakerConfig, Permit
from health._fleet import FleetChannel, FleetView, decode_blob, encode_blob
from health._prober import Prober, Sleep
from health._registry import AttemptTicket, HealthRegistry
from health._stats import ChannelStats, Monotonic, ProbeResult, StatsConfig, channel_worked
from health._window import LatencyWindow, SlidingCounts, TimeDecayedEwma

__all__ = [
    "ApprovalBook",
    "ApprovalConfig",
    "AttemptTicket",
    "Breaker",
    "BreakerConfig",
    "ChannelStats",
    "FleetChannel",
    "FleetView",
    "Monotonic",
    "HealthRegistry",
    "LatencyWindow",
    "Permit",
    "ProbeResult",
    "Prober",
    "SlidingCounts",
    "Sleep",
    "StatsConfig",
    "TimeDecayedEwma",
    "channel_worked",
    "decode_blob",
    "encode_blob",
    "lessons",
]
