-- nanofaas store, schema 1 (PostgreSQL). Times are milliseconds since the Unix epoch.

-- Registered functions: the resolved spec as JSON.
CREATE TABLE functions (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Executions, unfinished and finished (until retention evicts them). Updated in place a few
-- times each; the fill factor leaves room for those updates on the same page.
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    spec TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    idempotency_key TEXT,
    input_content_type TEXT NOT NULL,
    input BYTEA NOT NULL,
    input_metadata TEXT NOT NULL,
    accepted_at_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    started_at_ms BIGINT,
    finished_at_ms BIGINT,
    output_content_type TEXT,
    output BYTEA,
    error_code TEXT,
    error_message TEXT,
    error_kind TEXT,
    finished_by TEXT,
    pending_handle TEXT,
    pending_attempt BIGINT,
    pending_resumable BIGINT,
    owner TEXT,
    epoch BIGINT NOT NULL,
    slot BIGINT NOT NULL DEFAULT 0
) WITH (fillfactor = 80);
CREATE INDEX executions_unfinished ON executions (owner) WHERE status IN ('queued', 'running');
-- What shared admission counts: a function's unfinished executions, and those holding a slot.
CREATE INDEX executions_active ON executions (function) WHERE status IN ('queued', 'running');
CREATE INDEX executions_slots ON executions (function) WHERE slot = 1;
CREATE INDEX executions_finished ON executions (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

CREATE TABLE idempotency_keys (
    function TEXT NOT NULL,
    key TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    fingerprint BYTEA NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (function, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at_ms);

-- Host-wide values (the callback secret).
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Host replicas and their leases (on the database's clock).
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    started_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- Local process groups started for executions, to kill after a crash.
CREATE TABLE processes (
    replica TEXT NOT NULL,
    pgid BIGINT NOT NULL,
    machine TEXT NOT NULL,
    start_ticks BIGINT NOT NULL,
    execution_id TEXT NOT NULL,
    PRIMARY KEY (replica, pgid)
);

-- One row per function name, locked (never updated) while a replica admits executions of the
-- function or grants one a slot, so the counts it reads stay true until it commits. Counting
-- instead of keeping counters means no row is rewritten on every admission and finish.
CREATE TABLE function_locks (
    function TEXT PRIMARY KEY
);
