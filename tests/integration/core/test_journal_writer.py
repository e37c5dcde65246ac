"""The SQLite journal's writer process: it goes when its owner goes, a dead writer is
replaced, and what it was told before dying is durable or not, never half-written."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from harness import SqliteStore, make_recharge

from orchestrator.clock import VirtualClock
from orchestrator.invariants import check
from orchestrator.journal import JournalError, SqliteJournal
from orchestrator.model import Recharge

ROOT = Path(__file__).resolve().parents[3]


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


async def test_the_writer_exits_when_its_owner_is_killed(tmp_path):
    """kill -9 of the orchestrator leaves no writer behind to hold the file."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from orchestrator.journal import SqliteJournal
        async def main():
            j = SqliteJournal({str(tmp_path / "j.db")!r})
            await j.open()
            print(j.writer_pid, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert owner.stdout is not None
        writer_pid = int(owner.stdout.readline())
        assert psutil.pid_exists(writer_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        assert _wait_gone(writer_pid), "the writer outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()


async def test_a_killed_writer_is_replaced_and_nothing_is_half_written(tmp_path):
    clock = VirtualClock()
    store = SqliteStore(tmp_path / "j.db")
    journal = SqliteJournal(store.path)
    await journal.open()
    try:
        made = [make_recharge(clock, f"k{i}", user=f"u{i}") for i in range(200)]
        first_pid = journal.writer_pid
        assert first_pid is not None
        # Kill the writer while a stream of creates is in flight.
        tasks = [asyncio.ensure_future(journal.create(r, t)) for r, t in made]
        await asyncio.sleep(0)
        os.kill(first_pid, signal.SIGKILL)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed and all(isinstance(r, JournalError) for r in failed), failed
        # A new writer takes over; writes work again.
        deadline = time.monotonic() + 20
        while journal.writer_pid in (None, first_pid):
            assert time.monotonic() < deadline, "the writer was not replaced"
            await asyncio.sleep(0.05)
        again = await asyncio.gather(*(journal.create(r, t) for r, t in made), return_exceptions=True)
        # Every recharge now exists exactly once: either the dead writer committed it (the
        # retry answers the holder) or the new one did.
        assert all(isinstance(r, Recharge) or r is None for r in again), again
        rows = store.peek("SELECT idempotency_key, COUNT(*) FROM recharges GROUP BY idempotency_key")
        assert len(rows) == 200 and all(n == 1 for _, n in rows)
        # Each recharge row has its trail entry: no transaction was half-applied.
        assert store.peek("SELECT COUNT(*) FROM recharges r WHERE NOT EXISTS "
                          "(SELECT 1 FROM trail t WHERE t.recharge_id = r.id)") == [(0,)]
        report = await check(journal, [], settled=False)
        assert report.ok, report.violations
    finally:
        await journal.close()


async def test_a_value_that_cannot_be_sent_fails_only_its_caller(tmp_path):
    clock = VirtualClock()
    journal = SqliteJournal(tmp_path / "j.db")
    await journal.open()
    try:
        good, trail = make_recharge(clock, "good")
        bad, bad_trail = make_recharge(clock, "bad", user="u2")
        bad.metadata = {"when": object()}  # not JSON
        results = await asyncio.gather(journal.create(good, trail), journal.create(bad, bad_trail),
                                       return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], TypeError)
        assert await journal.get(good.id) is not None
        assert await journal.get(bad.id) is None
    finally:
        await journal.close()


async def test_a_journal_that_cannot_open_says_why(tmp_path):
    (tmp_path / "not-a-db").write_bytes(b"this is not a sqlite file" * 100)
    journal = SqliteJournal(tmp_path / "not-a-db")
    with pytest.raises(JournalError, match="cannot open journal"):
        await journal.open()
    await journal.close()


async def test_commit_interval_folds_more_steps_into_each_commit_under_load(tmp_path):
    """Once a commit holds many steps (a burst: the writer is loaded), the next ones wait
    up to the commit interval, so a steady stream of steps shares fewer commits; every
    step is still committed before its caller hears back."""
    from orchestrator.journal._sqlite_writer import BUSY_BATCH

    clock = VirtualClock()
    batches: list[int] = []
    # A long interval, so even a slow machine's stream (sleeps of a few ms) fills each
    # wait with more than CALM_BATCH steps and the writer stays loaded.
    journal = SqliteJournal(tmp_path / "j.db", commit_interval_ms=25, on_commit=lambda n, s: batches.append(n))
    await journal.open()
    try:
        made = [make_recharge(clock, f"k{i}", user=f"u{i}") for i in range(100 + 2 * BUSY_BATCH)]
        burst, rest = made[:2 * BUSY_BATCH], made[2 * BUSY_BATCH:]
        pending = [asyncio.ensure_future(journal.create(r, t)) for r, t in burst]  # one loop turn: one frame
        for r, t in rest:
            pending.append(asyncio.ensure_future(journal.create(r, t)))
            await asyncio.sleep(0.0005)
        assert await asyncio.gather(*pending) == [None] * len(made)
        assert batches[0] >= BUSY_BATCH, batches
        assert len(batches) < 40, batches
        assert SqliteStore(tmp_path / "j.db").peek("SELECT COUNT(*) FROM recharges") == [(len(made),)]
    finally:
        await journal.close()


async def test_lightly_loaded_steps_commit_one_by_one_without_waiting_for_company(tmp_path):
    """Steps that come one at a time commit one at a time: the interval only applies
    after a big batch, so a long interval does not hold a lone step back."""
    clock = VirtualClock()
    batches: list[int] = []
    journal = SqliteJournal(tmp_path / "j.db", commit_interval_ms=50, on_commit=lambda n, s: batches.append(n))
    await journal.open()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(20):
            r, t = make_recharge(clock, f"k{i}", user=f"u{i}")
            assert await journal.create(r, t) is None
        # Waiting the interval before each commit would take 20 x 50 ms at the least.
        assert loop.time() - started < 0.9
        assert batches[-20:] == [1] * 20
    finally:
        await journal.close()


async def test_one_writer_serves_several_journals_and_outlives_them_but_not_its_owner(tmp_path):
    """The supervisor's arrangement: one writer process, its owner holding the lifeline,
    each worker's journal connected to it by path."""
    from orchestrator.journal._sqlite_writer import spawn, wait_ready

    path = str(tmp_path / "j.db")
    listen = str(tmp_path / "writer.sock")
    proc, lifeline = spawn(path, 512, 0.001, listen=listen)
    try:
        pid = await asyncio.get_running_loop().run_in_executor(None, wait_ready, lifeline)
        assert pid == proc.pid
        clock = VirtualClock()
        batches: list[int] = []
        a = SqliteJournal(path, writer_socket=listen, on_commit=lambda n, s: batches.append(n))
        b = SqliteJournal(path, writer_socket=listen)
        await a.open()
        await b.open()
        made = [make_recharge(clock, f"k{i}", user=f"u{i}") for i in range(200)]
        results = await asyncio.gather(*(([a, b][i % 2]).create(r, t) for i, (r, t) in enumerate(made)))
        assert results == [None] * 200
        assert max(batches) > 1, "steps from both journals share commits"
        await a.close()  # one worker gone: the writer goes on for the other
        rec, trail = make_recharge(clock, "after", user="u-after")
        assert await b.create(rec, trail) is None
        store = SqliteStore(tmp_path / "j.db")
        assert store.peek("SELECT COUNT(*) FROM recharges") == [(201,)]
        assert (await check(b, [], settled=False)).ok
        await b.close()
        lifeline.close()  # the owner goes: so does the writer
        assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10) == 0
        assert not os.path.exists(listen)
    finally:
        if proc.poll() is None:
            proc.kill()
        lifeline.close()


