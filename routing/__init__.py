"""Route selection: pure decisions over a frozen snapshot of config and channel state.

Build a ``Snapshot`` from ``ChannelSpec``s, ``ChannelState``s (from ``health``) and a
``RoutingPolicy``; call ``decide(snapshot, txn, rng)`` for the failover order, or
``explain`` for the same decision as JSON-ready data. No I/O, no clock, no global
random: everything a decision depends on is passed in.
"""

from routing._decide import decide, match_rule
from routing._explain import explain
from routing._holder import SnapshotHolder
from routing._model import (
    ALL_SEGMENTS,
    BREAKER_STATES,
    CHANNEL_KINDS,
    STRATEGIES,
    ChannelSpec,
    ChannelState,
    Decision,
    FleetShare,
    OBJECTIVES,
    RoutingPolicy,
    Rule,
    RuleMatch,
    Score,
    ScoringWeights,
    SegmentPolicy,
    Transaction,
    ValueWeights,
)
from routing._snapshot import Snapshot

__all__ = [
    "ALL_SEGMENTS",
    "BREAKER_STATES",
    "CHANNEL_KINDS",
    "STRATEGIES",
    "ChannelSpec",
    "ChannelState",
    "Decision",
    "FleetShare",
    "OBJECTIVES",
    "RoutingPolicy",
    "Rule",
    "RuleMatch",
    "Score",
    "ScoringWeights",
    "SegmentPolicy",
    "Snapshot",
    "SnapshotHolder",
    "Transaction",
    "ValueWeights",
    "decide",
    "explain",
    "match_rule",
]
