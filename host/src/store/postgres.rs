//! `postgres://…`: the store several host replicas share.
//!
//! What one process decides in memory on an embedded store is decided here, in the same
//! transaction as the write it guards: the first recorded finish (a conditional update), the
//! lease epoch of the replica that drives an execution, idempotency keys, and a function's
//! capacity (its unfinished executions and held slots, counted under a lock on the function's
//! row in `function_locks`). Lease times are
//! the database's clock, so replicas' clocks need not agree. Replicas hear of each other's
//! finishes, registrations and freed slots by `LISTEN/NOTIFY` on one channel; a notification is
//! sent by the transaction that makes the change, at its commit.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use tokio::sync::broadcast;

use super::batch::{Batcher, Plan, ROWS_PER_STATEMENT, Sql};
use super::rows::{self, EXECUTION_COLUMNS, UNFINISHED};
use super::{
    Event, Info, KeyRecord, Limit, Location, ProcessRecord, Replaced, Store, StoreError, TakeOver, TakenOver, Write,
    Written,
};
use crate::execution::Record;
use crate::function::FunctionSpec;

const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "initial", include_str!("../../migrations/postgres/0001_initial.sql"))];

/// The notification channel.
const CHANNEL: &str = "nanofaas";
/// The database's clock, in milliseconds since the Unix epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

pub struct PostgresStore {
    info: Info,
    pool: PgPool,
    batcher: Batcher,
    events: broadcast::Sender<Event>,
    listener: tokio::task::AbortHandle,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Connects, applies the migrations (under the migrator's advisory lock, so replicas starting
/// together do not race) and starts listening.
pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
    let location = Location::Postgres(url.to_string());
    let shown = location.display();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to {shown}: {e}")))?;
    let applied: Option<(Option<i64>,)> =
        match sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations").fetch_optional(&pool).await {
            Ok(v) => v,
            // No migrations table yet: a new database.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => None,
            Err(e) => return Err(e.into()),
        };
    super::check_schema(applied.and_then(|(v,)| v), MIGRATIONS.last().map_or(0, |m| m.0), &shown)?;
    super::migrator(MIGRATIONS)
        .run(&pool)
        .await
        .map_err(|e| StoreError::Schema(format!("cannot migrate {shown}: {e}")))?;
    let (events, _) = broadcast::channel(4096);
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    let listener = tokio::spawn(listen(listener, events.clone())).abort_handle();
    let batcher = Batcher::start(Writer { pool: pool.clone() }, "postgres");
    Ok(PostgresStore { info: Info { location, durable: true, shared: true }, pool, batcher, events, listener })
}

async fn listen(mut listener: PgListener, events: broadcast::Sender<Event>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if let Some(event) = parse_event(n.payload()) {
                    let _ = events.send(event);
                }
            }
            // The connection was lost and re-established: notifications may have been missed.
            Ok(None) => {
                let _ = events.send(Event::Resync);
            }
            Err(e) => {
                tracing::warn!(error = %e, "store notifications interrupted; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// `f:ID` finished, `n:NAME` function changed, `s:NAME` slot freed.
fn parse_event(payload: &str) -> Option<Event> {
    let (kind, value) = payload.split_once(':')?;
    let value = value.to_string();
    match kind {
        "f" => Some(Event::Finished(value)),
        "n" => Some(Event::Function(value)),
        "s" => Some(Event::SlotFreed(value)),
        _ => None,
    }
}

async fn notify(tx: &mut Transaction<'_, Postgres>, payload: String) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&mut **tx).await?;
    Ok(())
}

fn marks(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

static INSERT: LazyLock<String> = LazyLock::new(|| {
    let n = EXECUTION_COLUMNS.split(',').count();
    format!("INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES ({})", marks(n))
});
static SELECT: LazyLock<String> = LazyLock::new(|| format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1"));
static TAKE_OVER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE executions SET owner = $1, epoch = epoch + 1 \
         WHERE status IN {UNFINISHED} AND owner IS DISTINCT FROM $1 \
         AND ($2 OR owner IS NULL OR NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = executions.owner)) \
         RETURNING {EXECUTION_COLUMNS}"
    )
});
const SETTLE: &str = "UPDATE executions e SET status = $1, attempt = $2, finished_at_ms = $3, \
     output_content_type = $4, output = $5, error_code = $6, error_message = $7, error_kind = $8, finished_by = $9, \
     pending_handle = NULL, pending_attempt = NULL, pending_resumable = NULL, slot = 0 \
     FROM (SELECT id, slot FROM executions WHERE id = $10 FOR UPDATE) old \
     WHERE e.id = old.id AND e.status IN ('queued', 'running') AND ($11::bigint IS NULL OR e.epoch = $11) \
     AND ($11::bigint IS NOT NULL OR e.attempt <= $2) \
     RETURNING old.slot";
