"""Settlement reconciliation (SPEC 21): a channel's report of what it settled on a day,
matched against the journal, every difference classified and kept with its evidence.

A run streams the report into the store (``recon_stage``: never held whole), walks the
staged items in pages joined with the journal (``recon_matches``), then the captures we
kept that the report does not name (``recon_unreported``), and stages what it finds. Only
a report read whole completes a run: one that is unreachable, malformed or truncated
fails it, and nothing it found is kept. After a completed run, what can be fixed
automatically is: a payment the provider settled while we think it took nothing (or have
not heard) is inquired again now, so the state machine credits or refunds it by its usual
rules (``transitions.recheck``); the rest stays open for a person.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import structlog

from channels import SettlementItem, SettlementReportError
from config import ChannelConfig, ReconciliationConfig
from orchestrator import transitions as tr
from orchestrator.clock import Clock
from orchestrator.errors import NotFound, Refusal
from orchestrator.journal import Journal, MatchRow, ReportRow
from orchestrator.metrics import Metrics
from orchestrator.model import AttemptState, Discrepancy, DiscrepancyKind as K, ReconRun

__all__ = ["ReconDeps", "Reconciler", "begin", "classify", "expected_fee", "finish", "reconcile", "run_view"]

log = structlog.get_logger("settlements")

PAGE = 5000
PURGE_PAGE = 20_000  # staged items deleted per write: tens of milliseconds of the SQLite writer
PASS_S = 300.0  # how often each instance's reconciler looks for work between scheduled runs
_OPEN = frozenset({"started", "pending", "unknown", "void_requested"})
_NOTHING_TAKEN = frozenset({"declined", "voided", "not_processed"})
_BEING_REFUNDED = frozenset({"refund_requested", "refunded"})
SETTLED_STATUSES = frozenset({"captured", "refunded"})  # what a report item may say of a payment


@dataclass(frozen=True, slots=True)
class ReconDeps:
    journal: Journal
    clock: Clock
    metrics: Metrics
    channel: Callable[[str], Awaitable[Any]]  # the live (or retired) channel by name, or None
    channel_config: Callable[[str], Awaitable[ChannelConfig | None]]
    settings: Callable[[], ReconciliationConfig]
    new_id: Callable[[], str] = field(default=lambda: "rn_" + secrets.token_hex(8))


def expected_fee(amount_minor: int, cfg: ChannelConfig) -> int:
    """The channel's configured fee on an amount: fixed plus percent, rounded half up."""
    percent = (Decimal(amount_minor) * Decimal(str(cfg.fee.percent)) / 100).quantize(Decimal(1), ROUND_HALF_UP)
    return cfg.fee.fixed_minor + int(percent)


def _reported(m: MatchRow) -> dict[str, Any]:
    return {"status": m.status, "amount_minor": m.amount_minor, "currency": m.currency, "fee_minor": m.fee_minor,
            "provider_ref": m.provider_ref, "settled_at": m.settled_at}


def _ours(m: MatchRow) -> dict[str, Any]:
    return {"attempt": m.attempt_state, "recharge": m.recharge_id, "recharge_status": m.recharge_status,
            "channel": m.recharge_channel, "amount_minor": m.recharge_amount_minor, "currency": m.recharge_currency}


