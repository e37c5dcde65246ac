"""Builders for routing tests: a small CNY market with one channel of each kind."""

from __future__ import annotations

from collections.abc import Mapping

from routing import ChannelSpec, ChannelState, RoutingPolicy, Snapshot, Transaction


def make_spec(name: str, **overrides: object) -> ChannelSpec:
    fields: dict[str, object] = {
        "name": name,
        "kind": "direct_api",
        "currencies": frozenset({"CNY"}),
        "countries": frozenset({"CN"}),
        "methods": frozenset({"ewallet"}),
        "min_amount_minor": 500,
        "max_amount_minor": 200_000,
        "fee_fixed_minor": 0,
        "fee_percent": 0.6,
    }
    fields.update(overrides)
    return ChannelSpec(**fields)  # type: ignore[arg-type]


def healthy(latency_ms: float = 28.0, successes: float = 5000.0, failures: float = 10.0,
            **overrides: object) -> ChannelState:
    fields: dict[str, object] = {
        "latency_ewma_ms": latency_ms,
        "latency_p99_ms": latency_ms * 2,
        "successes": successes,
        "failures": failures,
    }
    fields.update(overrides)
    return ChannelState(**fields)  # type: ignore[arg-type]


def make_snapshot(specs: list[ChannelSpec], states: Mapping[str, ChannelState] | None = None,
                  policy: RoutingPolicy | None = None, version: str = "v1") -> Snapshot:
    if states is None:
        states = {s.name: healthy() for s in specs}
    return Snapshot.build(specs, states, policy or RoutingPolicy(), version)


CNY = Transaction("CNY", "CN", "ewallet", 8500)


def market(policy: RoutingPolicy | None = None, **states: ChannelState) -> Snapshot:
    """A direct API, a digital-currency channel and a bank, all healthy, all for CNY;
    ``states`` replaces any of their states."""
    specs = [
        make_spec("alipay_direct"),
        make_spec("usdt_settle", kind="digital_currency", fee_percent=0.3, timeout_ms=5000),
        make_spec("unionpay_bank", kind="bank", fee_fixed_minor=100, fee_percent=0.1,
                  timeout_ms=10000),
    ]
    base = {
        "alipay_direct": healthy(28.0),
        "usdt_settle": healthy(1200.0),
        "unionpay_bank": healthy(4800.0),
    }
    base.update(states)
    return make_snapshot(specs, base, policy)
