"""The fleet view's storage (issue 26), for every store: each instance publishes its channel
statistics as one opaque blob, replacing its last; every instance reads the others'
recent ones, newest first; blobs of instances long gone are purged. And a store made
before the fleet view (schema 15) opens with it (migration 16)."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3

import asyncpg
import pytest
from test_conformance import clock, cstore, journal, kind, pair  # noqa: F401  (fixtures)

from orchestrator.journal import FLEET_BLOB_LIMIT, SqliteJournal, _schema, _schema_pg

T0 = 1_760_000_000.0  # wall-clock seconds


async def test_a_blob_is_published_replaced_and_read_back(journal):
    assert await journal.fleet_stats(0.0) == []
    await journal.put_fleet_stats("i-a", b'{"v":1}', T0)
    assert await journal.fleet_stats(T0) == [("i-a", T0, b'{"v":1}')]
    await journal.put_fleet_stats("i-a", b'{"v":2,"more":true}', T0 + 1.5)
    assert await journal.fleet_stats(0.0) == [("i-a", T0 + 1.5, b'{"v":2,"more":true}')], "one row per instance"
    [(instance, at, blob)] = await journal.fleet_stats(0.0)
    assert type(instance) is str and type(at) is float and type(blob) is bytes


async def test_recent_blobs_newest_first_since_inclusive_and_limited(journal):
    published = {"i-c": T0 + 2, "i-a": T0 + 5, "i-b": T0 + 2, "i-d": T0 - 10, "i-e": T0 + 3.25}
    for instance, at in published.items():
        await journal.put_fleet_stats(instance, instance.encode(), at)
    # Newest first; a tie in time in instance order.
    assert [(i, at) for i, at, _ in await journal.fleet_stats(T0)] == [
        ("i-a", T0 + 5), ("i-e", T0 + 3.25), ("i-b", T0 + 2), ("i-c", T0 + 2)]
    assert [i for i, _, _ in await journal.fleet_stats(T0 + 2)] == ["i-a", "i-e", "i-b", "i-c"], "at or after"
    assert [i for i, _, _ in await journal.fleet_stats(T0 + 2.0001)] == ["i-a", "i-e"]
    assert [i for i, _, _ in await journal.fleet_stats(T0, limit=3)] == ["i-a", "i-e", "i-b"]
    assert await journal.fleet_stats(T0, limit=0) == []
    assert await journal.fleet_stats(T0 + 6) == []
    assert len(await journal.fleet_stats(0.0)) == 5
    assert [b for _, _, b in await journal.fleet_stats(T0 + 3)] == [b"i-a", b"i-e"]
    with pytest.raises(ValueError):
        await journal.fleet_stats(T0, limit=-1)


async def test_an_instance_that_republishes_moves_to_the_front(journal):
    await journal.put_fleet_stats("i-a", b"a1", T0)
    await journal.put_fleet_stats("i-b", b"b1", T0 + 1)
    await journal.put_fleet_stats("i-a", b"a2", T0 + 2)
    assert await journal.fleet_stats(T0) == [("i-a", T0 + 2, b"a2"), ("i-b", T0 + 1, b"b1")]
    # Replaced whole: an older time too (a clock stepped back) is what the instance said last.
    await journal.put_fleet_stats("i-a", b"a3", T0 - 1)
    assert await journal.fleet_stats(T0) == [("i-b", T0 + 1, b"b1")]
    assert await journal.fleet_stats(0.0) == [("i-b", T0 + 1, b"b1"), ("i-a", T0 - 1, b"a3")]


async def test_two_instances_on_one_store_read_each_others_blobs(pair):
    a, b = pair
    await a.put_fleet_stats("instance-a", b'{"pay":{"s":9.5,"f":0.5}}', T0)
    await b.put_fleet_stats("instance-b", b'{"pay":{"s":1.0,"f":3.0}}', T0 + 1)
    for j in (a, b):
        assert await j.fleet_stats(T0) == [("instance-b", T0 + 1, b'{"pay":{"s":1.0,"f":3.0}}'),
                                           ("instance-a", T0, b'{"pay":{"s":9.5,"f":0.5}}')]
    await b.put_fleet_stats("instance-b", b"{}", T0 + 2)
    assert (await a.fleet_stats(T0 + 2)) == [("instance-b", T0 + 2, b"{}")]
    assert await a.purge_fleet_stats(T0 + 1) == 1
    assert await b.fleet_stats(0.0) == [("instance-b", T0 + 2, b"{}")]


async def test_any_bytes_round_trip_exactly(journal):
    rng = random.Random(26)
    every_byte = bytes(range(256)) * 4 + b"\x00\x00\xff\xfe\x80\\\"\n\r\t\x7f"
    big = rng.randbytes(1 << 20)  # a megabyte of noise: what a fleet blob may weigh, and beyond JSON
    text = '{"频道":"支付宝","lat":12.5,"nul":"\\u0000"}'.encode()
    blobs = {"every-byte": every_byte, "big": big, "utf8": text, "empty": b"", "nul": b"\x00"}
    for n, (instance, blob) in enumerate(blobs.items()):
        await journal.put_fleet_stats(instance, blob, T0 + n)
    got = {i: blob for i, _, blob in await journal.fleet_stats(0.0)}
    assert got == blobs
    # Any bytes-like value is kept as bytes.
    await journal.put_fleet_stats("view", memoryview(every_byte)[:7], T0)
    await journal.put_fleet_stats("array", bytearray(b"\x01\x02"), T0)
    got = {i: blob for i, _, blob in await journal.fleet_stats(0.0)}
    assert got["view"] == every_byte[:7] and got["array"] == b"\x01\x02"
    assert all(type(b) is bytes for b in got.values())


async def test_a_blob_up_to_the_limit_is_kept_and_one_over_refused(journal):
    await journal.put_fleet_stats("i-a", b"x" * FLEET_BLOB_LIMIT, T0)
    with pytest.raises(ValueError):
        await journal.put_fleet_stats("i-b", b"x" * (FLEET_BLOB_LIMIT + 1), T0)
    [(instance, _, blob)] = await journal.fleet_stats(0.0)
    assert instance == "i-a" and len(blob) == FLEET_BLOB_LIMIT


@pytest.mark.parametrize(("instance", "blob", "at", "error"), [
    ("", b"{}", T0, ValueError),
    (None, b"{}", T0, ValueError),
    ("i-a", "{}", T0, TypeError),
    ("i-a", None, T0, TypeError),
    ("i-a", [1, 2], T0, TypeError),
    ("i-a", b"{}", math.nan, ValueError),
    ("i-a", b"{}", math.inf, ValueError),
    ("i-a", b"{}", None, ValueError),
    ("i-a", b"{}", "1760000000", ValueError),
])
async def test_bad_arguments_are_refused_and_nothing_is_written(journal, instance, blob, at, error):
    with pytest.raises(error):
        await journal.put_fleet_stats(instance, blob, at)
    assert await journal.fleet_stats(-math.inf) == []


async def test_an_integer_time_is_kept_as_seconds(journal):
    await journal.put_fleet_stats("i-a", b"{}", 1_760_000_000)
    assert await journal.fleet_stats(0) == [("i-a", 1_760_000_000.0, b"{}")]
    [(_, at, _)] = await journal.fleet_stats(0)
    assert type(at) is float


async def test_purge_forgets_blobs_published_before_and_counts_them(journal):
    for n, instance in enumerate(["gone-1", "gone-2", "edge", "live"]):
        await journal.put_fleet_stats(instance, b"{}", T0 + 10 * n)  # T0, +10, +20, +30
    assert await journal.purge_fleet_stats(T0 - 1) == 0
    assert await journal.purge_fleet_stats(T0 + 20) == 2, "strictly before"
    assert [i for i, _, _ in await journal.fleet_stats(0.0)] == ["live", "edge"]
    assert await journal.purge_fleet_stats(T0 + 20) == 0
    # A purged instance that comes back publishes afresh.
    await journal.put_fleet_stats("gone-1", b"back", T0 + 40)
    assert await journal.fleet_stats(T0 + 25) == [("gone-1", T0 + 40, b"back"), ("live", T0 + 30, b"{}")]
    for no_time in (math.nan, None, "x"):
        with pytest.raises(ValueError):
            await journal.purge_fleet_stats(no_time)
        with pytest.raises(ValueError):
            await journal.fleet_stats(no_time)
    assert await journal.purge_fleet_stats(-math.inf) == 0
    assert len(await journal.fleet_stats(-math.inf)) == 3, "nothing went on a refused purge"
    assert await journal.purge_fleet_stats(math.inf) == 3
    assert await journal.fleet_stats(-math.inf) == []


async def test_many_instances_publishing_at_once_each_keep_their_own(journal):
    await asyncio.gather(*(journal.put_fleet_stats(f"i-{n:02}", f"{n}".encode(), T0 + n % 5) for n in range(40)))
    got = await journal.fleet_stats(0.0, limit=100)
    assert got == sorted(((f"i-{n:02}", T0 + n % 5, f"{n}".encode()) for n in range(40)), key=lambda r: (-r[1], r[0]))
    assert len(await journal.fleet_stats(0.0, limit=7)) == 7
    assert len(await journal.fleet_stats(0.0)) == 40


# -- a store made before the fleet view (schema 15) ----------------------------------------


async def test_a_sqlite_store_at_schema_15_gains_the_fleet_view(tmp_path):
    path = tmp_path / "j.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statements in _schema.MIGRATIONS[:15]:
            for sql in statements:
                conn.execute(sql)
        conn.execute("PRAGMA user_version=15")
    finally:
        conn.close()
    journal = SqliteJournal(path)
    await journal.open()
    try:
        assert await journal.query("PRAGMA user_version") == [(16,)]
        assert await journal.fleet_stats(0.0) == []
        await journal.put_fleet_stats("i-a", b"\x00{}", T0)
        assert await journal.fleet_stats(T0) == [("i-a", T0, b"\x00{}")]
        indexes = await journal.query("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='fleet_stats' "
                                      "AND sql IS NOT NULL")
        assert indexes == [("fleet_stats_at",)]
    finally:
        await journal.close()


async def test_a_postgres_store_at_schema_15_gains_the_fleet_view(pg_server):
    from harness import PgStore

    store = PgStore.fresh(pg_server)
    try:
        conn = await asyncpg.connect(store.url)
        try:
            await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                               "applied_at DOUBLE PRECISION NOT NULL)")
            for version, statements in enumerate(_schema_pg.MIGRATIONS[:15], start=1):
                for sql in statements:
                    await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", version)
        finally:
            await conn.close()
        journal = store.journal()
        await journal.open()  # migration 16
        try:
            assert store.peek("SELECT max(version) FROM schema_migrations") == [(16,)]
            assert await journal.fleet_stats(0.0) == []
            await journal.put_fleet_stats("i-a", b"\x00{}", T0)
            assert await journal.fleet_stats(T0) == [("i-a", T0, b"\x00{}")]
            assert store.peek("SELECT indexname FROM pg_indexes WHERE tablename = 'fleet_stats' "
                              "AND schemaname = current_schema() ORDER BY indexname") == [
                ("fleet_stats_at",), ("fleet_stats_pkey",)]
        finally:
            await journal.close()
    finally:
        store.dispose()
