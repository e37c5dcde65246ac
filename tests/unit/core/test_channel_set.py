"""The channels one process talks to: a channel another instance kept (or one removed
from the file while no instance ran) is built when an attempt or a webhook needs it."""

from __future__ import annotations

from config import ChannelConfig
from orchestrator.channel_set import ChannelSet
from orchestrator.journal import MemoryJournal

NOW = 1_800_000_000.0


def cfg(name: str) -> ChannelConfig:
    return ChannelConfig.model_validate({"name": name, "kind": "bank", "base_url": f"http://127.0.0.1:1/{name}",
                                         "webhook_secret": "whsec_secret_" + name, "currencies": ["CNY"],
                                         "countries": ["CN"], "methods": ["bank"]})


class Made:
    def __init__(self, c: ChannelConfig) -> None:
        self.name, self.closed = c.name, False

    async def close(self) -> None:
        self.closed = True


async def test_a_channel_only_another_instance_knew_is_found_through_the_journal() -> None:
    journal = MemoryJournal()
    made: list[Made] = []

    def factory(c: ChannelConfig) -> Made:
        made.append(Made(c))
        return made[-1]

    other = ChannelSet(factory, journal)  # type: ignore[arg-type]
    await other.open([cfg("a"), cfg("gone")], NOW)
    here = ChannelSet(factory, journal)  # type: ignore[arg-type]
    await here.open([cfg("a")], NOW)  # its file no longer names "gone": marked retired, not built
    assert here.any("gone") is None and (await journal.kept_channels())[1].retired_at == NOW
    found = await here.find("gone", NOW + 1)
    assert found is not None and found.name == "gone" and here.any("gone") is found
    assert (await here.find_config("gone", NOW + 1)).name == "gone"
    assert await here.find("never", NOW + 1) is None
    await here.close_idle(NOW + 100, grace_s=10)  # idle: closed here, still kept
    assert found.closed and here.any("gone") is None
    assert [r.name for r in await journal.kept_channels()] == ["a", "gone"]
    assert (await here.find("gone", NOW + 200)) is not None
