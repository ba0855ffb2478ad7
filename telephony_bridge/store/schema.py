"""The PostgreSQL schema of the fleet, as migrations: version N is the first N scripts; append, never edit one shipped.

The call log's tables keep the SQLite file's columns and types (times as ISO 8601 text in UTC), so one
reader serves `telephony-bridge calls` either way and the paging key of the admin API compares alike.
"""

from __future__ import annotations

MIGRATION_LOCK = 0x7E1E_B21D6E
"""The advisory lock key an instance holds while it migrates: the others wait, then find the schema current."""

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        call_sid TEXT PRIMARY KEY,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT NOT NULL,
        duration_s DOUBLE PRECISION NOT NULL,
        outcome TEXT NOT NULL,
        end_reason TEXT NOT NULL,
        barge_ins INTEGER NOT NULL,
        reconnects INTEGER NOT NULL,
        model TEXT NOT NULL,
        dialect TEXT NOT NULL,
        direction TEXT NOT NULL DEFAULT 'inbound',
        transfer_target TEXT,
        transfer_connected BOOLEAN
    );
    CREATE INDEX calls_by_start ON calls (started_at);
    CREATE INDEX calls_by_number ON calls (to_number, started_at);
    CREATE TABLE transcript (
        call_sid TEXT NOT NULL,
        position INTEGER NOT NULL,
        speaker TEXT NOT NULL,
        text TEXT NOT NULL,
        at_s DOUBLE PRECISION,
        PRIMARY KEY (call_sid, position)
    );
    CREATE TABLE stream_errors (
        call_sid TEXT NOT NULL,
        at TEXT NOT NULL,
        stream_sid TEXT NOT NULL,
        code TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX stream_errors_by_call ON stream_errors (call_sid, at);
    CREATE TABLE claims (
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        instance TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX claims_by_expiry ON claims (expires_at);
    CREATE TABLE instances (
        instance TEXT PRIMARY KEY,
        heartbeat_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE live_calls (
        call_sid TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        number TEXT NOT NULL,
        caller TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX live_calls_by_instance ON live_calls (instance);
    """,
    """
    ALTER TABLE calls
        ADD COLUMN profile_in_force TEXT NOT NULL DEFAULT 'always',
        ADD COLUMN audio_in_tokens INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN text_in_tokens INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN cached_in_tokens INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN audio_out_tokens INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN text_out_tokens INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN cached_audio_in_tokens INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN cost DOUBLE PRECISION,
        ADD COLUMN transcript_purged BOOLEAN NOT NULL DEFAULT false,
        ADD COLUMN amd_result TEXT;
    CREATE TABLE do_not_call (
        number TEXT PRIMARY KEY,
        added_at TEXT NOT NULL,
        source TEXT NOT NULL
    );
    CREATE TABLE outbound_calls (
        outbound_id TEXT PRIMARY KEY,
        call_sid TEXT,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        campaign_row TEXT,
        ended_at TEXT NOT NULL,
        outcome TEXT NOT NULL,
        amd_result TEXT
    );
    CREATE INDEX outbound_calls_by_sid ON outbound_calls (call_sid);
    """,
    # Campaigns shared by the fleet: the SQLite file's columns, plus the instance dialling a row (for reconciliation).
    """
    CREATE TABLE campaigns (
        campaign_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        state TEXT NOT NULL,
        from_number TEXT NOT NULL,
        concurrency INTEGER NOT NULL,
        retries INTEGER NOT NULL,
        retry_delay_s DOUBLE PRECISION NOT NULL,
        calling_window TEXT,
        timezone TEXT NOT NULL
    );
    CREATE INDEX campaigns_by_state ON campaigns (state);
    CREATE TABLE campaign_rows (
        campaign_id TEXT NOT NULL REFERENCES campaigns (campaign_id),
        position INTEGER NOT NULL,
        to_number TEXT NOT NULL,
        context TEXT NOT NULL,
        timezone TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TIMESTAMPTZ,
        outcome TEXT,
        detail TEXT NOT NULL DEFAULT '',
        call_sid TEXT,
        amd_result TEXT,
        instance TEXT,
        updated_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (campaign_id, position)
    );
    CREATE INDEX campaign_rows_by_state ON campaign_rows (campaign_id, state, position);
    CREATE INDEX campaign_rows_dialling ON campaign_rows (instance) WHERE state = 'dialling';
    """,
)