const LIVE_KEY: &str = "SELECT k.function, k.key, k.execution_id, k.fingerprint, k.expires_at_ms \
     FROM idempotency_keys k JOIN executions e ON e.id = k.execution_id \
     WHERE k.function = $1 AND k.key = $2 AND k.expires_at_ms > $3";

struct Writer {
    pool: PgPool,
}

#[async_trait::async_trait]
impl Sql for Writer {
    type Db = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn one(&self, tx: &mut Transaction<'_, Postgres>, write: &Write) -> Result<Written, StoreError> {
        apply(tx, write).await
    }

    async fn batch(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        writes: &[Write],
    ) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        apply_plan(tx, writes).await
    }
}

const START_TYPES: &[&str] = &["text", "bigint", "bigint", "bigint"];
const PENDING_TYPES: &[&str] = &["text", "bigint", "text", "bigint", "bigint"];
const SETTLE_TYPES: &[&str] =
    &["text", "text", "bigint", "bigint", "text", "bytea", "text", "text", "text", "text", "bigint", "bigint"];

/// A batch in one transaction: the decisive writes one by one, the rest a statement per group.
async fn apply_plan(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[Write],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let plan = Plan::of(writes);
    let mut results: Vec<Option<Result<Written, StoreError>>> = (0..writes.len()).map(|_| None).collect();
    for &i in &plan.singles {
        results[i] = Some(Ok(apply(tx, &writes[i]).await?));
    }
    insert_groups(tx, writes, &plan.inserts, &mut results).await?;
    for chunk in plan.starts.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE executions e SET status = 'running', attempt = v.attempt, \
             started_at_ms = COALESCE(e.started_at_ms, v.started) FROM (VALUES {}) AS v (id, epoch, attempt, started) \
             WHERE e.id = v.id AND e.epoch = v.epoch AND e.status IN {UNFINISHED} RETURNING e.id",
            rows::values(chunk.len(), START_TYPES.len(), Some(START_TYPES))
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for &i in chunk {
            let Write::Start { id, epoch, attempt, started_at } = &writes[i] else {
                unreachable!("planned as a start")
            };
            q = rows::bind_start_row(q, id, *epoch, *attempt, *started_at);
        }
        rows::answer_by_id(&mut results, writes, chunk, q.fetch_all(&mut **tx).await?, Written::Done)?;
    }
    for chunk in plan.pendings.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE executions e SET pending_handle = v.handle, pending_attempt = v.attempt, \
             pending_resumable = v.resumable FROM (VALUES {}) AS v (id, epoch, handle, attempt, resumable) \
             WHERE e.id = v.id AND e.epoch = v.epoch AND e.status IN {UNFINISHED} RETURNING e.id",
            rows::values(chunk.len(), PENDING_TYPES.len(), Some(PENDING_TYPES))
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for &i in chunk {
            let Write::Pending { id, epoch, pending } = &writes[i] else { unreachable!("planned as pending") };
            q = rows::bind_pending_row(q, id, *epoch, pending.as_ref());
        }
        rows::answer_by_id(&mut results, writes, chunk, q.fetch_all(&mut **tx).await?, Written::Done)?;
    }
    for chunk in plan.settles.chunks(ROWS_PER_STATEMENT) {
        // One statement: the terminal states (first finish wins, epochs checked) and the
        // notifications (finished; a slot freed).
        let sql = format!(
            "WITH v (id, status, attempt, finished, oct, output, ecode, emessage, ekind, fby, epoch, started) AS (VALUES {}), \
             old AS (SELECT e.id, e.slot, e.function FROM executions e JOIN v ON e.id = v.id \
                     WHERE e.status IN {UNFINISHED} AND (v.epoch IS NULL OR e.epoch = v.epoch) \
                     AND (v.epoch IS NOT NULL OR e.attempt <= v.attempt) FOR UPDATE OF e), \
             upd AS (UPDATE executions e SET status = v.status, attempt = v.attempt, finished_at_ms = v.finished, \
                     started_at_ms = COALESCE(e.started_at_ms, v.started), \
                     output_content_type = v.oct, output = v.output, error_code = v.ecode, error_message = v.emessage, \
                     error_kind = v.ekind, finished_by = v.fby, pending_handle = NULL, pending_attempt = NULL, \
                     pending_resumable = NULL, slot = 0 FROM v JOIN old ON old.id = v.id WHERE e.id = v.id \
                     RETURNING e.id, old.slot, old.function), \
             notes AS (SELECT pg_notify('{CHANNEL}', 'f:' || id) FROM upd \
                       UNION ALL SELECT pg_notify('{CHANNEL}', 's:' || function) FROM upd WHERE slot > 0) \
             SELECT upd.id, (SELECT count(*) FROM notes) AS notified FROM upd",
            rows::values(chunk.len(), SETTLE_TYPES.len(), Some(SETTLE_TYPES))
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for &i in chunk {
            let Write::Settle { id, epoch, terminal, .. } = &writes[i] else { unreachable!("planned as a settle") };
            q = rows::bind_settle_row(q, id, terminal, *epoch);
        }
        let settled = q.fetch_all(&mut **tx).await?;
        rows::answer_by_id(&mut results, writes, chunk, settled, Written::Settled)?;
        // Those not settled: say why (finished first, lost, unknown), one by one — the rare case.
        for &i in chunk {
            if results[i].is_none() {
                results[i] = Some(Ok(apply(tx, &writes[i]).await?));
            }
        }
    }
    for &i in &plan.after {
        results[i] = Some(Ok(apply(tx, &writes[i]).await?));
    }
    plan.unfold(&mut results);
    Ok(results.into_iter().map(|r| r.unwrap_or(Ok(Written::Lost))).collect())
}

