"""Fixtures for the channel integration tests (helpers live in loopback.py and
tests/simharness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from loopback import Receiver
from simharness import Sim, channel_doc, running_sim, start

from channels.http import HttpChannel

SIM_CHANNELS = [
    channel_doc("t1"),
    channel_doc("t2", api_key="k-123"),
    channel_doc("cny", currencies=["CNY"]),
    channel_doc("settle", "digital_currency", behaviour={"pending_rate": 1.0}),
]


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with running_sim({"seed": 1, "channels": SIM_CHANNELS}) as running:
        yield running


@pytest.fixture
async def adapter(sim: Sim) -> AsyncIterator[Callable[..., HttpChannel]]:
    """Makes HttpChannels to the simulator (short timeouts), closed after the test."""
    made: list[HttpChannel] = []

    def make(name: str = "t1", kind: str = "direct_api", **kw: Any) -> HttpChannel:
        kw.setdefault("timeout_ms", 400)
        made.append(HttpChannel(name, kind, kw.pop("base_url", f"{sim.url}/{name}"), **kw))
        return made[-1]

    yield make
    for channel in made:
        await channel.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/v1/webhooks/{channel}", rec.handle)
    runner, url = await start(app)
    rec.url = f"{url}/v1/webhooks/sim"
    try:
        yield rec
    finally:
        await runner.cleanup()