def classify(m: MatchRow, cfg: ChannelConfig, fee_tolerance_minor: int = 0) -> Discrepancy | None:
    """What one report item says against the journal (SPEC 21); None when they agree.
    ``resolving``: the run inquires the attempt again once it completes."""
    if m.attempt_state is None or m.attempt_channel != cfg.name:
        return Discrepancy(m.reference, K.MISSING_IN_JOURNAL, None, m.amount_minor, m.currency, None, _reported(m))
    found = _reported(m), _ours(m)
    if m.attempt_state in _BEING_REFUNDED:
        # A capture nobody keeps, refunded by the late-capture path: settled and refunded agree;
        # reported captured while we hold it refunded, a person looks.
        if m.attempt_state == "refunded" and m.status != "refunded":
            return _found(m, K.STATUS_MISMATCH, *found)
        return None
    if m.attempt_state in _NOTHING_TAKEN:
        return _found(m, K.ORPHAN_CAPTURE, *found, "resolving")
    if m.attempt_state in _OPEN:
        return _found(m, K.STATUS_MISMATCH, *found, "resolving")
    kept = m.recharge_status == "succeeded" and m.recharge_channel == cfg.name
    if not kept:
        return _found(m, K.ORPHAN_CAPTURE, *found)  # captured, parked for a person (its amount was wrong)
    if m.amount_minor != m.recharge_amount_minor or m.currency != m.recharge_currency:
        return _found(m, K.AMOUNT_MISMATCH, *found)
    if m.status not in SETTLED_STATUSES or (m.status == "refunded" and (m.refunded_minor or 0) < m.amount_minor):
        # Refunded at the provider beyond our refunds (from its dashboard, say), or a status we
        # do not know: the user keeps coins for money given back.
        return _found(m, K.STATUS_MISMATCH, found[0], {**found[1], "refunded_minor": m.refunded_minor})
    fee = expected_fee(m.amount_minor, cfg)
    if abs(m.fee_minor - fee) > fee_tolerance_minor:
        return Discrepancy(m.reference, K.FEE_MISMATCH, m.recharge_id, abs(m.fee_minor - fee), m.currency,
                           {**found[1], "fee_minor": fee}, found[0])
    return None


def _found(m: MatchRow, kind: K, reported: dict[str, Any], ours: dict[str, Any], status: str = "open") -> Discrepancy:
    amount = abs(m.amount_minor - (m.recharge_amount_minor or 0)) if kind is K.AMOUNT_MISMATCH else m.amount_minor
    return Discrepancy(m.reference, kind, m.recharge_id, amount, m.currency, ours, reported, status,
                       "inquire the attempt again" if status == "resolving" else None)


def _day(date: str) -> tuple[float, float]:
    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        raise Refusal(f"date must be a day as YYYY-MM-DD, not {date!r}", code="invalid_field", field="date") from None
    if len(date) != 10:
        raise Refusal(f"date must be a day as YYYY-MM-DD, not {date!r}", code="invalid_field", field="date")
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
    return start, start + 86_400


class _Tally:
    """Counts and amounts by class and currency, and what the report settled."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.amount: dict[str, Counter[str]] = defaultdict(Counter)
        self.settled: Counter[str] = Counter()
        self.discrepant: Counter[str] = Counter()
        self.duplicates = 0  # items naming a reference the report named before (staged once)

    def add(self, d: Discrepancy) -> None:
        self.count[d.kind.value] += 1
        if d.amount_minor is not None and d.currency is not None:
            self.amount[d.kind.value][d.currency] += d.amount_minor
            self.discrepant[d.currency] += d.amount_minor

    def summary(self) -> dict[str, Any]:
        currencies = {}
        for cur in sorted(set(self.settled) | set(self.discrepant)):
            settled, off = self.settled[cur], self.discrepant[cur]
            currencies[cur] = {"settled_minor": settled, "discrepant_minor": off,
                               "deviation_rate": None if settled == 0 else off / settled}
        return {"classes": {k.value: {"count": self.count[k.value], "amount_minor": dict(self.amount[k.value])}
                            for k in K},
                "discrepancies": sum(self.count.values()), "currencies": currencies,
                "repeated_items": self.duplicates}


async def begin(channel: str, date: str, deps: ReconDeps, trigger: str = "manual") -> ReconRun | None:
    """Check the request and record the run; None when it is scheduled and the day's
    scheduled run exists already (another instance took it)."""
    _day(date)
    if await deps.channel_config(channel) is None or await deps.channel(channel) is None:
        raise NotFound(f"no channel {channel!r} in the config")
    run = ReconRun(deps.new_id(), channel, date, trigger, "running", deps.clock.now())
    return run if await deps.journal.recon_start(run) else None


async def finish(run: ReconRun, deps: ReconDeps) -> ReconRun:
    """Read the report whole, match it, keep what it found (or fail, keeping nothing), then
    fix what can be fixed. Never raises for a bad report: the run says why it failed."""
    try:
        done = await _run(run, deps)
    except SettlementReportError as exc:
        done = await _fail(run, str(exc), deps)
    except Exception as exc:  # a store failure mid-run: the run fails, its staged rows go
        log.exception("reconciliation_failed", run=run.id)
        done = await _fail(run, f"internal error: {type(exc).__name__}: {exc}", deps)
    await _purge(run.id, deps)
    deps.metrics.reconciliations.labels(run.channel, done.status).inc()
    await _publish_open(deps)
    if done.status == "completed":
        await _fix(done, deps)
    log.info("reconciliation_done", run=run.id, channel=run.channel, date=run.date, status=done.status,
             reason=done.reason, items=done.report_items,
             discrepancies=(done.summary or {}).get("discrepancies"))
    return done


async def reconcile(channel: str, date: str, deps: ReconDeps, trigger: str = "manual") -> ReconRun | None:
    run = await begin(channel, date, deps, trigger)
    return None if run is None else await finish(run, deps)


async def _purge(run_id: str, deps: ReconDeps) -> None:
    """The ended run's staged report, dropped a slice per write (the writer stays free)."""
    while await deps.journal.recon_purge(run_id, PURGE_PAGE):
        pass


