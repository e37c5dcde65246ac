"""A database from before the ledger (wallets and their typed entries, migration 10) opens
with balanced books (migration 11): every entry a transfer against pool:legacy, which
issuance funds with their net total, and every wallet reads as it did."""

from __future__ import annotations

import sqlite3

import asyncpg
from harness import PgStore, make_recharge

from orchestrator.clock import VirtualClock
from orchestrator.invariants import facts_of, ledger_violations
from orchestrator.journal import SqliteJournal, WalletEntry, WalletView, _schema, _schema_pg
from orchestrator.journal._rows import RECHARGE_COLUMNS, recharge_row

# A recharge row as schema 10 had it (migration 12 added instant and settlement, 15 step_up).
V10_COLUMNS = RECHARGE_COLUMNS.removesuffix(", instant, settlement, step_up")

# (user, recharge key, kind, ref, coins): a credit, a refund and its reversal, a clawback.
ENTRIES = [("u1", "k1", "credit", None, 500), ("u2", "k2", "credit", None, 300),
           ("u1", "k1", "refund", "rf_1", -200), ("u1", "k1", "refund_reversal", "rf_1", 200),
           ("u1", "k3", "credit", None, 100), ("u2", "k2", "clawback", None, -300), ("u1", "k1", "refund", "rf_2", -50)]
FROZEN = {"u1": 40}


def _at_schema_10(path) -> dict[str, str]:
    clock = VirtualClock()
    conn = sqlite3.connect(path, isolation_level=None)
    ids = {}
    try:
        for statements in _schema.MIGRATIONS[:10]:
            for sql in statements:
                conn.execute(sql)
        conn.execute("PRAGMA user_version=10")
        for user, key, *_ in ENTRIES:
            if key not in ids:
                rec, _ = make_recharge(clock, key, user=user)
                conn.execute(f"INSERT INTO recharges({V10_COLUMNS}) VALUES ({','.join('?' * 21)})",
                             recharge_row(rec)[:21])
                ids[key] = rec.id
        balances: dict[str, int] = {}
        for n, (user, key, kind, ref, coins) in enumerate(ENTRIES):
            balances[user] = balances.get(user, 0) + coins
            conn.execute("INSERT INTO wallet_entries(user_id, recharge_id, kind, ref, coins, balance_after, created_at) "
                         "VALUES (?,?,?,?,?,?,?)", (user, ids[key], kind, ref, coins, balances[user], 1000.0 + n))
        for user, coins in balances.items():
            conn.execute("INSERT INTO wallets(user_id, coins, frozen, updated_at) VALUES (?,?,?,?)",
                         (user, coins, FROZEN.get(user, 0), 2000.0))
    finally:
        conn.close()
    return ids


async def test_sqlite_wallet_entries_become_balanced_transfers(tmp_path):
    path = tmp_path / "j.db"
    ids = _at_schema_10(path)
    journal = SqliteJournal(path)
    await journal.open()
    try:
        u1 = await journal.wallet("u1")
        assert (u1.coins, u1.frozen_coins) == (550, 40)
        assert [(e.recharge_id, e.kind, e.ref, e.coins, e.balance_after) for e in u1.entries] == [
            (ids["k1"], "refund", "rf_2", -50, 550), (ids["k3"], "credit", None, 100, 600),
            (ids["k1"], "refund_reversal", "rf_1", 200, 500), (ids["k1"], "refund", "rf_1", -200, 300),
            (ids["k1"], "credit", None, 500, 500)]
        assert (await journal.wallet("u2")).coins == 0
        balances = {a.account: a.balance for a in await journal.accounts()}
        assert balances == {"issuance": -550, "pool:legacy": 0, "wallet:u1": 550, "wallet:u2": 0}
        facts = await facts_of(journal)
        assert ledger_violations(facts.accounts) == []
        first = (await journal.transfers(limit=1))[0]
        assert (first.debit, first.credit, first.coins, first.kind, first.ref) == (
            "issuance", "pool:legacy", 550, "deposit", "legacy")
    finally:
        await journal.close()


