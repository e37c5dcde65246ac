"""Versioned schema migrations of the PostgreSQL journal, one for one with the SQLite
ones in ``_schema`` (same tables, columns, constraints and indexes; PostgreSQL types).
Append, never edit a shipped entry: ``schema_migrations`` records what was applied."""

from __future__ import annotations

from orchestrator.journal._schema import LEFT_OPEN, LEGACY_ACCOUNTS, LEGACY_DEPOSIT, LEGACY_TRANSFERS, REFUNDS_OWED
from orchestrator.journal._totals import backfill

__all__ = ["MIGRATIONS"]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: recharges, attempts, idempotency, trail, wallet.
    (
        """CREATE TABLE recharges (
            id TEXT PRIMARY KEY,
            client TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            user_id TEXT NOT NULL,
            amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
            currency TEXT NOT NULL,
            country TEXT NOT NULL,
            method TEXT NOT NULL,
            instrument TEXT NOT NULL,
            metadata TEXT,
            coins BIGINT NOT NULL CHECK (coins >= 0),
            bonus_coins BIGINT NOT NULL CHECK (bonus_coins >= 0),
            status TEXT NOT NULL,
            channel TEXT,
            decline_code TEXT,
            reason TEXT,
            config_version TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            deadline_at DOUBLE PRECISION NOT NULL,
            UNIQUE (client, idempotency_key)
        )""",
        "CREATE INDEX recharges_open ON recharges(status) WHERE status IN ('processing', 'pending')",
        "CREATE INDEX recharges_user ON recharges(user_id, created_at)",
        """CREATE TABLE idempotency (
            client TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            recharge_id TEXT NOT NULL REFERENCES recharges(id) DEFERRABLE INITIALLY DEFERRED,
            created_at DOUBLE PRECISION NOT NULL,
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
            latency_ms DOUBLE PRECISION,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            UNIQUE (recharge_id, seq)
        )""",
        """CREATE TABLE trail (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            recharge_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            event TEXT NOT NULL,
            status TEXT,
            reference TEXT,
            channel TEXT,
            detail TEXT
        )""",
        "CREATE INDEX trail_recharge ON trail(recharge_id, id)",
        """CREATE TABLE wallets (
            user_id TEXT PRIMARY KEY,
            coins BIGINT NOT NULL CHECK (coins >= 0),
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE wallet_entries (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            user_id TEXT NOT NULL,
            recharge_id TEXT NOT NULL UNIQUE REFERENCES recharges(id),
            coins BIGINT NOT NULL CHECK (coins > 0),
            balance_after BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
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
            received_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (channel, event_id)
        )""",
    ),
    # 3: recovery leases, so several instances on one database split the recovery scan.
    (
        """CREATE TABLE leases (
            recharge_id TEXT PRIMARY KEY REFERENCES recharges(id),
            owner TEXT,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX leases_owner ON leases(owner)",
    ),
    # 4: the trail becomes the hash-chained audit log; one row holds the chain's head so
    # instances append one after another (it is locked by each appending transaction).
    (
        "ALTER TABLE trail ADD COLUMN prev_hash TEXT",
        "ALTER TABLE trail ADD COLUMN hash TEXT",
        "CREATE TABLE audit_head (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), hash TEXT NOT NULL)",
        "INSERT INTO audit_head(one, hash) VALUES (TRUE, '0000000000000000000000000000000000000000000000000000000000000000')",
    ),
    # 5: the recharge row's own UNIQUE (client, idempotency_key) is the idempotency
    # record, one statement per create (docs/history.md#idempotency-table).
    ("DROP TABLE idempotency",),
    # 6: quotes (POST /v1/quotes), so every instance on the database redeems any one's; ``price``
    # is JSON kept as text, exactly as written (as in SQLite); expires_at is indexed for the purge.
    (
        """CREATE TABLE quotes (
            quote_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
            currency TEXT NOT NULL,
            price TEXT NOT NULL,
            issued_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX quotes_expires ON quotes(expires_at)",
    ),
    # 7: each user's succeeded recharges per currency, kept as each is credited, so the history
    # read is one key-range read, not a walk (docs/architecture.md#per-user-totals).
    (
        """CREATE TABLE user_recharge_totals (
            user_id TEXT NOT NULL,
            currency TEXT NOT NULL,
            recharges INTEGER NOT NULL CHECK (recharges > 0),
            amount_minor BIGINT NOT NULL,
            month_start BIGINT NOT NULL,
            month_recharges INTEGER NOT NULL CHECK (month_recharges > 0),
            PRIMARY KEY (user_id, currency)
        )""",
        backfill("BIGINT"),
    ),
    # 8: a partial index of the late captures whose refund is unconfirmed, so each reconcile pass
    # reads only them (its query names the state as a literal, or the planner cannot use it).
    ("CREATE INDEX attempts_refund_due ON attempts(recharge_id) WHERE state = 'refund_requested'",),
    # 9: as SQLite's 9: late-capture checks, lease tokens, follow-ups, kept channels.
    (
        "ALTER TABLE attempts ADD COLUMN late_check_at DOUBLE PRECISION",
        "ALTER TABLE leases ADD COLUMN token BIGINT NOT NULL DEFAULT 1",
        """CREATE TABLE follow_ups (
            recharge_id TEXT PRIMARY KEY REFERENCES recharges(id),
            due_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX follow_ups_due ON follow_ups(due_at)",
        REFUNDS_OWED,
        LEFT_OPEN,
        "DROP INDEX attempts_refund_due",
        """CREATE TABLE channels (
            name TEXT PRIMARY KEY,
            config TEXT NOT NULL,
            retired_at DOUBLE PRECISION
        )""",
    ),
    # 10: as SQLite's 10 (SPEC 19): wallets may go negative and hold frozen coins; entries have a
    # kind (one credit per recharge, one entry per refund and kind); refunds, disputes, the outbox.
    # PostgreSQL alters in place what SQLite must copy, so ids, their sequence, foreign keys and
    # index names stay; the constraints dropped are those migration 1 named by default.
    (
        "ALTER TABLE wallets DROP CONSTRAINT wallets_coins_check, "
        "ADD COLUMN frozen BIGINT NOT NULL DEFAULT 0 CHECK (frozen >= 0)",
        "ALTER TABLE wallet_entries DROP CONSTRAINT wallet_entries_recharge_id_key, "
        "DROP CONSTRAINT wallet_entries_coins_check, "
        "ADD COLUMN kind TEXT NOT NULL DEFAULT 'credit', ADD COLUMN ref TEXT, "
        "ADD CONSTRAINT wallet_entries_coins_check CHECK (coins != 0 AND (kind != 'credit' OR coins > 0))",
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
            amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
            currency TEXT NOT NULL,
            coins BIGINT NOT NULL CHECK (coins >= 0),
            status TEXT NOT NULL,
            reason TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            error TEXT,
            next_at DOUBLE PRECISION,
            tries INTEGER NOT NULL DEFAULT 0,
            UNIQUE (client, idempotency_key)
        )""",
        "CREATE INDEX refunds_recharge ON refunds(recharge_id)",
        "CREATE INDEX refunds_due ON refunds(next_at) WHERE status = 'pending'",
        """CREATE TABLE disputes (
            recharge_id TEXT PRIMARY KEY REFERENCES recharges(id),
            user_id TEXT NOT NULL,
            status TEXT NOT NULL,
            coins BIGINT NOT NULL CHECK (coins >= 0),
            opened_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE outbox (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            client TEXT NOT NULL,
            key TEXT NOT NULL,
            type TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            body TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at DOUBLE PRECISION NOT NULL,
            window_start DOUBLE PRECISION NOT NULL,
            last_error TEXT,
            delivered_at DOUBLE PRECISION,
            claimed_by TEXT,
            claimed_until DOUBLE PRECISION NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX outbox_key ON outbox(key, seq) WHERE state = 'pending'",
        "CREATE INDEX outbox_due ON outbox(next_at) WHERE state = 'pending'",
        "CREATE INDEX outbox_state ON outbox(state, seq)",
    ),
    # 11: as SQLite's 11 (SPEC 20): the double-entry ledger, accounts and the transfers between
    # them; the wallet entries become transfers against pool:legacy, funded from issuance, by the
    # same statements (PostgreSQL's SUM of BIGINT is NUMERIC, cast back to BIGINT on insert).
    (
        """CREATE TABLE accounts (
            account TEXT PRIMARY KEY,
            balance BIGINT NOT NULL DEFAULT 0,
            frozen BIGINT NOT NULL DEFAULT 0 CHECK (frozen >= 0),
            credited BIGINT NOT NULL DEFAULT 0,
            credited_mark BIGINT NOT NULL DEFAULT 0,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE transfers (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            debit TEXT NOT NULL,
            credit TEXT NOT NULL,
            coins BIGINT NOT NULL CHECK (coins > 0),
            kind TEXT NOT NULL,
            recharge_id TEXT,
            ref TEXT,
            note TEXT,
            at DOUBLE PRECISION NOT NULL,
            debit_after BIGINT NOT NULL,
            credit_after BIGINT NOT NULL,
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
    # 12: as SQLite's 12 (SPEC 20): instant credit, its settlement, and the pools' losses.
    (
        "ALTER TABLE recharges ADD COLUMN instant INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE recharges ADD COLUMN settlement TEXT",
        "ALTER TABLE accounts ADD COLUMN lost BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE accounts ADD COLUMN shortfalls BIGINT NOT NULL DEFAULT 0",
    ),
    # 13: as SQLite's 13 (SPEC 21): reconciliation runs, their staged reports, the discrepancies.
    (
        """CREATE TABLE reconciliations (
            id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            date TEXT NOT NULL,
            trigger TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            started_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION,
            report_items BIGINT NOT NULL DEFAULT 0,
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
            amount_minor BIGINT NOT NULL,
            currency TEXT NOT NULL,
            fee_minor BIGINT NOT NULL,
            settled_at TEXT,
            PRIMARY KEY (run_id, reference)
        )""",
        """CREATE TABLE recon_found (
            run_id TEXT NOT NULL,
            reference TEXT NOT NULL,
            kind TEXT NOT NULL,
            recharge_id TEXT,
            amount_minor BIGINT,
            currency TEXT,
            expected TEXT,
            reported TEXT,
            status TEXT NOT NULL,
            resolution TEXT,
            PRIMARY KEY (run_id, reference, kind)
        )""",
        """CREATE TABLE discrepancies (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            channel TEXT NOT NULL,
            date TEXT NOT NULL,
            reference TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            recharge_id TEXT,
            amount_minor BIGINT,
            currency TEXT,
            expected TEXT,
            reported TEXT,
            resolution TEXT,
            run_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            UNIQUE (channel, date, reference, kind)
        )""",
        "CREATE INDEX discrepancies_open ON discrepancies(channel) WHERE status != 'resolved'",
    ),
    # 14: recharge templates (SPEC 22), kept per (client, user).
    (
        """CREATE TABLE templates (
            id TEXT PRIMARY KEY,
            client TEXT NOT NULL,
            user_id TEXT NOT NULL,
            name TEXT NOT NULL,
            amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
            currency TEXT NOT NULL,
            country TEXT NOT NULL,
            method TEXT NOT NULL,
            instrument TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX templates_owner ON templates(client, user_id, created_at)",
    ),
    # 15: step-up (SPEC 22): a recharge risk challenged, an attempt's challenge (where the
    # payer completes it, when it lapses); a recharge waiting for its payer is still open.
    (
        "ALTER TABLE recharges ADD COLUMN step_up INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE attempts ADD COLUMN action_url TEXT",
        "ALTER TABLE attempts ADD COLUMN action_expires_at DOUBLE PRECISION",
        "DROP INDEX recharges_open",
        "CREATE INDEX recharges_open ON recharges(status) WHERE status IN ('processing', 'requires_action', 'pending')",
    ),
    # 16: as SQLite's 16: the fleet view, one blob of channel statistics per instance.
    (
        """CREATE TABLE fleet_stats (
            instance TEXT PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            blob BYTEA NOT NULL
        )""",
        "CREATE INDEX fleet_stats_at ON fleet_stats(at)",
    ),
)
