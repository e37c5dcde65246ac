"""Reading a settlement report (SPEC 6, 21): the HTTP adapter takes a report whole or refuses
it with a reason a person can act on (crafted bodies handed in through its session, its one
seam to the network; the simulator's reports over real HTTP are in test_sim_settlements.py),
and the in-memory provider reports what it captured that day."""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import orjson
import pytest

from channels import Channel, PaymentRequest, SettlementItem, SettlementReportError
from channels.http import SETTLEMENT_BATCH, HttpChannel
from channels.memory import Action, MemoryChannel

DAY = "2025-03-14"


def item(i: int = 0, **changes: Any) -> dict[str, Any]:
    doc = {"reference": f"r{i}", "provider_ref": f"pr_{i}", "status": "captured", "amount_minor": 1000 + i,
           "currency": "CNY", "fee_minor": 12, "settled_at": f"{DAY}T10:00:00.000Z"}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}  # ``...`` leaves a field out


def report(*items: dict[str, Any], date: Any = DAY) -> bytes:
    return orjson.dumps({"date": date, "items": list(items)})


class Content:
    """A response body as aiohttp hands it out (``read(n)``), in chunks of ``chunk``
    bytes; ``then`` is raised once it is used up (a connection lost mid-body)."""

    def __init__(self, body: bytes, chunk: int = 4096, then: BaseException | None = None) -> None:
        self.body, self.chunk, self.then = body, chunk, then

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if not self.body and self.then is not None:
            raise self.then
        size = min(n if n > 0 else len(self.body), self.chunk)
        out, self.body = self.body[:size], self.body[size:]
        return out


class Response:
    def __init__(self, status: int, body: bytes, then: BaseException | None) -> None:
        self.status = status
        self.content = Content(body, then=then)
        self.content_length = len(body)

    async def read(self) -> bytes:
        return await self.content.read()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class Provider:
    """Stands in for aiohttp's ClientSession (the adapter's one seam to the network): every
    GET is answered with ``body``, or fails with ``fail`` before any answer; the requests
    are recorded. A unit test starts no server (tests/unit/conftest.py)."""

    closed = False

    def __init__(self, body: bytes = b"", status: int = 200, *, then: BaseException | None = None,
                 fail: BaseException | None = None) -> None:
        self.body, self.status, self.then, self.fail = body, status, then, fail
        self.seen: list[tuple[str, dict[str, str]]] = []

    def get(self, url: Any, *, headers: dict[str, str], timeout: Any) -> Response:
        self.seen.append((str(url), headers))
        if self.fail is not None:
            raise self.fail
        return Response(self.status, self.body, self.then)


def channel_to(provider: Provider, api_key: str | None = None) -> HttpChannel:
    return HttpChannel("p", "direct_api", "http://provider.test/v1", api_key=api_key,
                       session=provider)  # type: ignore[arg-type]


def serve(body: bytes = b"", status: int = 200, **kw: Any) -> HttpChannel:
    """An HttpChannel whose provider answers ``body`` (see ``Provider``)."""
    return channel_to(Provider(body, status, **kw))


async def read(channel: Channel, date: str = DAY) -> list[list[SettlementItem]]:
    return [batch async for batch in channel.settlements(date)]


async def refused(channel: Channel, date: str = DAY) -> str:
    with pytest.raises(SettlementReportError) as caught:
        await read(channel, date)
    return str(caught.value)


# -- the HTTP adapter -----------------------------------------------------------------------

async def test_a_valid_report_is_read_as_its_items():
    provider = Provider(report(item(0), item(1, provider_ref=None, status="refunded"), item(2, provider_ref=...)))
    assert await read(channel_to(provider, api_key="k-1")) == [[
        SettlementItem("r0", "pr_0", "captured", 1000, "CNY", 12, f"{DAY}T10:00:00.000Z"),
        SettlementItem("r1", None, "refunded", 1001, "CNY", 12, f"{DAY}T10:00:00.000Z"),
        SettlementItem("r2", None, "captured", 1002, "CNY", 12, f"{DAY}T10:00:00.000Z")]]
    assert provider.seen == [(f"http://provider.test/v1/settlements?date={DAY}", {"Authorization": "Bearer k-1"})]


async def test_the_date_may_come_after_the_items_and_unknown_keys_are_skipped():
    body = b'{"count": 2, "items": [' + orjson.dumps(item(0, extra={"items": [1]})) + b"," + orjson.dumps(item(1)) \
        + b'], "meta": {"date": "2000-01-01", "items": 3}, "items.item": {"x": 1}, "date": "' + DAY.encode() + b'"}'
    assert [i.reference for batch in await read(serve(body)) for i in batch] == ["r0", "r1"]


