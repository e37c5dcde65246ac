"""The hash-chained audit log on both stores: every trail entry chains to the one before;
verification passes on what the engine wrote and names the first entry altered."""

from __future__ import annotations

import asyncio

from harness import Core

from channels import AttemptOutcome
from channels.memory import Action, MemoryChannel
from orchestrator.audit import verify_rows
from orchestrator.model import TrailEntry


async def test_the_chain_verifies_after_real_work_and_names_a_tampered_entry(store):
    a = MemoryChannel("a", lambda op, ref, n: Action.NOT_PROCESSED if op == "authorize" and n == 1 and
                      ref.endswith(".1") else (Action.CAPTURE if op == "authorize" else Action.OK))
    async with Core(store, [a, MemoryChannel("b")]) as core:
        await asyncio.gather(*(core.run(f"k{i}", user=f"u{i}") for i in range(20)))
        await core.journal.record(TrailEntry("", core.clock.now(), "config_applied", detail={"version": "v2"}))
        rows = await core.journal.audit_rows()
        assert len(rows) > 60
        report = verify_rows(rows)
        assert report.ok and report.entries == len(rows), report
        # One byte of one entry's detail changed: the chain breaks right there.
        victim = rows[len(rows) // 2]
        tampered = [r if r[0] != victim[0] else (*r[:7], (r[7] or "").replace("0", "1", 1) or "x", *r[8:])
                    for r in rows]
        broken = verify_rows(tampered)
        assert broken.broken_at == victim[0] and "altered" in (broken.reason or "")
        removed = [r for r in rows if r[0] != victim[0]]
        assert verify_rows(removed).broken_at == rows[len(rows) // 2 + 1][0]


async def test_a_rejected_step_leaves_no_gap_in_the_chain(store):
    async with Core(store, [MemoryChannel("a")]) as core:
        rec = await core.run("k1")
        # Replays and late events after success: guarded steps rejected, events recorded.
        for i in range(5):
            await core.submit("k1")
            await core.driver.on_event("a", f"ev{i}", rec.attempts[0].reference, AttemptOutcome.PENDING)
        assert verify_rows(await core.journal.audit_rows()).ok
