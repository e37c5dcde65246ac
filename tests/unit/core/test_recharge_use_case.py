"""The recharge use case without HTTP: created through ``orchestrator.recharges`` on the
in-memory journal and in-process channels, with SPEC 18's invariants checked after."""

from __future__ import annotations

import contextlib
import hashlib

import pytest

from channels.memory import Action, MemoryChannel
from config import parse
from orchestrator import recharges
from orchestrator.errors import IdempotencyConflict, NotFound, PricingError
from orchestrator.invariants import LedgerPayment, check_facts
from orchestrator.journal import MemoryJournal
from orchestrator.model import RechargeStatus
from orchestrator.service import Service


def _channel(name: str) -> dict[str, object]:
    return {"name": name, "kind": "direct_api", "base_url": f"http://127.0.0.1:1/{name}",
            "webhook_secret": "whsec_secret_" + name, "currencies": ["CNY"], "countries": ["CN"],
            "methods": ["ewallet"]}


CONFIG = {
    "storage": {"url": "sqlite:///unused.db"},  # the journal is handed in
    "clients": [{"name": "front", "key_sha256": hashlib.sha256(b"k").hexdigest(), "scopes": ["recharge"]}],
    "channels": [_channel("a"), _channel("b")],
    "pricing": {"base_currency": "USD", "coins_per_unit": 70, "rates": {"CNY": 0.1404},
                "promotions": {"first_recharge": {"bonus_percent": 10}}},
}


@contextlib.asynccontextmanager
async def running(script=None):
    channels: dict[str, MemoryChannel] = {}

    def factory(cfg):
        channels[cfg.name] = MemoryChannel(cfg.name, *([script] if script and cfg.name == "a" else []))
        return channels[cfg.name]

    journal = MemoryJournal()
    svc = Service(parse(CONFIG), channel_factory=factory, journal=journal, probe=False, reconcile=False,
                  router=lambda svc, rec: ["a", "b"])
    await svc.start()
    try:
        yield svc, journal, channels
    finally:
        await svc.stop()
    ledger = [LedgerPayment(c.name, p.reference, p.status) for c in channels.values() for p in c.ledger.values()]
    report = check_facts(journal.facts(), ledger)
    assert report.ok, report.violations


def new(key: str = "k1", user: str = "u1", amount: int = 8500, **kw: object) -> recharges.NewRecharge:
    doc = {"user_id": user, "amount_minor": amount, "currency": "CNY", "country": "CN", "method": "ewallet",
           "instrument": {"token": "tok_1"}, **kw}
    return recharges.NewRecharge(client="front", idempotency_key=key, user_id=user, amount_minor=amount,
                                 currency="CNY", country="CN", method="ewallet",
                                 instrument=recharges.Instrument(token="tok_1"), document=doc)


async def test_a_recharge_is_created_charged_and_credited_without_http() -> None:
    async with running() as (svc, journal, channels):
        done = await recharges.create(new(), svc.recharges)
        assert done.recharge.status is RechargeStatus.SUCCEEDED and not done.replayed
        assert done.recharge.channel == "a" and len(channels["a"].ledger) == 1
        # 85.00 CNY at 0.1404 USD is 11.934 USD: 835 coins, and the first-recharge 10 %.
        assert (done.recharge.coins, done.recharge.bonus_coins) == (835, 83)
        assert [p["name"] for p in done.promotions] == ["first_recharge"]
        assert (await journal.wallet("u1")).coins == 918


async def test_a_replay_answers_the_same_recharge_and_another_body_is_refused() -> None:
    async with running() as (svc, journal, channels):
        first = await recharges.create(new(), svc.recharges)
        again = await recharges.create(new(), svc.recharges)
        assert again.replayed and again.recharge.id == first.recharge.id
        with pytest.raises(IdempotencyConflict):
            await recharges.create(new(amount=9000), svc.recharges)
        assert len(channels["a"].ledger) == 1 and (await journal.wallet("u1")).coins == 918


async def test_the_first_recharge_bonus_goes_to_one_recharge_per_user() -> None:
    async with running() as (svc, journal, _):
        one = await recharges.create(new("k1"), svc.recharges)
        two = await recharges.create(new("k2"), svc.recharges)
        assert one.recharge.bonus_coins == 83 and two.recharge.bonus_coins == 0
        assert two.promotions == []
        assert (await journal.wallet("u1")).coins == 918 + 835


async def test_failover_and_reads_through_the_use_cases() -> None:
    async with running(lambda op, ref, n: Action.DECLINE_SOFT if op == "authorize" else Action.OK) as (svc, _, ch):
        done = await recharges.create(new(), svc.recharges)
        assert done.recharge.channel == "b" and [a.channel for a in done.recharge.attempts] == ["a", "b"]
        seen = await recharges.get(done.recharge.id, recharges.Viewer("front"), svc.recharges)
        assert seen.recharge.status is RechargeStatus.SUCCEEDED and seen.promotions == done.promotions
        events = [e.event for e in await recharges.trail(done.recharge.id, recharges.Viewer("front"), svc.recharges)]
        assert events[0] == "created" and "credited" in events
        with pytest.raises(NotFound):
            await recharges.get(done.recharge.id, recharges.Viewer("another"), svc.recharges)
        assert (await recharges.get(done.recharge.id, recharges.Viewer("another", admin=True), svc.recharges))


async def test_an_unpriceable_recharge_is_refused_and_nothing_is_stored() -> None:
    async with running() as (svc, journal, channels):
        cmd = new()
        bad = recharges.NewRecharge(**{**{f: getattr(cmd, f) for f in cmd.__slots__}, "currency": "ZAR"})
        with pytest.raises(PricingError) as err:
            await recharges.create(bad, svc.recharges)
        assert err.value.code == "unsupported_currency" and err.value.field == "currency"
        assert await journal.find("front", "k1") is None and not channels["a"].ledger