async def test_an_empty_day_yields_nothing():
    assert await read(serve(report())) == []


@pytest.mark.parametrize(("body", "reason"), [
    (report(item(), date="2025-03-13"), "the report is for 2025-03-13, not 2025-03-14"),
    (orjson.dumps({"items": [item()]}), "the report names no date (asked for 2025-03-14)"),
    (report(item(), date=20250314), "the report's date must be a YYYY-MM-DD string"),
    (orjson.dumps({"date": DAY}), "the report has no items array"),
    (orjson.dumps({"date": DAY, "items": {"r0": item()}}), "the report's items must be an array"),
    (report(item(0), item(1, amount_minor=12.5)), "item 1: amount_minor must be an integer from 0 to 10^15"),
    (report(item(0, amount_minor=12.0)), "item 0: amount_minor must be an integer from 0 to 10^15"),
    (report(item(0, amount_minor=True)), "item 0: amount_minor must be an integer from 0 to 10^15"),
    (report(item(0, amount_minor="12")), "item 0: amount_minor must be an integer from 0 to 10^15"),
    (report(item(0, amount_minor={"v": 12})), "item 0: amount_minor must be an integer from 0 to 10^15"),
    (report(item(0, fee_minor=-1)), "item 0: fee_minor must be an integer from 0 to 10^15"),
    (report(item(0, amount_minor=10**15 + 1)), "item 0: amount_minor must be an integer from 0 to 10^15"),
    (report(item(0, fee_minor=...)), "item 0: fee_minor is missing"),
    (report(item(0), item(1), item(2, reference=...)), "item 2: reference is missing"),
    (report(item(0, reference="")), "item 0: reference must be a string of 1 to 255 characters"),
    (report(item(0, reference="r" * 256)), "item 0: reference must be a string of 1 to 255 characters"),
    (report(item(0, currency="cny")), "item 0: currency must be 3 uppercase letters"),
    (report(item(0, currency="CNYX")), "item 0: currency must be 3 uppercase letters"),
    (report(item(0, status=None)), "item 0: status must be a string"),
    (report(item(0, provider_ref=7)), "item 0: provider_ref must be a string or null"),
    (report(item(0, settled_at=...)), "item 0: settled_at is missing"),
    (report(item(0), "r1"), "item 1: must be a JSON object"),
    (orjson.dumps([item()]), "malformed or truncated report: it is not a JSON object"),
])
async def test_a_report_that_is_not_valid_is_refused_with_its_reason(body, reason):
    assert await refused(serve(body)) == reason


@pytest.mark.parametrize("body", [
    report(item(0), item(1))[:-20],  # cut short
    b"<html>502 Bad Gateway</html>",
    report(item(0)) + b" garbage",
    b'{"date": "2025-03-14", "items": [{"reference": "\xff"}]}',
    b"",
])
async def test_a_body_that_is_not_json_is_malformed_or_truncated(body):
    assert (await refused(serve(body))).startswith("malformed or truncated report: ")


@pytest.mark.parametrize("status", [500, 503, 404])
async def test_an_answer_other_than_200_is_refused_with_its_status(status):
    body = orjson.dumps({"error": {"code": "unavailable", "message": "later"}}) if status == 503 else b"oops"
    reason = await refused(serve(body, status))
    assert reason == (f"the provider answered {status}" + (" (unavailable)" if status == 503 else ""))


@pytest.mark.parametrize(("fail", "reason"), [
    (aiohttp.ClientConnectionError("refused"), "unreachable: ClientConnectionError: refused"),
    (aiohttp.ConnectionTimeoutError(), "unreachable: timeout"),
    (TimeoutError(), "unreachable: timeout"),
    (OSError("no route"), "unreachable: OSError: no route"),
])
async def test_no_answer_is_refused_as_unreachable(fail, reason):
    assert await refused(serve(fail=fail)) == reason


@pytest.mark.parametrize(("then", "reason"), [
    (aiohttp.ClientPayloadError("Response payload is not completed"),
     "malformed or truncated report: the body was cut short after 1 items "
     "(ClientPayloadError: Response payload is not completed)"),
    (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), "unreachable: timeout after 1 items"),
])
async def test_a_body_that_stops_coming_fails_the_run(then, reason):
    body = report(item(0), item(1))[:-20]
    assert await refused(serve(body, then=then)) == reason


async def test_a_date_that_is_not_one_is_refused_before_asking():
    provider = Provider(report())
    for date in ("2025-02-30", "20250314", "2025-W11-5", "2025-03-14T00:00", "２０２５-03-14"):
        assert (await refused(channel_to(provider), date)).startswith("not a date")
    assert provider.seen == []