/// New executions, admitted a function at a time: when all of a function's new executions in
/// the batch fit under its limit, one statement takes their places and one inserts them;
/// otherwise they are admitted one by one (until the function is full).
async fn insert_groups(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[Write],
    inserts: &[usize],
    results: &mut [Option<Result<Written, StoreError>>],
) -> Result<(), StoreError> {
    let mut groups: std::collections::BTreeMap<(&str, Option<Limit>), Vec<usize>> = Default::default();
    for &i in inserts {
        let Write::Insert { record, limit, .. } = &writes[i] else { unreachable!("planned as an insert") };
        groups.entry((record.spec.name.as_str(), *limit)).or_default().push(i);
    }
    for ((function, limit), members) in groups {
        let mut granted = 0;
        if let Some(Limit { total, concurrency }) = limit {
            let k = members.len() as i64;
            let (active, slots) = lock_function(tx, function).await?;
            if active + k > i64::from(total) {
                // Not all of them fit: one by one, until the function is full.
                for &i in &members {
                    results[i] = Some(Ok(apply(tx, &writes[i]).await?));
                }
                continue;
            }
            granted = k.min((i64::from(concurrency) - slots).max(0));
        }
        // The first ones get the free slots, in the insert itself.
        let columns = EXECUTION_COLUMNS.split(',').count() + 1;
        for (c, chunk) in members.chunks(ROWS_PER_STATEMENT / 2).enumerate() {
            let marks = (0..chunk.len())
                .map(|r| {
                    format!(
                        "({})",
                        (1..=columns).map(|c| format!("${}", r * columns + c)).collect::<Vec<_>>().join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("INSERT INTO executions ({EXECUTION_COLUMNS}, slot) VALUES {marks}");
            let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for (r, &i) in chunk.iter().enumerate() {
                let Write::Insert { record, .. } = &writes[i] else { unreachable!("planned as an insert") };
                let slot = ((c * (ROWS_PER_STATEMENT / 2) + r) as i64) < granted;
                q = rows::bind_execution(q, record)?.bind(i64::from(slot));
                results[i] = Some(Ok(if slot { Written::InsertedWithSlot } else { Written::Inserted }));
            }
            q.execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Locks function `name` for admission (its row in `function_locks`, created on first use)
/// and counts its unfinished executions and those holding a slot. The lock is held until the
/// transaction ends, so no other replica admits past what is counted here. The counts are a
/// statement of their own, after the lock is taken: a statement's snapshot is taken when it
/// starts, so counting in the locking statement would miss what the previous holder committed.
async fn lock_function(tx: &mut Transaction<'_, Postgres>, name: &str) -> Result<(i64, i64), StoreError> {
    const LOCK: &str = "SELECT 1 FROM function_locks WHERE function = $1 FOR UPDATE";
    if sqlx::query(LOCK).bind(name).fetch_optional(&mut **tx).await?.is_none() {
        sqlx::query("INSERT INTO function_locks (function) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(name)
            .execute(&mut **tx)
            .await?;
        sqlx::query(LOCK).bind(name).fetch_one(&mut **tx).await?;
    }
    Ok(sqlx::query_as::<_, (i64, i64)>(
        "SELECT (SELECT count(*) FROM executions WHERE function = $1 AND status IN ('queued', 'running')), \
         (SELECT count(*) FROM executions WHERE function = $1 AND slot = 1)",
    )
    .bind(name)
    .fetch_one(&mut **tx)
    .await?)
}

async fn apply(tx: &mut Transaction<'_, Postgres>, write: &Write) -> Result<Written, StoreError> {
    let now = rows::now_ms();
    Ok(match write {
        Write::Insert { record, key, limit } => {
            if let Some(key) = key {
                // Claim the key (or take over a stale one); a live key of another request wins.
                let claimed = sqlx::query(
                    "INSERT INTO idempotency_keys (function, key, execution_id, fingerprint, expires_at_ms) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (function, key) DO UPDATE SET \
                     execution_id = excluded.execution_id, fingerprint = excluded.fingerprint, \
                     expires_at_ms = excluded.expires_at_ms \
                     WHERE idempotency_keys.expires_at_ms <= $6 OR idempotency_keys.execution_id = excluded.execution_id \
                     OR NOT EXISTS (SELECT 1 FROM executions x WHERE x.id = idempotency_keys.execution_id) \
                     RETURNING 1",
                )
                .bind(&key.function)
                .bind(&key.key)
                .bind(&key.execution_id)
                .bind(key.fingerprint.to_vec())
                .bind(rows::to_ms(key.expires_at))
                .bind(now)
                .fetch_optional(&mut **tx)
                .await?;
                if claimed.is_none() {
                    let row =
                        sqlx::query(LIVE_KEY).bind(&key.function).bind(&key.key).bind(now).fetch_one(&mut **tx).await?;
                    return Ok(Written::Existing(rows::read_key(&row)?));
                }
            }
            if let Some(limit) = limit {
                let (active, _) = lock_function(tx, &record.spec.name).await?;
                if active >= i64::from(limit.total) {
                    if let Some(key) = key {
                        sqlx::query(
                            "DELETE FROM idempotency_keys WHERE function = $1 AND key = $2 AND execution_id = $3",
                        )
                        .bind(&key.function)
                        .bind(&key.key)
                        .bind(&key.execution_id)
                        .execute(&mut **tx)
                        .await?;
                    }
                    return Ok(Written::Overloaded);
                }
            }
            rows::bind_execution(sqlx::query(INSERT.as_str()), record)?.execute(&mut **tx).await?;
            Written::Inserted
        }
        Write::Start { id, epoch, attempt, started_at } => {
            let done = sqlx::query(
                "UPDATE executions SET status = 'running', attempt = $1, started_at_ms = COALESCE(started_at_ms, $2) \
                 WHERE id = $3 AND epoch = $4 AND status IN ('queued', 'running')",
            )
            .bind(i64::from(*attempt))
            .bind(rows::to_ms(*started_at))
            .bind(id)
            .bind(*epoch as i64)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 1 { Written::Done } else { Written::Lost }
        }
        Write::Pending { id, epoch, pending } => {
            let done = sqlx::query(
                "UPDATE executions SET pending_handle = $1, pending_attempt = $2, pending_resumable = $3 \
                 WHERE id = $4 AND epoch = $5 AND status IN ('queued', 'running')",
            )
            .bind(pending.as_ref().map(|p| p.handle.clone()))
            .bind(pending.as_ref().map(|p| i64::from(p.attempt)))
            .bind(pending.as_ref().map(|p| i64::from(p.resumable)))
            .bind(id)
            .bind(*epoch as i64)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 1 { Written::Done } else { Written::Lost }
        }
        Write::Settle { id, function, epoch, terminal } => {
            let settled = rows::bind_terminal(sqlx::query(SETTLE), terminal)
                .bind(id)
                .bind(epoch.map(|e| e as i64))
                .fetch_optional(&mut **tx)
                .await?;
            match settled {
                Some(row) => {
                    let slot: i64 = row.try_get(0)?;
                    notify(tx, format!("f:{id}")).await?;
                    if slot > 0 {
                        notify(tx, format!("s:{function}")).await?;
                    }
                    Written::Settled
                }
                None => {
                    let row = sqlx::query(
                        "SELECT status, attempt, started_at_ms, finished_at_ms, output_content_type, output, error_code, \
                         error_message, error_kind, finished_by FROM executions WHERE id = $1",
                    )
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?;
                    rows::unsettled(
                        row.as_ref().map(rows::read_snapshot).transpose()?,
                        epoch.is_none(),
                        terminal.attempt,
                    )
                }
            }
        }
        Write::TakeSlot { id, epoch, function, concurrency } => {
            let held: Option<(i64,)> = sqlx::query_as(
                "SELECT slot FROM executions WHERE id = $1 AND epoch = $2 AND status IN ('queued', 'running') FOR UPDATE",
            )
            .bind(id)
            .bind(*epoch as i64)
            .fetch_optional(&mut **tx)
            .await?;
            match held {
                None => Written::Lost,
                // A slot held before a takeover stays with the execution.
                Some((1,)) => Written::Slot(true),
                Some(_) => {
                    let (_, slots) = lock_function(tx, function).await?;
                    let granted = slots < i64::from(*concurrency);
                    if granted {
                        sqlx::query("UPDATE executions SET slot = 1 WHERE id = $1").bind(id).execute(&mut **tx).await?;
                    }
                    Written::Slot(granted)
                }
            }
        }
        Write::Process(p) => {
            sqlx::query(
                "INSERT INTO processes (replica, pgid, machine, start_ticks, execution_id) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (replica, pgid) DO UPDATE SET machine = excluded.machine, \
                 start_ticks = excluded.start_ticks, execution_id = excluded.execution_id",
            )
            .bind(&p.replica)
            .bind(i64::from(p.pgid))
            .bind(&p.machine)
            .bind(p.start_ticks as i64)
            .bind(&p.execution_id)
            .execute(&mut **tx)
            .await?;
            Written::Done
        }
        Write::ForgetProcess { replica, pgid } => {
            sqlx::query("DELETE FROM processes WHERE replica = $1 AND pgid = $2")
                .bind(replica)
                .bind(i64::from(*pgid))
                .execute(&mut **tx)
                .await?;
            Written::Done
        }
        Write::ForgetKey { function, key } => {
            sqlx::query("DELETE FROM idempotency_keys WHERE function = $1 AND key = $2")
                .bind(function)
                .bind(key)
                .execute(&mut **tx)
                .await?;
            Written::Done
        }
    })
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    fn info(&self) -> &Info {
        &self.info
    }

    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        self.batcher.write(write).await
    }

    fn write_behind(&self, write: Write) {
        self.batcher.write_behind(write);
    }

    async fn execution(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let row = sqlx::query(SELECT.as_str()).bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| rows::read_execution(&r)).transpose()
    }

    async fn key(&self, function: &str, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row =
            sqlx::query(LIVE_KEY).bind(function).bind(key).bind(rows::now_ms()).fetch_optional(&self.pool).await?;
        row.map(|r| rows::read_key(&r)).transpose()
    }

    async fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        let specs: Vec<(String, i64)> =
            sqlx::query_as("SELECT spec, version FROM functions ORDER BY name").fetch_all(&self.pool).await?;
        specs.iter().map(|(s, v)| rows::read_function(s, *v)).collect()
    }

    async fn function(&self, name: &str) -> Result<Option<FunctionSpec>, StoreError> {
        let spec: Option<(String, i64)> = sqlx::query_as("SELECT spec, version FROM functions WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        spec.map(|(s, v)| rows::read_function(&s, v)).transpose()
    }

    async fn create_function(&self, spec: &FunctionSpec) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO functions (name, spec, version, updated_at_ms) VALUES ($1, $2, 1, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&spec.name)
        .bind(rows::spec_json(spec))
        .bind(rows::now_ms())
        .execute(&mut *tx)
        .await?;
        let created = done.rows_affected() == 1;
        if created {
            notify(&mut tx, format!("n:{}", spec.name)).await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    async fn put_function(&self, spec: &FunctionSpec) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (version,): (i64,) = sqlx::query_as(
            "INSERT INTO functions (name, spec, version, updated_at_ms) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, version = functions.version + 1, \
             updated_at_ms = excluded.updated_at_ms RETURNING version",
        )
        .bind(&spec.name)
        .bind(rows::spec_json(spec))
        .bind(rows::now_ms())
        .fetch_one(&mut *tx)
        .await?;
        notify(&mut tx, format!("n:{}", spec.name)).await?;
        tx.commit().await?;
        Ok(version as u64)
    }

    async fn replace_function(&self, spec: &FunctionSpec, expected: Option<u64>) -> Result<Replaced, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done: Option<(i64,)> = sqlx::query_as(
            "UPDATE functions SET spec = $1, version = version + 1, updated_at_ms = $2 \
             WHERE name = $3 AND ($4::BIGINT IS NULL OR version = $4) RETURNING version",
        )
        .bind(rows::spec_json(spec))
        .bind(rows::now_ms())
        .bind(&spec.name)
        .bind(expected.map(|v| v as i64))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((version,)) = done else {
            let current: Option<(i64,)> = sqlx::query_as("SELECT version FROM functions WHERE name = $1")
                .bind(&spec.name)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            return Ok(current.map_or(Replaced::Missing, |(v,)| Replaced::Changed(v as u64)));
        };
        notify(&mut tx, format!("n:{}", spec.name)).await?;
        tx.commit().await?;
        Ok(Replaced::Done(version as u64))
    }

    async fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM functions WHERE name = $1").bind(name).execute(&mut *tx).await?;
        let deleted = done.rows_affected() == 1;
        if deleted {
            notify(&mut tx, format!("n:{name}")).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn secret(&self) -> Result<Vec<u8>, StoreError> {
        sqlx::query("INSERT INTO settings (name, value) VALUES ('callback_secret', $1) ON CONFLICT (name) DO NOTHING")
            .bind(super::new_secret())
            .execute(&self.pool)
            .await?;
        let (value,): (String,) =
            sqlx::query_as("SELECT value FROM settings WHERE name = 'callback_secret'").fetch_one(&self.pool).await?;
        Ok(value.into_bytes())
    }

    async fn join(&self, replica: &str, ttl: Duration) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO replicas (id, started_at_ms, expires_at_ms) VALUES ($1, {NOW_MS}, {NOW_MS} + $2) \
             ON CONFLICT (id) DO UPDATE SET expires_at_ms = excluded.expires_at_ms"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(replica).bind(ttl.as_millis() as i64).execute(&self.pool).await?;
        Ok(())
    }

    async fn renew(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError> {
        let sql =
            format!("UPDATE replicas SET expires_at_ms = {NOW_MS} + $2 WHERE id = $1 AND expires_at_ms >= {NOW_MS}");
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(replica)
            .bind(ttl.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1").bind(replica).execute(&self.pool).await?;
        Ok(())
    }

    async fn take_over(&self, me: &str, scope: TakeOver) -> Result<TakenOver, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = format!("DELETE FROM replicas WHERE id <> $1 AND ($2 OR expires_at_ms < {NOW_MS}) RETURNING id");
        let all = scope == TakeOver::AllOthers;
        let mut replicas: Vec<String> = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql))
            .bind(me)
            .bind(all)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
        let owners: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT owner FROM executions WHERE status IN ('queued', 'running') AND owner IS NOT NULL \
             AND owner <> $1 AND ($2 OR NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = executions.owner))",
        )
        .bind(me)
        .bind(all)
        .fetch_all(&mut *tx)
        .await?;
        let taken = sqlx::query(TAKE_OVER.as_str()).bind(me).bind(all).fetch_all(&mut *tx).await?;
        let records = taken.iter().map(rows::read_execution).collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        for (owner,) in owners {
            if !replicas.contains(&owner) {
                replicas.push(owner);
            }
        }
        Ok(TakenOver { records, replicas })
    }

    async fn take_processes(&self, replicas: &[String], machine: &str) -> Result<Vec<ProcessRecord>, StoreError> {
        let rows = sqlx::query(
            "DELETE FROM processes WHERE replica = ANY($1) AND machine = $2 \
             RETURNING replica, pgid, machine, start_ticks, execution_id",
        )
        .bind(replicas)
        .bind(machine)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ProcessRecord {
                    replica: row.try_get("replica")?,
                    machine: row.try_get("machine")?,
                    pgid: row.try_get::<i64, _>("pgid")? as i32,
                    start_ticks: row.try_get::<i64, _>("start_ticks")? as u64,
                    execution_id: row.try_get("execution_id")?,
                })
            })
            .collect()
    }

    async fn evict(&self, retention: Duration, max_retained: usize) -> Result<u64, StoreError> {
        let now = rows::now_ms();
        let mut tx = self.pool.begin().await?;
        let old = sqlx::query("DELETE FROM executions WHERE finished_at_ms IS NOT NULL AND finished_at_ms <= $1")
            .bind(now - retention.as_millis() as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let over = sqlx::query(
            "DELETE FROM executions WHERE id IN (SELECT id FROM executions WHERE finished_at_ms IS NOT NULL \
             ORDER BY finished_at_ms DESC OFFSET $1)",
        )
        .bind(max_retained as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_ms <= $1").bind(now).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(old + over)
    }

    fn events(&self) -> Option<broadcast::Receiver<Event>> {
        Some(self.events.subscribe())
    }
}