async def _fail(run: ReconRun, reason: str, deps: ReconDeps) -> ReconRun:
    done = await deps.journal.recon_finish(run.id, "failed", reason, deps.clock.now(), 0, None)
    return done or run


async def _run(run: ReconRun, deps: ReconDeps) -> ReconRun:
    cfg = await deps.channel_config(run.channel)
    channel = await deps.channel(run.channel)
    if cfg is None or channel is None:
        raise SettlementReportError(f"channel {run.channel!r} left the config")
    settings = deps.settings()
    tally = _Tally()
    items = 0
    batch: list[SettlementItem]
    async with contextlib.aclosing(channel.settlements(run.date)) as report:
        async for batch in report:
            rows = [ReportRow(i.reference, i.provider_ref, i.status, i.amount_minor, i.currency, i.fee_minor,
                              i.settled_at) for i in batch]
            new = await deps.journal.recon_stage(run.id, rows)
            items += new
            tally.duplicates += len(rows) - new
    if tally.duplicates:
        log.warning("settlement_report_repeats_references", run=run.id, channel=run.channel, repeated=tally.duplicates)
    # Captures of the neighbouring days found missing from their reports: settled on this day?
    elsewhere = await _missing_near(run, deps)
    after = ""
    while page := await deps.journal.recon_matches(run.id, after, settings.page_size):
        found = []
        for m in page:
            tally.settled[m.currency] += m.amount_minor
            d = classify(m, cfg, settings.fee_tolerance_minor)
            if d is not None:
                found.append(d)
                tally.add(d)
            if m.reference in elsewhere:
                await deps.journal.resolve_discrepancy(elsewhere[m.reference].seq, "resolved",
                                                       f"settled in the report of {run.date}", deps.clock.now())
        await deps.journal.recon_found(run.id, found)
        after = page[-1].reference
    start, end = _day(run.date)
    grace = settings.day_edge_grace_s
    after = ""
    while page2 := await deps.journal.recon_unreported(run.id, run.channel, start + grace, end + grace, after,
                                                       settings.page_size):
        found = [Discrepancy(ref, K.MISSING_IN_REPORT, rid, amount, cur, {"recharge": rid, "amount_minor": amount,
                                                                         "currency": cur}, None)
                 for ref, rid, amount, cur in page2]
        for d in found:
            tally.add(d)
        await deps.journal.recon_found(run.id, found)
        after = page2[-1][0]
    done = await deps.journal.recon_finish(run.id, "completed", None, deps.clock.now(), items, tally.summary())
    if done is None:
        raise RuntimeError(f"run {run.id} was no longer running")
    return done


