"""Settlement reconciliation's use case (SPEC 21) on real stores: a provider that cannot be
reached fails the run (real HTTP to a closed loopback port) and nothing is kept; the daily
schedule reconciles yesterday for every channel, once per channel and day however many
instances share the store."""

from __future__ import annotations

import asyncio
import datetime as dt

from channels.memory import MemoryChannel
from config import ChannelConfig, ReconciliationConfig
from orchestrator import settlements
from orchestrator.clock import SystemClock, VirtualClock
from orchestrator.journal import MemoryJournal, SqliteJournal
from orchestrator.launch import free_port
from orchestrator.metrics import Metrics
from orchestrator.wiring import http_channel


def _cfg(name: str, base_url: str = "http://127.0.0.1:1/x") -> ChannelConfig:
    return ChannelConfig(name=name, kind="direct_api", base_url=base_url, webhook_secret="whsec_test_12345",
                         currencies=["CNY"], countries=["CN"], methods=["ewallet"], timeout_ms=500)


def _deps(journal, clock, channels: dict, configs: dict, settings=ReconciliationConfig()) -> settlements.ReconDeps:
    async def channel(name: str):
        return channels.get(name)

    async def config(name: str):
        return configs.get(name)

    return settlements.ReconDeps(journal, clock, Metrics(), channel, config, lambda: settings)


async def test_an_unreachable_provider_fails_the_run_and_keeps_nothing(tmp_path):
    journal = SqliteJournal(tmp_path / "j.db")
    await journal.open()
    cfg = _cfg("a", f"http://127.0.0.1:{free_port()}/a")  # nothing listens there
    channel = http_channel(cfg)
    try:
        deps = _deps(journal, SystemClock(), {"a": channel}, {"a": cfg})
        run = await settlements.reconcile("a", "2026-12-01", deps)
        assert run.status == "failed" and run.reason.startswith("unreachable"), run
        assert await journal.discrepancies("a", "2026-12-01") == []
        assert await journal.open_discrepancies() == {}
        assert [(r.id, r.status) for r in await journal.recon_runs()] == [(run.id, "failed")]
        assert deps.metrics.reconciliations.labels("a", "failed")._value.get() == 1
    finally:
        await channel.close()
        await journal.close()


async def test_the_schedule_catches_up_then_reconciles_yesterday_once_per_channel_and_day_across_instances():
    start = dt.datetime(2026, 12, 3, 1, 58, tzinfo=dt.UTC).timestamp()
    clock = VirtualClock(start)
    journal = MemoryJournal(clock=clock.now)
    await journal.open()
    channels = {n: MemoryChannel(n, clock=clock.now) for n in ("a", "b")}
    configs = {n: _cfg(n) for n in channels}
    settings = ReconciliationConfig(catch_up_days=2)
    instances = [settlements.Reconciler(_deps(journal, clock, channels, configs, settings), lambda: ["a", "b"])
                 for _ in range(2)]
    tasks = [asyncio.create_task(r.run_forever()) for r in instances]
    try:
        for _ in range(2000):  # virtual time runs as the loops sleep: two scheduled days
            await asyncio.sleep(0)
            if clock.now() > start + 86_400 + 3600:
                break
        runs = await journal.recon_runs(limit=100)
        days = ("2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03")  # two caught up, then one a day
        assert sorted((r.channel, r.date, r.trigger, r.status) for r in runs) == [
            (c, d, "schedule", "completed") for c in ("a", "b") for d in days]
        assert all(r.started_at >= start + 120 for r in runs if r.date >= "2026-12-02"), "not before 02:00"
        assert set(instances[0].last) == {"a", "b"} or set(instances[1].last) == {"a", "b"}
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await journal.close()


async def test_a_payment_settled_after_we_closed_it_is_found_and_refunded_once_on_each_store(store):
    from harness import Core

    from channels.memory import Action

    clock = VirtualClock()
    a = MemoryChannel("a", clock=clock.now)
    async with Core(store, [a], clock=clock) as core:
        for i in range(5):
            assert (await core.run(f"k{i}")).status.value == "succeeded"
        a.script = lambda op, ref, n: Action.DECLINE_HARD if op == "authorize" else Action.OK
        declined = await core.run("k-declined")
        assert declined.status.value == "declined"
        late = a.ledger[declined.attempts[0].reference]
        late.status, late.captured_at = "captured", clock.now()  # the provider took it after all
        late.history.append("captured")
        day = dt.datetime.fromtimestamp(clock.now(), dt.UTC).date().isoformat()
        deps = _deps(core.journal, clock, {"a": a}, {"a": _cfg("a")})

        first = await settlements.reconcile("a", day, deps)
        assert first.status == "completed" and first.report_items == 6
        assert {k: c["count"] for k, c in first.summary["classes"].items() if c["count"]} == {"orphan_capture": 1}
        [found] = await core.journal.discrepancies("a", day)
        assert (found.reference, found.status, found.recharge_id) == (late.reference, "resolving", declined.id)
        await core.settle_all(rounds=5)  # the late check it scheduled: inquired, captured, refunded
        assert late.status == "refunded" and late.history.count("refunded") == 1

        second = await settlements.reconcile("a", day, deps)
        assert second.summary["discrepancies"] == 0
        [again] = await core.journal.discrepancies("a", day)
        assert (again.status, again.resolution) == ("resolved", f"not found again by {second.id}")
        await core.settle_all(rounds=3)
        assert late.history.count("refunded") == 1, "refunded once"
        assert (await core.check()).ok


