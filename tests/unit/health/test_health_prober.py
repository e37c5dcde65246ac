"""The prober in virtual time: schedule, jitter, timeouts, failures, stop and reload."""

from __future__ import annotations

import asyncio
import random

import pytest

from channels._protocol import AttemptOutcome, ChannelResult
from health import HealthRegistry, Prober
from health_fakes import ScriptedChannel, VirtualTime


def setup(*channels: ScriptedChannel, **kwargs: object) -> tuple[Prober, HealthRegistry, VirtualTime]:
    vt = VirtualTime()
    registry = HealthRegistry(vt)
    for channel in channels:
        registry.add_channel(channel.name)
    options: dict[str, object] = {"interval_s": 2.0, "timeout_s": 1.0, "jitter": 0.1,
                                  "rng": random.Random(7)}
    options.update(kwargs)
    prober = Prober(registry, list(channels), clock=vt, sleep=vt.sleep, **options)  # type: ignore[arg-type]
    return prober, registry, vt


async def test_probes_every_interval_with_jitter():
    a, b = ScriptedChannel("a"), ScriptedChannel("b")
    prober, registry, vt = setup(a, b)
    await prober.start()
    await vt.advance_async(2.0)  # first probes land within one interval
    assert (a.pings, b.pings) == (1, 1)
    await vt.advance_async(20.0)
    assert 10 <= a.pings <= 12 and 10 <= b.pings <= 12
    waits = [d for d in vt.sleeps if d != 1.0]  # leave out the probe timeouts
    assert all(0 <= w <= 2.0 for w in waits[:2])  # initial spread
    assert all(1.8 <= w <= 2.2 for w in waits[2:])  # interval +/- 10 %
    assert len(set(waits[2:])) > 1  # jittered
    probe = registry.stats("a").last_probe
    assert probe is not None and probe.ok and probe.latency_ms == 28.0
    await prober.stop()


async def test_same_seed_same_schedule():
    async def schedule() -> list[float]:
        prober, _, vt = setup(ScriptedChannel("a"))
        await prober.start()
        await vt.advance_async(10.0)
        await prober.stop()
        return vt.sleeps

    assert await schedule() == await schedule()


async def test_a_hung_ping_times_out_and_is_cancelled():
    hang = asyncio.Event()
    channel = ScriptedChannel("a", hang=hang)
    prober, registry, vt = setup(channel)
    await prober.start()
    await vt.advance_async(4.0)
    probe = registry.stats("a").last_probe
    assert probe is not None and not probe.ok and probe.latency_ms == 1000.0
    assert channel.cancelled >= 1
    await prober.stop()


async def test_per_channel_timeout():
    hang = asyncio.Event()
    channel = ScriptedChannel("bank", hang=hang)
    prober, registry, vt = setup(channel, timeouts_s={"bank": 3.0})
    await prober.start()
    while channel.pings == 0:
        await vt.advance_async(0.01)
    await vt.advance_async(2.9)  # the default 1 s timeout would have fired by now
    assert channel.cancelled == 0
    await vt.advance_async(0.2)
    probe = registry.stats("bank").last_probe
    assert probe is not None and not probe.ok and probe.latency_ms == 3000.0
    await prober.stop()


@pytest.mark.parametrize("result", [
    ChannelResult(AttemptOutcome.NOT_PROCESSED, error="503", latency_ms=3.0),
    ChannelResult(AttemptOutcome.UNKNOWN, error="reset", latency_ms=3.0),
])
async def test_anything_but_captured_is_a_failed_probe(result):
    channel = ScriptedChannel("a", behaviour=lambda: result)
    prober, registry, vt = setup(channel)
    await prober.start()
    await vt.advance_async(2.0)
    probe = registry.stats("a").last_probe
    assert probe is not None and not probe.ok
    await prober.stop()


async def test_a_raising_ping_is_a_failed_probe_and_probing_goes_on():
    def explode() -> ChannelResult:
        raise RuntimeError("adapter bug")

    channel = ScriptedChannel("a", behaviour=explode)
    prober, registry, vt = setup(channel)
    await prober.start()
    await vt.advance_async(12.0)
    assert registry.stats("a").probe_counts()["failed"] >= 5
    assert registry.breaker("a").state == "open"
    await prober.stop()


async def test_a_failing_on_change_hook_does_not_stop_probing():
    channel = ScriptedChannel("a")
    prober, registry, vt = setup(channel)

    def broken(_name: str) -> None:
        raise RuntimeError("publisher down")

    registry.on_change = broken
    await prober.start()
    await vt.advance_async(10.0)
    assert channel.pings >= 4
    await prober.stop()


async def test_latency_falls_back_to_the_clock():
    vt_holder: list[VirtualTime] = []

    def slow_answer() -> ChannelResult:
        vt_holder[0].now += 0.045  # the ping took 45 ms of virtual time, and did not say so
        return ChannelResult(AttemptOutcome.CAPTURED)

    channel = ScriptedChannel("a", behaviour=slow_answer)
    prober, _, vt = setup(channel)
    vt_holder.append(vt)
    ok, latency = await prober.probe(channel)
    assert ok and latency == pytest.approx(45.0)


async def test_stop_cancels_everything_cleanly():
    hang = asyncio.Event()
    channel = ScriptedChannel("a", hang=hang)
    prober, _, vt = setup(channel)
    await prober.start()
    await prober.start()  # idempotent
    await vt.advance_async(2.0)  # a ping is now hanging
    assert prober.running and prober.probing == ("a",)
    await prober.stop()
    assert not prober.running and prober.probing == ()
    assert channel.cancelled == 1
    pings = channel.pings
    await vt.advance_async(20.0)
    assert channel.pings == pings
    await prober.stop()  # idempotent


async def test_set_channels_follows_a_reload():
    a, b, c = ScriptedChannel("a"), ScriptedChannel("b"), ScriptedChannel("c")
    prober, registry, vt = setup(a, b)
    registry.add_channel("c")
    await prober.start()
    await vt.advance_async(4.0)
    await prober.set_channels({"b": b, "c": c})
    assert set(prober.probing) == {"b", "c"}
    a_pings = a.pings
    await vt.advance_async(6.0)
    assert a.pings == a_pings and c.pings >= 2
    await prober.stop()


async def test_constructor_validates():
    with pytest.raises(ValueError):
        setup(ScriptedChannel("a"), interval_s=0)
    with pytest.raises(ValueError):
        setup(ScriptedChannel("a"), jitter=1.0)
