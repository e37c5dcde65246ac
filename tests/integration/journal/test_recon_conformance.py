"""Settlement reconciliation's storage (SPEC 21), for every store: a run stages the report
and what it finds; completed, the findings join the day's discrepancies once per reference
and kind (a repeat run adds none, and resolves what it did not find again); failed, nothing
of it stays; one scheduled run per channel and day."""

from __future__ import annotations

from harness import SETTINGS, make_recharge
from test_conformance import clock, cstore, journal, kind  # noqa: F401  (fixtures)

from channels import AttemptOutcome, ChannelResult
from orchestrator import transitions as tr
from orchestrator.journal import ReportRow
from orchestrator.model import Discrepancy, DiscrepancyKind as K, ReconRun

DAY = "2026-12-03"


async def _captured(journal, clock, key: str, channel: str = "a", outcome=AttemptOutcome.CAPTURED):
    """A recharge whose one attempt on ``channel`` the provider answered ``outcome``."""
    rec, trail = make_recharge(clock, key)
    assert await journal.create(rec, trail) is None
    step = tr.begin_attempt(rec, channel, clock.now())
    assert await journal.apply(step)
    tr.reduce(rec, step)
    step = tr.on_answer(rec, rec.attempts[0], ChannelResult(outcome, f"pr_{key}"), clock.now(), SETTINGS,
                        tr.Source.ATTEMPT)
    assert await journal.apply(step)
    tr.reduce(rec, step)
    return rec


def _run(clock, run_id: str, trigger: str = "manual", channel: str = "a") -> ReconRun:
    return ReconRun(run_id, channel, DAY, trigger, "running", clock.now())


def _item(reference: str, amount: int = 8500, status: str = "captured", fee: int = 0) -> ReportRow:
    return ReportRow(reference, "pr", status, amount, "CNY", fee, "2026-12-03T10:00:00Z")


