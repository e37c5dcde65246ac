"""Snapshots are frozen and swapped whole; specs validate themselves."""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest

from routing import ChannelSpec, ChannelState, RoutingPolicy, Snapshot, SnapshotHolder, decide
from routing_builders import CNY, healthy, make_snapshot, make_spec, market


def test_snapshot_is_frozen():
    snap = market()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.version = "v2"  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.channels["x"] = make_spec("x")  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.states["alipay_direct"] = ChannelState()  # type: ignore[index]


def test_snapshot_copies_its_inputs():
    states = {"a": healthy()}
    snap = make_snapshot([make_spec("a")], states)
    states["a"] = healthy(breaker="open")
    assert decide(snap, CNY, random.Random(0)).candidates == ("a",)


def test_with_states_keeps_config_and_version():
    snap = market()
    updated = snap.with_states({"alipay_direct": healthy(breaker="open")})
    assert updated.version == snap.version and updated.channels == snap.channels
    assert decide(updated, CNY, random.Random(0)).filtered == {"alipay_direct": "breaker open"}
    assert decide(snap, CNY, random.Random(0)).filtered == {}


def test_with_config_replaces_channels_policy_and_version():
    snap = market()
    reloaded = snap.with_config({"a": make_spec("a")}, RoutingPolicy(strategy="priority"), "v2")
    decision = decide(reloaded, CNY, random.Random(0))
    assert (decision.candidates, decision.strategy, decision.snapshot_version) == (("a",), "priority", "v2")


def test_channel_key_must_match_spec_name():
    with pytest.raises(ValueError):
        Snapshot({"b": make_spec("a")}, {}, RoutingPolicy(), "v1")


@pytest.mark.parametrize("overrides", [
    {"kind": "carrier_pigeon"}, {"min_amount_minor": -1},
    {"min_amount_minor": 1000, "max_amount_minor": 999}, {"fee_percent": -0.1},
    {"weight": 0.0}, {"weight": float("inf")}, {"max_in_flight": 0}, {"timeout_ms": 0},
])
def test_spec_validation(overrides):
    with pytest.raises(ValueError):
        make_spec("a", **overrides)


def test_spec_refuses_a_bare_string_for_a_set():
    with pytest.raises(TypeError):
        ChannelSpec("a", "bank", "CNY", {"CN"}, {"ewallet"})  # type: ignore[arg-type]


def test_spec_fee():
    assert make_spec("a", fee_fixed_minor=100, fee_percent=0.5).fee_minor(10_000) == 150.0


def test_state_validation():
    with pytest.raises(ValueError):
        ChannelState(breaker="ajar")
    with pytest.raises(ValueError):
        ChannelState(failures=-1)


def test_holder_publishes_whole_snapshots():
    first, second = market(), make_snapshot([make_spec("a")], version="v2")
    holder = SnapshotHolder(first)
    assert holder.current is first and holder.generation == 0
    assert holder.publish(second) is first
    assert holder.current is second and holder.generation == 1


def test_holder_update_is_atomic_across_writers():
    holder = SnapshotHolder(make_snapshot([make_spec("a")], version="0"))

    def bump() -> None:
        for _ in range(200):
            holder.update(lambda s: dataclasses.replace(s, version=str(int(s.version) + 1)))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert holder.current.version == "800" and holder.generation == 800