def test_ledger_verify_passes_on_migrated_books_and_names_a_tampered_transfer(tmp_path):
    import subprocess
    import sys

    from orchestrator.launch import ROOT

    path = tmp_path / "j.db"
    _at_schema_10(path)
    verify = [sys.executable, "-m", "orchestrator", "ledger", "verify", "--db", f"sqlite:///{path}"]
    ok = subprocess.run(verify, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ledger balanced: 8 transfers, 4 accounts, sums to 0" in ok.stdout
    conn = sqlite3.connect(path)
    conn.execute("UPDATE transfers SET coins = coins + 1 WHERE seq = 3")
    conn.commit()
    conn.close()
    bad = subprocess.run(verify, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 1 and "ledger INCONSISTENT: transfer 3:" in bad.stdout, bad.stdout + bad.stderr


# -- PostgreSQL: the same database, migrated by its own migration 11 -----------------------


async def _pg_at_schema_10(url: str) -> tuple[dict[str, str], dict[str, WalletView]]:
    """The database at migration 10 holding ENTRIES, and each wallet as the journal then
    showed it (read as the store before the ledger did)."""
    clock = VirtualClock()
    conn = await asyncpg.connect(url)
    ids: dict[str, str] = {}
    try:
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                           "applied_at DOUBLE PRECISION NOT NULL)")
        for version, statements in enumerate(_schema_pg.MIGRATIONS[:10], start=1):
            for sql in statements:
                await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", version)
        for user, key, *_ in ENTRIES:
            if key not in ids:
                rec, _ = make_recharge(clock, key, user=user)
                await conn.execute(f"INSERT INTO recharges({V10_COLUMNS}) "
                                   f"VALUES ({','.join(f'${i}' for i in range(1, 22))})", *recharge_row(rec)[:21])
                ids[key] = rec.id
        balances: dict[str, int] = {}
        for n, (user, key, kind, ref, coins) in enumerate(ENTRIES):
            balances[user] = balances.get(user, 0) + coins
            await conn.execute("INSERT INTO wallet_entries(user_id, recharge_id, kind, ref, coins, balance_after, "
                               "created_at) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                               user, ids[key], kind, ref, coins, balances[user], 1000.0 + n)
        for user, coins in balances.items():
            await conn.execute("INSERT INTO wallets(user_id, coins, frozen, updated_at) VALUES ($1,$2,$3,$4)",
                               user, coins, FROZEN.get(user, 0), 2000.0)
        before = {}
        for user in balances:
            coins, frozen = await conn.fetchrow("SELECT coins, frozen FROM wallets WHERE user_id=$1", user)
            entries = await conn.fetch("SELECT recharge_id, coins, balance_after, created_at, kind, ref "
                                       "FROM wallet_entries WHERE user_id=$1 ORDER BY id DESC", user)
            before[user] = WalletView(user, coins, tuple(WalletEntry(*e) for e in entries), frozen)
    finally:
        await conn.close()
    return ids, before


async def test_postgres_wallet_entries_become_balanced_transfers(pg_server):
    store = PgStore.fresh(pg_server)
    try:
        ids, before = await _pg_at_schema_10(store.url)
        journal = store.journal()
        await journal.open()  # migration 11
        try:
            for user, view in before.items():
                assert await journal.wallet(user) == view
            assert (before["u1"].coins, before["u1"].frozen_coins, before["u2"].coins) == (550, 40, 0)
            assert [e.kind for e in before["u1"].entries] == ["refund", "credit", "refund_reversal", "refund",
                                                              "credit"]
            balances = {a.account: a.balance for a in await journal.accounts()}
            assert balances == {"issuance": -550, "pool:legacy": 0, "wallet:u1": 550, "wallet:u2": 0}
            facts = await facts_of(journal)
            assert len(facts.accounts) == 4 and ledger_violations(facts.accounts) == []
            transfers = await journal.transfers(limit=100)
            first = transfers[0]
            assert (first.debit, first.credit, first.coins, first.kind, first.ref) == (
                "issuance", "pool:legacy", 550, "deposit", "legacy")
            # Each entry one transfer against pool:legacy, in its order, the pool's balance
            # after each one counted down from what issuance funded.
            assert [(t.kind, t.recharge_id, t.coins) for t in transfers[1:]] == [
                (kind, ids[key], abs(coins)) for _, key, kind, _, coins in ENTRIES]
            pool_after = [int(r[0]) for r in await journal.query(
                "SELECT CASE WHEN debit = 'pool:legacy' THEN debit_after ELSE credit_after END FROM transfers "
                "WHERE kind != 'deposit' ORDER BY seq")]
            assert pool_after == [50, -250, -50, -250, -350, -50, 0]
            assert store.peek("SELECT to_regclass('wallets'), to_regclass('wallet_entries')") == [(None, None)]
        finally:
            await journal.close()
    finally:
        store.dispose()