async def _missing_near(run: ReconRun, deps: ReconDeps) -> dict[str, Discrepancy]:
    """The open ``missing_in_report`` discrepancies of the day before and after: a capture
    near midnight may be settled on either side of it."""
    day = dt.date.fromisoformat(run.date)
    out: dict[str, Discrepancy] = {}
    for other in (day - dt.timedelta(days=1), day + dt.timedelta(days=1)):
        after = 0
        while page := await deps.journal.discrepancies(run.channel, other.isoformat(), "open", after, PAGE):
            out.update((d.reference, d) for d in page if d.kind is K.MISSING_IN_REPORT)
            after = page[-1].seq
    return out


async def _fix(run: ReconRun, deps: ReconDeps) -> None:
    """Inquire again each attempt this run found settled while we hold it took nothing (or
    have not heard): the state machine credits or refunds what the provider says it took."""
    after = 0
    while page := await deps.journal.discrepancies(run.channel, run.date, "resolving", after, PAGE):
        for d in page:
            if d.run_id == run.id and not await _settle(d, deps):
                await _recheck(d, deps)
        after = page[-1].seq


async def _settle(d: Discrepancy, deps: ReconDeps) -> bool:
    """Resolve (or hand to a person) a resolving discrepancy by its attempt's state now;
    False while the inquiry it asked for has not answered yet."""
    now = deps.clock.now()
    rec = await deps.journal.get(d.recharge_id) if d.recharge_id else None
    att = rec.attempt(d.reference) if rec is not None else None
    if rec is None or att is None:
        return await deps.journal.resolve_discrepancy(d.seq, "open", "the attempt is gone from the journal", now)
    if att.state in (AttemptState.REFUND_REQUESTED, AttemptState.REFUNDED):
        return await deps.journal.resolve_discrepancy(d.seq, "resolved", "refunded (a capture nobody keeps)", now)
    if att.state is AttemptState.CAPTURED:
        kept = rec.status.value == "succeeded" and rec.channel == att.channel
        return await deps.journal.resolve_discrepancy(d.seq, "resolved" if kept else "open",
                                                      "credited" if kept else "captured, not kept: for a person", now)
    if att.state.value in _NOTHING_TAKEN and att.late_check_at is None and d.run_id and att.updated_at > d.created_at:
        # Inquired again since it was found, and the provider still says it took nothing.
        return await deps.journal.resolve_discrepancy(
            d.seq, "open", f"inquired again: the provider answers {att.state.value}, its report says captured", now)
    return False


async def _recheck(d: Discrepancy, deps: ReconDeps) -> None:
    rec = await deps.journal.get(d.recharge_id) if d.recharge_id else None
    att = rec.attempt(d.reference) if rec is not None else None
    if rec is None or att is None:
        return
    step = tr.recheck(rec, att, deps.clock.now())
    if step is not None and not await deps.journal.apply(step):
        log.info("reconciliation_recheck_raced", reference=d.reference)  # it moved: the next pass looks again


async def _publish_open(deps: ReconDeps) -> dict[str, int]:
    counts = await deps.journal.open_discrepancies()
    gauge = deps.metrics.open_discrepancies
    for channel in {*counts, *deps.metrics.discrepancy_channels}:
        gauge.labels(channel).set(counts.get(channel, 0))
    deps.metrics.discrepancy_channels.update(counts)
    return counts


def run_view(run: ReconRun, items: list[Discrepancy] | None = None, next_after: int | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": run.id, "channel": run.channel, "date": run.date, "trigger": run.trigger,
                           "status": run.status, "reason": run.reason, "started_at": _iso(run.started_at),
                           "finished_at": None if run.finished_at is None else _iso(run.finished_at),
                           "report_items": run.report_items, "summary": run.summary}
    if items is not None:
        doc["discrepancies"] = [{"seq": d.seq, "reference": d.reference, "kind": d.kind.value, "status": d.status,
                                 "resolution": d.resolution, "recharge_id": d.recharge_id,
                                 "amount_minor": d.amount_minor, "currency": d.currency, "expected": d.expected,
                                 "reported": d.reported, "run_id": d.run_id, "updated_at": _iso(d.updated_at)}
                                for d in items]
        doc["next_after"] = next_after
    return doc


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