async def test_a_capture_near_midnight_is_looked_for_on_both_sides_of_it(store):
    """The provider captured at 23:59:58; we journaled it 30 s into the next day. With the
    grace, the day before's run expects it; without, the next day's run finds it missing and
    the day before's run, finding it in its report, resolves that."""
    from harness import Core

    midnight = dt.datetime(2027, 1, 16, tzinfo=dt.UTC).timestamp()
    clock = VirtualClock(midnight + 30)
    a = MemoryChannel("a", clock=clock.now)
    async with Core(store, [a], clock=clock) as core:
        rec = await core.run("k1")
        a.ledger[rec.attempts[0].reference].captured_at = midnight - 2  # the provider's clock
        before, after = "2027-01-15", "2027-01-16"

        graced = _deps(core.journal, clock, {"a": a}, {"a": _cfg("a")})
        assert (await settlements.reconcile("a", before, graced)).summary["discrepancies"] == 0
        assert (await settlements.reconcile("a", after, graced)).summary["discrepancies"] == 0

        strict = _deps(core.journal, clock, {"a": a}, {"a": _cfg("a")}, ReconciliationConfig(day_edge_grace_s=0))
        late = await settlements.reconcile("a", after, strict)
        assert late.summary["classes"]["missing_in_report"]["count"] == 1
        await settlements.reconcile("a", before, strict)
        [d] = await core.journal.discrepancies("a", after)
        assert (d.status, d.resolution) == ("resolved", f"settled in the report of {before}")


class _FlakyReport:
    """A provider whose report fails the first ``failures`` times it is asked."""

    def __init__(self, inner: MemoryChannel, failures: int) -> None:
        self.inner, self.failures = inner, failures

    async def settlements(self, date: str):
        from channels import SettlementReportError

        if self.failures > 0:
            self.failures -= 1
            raise SettlementReportError("the provider answered 503 (unavailable)")
        async for batch in self.inner.settlements(date):
            yield batch


async def test_the_schedule_retries_a_failed_day_later_and_expires_a_run_left_running():
    start = dt.datetime(2026, 12, 3, 2, 0, 30, tzinfo=dt.UTC).timestamp()
    clock = VirtualClock(start)
    journal = MemoryJournal(clock=clock.now)
    await journal.open()
    settings = ReconciliationConfig(catch_up_days=1, retry_failed_after_s=3600, stale_run_s=600)
    flaky = _FlakyReport(MemoryChannel("a", clock=clock.now), failures=1)
    reconciler = settlements.Reconciler(_deps(journal, clock, {"a": flaky}, {"a": _cfg("a")}, settings), lambda: ["a"])
    dead = settlements.ReconRun("rn_dead", "a", "2026-11-01", "manual", "running", start - 700)
    assert await journal.recon_start(dead)
    try:
        await reconciler.pass_once()
        runs = {r.id: r for r in await journal.recon_runs()}
        assert runs["rn_dead"].status == "failed" and runs["rn_dead"].reason.startswith("interrupted")
        [first] = [r for r in runs.values() if r.date == "2026-12-02"]
        assert first.status == "failed" and "503" in first.reason
        clock.advance(600)
        await reconciler.pass_once()
        assert [r.status for r in await journal.recon_runs("a") if r.date == "2026-12-02"] == ["failed"], \
            "not retried before retry_failed_after_s"
        clock.advance(3600)
        await reconciler.pass_once()
        assert sorted(r.status for r in await journal.recon_runs("a") if r.date == "2026-12-02") == [
            "completed", "failed"]
        clock.advance(600)
        await reconciler.pass_once()
        assert len([r for r in await journal.recon_runs("a") if r.date == "2026-12-02"]) == 2, "done: not again"
    finally:
        await journal.close()
