"""Settlement reports at the simulator, read over loopback HTTP by the real protocol-v1
adapter (SPEC 6, 16, 21): the payments captured that UTC day and still captured or refunded,
in order of capture, with the behaviour's fees; discrepancies injected through the control
API exactly as it answers them; each injectable fault refused by the adapter with its
reason; a big day streamed and read in batches."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from loopback import req
from simharness import Sim, channel_doc, start

from channels import AttemptOutcome, SettlementItem, SettlementReportError
from channels.http import SETTLEMENT_BATCH, HttpChannel
from channels.simulator import SIMULATOR, Payment, SimChannel, Simulator, build_app

DAY = "2025-03-14"
CHANNELS = [channel_doc("t1", currencies=["USD", "CNY"]), channel_doc("t2", api_key="k-123")]


def at(day: str, hh: int = 12, mm: int = 0, ss: float = 0.0) -> float:
    return dt.datetime.fromisoformat(f"{day}T{hh:02d}:{mm:02d}:00").replace(tzinfo=dt.UTC).timestamp() + ss


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class World:
    """The running simulator: its control API (``sim``) and its state, to place payments in time."""

    sim: Sim
    simulator: Simulator

    def ch(self, name: str = "t1") -> SimChannel:
        return self.simulator.channels[name]

    def place(self, reference: str, *times: float, name: str = "t1") -> Payment:
        """Move a payment's creation and status history to ``times`` (one per history entry;
        the last one repeats), as if it had happened then."""
        payment = self.ch(name).payments[reference]
        payment.created_at = times[0]
        payment.history = [(times[min(i, len(times) - 1)], status) for i, (_, status) in enumerate(payment.history)]
        return payment

    def insert(self, reference: str, when: float, amount: int = 1000, status: str = "captured",
               name: str = "t1") -> Payment:
        """A payment put straight into the ledger (for volume: no HTTP round trip)."""
        payment = Payment(name, reference, f"pr_{reference}", amount, "CNY", None, when, status,
                          history=[(when, status)])
        self.ch(name).payments[reference] = payment
        return payment


@pytest.fixture
async def world() -> AsyncIterator[World]:
    app = build_app({"seed": 1, "channels": CHANNELS})
    runner, url = await start(app)
    try:
        async with aiohttp.ClientSession() as session:
            yield World(Sim(url, session), app[SIMULATOR])
    finally:
        await runner.cleanup()


@pytest.fixture
async def channel(world: World) -> AsyncIterator[Callable[..., HttpChannel]]:
    """Makes HttpChannels to the simulator, closed after the test."""
    made: list[HttpChannel] = []

    def make(name: str = "t1", **kw: Any) -> HttpChannel:
        kw.setdefault("timeout_ms", 400)
        made.append(HttpChannel(name, "direct_api", f"{world.sim.url}/{name}", **kw))
        return made[-1]

    yield make
    for ch in made:
        await ch.close()


async def report(ch: HttpChannel, day: str = DAY) -> list[SettlementItem]:
    return [item async for batch in ch.settlements(day) for item in batch]


async def refusal(ch: HttpChannel, day: str = DAY) -> str:
    with pytest.raises(SettlementReportError) as caught:
        await report(ch, day)
    return str(caught.value)


async def pay(ch: HttpChannel, reference: str, amount: int = 1000, currency: str = "CNY") -> AttemptOutcome:
    return (await ch.authorize(req(reference, amount=amount, currency=currency))).outcome


async def discrepancies(world: World, **body: Any) -> tuple[int, Any]:
    return await world.sim.raw("POST", "/_sim/t1/settlement_discrepancies", json=body)


# -- the day's payments ---------------------------------------------------------------------

async def test_the_report_lists_the_days_captured_and_refunded_payments_in_order_of_capture(world, channel):
    t1 = channel()
    for ref, amount in (("early", 100), ("a", 500), ("p1", 600), ("r", 700), ("part", 900), ("late", 200)):
        assert await pay(t1, ref, amount) is AttemptOutcome.CAPTURED
    await world.sim.behave("t1", decline_rate=1.0)
    assert await pay(t1, "d1") is AttemptOutcome.DECLINED
    await world.sim.behave("t1", decline_rate=0.0)
    assert (await world.sim.refund("t1", "r"))[0] == 200
    assert (await world.sim.refund("t1", "part", "rf1", 300))[0] == 200
    world.place("early", at("2025-03-13", 23, 59, 59.999))  # the day before, by a millisecond
    world.place("a", at(DAY, 0, 0))
    world.ch().payments["p1"].history.insert(0, (0.0, "pending"))  # pending overnight, captured on the day
    world.place("p1", at("2025-03-13", 23), at(DAY, 0, 0, 1))
    world.place("r", at(DAY, 9), at(DAY, 9, 0, 0.5))
    world.place("part", at(DAY, 10))
    world.place("d1", at(DAY, 11))
    world.place("late", at("2025-03-15", 0, 0))
    pr = {p.reference: p.provider_ref for p in world.ch().payments.values()}
    assert await report(t1) == [
        SettlementItem("a", pr["a"], "captured", 500, "CNY", 0, f"{DAY}T00:00:00.000Z"),
        SettlementItem("p1", pr["p1"], "captured", 600, "CNY", 0, f"{DAY}T00:00:01.000Z"),
        SettlementItem("r", pr["r"], "refunded", 700, "CNY", 0, f"{DAY}T09:00:00.000Z"),
        SettlementItem("part", pr["part"], "captured", 900, "CNY", 0, f"{DAY}T10:00:00.000Z")]
    assert [i.reference for i in await report(t1, "2025-03-13")] == ["early"]
    assert [i.reference for i in await report(t1, "2025-03-15")] == ["late"]
    assert await report(t1, "2025-03-16") == []
    assert (await world.sim.stats("t1"))["settlement_reports"] == 4


async def test_fees_follow_the_behaviour_keys_rounded_half_up(world, channel):
    t1 = channel()
    behaviour = await world.sim.behave("t1", settlement_fee_fixed_minor=30, settlement_fee_percent=1.5)
    assert (behaviour["settlement_fee_fixed_minor"], behaviour["settlement_fee_percent"],
            behaviour["settlement_report_fault"]) == (30, 1.5, None)
    for i, amount in enumerate((100, 1000, 1033, 1034)):
        await pay(t1, f"f{amount}", amount)
        world.place(f"f{amount}", at(DAY, 12, i))
    assert [(i.amount_minor, i.fee_minor) for i in await report(t1)] == \
        [(100, 32), (1000, 45), (1033, 45), (1034, 46)]  # 1.5, 15, 15.495 and 15.51 of it, rounded half up


@pytest.mark.parametrize(("changes", "field"), [
    ({"settlement_fee_percent": 101}, "settlement_fee_percent"),
    ({"settlement_fee_fixed_minor": 1.5}, "settlement_fee_fixed_minor"),
    ({"settlement_fee_fixed_minor": -1}, "settlement_fee_fixed_minor"),
    ({"settlement_report_fault": "sometimes"}, "settlement_report_fault"),
])
async def test_bad_settlement_behaviour_keys_are_refused(world, changes, field):
    status, body = await world.sim.raw("PUT", "/_sim/t1/behaviour", json=changes)
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "invalid_field", field)


async def test_the_report_needs_the_channels_api_key(world, channel):
    keyed = channel("t2", api_key="k-123")
    await pay(keyed, "k1")
    world.place("k1", at(DAY), name="t2")
    assert [i.reference for i in await report(keyed)] == ["k1"]
    assert await refusal(channel("t2")) == "the provider answered 401 (unauthorized)"


@pytest.mark.parametrize("query", ["?date=2025-13-01", "?date=2025-3-14", "?date=", "", "?date=2025-03-14T00:00"])
async def test_a_bad_date_is_a_400(world, query):
    status, body = await world.sim.raw("GET", f"/t1/settlements{query}")
    assert status == 400
    assert (body["error"]["code"], body["error"]["field"]) == ("invalid_field", "date")


async def test_a_channel_in_outage_has_no_report(world, channel):
    await world.sim.behave("t1", outage=True)
    assert await refusal(channel()) == "the provider answered 503 (unavailable)"


# -- injected discrepancies -----------------------------------------------------------------

@pytest.fixture
async def day_of_payments(world, channel):
    """On DAY at t1 (fee 10 each): c0..c9 captured, d0..d2 declined (charged, amount > 0) and
    a tombstone (a void of a reference never seen: nothing charged); the day before, cprev
    captured and dprev declined."""
    t1 = channel()
    await world.sim.behave("t1", settlement_fee_fixed_minor=10)
    for i in range(10):
        await pay(t1, f"c{i}", 1000 + i)
        world.place(f"c{i}", at(DAY, 8, i))
    await pay(t1, "cprev")
    world.place("cprev", at("2025-03-13"))
    await world.sim.behave("t1", decline_rate=1.0)
    for i, ref in enumerate(("d0", "d1", "d2", "dprev")):
        assert await pay(t1, ref, 2000 + i) is AttemptOutcome.DECLINED
        world.place(ref, at(DAY if ref != "dprev" else "2025-03-13", 9, i))
    await world.sim.behave("t1", decline_rate=0.0)
    assert (await t1.void("tomb")).outcome is AttemptOutcome.VOIDED
    world.place("tomb", at(DAY, 9, 30))
    return t1


async def test_injected_discrepancies_show_in_the_report_exactly_as_answered(world, day_of_payments):
    t1 = day_of_payments
    before = {p.reference: p for p in world.ch().payments.values()}
    status, picked = await discrepancies(world, date=DAY, drop=2, amount=2, fee=1, unknown=2, settle_voided=2)
    assert status == 200, picked
    assert {kind: len(refs) for kind, refs in picked.items()} == \
        {"drop": 2, "amount": 2, "fee": 1, "unknown": 2, "settle_voided": 2}
    taken = picked["drop"] + picked["amount"] + picked["fee"]
    assert len(set(taken)) == 5 and set(taken) <= {f"c{i}" for i in range(10)}
    assert set(picked["settle_voided"]) < {"d0", "d1", "d2"}
    assert all(ref.startswith("unknown-") for ref in picked["unknown"])

    items = {i.reference: i for i in await report(t1)}
    assert set(items) == ({f"c{i}" for i in range(10)} - set(picked["drop"])) | set(picked["settle_voided"]) \
        | set(picked["unknown"])
    for ref, item in items.items():
        if ref in picked["unknown"]:
            assert (item.status, item.currency, item.fee_minor) == ("captured", "CNY", 10)
            assert item.amount_minor > 0 and item.settled_at.startswith(DAY) and item.provider_ref
            continue
        payment = before[ref]
        extra_amount, extra_fee = item.amount_minor - payment.amount_minor, item.fee_minor - 10
        assert (1 <= extra_amount <= 100) if ref in picked["amount"] else extra_amount == 0, ref
        assert (1 <= extra_fee <= 100) if ref in picked["fee"] else extra_fee == 0, ref
        assert (item.status, item.currency, item.provider_ref) == ("captured", "CNY", payment.provider_ref)
    for ref in picked["settle_voided"]:  # the provider took the money after all
        assert items[ref].settled_at == iso(before[ref].created_at)
        assert (await t1.inquire(ref)).outcome is AttemptOutcome.CAPTURED
        assert [h["status"] for h in (await world.sim.payment(ref))["history"]] == ["declined", "captured"]
    assert [i.reference for i in await report(t1, "2025-03-13")] == ["cprev"]
    now = dt.datetime.now(dt.UTC)
    for day in {now.date().isoformat(), (now - dt.timedelta(seconds=5)).date().isoformat()}:
        assert not {i.reference for i in await report(t1, day)} & set(picked["settle_voided"])
    assert {i.reference: i for i in await report(t1)} == items  # the same report, read again


async def test_more_discrepancies_pick_only_payments_not_picked_yet_and_too_many_change_nothing(
        world, day_of_payments):
    t1 = day_of_payments
    first = (await discrepancies(world, date=DAY, drop=4, settle_voided=2))[1]
    status, second = await discrepancies(world, date=DAY, amount=6, settle_voided=1)
    assert status == 200, second
    assert set(second["amount"]) == {f"c{i}" for i in range(10)} - set(first["drop"])
    assert set(second["settle_voided"]) == {"d0", "d1", "d2"} - set(first["settle_voided"])
    items = await report(t1)
    ledger = await world.sim.ledger("t1")
    for body in ({"date": DAY, "fee": 1}, {"date": DAY, "settle_voided": 1}, {"date": DAY, "unknown": 3, "drop": 1},
                 {"date": "2025-03-13", "drop": 2}, {"date": "2025-03-13", "settle_voided": 2}):
        status, answer = await discrepancies(world, **body)
        assert (status, answer["error"]["code"]) == (409, "not_enough_payments"), body
    assert await report(t1) == items and await world.sim.ledger("t1") == ledger
    assert (await world.sim.raw("POST", "/_sim/reset"))[0] == 200
    assert await report(t1) == []  # the made-up items went with the ledger


@pytest.mark.parametrize(("body", "field"), [
    ({"drop": 1}, "date"),
    ({"date": "2025-02-30"}, "date"),
    ({"date": DAY, "drop": -1}, "drop"),
    ({"date": DAY, "fee": True}, "fee"),
    ({"date": DAY, "amount": 1.0}, "amount"),
    ({"date": DAY, "unknown": "2"}, "unknown"),
    ({"date": DAY, "dorp": 1}, "dorp"),
    ([DAY], "body"),
])
async def test_a_bad_discrepancy_request_is_a_422_and_changes_nothing(world, body, field):
    status, answer = await world.sim.raw("POST", "/_sim/t1/settlement_discrepancies", json=body)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (422, "invalid_field", field)
    assert world.ch().report_changes == {}


async def test_discrepancies_of_an_unknown_channel_are_a_404(world):
    status, answer = await world.sim.raw("POST", "/_sim/nope/settlement_discrepancies", json={"date": DAY})
    assert (status, answer["error"]["code"]) == (404, "not_found")


# -- faults and volume ----------------------------------------------------------------------

@pytest.mark.parametrize("count", [0, 3000])
@pytest.mark.parametrize(("fault", "reason"), [
    ("unavailable", "the provider answered 503 (unavailable)"),
    ("malformed", "malformed or truncated report: parse error: trailing garbage"),
    ("truncated", "malformed or truncated report: the body was cut short"),
])
async def test_each_report_fault_is_refused_with_its_reason(world, channel, fault, reason, count):
    for i in range(count):
        world.insert(f"r{i:05d}", at(DAY, 1, 0, i))
    await world.sim.behave("t1", settlement_report_fault=fault)
    assert (await refusal(channel())).startswith(reason)
    await world.sim.behave("t1", settlement_report_fault=None)
    assert len(await report(channel())) == count


async def test_a_big_day_is_streamed_and_read_in_batches(world, channel):
    n = 30_000
    times = [at(DAY, 0, 0, i * 2.5) for i in range(n)]
    order = list(range(n))
    random.Random(3).shuffle(order)  # the ledger's order is not the capture order
    for i in order:
        world.insert(f"big{i:05d}", times[i], amount=100 + i)
    world.insert("next-day", at("2025-03-15", 0, 0))
    async with world.sim.session.get(f"{world.sim.url}/t1/settlements", params={"date": DAY}) as resp:
        assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
        assert resp.content_length is None
    sizes, references = [], []
    async for batch in channel().settlements(DAY):
        sizes.append(len(batch))
        references += [i.reference for i in batch]
    assert sizes == [SETTLEMENT_BATCH] * (n // SETTLEMENT_BATCH)
    assert references == [f"big{i:05d}" for i in range(n)]


async def test_a_head_request_answers_without_a_body(world, channel):
    world.insert("a", at(DAY))
    async with world.sim.session.head(f"{world.sim.url}/t1/settlements", params={"date": DAY}) as resp:
        assert resp.status == 200
    assert [i.reference for i in await report(channel())] == ["a"]  # the connection is still good