class Reconciler:
    """Each instance: runs started by the API in the background, and the daily schedule
    (yesterday's report of every channel at ``schedule_utc``; on one store, the instance
    whose run is recorded first does a day, the others skip it)."""

    def __init__(self, deps: ReconDeps, channels: Callable[[], list[str]]) -> None:
        self._deps = deps
        self._channels = channels
        self._tasks: set[asyncio.Task[ReconRun]] = set()
        self.last: dict[str, dict[str, Any]] = {}  # channel -> its last run's view (the status page)
        self.open: dict[str, int] = {}  # channel -> discrepancies not resolved

    def start(self, run: ReconRun) -> asyncio.Task[ReconRun]:
        task = asyncio.get_running_loop().create_task(self._finish(run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish(self, run: ReconRun) -> ReconRun:
        done = await finish(run, self._deps)
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("reconciliation_refresh_failed", error=str(exc))
        return done

    async def refresh(self) -> dict[str, dict[str, Any]]:
        runs = await self._deps.journal.recon_runs(limit=500)
        last: dict[str, dict[str, Any]] = {}
        for run in runs:
            last.setdefault(run.channel, run_view(run))
        self.last = last
        self.open = await _publish_open(self._deps)
        return last

    async def run_forever(self) -> None:
        while True:
            try:
                await self.pass_once()
            except Exception as exc:
                log.warning("reconciliation_pass_failed", error=str(exc))
            s = self._deps.settings()
            now = self._deps.clock.now()
            await self._deps.clock.sleep(min(max(1.0, _next_at(now, s.schedule_utc) - now), PASS_S))

    async def pass_once(self) -> None:
        """Expire runs an instance's death left running; settle what earlier fixes did; then
        every channel's days due and not reconciled yet (missed, or failed a while ago)."""
        deps, s = self._deps, self._deps.settings()
        now = deps.clock.now()
        runs = await deps.journal.recon_runs(limit=500)
        for run in runs:
            if run.status == "running" and now - run.started_at > s.stale_run_s:
                await deps.journal.recon_finish(run.id, "failed", "interrupted: the run stopped making progress "
                                                "(its instance stopped?)", now, 0, None)
                await _purge(run.id, deps)
        for channel in self._channels():
            for day in _due_days(now, s.schedule_utc, s.catch_up_days):
                await self._settle_day(channel, day)
        await self.refresh()
        if not s.enabled:
            return
        for channel in self._channels():
            for day in _due_days(now, s.schedule_utc, s.catch_up_days):
                mine = [r for r in await deps.journal.recon_runs(channel, limit=100) if r.date == day]
                if any(r.status != "failed" for r in mine):
                    continue
                if mine and now - max(r.finished_at or r.started_at for r in mine) < s.retry_failed_after_s:
                    continue
                run = await begin(channel, day, deps, trigger="schedule")
                if run is not None:
                    await self._finish(run)

    async def _settle_day(self, channel: str, day: str) -> None:
        after = 0
        while page := await self._deps.journal.discrepancies(channel, day, "resolving", after, PAGE):
            for d in page:
                await _settle(d, self._deps)
            after = page[-1].seq

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _due_days(now: float, hhmm: str, back: int) -> list[str]:
    """The days whose report is due by ``now`` (the day after each, at ``hhmm`` UTC), the
    ``back`` most recent of them, oldest first."""
    last_due = _next_at(now, hhmm) - 86_400  # the latest run time at or before now
    newest = dt.datetime.fromtimestamp(last_due, dt.UTC).date() - dt.timedelta(days=1)
    return [(newest - dt.timedelta(days=k)).isoformat() for k in range(back - 1, -1, -1)]


def _next_at(now: float, hhmm: str) -> float:
    """The next time of day ``hhmm`` (UTC) at or after ``now``."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    today = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)
    t = today.timestamp()
    return t if t >= now else t + 86_400
