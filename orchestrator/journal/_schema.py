"""Versioned schema migrations of the journal. Append, never edit a shipped entry: a
store records how many it has applied and applies the rest on open."""

from __future__ import annotations

from orchestrator.journal._totals import backfill

__all__ = ["LEFT_OPEN", "LEGACY_ACCOUNTS", "LEGACY_DEPOSIT", "LEGACY_TRANSFERS", "MIGRATIONS", "REFUNDS_OWED"]

# Migration 9's follow-ups of the work already journaled (both stores, word for word):
# refunds owed, and attempts left open on finished recharges, all due at once.
REFUNDS_OWED = ("INSERT INTO follow_ups(recharge_id, due_at) "
                "SELECT DISTINCT recharge_id, 0 FROM attempts WHERE state = 'refund_requested'")
LEFT_OPEN = (
    "INSERT INTO follow_ups(recharge_id, due_at) "
    "SELECT DISTINCT a.recharge_id, 0 FROM attempts a JOIN recharges r ON r.id = a.recharge_id "
    "WHERE a.state IN ('started', 'pending', 'unknown', 'void_requested') "
    "AND r.status NOT IN ('processing', 'pending') "
    "AND a.recharge_id NOT IN (SELECT recharge_id FROM follow_ups)"
)


# Migration 11's move of the wallet entries into the ledger (both stores, word for word).
# pool:legacy is funded with the entries' net total (when positive), then each entry is a
# transfer against it in its order, the pool's balance after each one counted down.
LEGACY_DEPOSIT = (
    "INSERT INTO transfers(debit, credit, coins, kind, ref, at, debit_after, credit_after) "
    "SELECT 'issuance', 'pool:legacy', SUM(coins), 'deposit', 'legacy', MIN(created_at), -SUM(coins), SUM(coins) "
    "FROM wallet_entries HAVING SUM(coins) > 0"
)
LEGACY_TRANSFERS = (
    "INSERT INTO transfers(debit, credit, coins, kind, recharge_id, ref, at, debit_after, credit_after) "
    "SELECT CASE WHEN coins > 0 THEN 'pool:legacy' ELSE 'wallet:' || user_id END, "
    "CASE WHEN coins > 0 THEN 'wallet:' || user_id ELSE 'pool:legacy' END, ABS(coins), kind, recharge_id, ref, "
    "created_at, CASE WHEN coins > 0 THEN funded - running ELSE balance_after END, "
    "CASE WHEN coins > 0 THEN balance_after ELSE funded - running END FROM ("
    "SELECT e.*, SUM(coins) OVER (ORDER BY id) AS running, "
    "(SELECT CASE WHEN SUM(coins) > 0 THEN SUM(coins) ELSE 0 END FROM wallet_entries) AS funded "
    "FROM wallet_entries e) legacy ORDER BY id"
)
LEGACY_ACCOUNTS = (
    "INSERT INTO accounts(account, balance, frozen, updated_at) "
    "SELECT 'wallet:' || user_id, coins, frozen, updated_at FROM wallets UNION ALL "
    "SELECT account, SUM(coins), 0, MAX(at) FROM (SELECT credit AS account, coins, at FROM transfers "
    "UNION ALL SELECT debit, -coins, at FROM transfers) moves WHERE account NOT LIKE 'wallet:%' GROUP BY account"
)


MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: recharges, attempts, idempotency, trail, wallet.
    (
        """CREATE TABLE recharges (
            id TEXT PRIMARY KEY,
            client TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            user_id TEXT NOT NULL,
            amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
            currency TEXT NOT NULL,
            country TEXT NOT NULL,
            method TEXT NOT NULL,
            instrument TEXT NOT NULL,
            metadata TEXT,
            coins INTEGER NOT NULL CHECK (coins >= 0),
            bonus_coins INTEGER NOT NULL CHECK (bonus_coins >= 0),
            status TEXT NOT NULL,
            channel TEXT,
            decline_code TEXT,
            reason TEXT,
            config_version TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            deadline_at REAL NOT NULL,
            UNIQUE (client, idempotency_key)
        )""",
        "CREATE INDEX recharges_open ON recharges(status) WHERE status IN ('processing', 'pending')",
        "CREATE INDEX recharges_user ON recharges(user_id, created_at)",
        """CREATE TABLE idempotency (
            client TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            recharge_id TEXT NOT NULL REFERENCES recharges(id) DEFERRABLE INITIALLY DEFERRED,
            created_at REAL NOT NULL,
            PRIMARY KEY (client, key)
        )""",
        """CREATE TABLE attempts (
            reference TEXT PRIMARY KEY,
            recharge_id TEXT NOT NULL REFERENCES recharges(id),
            seq INTEGER NOT NULL,
            channel TEXT NOT NULL,
            state TEXT NOT NULL,
            provider_ref TEXT,
            decline_code TEXT,
            error TEXT,
            latency_ms REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (recharge_id, seq)
        )""",
        """CREATE TABLE trail (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            recharge_id TEXT NOT NULL,
            at REAL NOT NULL,
            event TEXT NOT NULL,
            status TEXT,
            reference TEXT,
            channel TEXT,
            detail TEXT
        )""",
        "CREATE INDEX trail_recharge ON trail(recharge_id, id)",
        """CREATE TABLE wallets (
            user_id TEXT PRIMARY KEY,
            coins INTEGER NOT NULL CHECK (coins >= 0),
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE wallet_entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            recharge_id TEXT NOT NULL UNIQUE REFERENCES recharges(id),
            coins INTEGER NOT NULL CHECK (coins > 0),
            balance_after INTEGER NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX wallet_entries_user ON wallet_entries(user_id, id)",
    ),
    # 2: provider events (webhooks), de-duplicated by (channel, event_id).
    (
        """CREATE TABLE provider_events (
            channel TEXT NOT NULL,
            event_id TEXT NOT NULL,
            reference TEXT,
            status TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (channel, event_id)
        )""",
    ),
    # 3: recovery leases, so several instances on one store split the recovery scan.
    (
        """CREATE TABLE leases (
            recharge_id TEXT PRIMARY KEY REFERENCES recharges(id),
            owner TEXT,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX leases_owner ON leases(owner)",
    ),
    # 4: the trail becomes the hash-chained audit log.
    (
        "ALTER TABLE trail ADD COLUMN prev_hash TEXT",
        "ALTER TABLE trail ADD COLUMN hash TEXT",
    ),
    # 5: the recharge row's own UNIQUE (client, idempotency_key) is the idempotency
    # record, one statement per create (docs/history.md#idempotency-table).
    ("DROP TABLE idempotency",),
    # 6: quotes (POST /v1/quotes), so every instance on the store redeems any one's; ``price`` is
    # JSON. WITHOUT ROWID: a redemption is one B-tree lookup; expires_at is indexed for the purge.
    (
        """CREATE TABLE quotes (
            quote_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
            currency TEXT NOT NULL,
            price TEXT NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX quotes_expires ON quotes(expires_at)",
    ),
    # 7: each user's succeeded recharges per currency, kept as each is credited, so the history
    # read is one key-range read, not a walk (docs/architecture.md#per-user-totals).
    (
        """CREATE TABLE user_recharge_totals (
            user_id TEXT NOT NULL,
            currency TEXT NOT NULL,
            recharges INTEGER NOT NULL CHECK (recharges > 0),
            amount_minor INTEGER NOT NULL,
            month_start INTEGER NOT NULL,
            month_recharges INTEGER NOT NULL CHECK (month_recharges > 0),
            PRIMARY KEY (user_id, currency)
        ) WITHOUT ROWID""",
        backfill("INTEGER"),
    ),
    # 8: a partial index of the late captures whose refund is unconfirmed, so each reconcile pass
    # reads only them (its query names the state as a literal, or the planner cannot use it).
    ("CREATE INDEX attempts_refund_due ON attempts(recharge_id) WHERE state = 'refund_requested'",),
    # 9: exactly-once against late providers (SPEC 7; docs/exactly-once.md): late-capture checks,
    # lease tokens, ``follow_ups`` (a row only per finished recharge with work left), kept channels.
    (
        "ALTER TABLE attempts ADD COLUMN late_check_at REAL",
        "ALTER TABLE leases ADD COLUMN token INTEGER NOT NULL DEFAULT 1",
        """CREATE TABLE follow_ups (
            recharge_id TEXT PRIMARY KEY REFERENCES recharges(id),
            due_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX follow_ups_due ON follow_ups(due_at)",
        # Refunds owed, and attempts left open on finished recharges, are due at once.
        REFUNDS_OWED,
        LEFT_OPEN,
        "DROP INDEX attempts_refund_due",
        """CREATE TABLE channels (
            name TEXT PRIMARY KEY,
            config TEXT NOT NULL,
            retired_at REAL
        )""",
    ),
    # 10: after the sale (SPEC 19). Wallets may go negative (a lost dispute's debt) and hold
    # frozen coins; a wallet entry is a credit, a refund's debit or its reversal, or a
    # clawback (one credit per recharge, one entry per refund and kind); refunds, disputes,
    # and the outbox of notifications. SQLite drops a CHECK or UNIQUE only by copying the table.
    (
        """CREATE TABLE wallets_10 (
            user_id TEXT PRIMARY KEY,
            coins INTEGER NOT NULL,
            frozen INTEGER NOT NULL DEFAULT 0 CHECK (frozen >= 0),
            updated_at REAL NOT NULL
        )""",
        "INSERT INTO wallets_10(user_id, coins, updated_at) SELECT user_id, coins, updated_at FROM wallets",
        "DROP TABLE wallets",
        "ALTER TABLE wallets_10 RENAME TO wallets",
        """CREATE TABLE wallet_entries_10 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            recharge_id TEXT NOT NULL REFERENCES recharges(id),
            kind TEXT NOT NULL DEFAULT 'credit',
            ref TEXT,
            coins INTEGER NOT NULL CHECK (coins != 0 AND (kind != 'credit' OR coins > 0)),
            balance_after INTEGER NOT NULL,
            created_at REAL NOT NULL
        )""",
        "INSERT INTO wallet_entries_10(id, user_id, recharge_id, coins, balance_after, created_at) "
        "SELECT id, user_id, recharge_id, coins, balance_after, created_at FROM wallet_entries",
        "DROP TABLE wallet_entries",
        "ALTER TABLE wallet_entries_10 RENAME TO wallet_entries",
        "CREATE INDEX wallet_entries_user ON wallet_entries(user_id, id)",
        "CREATE UNIQUE INDEX wallet_entries_credit ON wallet_entries(recharge_id) WHERE kind = 'credit'",
        "CREATE UNIQUE INDEX wallet_entries_ref ON wallet_entries(kind, ref) WHERE ref IS NOT NULL",
        """CREATE TABLE refunds (
            id TEXT PRIMARY KEY,
            recharge_id TEXT NOT NULL REFERENCES recharges(id),
            client TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            user_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            reference TEXT NOT NULL,
            amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
            currency TEXT NOT NULL,
            coins INTEGER NOT NULL CHECK (coins >= 0),
            status TEXT NOT NULL,
            reason TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            error TEXT,
            next_at REAL,
            tries INTEGER NOT NULL DEFAULT 0,
            UNIQUE (client, idempotency_key)
        )""",
        "CREATE INDEX refunds_recharge ON refunds(recharge_id)",
        "CREATE INDEX refunds_due ON refunds(next_at) WHERE status = 'pending'",
        """CREATE TABLE disputes (
            recharge_id TEXT PRIMARY KEY REFERENCES recharges(id),
            user_id TEXT NOT NULL,
            status TEXT NOT NULL,
            coins INTEGER NOT NULL CHECK (coins >= 0),
            opened_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            client TEXT NOT NULL,
            key TEXT NOT NULL,
            type TEXT NOT NULL,
            created_at REAL NOT NULL,
            body TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            window_start REAL NOT NULL,
            last_error TEXT,
            delivered_at REAL,
            claimed_by TEXT,
            claimed_until REAL NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX outbox_key ON outbox(key, seq) WHERE state = 'pending'",
        "CREATE INDEX outbox_due ON outbox(next_at) WHERE state = 'pending'",
        "CREATE INDEX outbox_state ON outbox(state, seq)",
    ),
    # 11: the double-entry ledger (SPEC 20). Accounts (pool:<name>, wallet:<user>, issuance) and
    # transfers between them, each with both balances after it. Today's wallet entries become
    # transfers against pool:legacy, which issuance first funds with their net total (LEGACY_*).
    (
        """CREATE TABLE accounts (
            account TEXT PRIMARY KEY,
            balance INTEGER NOT NULL DEFAULT 0,
            frozen INTEGER NOT NULL DEFAULT 0 CHECK (frozen >= 0),
            credited INTEGER NOT NULL DEFAULT 0,
            credited_mark INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE transfers (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            debit TEXT NOT NULL,
            credit TEXT NOT NULL,
            coins INTEGER NOT NULL CHECK (coins > 0),
            kind TEXT NOT NULL,
            recharge_id TEXT,
            ref TEXT,
            note TEXT,
            at REAL NOT NULL,
            debit_after INTEGER NOT NULL,
            credit_after INTEGER NOT NULL,
            CHECK (debit != credit)
        )""",
        "CREATE UNIQUE INDEX transfers_one_credit ON transfers(recharge_id) WHERE kind = 'credit'",
        "CREATE UNIQUE INDEX transfers_ref ON transfers(kind, ref) WHERE ref IS NOT NULL",
        "CREATE INDEX transfers_debit ON transfers(debit, seq)",
        "CREATE INDEX transfers_credit ON transfers(credit, seq)",
        LEGACY_DEPOSIT,
        LEGACY_TRANSFERS,
        LEGACY_ACCOUNTS,
        "DROP TABLE wallet_entries",
        "DROP TABLE wallets",
    ),
    # 12: instant credit (SPEC 20): whether a recharge may be credited while its payment is
    # pending, how that payment settled, each pool's loss on the ones that failed, and how
    # many credits found it short.
    (
        "ALTER TABLE recharges ADD COLUMN instant INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE recharges ADD COLUMN settlement TEXT",
        "ALTER TABLE accounts ADD COLUMN lost INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE accounts ADD COLUMN shortfalls INTEGER NOT NULL DEFAULT 0",
    ),
    # 13: settlement reconciliation (SPEC 21): the runs, each report staged while it is read
    # (recon_report, recon_found: emptied when the run ends), and the discrepancies kept, one
    # per channel, day, reference and kind however often the day is reconciled.
    (
        """CREATE TABLE reconciliations (
            id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            date TEXT NOT NULL,
            trigger TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            report_items INTEGER NOT NULL DEFAULT 0,
            summary TEXT
        )""",
        "CREATE UNIQUE INDEX reconciliations_scheduled ON reconciliations(channel, date) "
        "WHERE trigger = 'schedule' AND status != 'failed'",
        "CREATE INDEX reconciliations_started ON reconciliations(started_at)",
        """CREATE TABLE recon_report (
            run_id TEXT NOT NULL,
            reference TEXT NOT NULL,
            provider_ref TEXT,
            status TEXT NOT NULL,
            amount_minor INTEGER NOT NULL,
            currency TEXT NOT NULL,
            fee_minor INTEGER NOT NULL,
            settled_at TEXT,
            PRIMARY KEY (run_id, reference)
        ) WITHOUT ROWID""",
        """CREATE TABLE recon_found (
            run_id TEXT NOT NULL,
            reference TEXT NOT NULL,
            kind TEXT NOT NULL,
            recharge_id TEXT,
            amount_minor INTEGER,
            currency TEXT,
            expected TEXT,
            reported TEXT,
            status TEXT NOT NULL,
            resolution TEXT,
            PRIMARY KEY (run_id, reference, kind)
        ) WITHOUT ROWID""",
        """CREATE TABLE discrepancies (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            channel TEXT NOT NULL,
            date TEXT NOT NULL,
            reference TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            recharge_id TEXT,
            amount_minor INTEGER,
            currency TEXT,
            expected TEXT,
            reported TEXT,
            resolution TEXT,
            run_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (channel, date, reference, kind)
        )""",
        "CREATE INDEX discrepancies_open ON discrepancies(channel) WHERE status != 'resolved'",
    ),
    # 14: recharge templates (SPEC 22), kept per (client, user): the index answers a user's
    # list oldest first and the count its cap is checked on. The instrument is as a recharge
    # stores it (a token, or the masked number), never a whole number.
    (
        """CREATE TABLE templates (
            id TEXT PRIMARY KEY,
            client TEXT NOT NULL,
            user_id TEXT NOT NULL,
            name TEXT NOT NULL,
            amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
            currency TEXT NOT NULL,
            country TEXT NOT NULL,
            method TEXT NOT NULL,
            instrument TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX templates_owner ON templates(client, user_id, created_at)",
    ),
    # 15: step-up (SPEC 22): a recharge risk challenged, an attempt's challenge (where the
    # payer completes it, when it lapses); a recharge waiting for its payer is still open.
    (
        "ALTER TABLE recharges ADD COLUMN step_up INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE attempts ADD COLUMN action_url TEXT",
        "ALTER TABLE attempts ADD COLUMN action_expires_at REAL",
        "DROP INDEX recharges_open",
        "CREATE INDEX recharges_open ON recharges(status) WHERE status IN ('processing', 'requires_action', 'pending')",
    ),
    # 16: the fleet view (SPEC 8/9; issue 26): each instance's channel statistics, one opaque blob
    # per instance replaced every second or two; ``at`` indexed for the read of recent ones and
    # the purge of instances long gone. A rowid table: WITHOUT ROWID suits small rows, not a
    # blob of a megabyte (sqlite.org/withoutrowid.html#when_to_use_without_rowid).
    (
        """CREATE TABLE fleet_stats (
            instance TEXT PRIMARY KEY,
            at REAL NOT NULL,
            blob BLOB NOT NULL
        )""",
        "CREATE INDEX fleet_stats_at ON fleet_stats(at)",
    ),
)