async def test_a_client_speaking_garbage_is_dropped_and_the_writer_serves_the_others(tmp_path):
    import socket as _socket

    from orchestrator.journal import _wire
    from orchestrator.journal._sqlite_writer import spawn, wait_ready

    path = str(tmp_path / "j.db")
    listen = f"@orchestrator-test-{os.getpid()}-{id(tmp_path)}"  # abstract: nothing on disk
    proc, lifeline = spawn(path, 512, 0.0, listen=listen)
    try:
        await asyncio.get_running_loop().run_in_executor(None, wait_ready, lifeline)
        good = SqliteJournal(path, writer_socket=listen)
        await good.open()
        for garbage in (_wire.pack(b"[1]"), _wire.pack(b"not json"), _wire.HEADER.pack(_wire.MAX_FRAME + 1)):
            bad = _socket.socket(_socket.AF_UNIX)
            bad.connect("\0" + listen[1:])
            bad.recv(100)  # its ready frame
            bad.sendall(garbage)
            assert bad.recv(100) == b"", "the writer hangs up on a client that is not speaking its protocol"
            bad.close()
        clock = VirtualClock()
        rec, trail = make_recharge(clock, "after-garbage")
        assert await good.create(rec, trail) is None
        assert proc.poll() is None
        await good.close()
    finally:
        lifeline.close()
        proc.wait(10)


async def test_ctrl_c_to_the_process_group_leaves_the_writer_to_its_owner(tmp_path):
    journal = SqliteJournal(tmp_path / "j.db")
    await journal.open()
    try:
        pid = journal.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGHUP)
        await asyncio.sleep(0.3)
        clock = VirtualClock()
        rec, trail = make_recharge(clock, "after-sigint")
        assert await journal.create(rec, trail) is None
        assert journal.writer_pid == pid, "the same writer, still alive"
    finally:
        await journal.close()


async def test_a_large_burst_is_sent_in_frames_the_writer_accepts(tmp_path, monkeypatch):
    from orchestrator.journal import _wire

    monkeypatch.setattr(_wire, "FRAME_BUDGET", 4096)  # many frames from one loop turn
    clock = VirtualClock()
    journal = SqliteJournal(tmp_path / "j.db")
    await journal.open()
    try:
        made = [make_recharge(clock, f"burst-{i}", user=f"u{i}") for i in range(300)]
        for rec, _ in made:
            rec.metadata = {"note": "x" * 400}
        assert await asyncio.gather(*(journal.create(r, t) for r, t in made)) == [None] * 300
    finally:
        await journal.close()