async def test_a_big_report_arrives_in_batches_and_a_cut_found_late_fails_the_run():
    n = 2 * SETTLEMENT_BATCH + 10
    whole = report(*(item(i) for i in range(n)))
    batches = await read(serve(whole))
    assert [len(b) for b in batches] == [SETTLEMENT_BATCH, SETTLEMENT_BATCH, 10]
    assert [i.reference for b in batches for i in b] == [f"r{i}" for i in range(n)]
    got: list[list[SettlementItem]] = []
    with pytest.raises(SettlementReportError) as caught:
        async for batch in serve(whole[:-40]).settlements(DAY):
            got.append(batch)
    assert [len(b) for b in got] == [SETTLEMENT_BATCH, SETTLEMENT_BATCH]  # then the end was found missing
    assert str(caught.value).startswith("malformed or truncated report: ")
    assert f"after {n - 1} items" in str(caught.value)


async def test_an_invalid_item_late_in_a_report_fails_the_run_after_its_batches():
    body = report(*(item(i) for i in range(SETTLEMENT_BATCH)), item(SETTLEMENT_BATCH, currency="yen"))
    got = []
    with pytest.raises(SettlementReportError, match=f"item {SETTLEMENT_BATCH}: currency"):
        async for batch in serve(body).settlements(DAY):
            got.append(batch)
    assert [len(b) for b in got] == [SETTLEMENT_BATCH]


async def test_a_caller_may_stop_reading_early():
    body = report(*(item(i) for i in range(3 * SETTLEMENT_BATCH)))
    async for batch in serve(body).settlements(DAY):
        assert len(batch) == SETTLEMENT_BATCH
        break


# -- the in-memory provider -------------------------------------------------------------------

def at(date: str, hh: int = 12, mm: int = 0, ss: float = 0.0) -> float:
    return dt.datetime.fromisoformat(f"{date}T{hh:02d}:{mm:02d}:00").replace(tzinfo=dt.UTC).timestamp() + ss


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def charge(reference: str, amount: int = 1000) -> PaymentRequest:
    return PaymentRequest(reference, amount, "CNY", "ewallet", {"token": "t"})


def by_reference(op: str, reference: str, n: int) -> Action:
    """Charges of ``p...`` pend, of ``d...`` are declined; the rest are captured."""
    if op != "authorize":
        return Action.OK
    return {"p": Action.PEND, "d": Action.DECLINE_HARD}.get(reference[0], Action.CAPTURE)


async def test_the_memory_channel_reports_what_it_captured_that_day():
    clock = Clock(at("2025-03-13", 23, 59, 59.999))
    ch = MemoryChannel("m", by_reference, clock=clock)
    assert isinstance(ch, Channel)
    await ch.authorize(charge("early"))  # the day before, by a millisecond
    await ch.authorize(charge("p1"))  # pending overnight, captured on the day
    clock.now = at(DAY, 0, 0)
    await ch.authorize(charge("a", 500))
    clock.now = at(DAY, 0, 0, 1)
    ch.settle("p1", "captured")
    clock.now = at(DAY, 9)
    await ch.authorize(charge("d1"))
    await ch.authorize(charge("r", 700))
    await ch.refund("r")
    clock.now = at("2025-03-15", 0, 0)
    await ch.authorize(charge("late"))
    batches = [b async for b in ch.settlements(DAY)]
    assert batches == [[
        SettlementItem("a", "pr_a", "captured", 500, "CNY", 0, f"{DAY}T00:00:00.000Z"),
        SettlementItem("p1", "pr_p1", "captured", 1000, "CNY", 0, f"{DAY}T00:00:01.000Z"),
        SettlementItem("r", "pr_r", "refunded", 700, "CNY", 0, f"{DAY}T09:00:00.000Z")]]
    assert [i.reference for b in [b async for b in ch.settlements("2025-03-13")] for i in b] == ["early"]
    assert [i.reference for b in [b async for b in ch.settlements("2025-03-15")] for i in b] == ["late"]
    assert [b async for b in ch.settlements("2025-03-16")] == []
    with pytest.raises(SettlementReportError, match="not a date"):
        [b async for b in ch.settlements("2025-W11-5")]


async def test_the_memory_channel_reports_a_big_day_in_batches():
    ch = MemoryChannel("m", clock=Clock(at(DAY)))
    for i in range(SETTLEMENT_BATCH + 1):
        await ch.authorize(charge(f"r{i:05d}"))
    assert [len(b) async for b in ch.settlements(DAY)] == [SETTLEMENT_BATCH, 1]
