"""The journal's checkpointer catches up with the writer: it repeats its pass while the
writer keeps adding frames, so the WAL is left fully copied and the writer's next
transaction starts it over, instead of the WAL growing to the writer's own (slow,
in-commit) checkpoint. Real SQLite files in WAL mode; the "writer" is a second
connection."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orchestrator.journal._sqlite_ops import catch_up, connect


@pytest.fixture
def db(tmp_path: Path):
    path = str(tmp_path / "j.db")
    writer = connect(path)
    writer.execute("PRAGMA wal_autocheckpoint=0")  # only the checkpointer copies
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    checkpointer = connect(path)
    yield path, writer, checkpointer
    writer.close()
    checkpointer.close()


def _write(conn: sqlite3.Connection, rows: int = 50) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (body) VALUES (?)", [("x" * 300,)] * rows)
    conn.execute("COMMIT")


def _wal_frames(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


class _Racing:
    """The checkpointer's connection, with the writer committing a transaction during
    each of its first ``times`` passes: begun before the pass (so with frames not yet
    copied, and the WAL cannot start over under it), committed after."""

    def __init__(self, conn: sqlite3.Connection, writer: sqlite3.Connection, times: int) -> None:
        self.conn, self.writer, self.times = conn, writer, times
        self.passes: list[tuple[int, int, int]] = []

    def execute(self, sql: str) -> _Row:
        racing = self.times > 0
        if racing:
            self.times -= 1
            self.writer.execute("BEGIN IMMEDIATE")
            self.writer.executemany("INSERT INTO t (body) VALUES (?)", [("y" * 300,)] * 50)
        row = self.conn.execute(sql).fetchone()
        if racing:
            self.writer.execute("COMMIT")
        self.passes.append(row)
        return _Row(row)


class _Row:
    def __init__(self, row: tuple[int, int, int]) -> None:
        self.row = row

    def fetchone(self) -> tuple[int, int, int]:
        return self.row


def test_passes_repeat_while_the_writer_adds_frames_then_stop(db):
    _, writer, checkpointer = db
    _write(writer)
    racing = _Racing(checkpointer, writer, times=2)
    assert catch_up(racing, passes=6) == 4  # type: ignore[arg-type]
    logs = [log for _, log, _ in racing.passes]
    assert logs[0] < logs[1] < logs[2] == logs[3]  # the last pass found nothing new
    assert all(copied == log for _, log, copied in racing.passes)


def test_a_caught_up_wal_starts_over_at_the_next_write(db):
    _, writer, checkpointer = db
    for _ in range(5):
        _write(writer)
    grown = _wal_frames(checkpointer)
    assert catch_up(checkpointer, passes=6) == 2
    _write(writer)
    # The writer began with every frame copied and no reader in the WAL: it wrote from
    # the WAL's start, so the log now holds only that one commit's frames.
    assert 0 < _wal_frames(checkpointer) < grown


def test_a_reader_holding_old_frames_ends_the_passes_at_once(db):
    path, writer, checkpointer = db
    _write(writer)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchone()  # a snapshot before the next write
        _write(writer)
        racing = _Racing(checkpointer, writer, times=3)
        assert catch_up(racing, passes=6) == 1  # type: ignore[arg-type]
        _, log, copied = racing.passes[0]
        assert copied < log  # the reader's snapshot keeps the newer frames in the WAL
    finally:
        reader.close()


def test_the_passes_are_bounded(db):
    _, writer, checkpointer = db
    _write(writer)
    racing = _Racing(checkpointer, writer, times=100)
    assert catch_up(racing, passes=3) == 3  # type: ignore[arg-type]
