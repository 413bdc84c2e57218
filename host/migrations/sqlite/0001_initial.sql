-- nanofaas store, schema 1 (SQLite). Times are milliseconds since the Unix epoch.

-- Registered functions: the resolved spec as JSON.
CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- Executions, unfinished and finished (until retention evicts them).
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    spec TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    idempotency_key TEXT,
    input_content_type TEXT NOT NULL,
    input BLOB NOT NULL,
    input_metadata TEXT NOT NULL,
    accepted_at_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    output_content_type TEXT,
    output BLOB,
    error_code TEXT,
    error_message TEXT,
    error_kind TEXT,
    finished_by TEXT,
    pending_handle TEXT,
    pending_attempt INTEGER,
    pending_resumable INTEGER,
    owner TEXT,
    epoch INTEGER NOT NULL,
    slot INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX executions_unfinished ON executions (owner) WHERE status IN ('queued', 'running');
CREATE INDEX executions_finished ON executions (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

CREATE TABLE idempotency_keys (
    function TEXT NOT NULL,
    key TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (function, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at_ms);

-- Host-wide values (the callback secret).
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Host processes that used the store, and their leases.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    started_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

-- Local process groups started for executions, to kill after a crash.
CREATE TABLE processes (
    replica TEXT NOT NULL,
    pgid INTEGER NOT NULL,
    machine TEXT NOT NULL,
    start_ticks INTEGER NOT NULL,
    execution_id TEXT NOT NULL,
    PRIMARY KEY (replica, pgid)
);