async def test_a_run_matches_its_staged_report_against_the_journal_and_keeps_what_it_found(journal, clock):
    kept = await _captured(journal, clock, "k1")
    dropped = await _captured(journal, clock, "k2")
    declined = await _captured(journal, clock, "k3", outcome=AttemptOutcome.DECLINED)
    other = await _captured(journal, clock, "k4", channel="b")
    start, end = clock.now() - 3600, clock.now() + 3600
    assert await journal.recon_start(_run(clock, "rn_1"))
    report = [_item(kept.attempts[0].reference), _item(declined.attempts[0].reference), _item("zz-unknown")]
    assert await journal.recon_stage("rn_1", report) == 3
    assert await journal.recon_stage("rn_1", report[:1]) == 0, "a repeated item is staged once"

    pages = [await journal.recon_matches("rn_1", "", 2)]
    pages.append(await journal.recon_matches("rn_1", pages[0][-1].reference, 2))
    rows = {m.reference: m for page in pages for m in page}
    assert [len(p) for p in pages] == [2, 1] and set(rows) == {i.reference for i in report}
    m = rows[kept.attempts[0].reference]
    assert (m.attempt_channel, m.attempt_state, m.recharge_id, m.recharge_status, m.recharge_channel,
            m.recharge_amount_minor, m.recharge_currency, m.settlement) == (
        "a", "captured", kept.id, "succeeded", "a", 8500, "CNY", None)
    assert rows[declined.attempts[0].reference].attempt_state == "declined"
    assert rows["zz-unknown"].attempt_state is None and rows["zz-unknown"].recharge_id is None

    unreported = await journal.recon_unreported("rn_1", "a", start, end, "", 10)
    assert unreported == [(dropped.attempts[0].reference, dropped.id, 8500, "CNY")]
    assert await journal.recon_unreported("rn_1", "a", end, end + 10, "", 10) == [], "outside the day"
    assert other.attempts[0].channel == "b"

    found = [Discrepancy(dropped.attempts[0].reference, K.MISSING_IN_REPORT, dropped.id, 8500, "CNY",
                         {"amount_minor": 8500}, None),
             Discrepancy("zz-unknown", K.MISSING_IN_JOURNAL, None, 8500, "CNY", None, {"amount_minor": 8500}),
             Discrepancy(declined.attempts[0].reference, K.ORPHAN_CAPTURE, declined.id, 8500, "CNY",
                         {"attempt": "declined"}, {"status": "captured"}, "resolving", "recheck scheduled")]
    await journal.recon_found("rn_1", found)
    done = await journal.recon_finish("rn_1", "completed", None, clock.now(), 3, {"classes": {"orphan_capture": 1}})
    assert (done.status, done.report_items, done.summary, done.channel, done.date) == (
        "completed", 3, {"classes": {"orphan_capture": 1}}, "a", DAY)
    assert await journal.recon_finish("rn_1", "completed", None, clock.now(), 3, None) is None, "ended once"
    kept_now = await journal.discrepancies("a", DAY)
    assert [(d.reference, d.kind, d.status, d.run_id) for d in kept_now] == sorted(
        (f.reference, f.kind, f.status, "rn_1") for f in found), "kept in the order of their references"
    by_ref = {d.reference: d for d in kept_now}
    assert by_ref["zz-unknown"].reported == {"amount_minor": 8500}
    assert by_ref[declined.attempts[0].reference].resolution == "recheck scheduled"
    assert await journal.open_discrepancies() == {"a": 3}
    assert len(await journal.recon_matches("rn_1", "", 10)) == 3, "the staged report goes by recon_purge"
    assert await journal.recon_purge("rn_1", 2) == 2 and await journal.recon_purge("rn_1", 2) == 1
    assert await journal.recon_purge("rn_1", 2) == 0 and await journal.recon_matches("rn_1", "", 10) == []

    # The same day again: two found again (no duplicates, the resolving one stays so), one not.
    clock.advance(60)
    assert await journal.recon_start(_run(clock, "rn_2"))
    await journal.recon_found("rn_2", found[1:])
    await journal.recon_finish("rn_2", "completed", None, clock.now(), 2, None)
    again = {d.reference: d for d in await journal.discrepancies("a", DAY)}
    assert len(again) == 3
    assert (again["zz-unknown"].status, again["zz-unknown"].run_id) == ("open", "rn_2")
    assert again[declined.attempts[0].reference].status == "resolving"
    gone = again[dropped.attempts[0].reference]
    assert (gone.status, gone.resolution) == ("resolved", "not found again by rn_2")
    assert await journal.open_discrepancies() == {"a": 2}
    # Found once more after it was resolved: open again.
    assert await journal.recon_start(_run(clock, "rn_3"))
    await journal.recon_found("rn_3", found[:1])
    await journal.recon_finish("rn_3", "completed", None, clock.now(), 1, None)
    assert dropped.attempts[0].reference in [d.reference for d in await journal.discrepancies("a", DAY, status="open")]
    assert [r.id for r in await journal.recon_runs()] == ["rn_3", "rn_2", "rn_1"]
    assert [r.id for r in await journal.recon_runs("b")] == []

    first = (await journal.discrepancies("a", DAY))[0]
    assert [d.seq for d in await journal.discrepancies("a", DAY)] == sorted(d.seq for d in kept_now)
    assert await journal.resolve_discrepancy(first.seq, "resolved", "refunded by hand", clock.now())
    assert not await journal.resolve_discrepancy(10_000, "resolved", "x", clock.now())
    assert (await journal.discrepancies("a", DAY, after=first.seq - 1, limit=1))[0].resolution == "refunded by hand"


async def test_a_failed_run_keeps_nothing_it_staged(journal, clock):
    assert await journal.recon_start(_run(clock, "rn_1"))
    await journal.recon_stage("rn_1", [_item("r1"), _item("r2")])
    await journal.recon_found("rn_1", [Discrepancy("r1", K.MISSING_IN_JOURNAL, None, 1, "CNY", None, None)])
    assert await journal.recon_purge("rn_1", 10) == 0, "not while it runs"
    failed = await journal.recon_finish("rn_1", "failed", "malformed or truncated report: x", clock.now(), 0, None)
    while await journal.recon_purge("rn_1", 1):
        pass
    assert (failed.status, failed.reason) == ("failed", "malformed or truncated report: x")
    assert await journal.discrepancies("a", DAY) == [] and await journal.open_discrepancies() == {}
    assert await journal.recon_matches("rn_1", "", 10) == []
    assert (await journal.recon_run("rn_1")).status == "failed"
    assert await journal.recon_run("rn_404") is None


async def test_one_scheduled_run_per_channel_and_day_any_number_by_hand(journal, clock):
    assert await journal.recon_start(_run(clock, "rn_1", "schedule"))
    assert not await journal.recon_start(_run(clock, "rn_2", "schedule")), "another instance took the day"
    assert await journal.recon_start(_run(clock, "rn_3", "schedule", channel="b"))
    assert await journal.recon_start(_run(clock, "rn_4")) and await journal.recon_start(_run(clock, "rn_5"))
    assert {r.id for r in await journal.recon_runs()} == {"rn_1", "rn_3", "rn_4", "rn_5"}
