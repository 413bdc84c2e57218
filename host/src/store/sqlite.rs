//! `sqlite:PATH`: the embedded store, for one host process.
//!
//! WAL journal with `synchronous=NORMAL`: a commit is durable against a crash of the process
//! (kill -9) without an fsync per transaction; the WAL is synced at checkpoints (power loss can
//! lose the last transactions since one). One writer connection applies the group-commit
//! batches; reads use a small pool of their own and never wait for the writer. An exclusive
//! lock on `PATH.lock` keeps a second host process away — which is what lets a starting host
//! take over every unfinished execution at once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};
use tokio::sync::broadcast;

use super::batch::{Batcher, Plan, ROWS_PER_STATEMENT, Sql};
use super::rows::{self, EXECUTION_COLUMNS, UNFINISHED};
use super::{
    Event, Info, KeyRecord, Location, ProcessRecord, Replaced, Store, StoreError, TakeOver, TakenOver, Write, Written,
};
use crate::execution::Record;
use crate::function::FunctionSpec;

const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "initial", include_str!("../../migrations/sqlite/0001_initial.sql"))];

pub struct SqliteStore {
    info: Info,
    read: SqlitePool,
    write: SqlitePool,
    batcher: Batcher,
    _lock: Flock<File>,
}

/// Opens (creating it if needed) the store at `path`.
pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
    let location = Location::Sqlite(path.to_path_buf());
    let shown = location.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
    }
    let lock = lock(path, &shown)?;
    let options = SqliteConnectOptions::from_str("sqlite:")
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(false)
        // Keep the hot pages of a growing table in memory (64 MiB per connection at most).
        .pragma("cache_size", "-65536");
    let write = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
    applied_schema(&write, &shown).await?;
    super::migrator(MIGRATIONS)
        .run(&write)
        .await
        .map_err(|e| StoreError::Schema(format!("cannot migrate {shown}: {e}")))?;
    let read = SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?;
    let batcher = Batcher::start(Writer { pool: write.clone() }, "sqlite");
    Ok(SqliteStore { info: Info { location, durable: true, shared: false }, read, write, batcher, _lock: lock })
}

fn lock(path: &Path, shown: &str) -> Result<Flock<File>, StoreError> {
    let mut lock_path = PathBuf::from(path).into_os_string();
    lock_path.push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", Path::new(&lock_path).display())))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        StoreError::Locked(format!(
            "another nanofaas process is using the store {shown}; an embedded store serves one host \
             process (use postgres:// for several replicas)"
        ))
    })
}

async fn applied_schema(pool: &SqlitePool, shown: &str) -> Result<(), StoreError> {
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_optional(pool)
            .await?;
    if exists.is_none() {
        return Ok(());
    }
    let (version,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations").fetch_one(pool).await?;
    super::check_schema(version, MIGRATIONS.last().map_or(0, |m| m.0), shown)
}

static INSERT: LazyLock<String> = LazyLock::new(|| {
    let marks = vec!["?"; EXECUTION_COLUMNS.split(',').count()].join(", ");
    format!("INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES ({marks})")
});
static SELECT: LazyLock<String> = LazyLock::new(|| format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?"));
static TAKE_OVER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE executions SET owner = ?, epoch = epoch + 1 \
         WHERE status IN {UNFINISHED} AND (owner IS NULL OR owner <> ?) RETURNING {EXECUTION_COLUMNS}"
    )
});
const SETTLE: &str = "UPDATE executions SET status = ?, attempt = ?, finished_at_ms = ?, output_content_type = ?, \
     output = ?, error_code = ?, error_message = ?, error_kind = ?, finished_by = ?, pending_handle = NULL, \
     pending_attempt = NULL, pending_resumable = NULL, slot = 0 \
     WHERE id = ? AND status IN ('queued', 'running') AND (? IS NULL OR epoch = ?) AND (? IS NOT NULL OR attempt <= ?)";

struct Writer {
    pool: SqlitePool,
}

#[async_trait::async_trait]
impl Sql for Writer {
    type Db = Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn one(&self, tx: &mut Transaction<'_, Sqlite>, write: &Write) -> Result<Written, StoreError> {
        apply(tx, write).await
    }

    async fn batch(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        writes: &[Write],
    ) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        apply_plan(tx, writes).await
    }
}

/// A batch in one transaction: the decisive writes one by one, the rest a statement per group.
async fn apply_plan(
    tx: &mut Transaction<'_, Sqlite>,
    writes: &[Write],
) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
    let plan = Plan::of(writes);
    let mut results: Vec<Option<Result<Written, StoreError>>> = (0..writes.len()).map(|_| None).collect();
    for &i in &plan.singles {
        results[i] = Some(Ok(apply(tx, &writes[i]).await?));
    }
    for chunk in plan.inserts.chunks(ROWS_PER_STATEMENT) {
        let columns = EXECUTION_COLUMNS.split(',').count();
        let sql =
            format!("INSERT INTO executions ({EXECUTION_COLUMNS}) VALUES {}", rows::values(chunk.len(), columns, None));
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for &i in chunk {
            let Write::Insert { record, .. } = &writes[i] else { unreachable!("planned as an insert") };
            q = rows::bind_execution(q, record)?;
        }
        q.execute(&mut **tx).await?;
        for &i in chunk {
            results[i] = Some(Ok(Written::Inserted));
        }
    }
    for chunk in plan.starts.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE executions SET status = 'running', attempt = v.column3, \
             started_at_ms = COALESCE(executions.started_at_ms, v.column4) FROM (VALUES {}) AS v \
             WHERE executions.id = v.column1 AND executions.epoch = v.column2 AND executions.status IN {UNFINISHED} \
             RETURNING executions.id",
            rows::values(chunk.len(), 4, None)
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
            "UPDATE executions SET pending_handle = v.column3, pending_attempt = v.column4, pending_resumable = v.column5 \
             FROM (VALUES {}) AS v WHERE executions.id = v.column1 AND executions.epoch = v.column2 \
             AND executions.status IN {UNFINISHED} RETURNING executions.id",
            rows::values(chunk.len(), 5, None)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for &i in chunk {
            let Write::Pending { id, epoch, pending } = &writes[i] else { unreachable!("planned as pending") };
            q = rows::bind_pending_row(q, id, *epoch, pending.as_ref());
        }
        rows::answer_by_id(&mut results, writes, chunk, q.fetch_all(&mut **tx).await?, Written::Done)?;
    }
    for chunk in plan.settles.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE executions SET status = v.column2, attempt = v.column3, finished_at_ms = v.column4, \
             started_at_ms = COALESCE(executions.started_at_ms, v.column12), \
             output_content_type = v.column5, output = v.column6, error_code = v.column7, error_message = v.column8, \
             error_kind = v.column9, finished_by = v.column10, pending_handle = NULL, pending_attempt = NULL, \
             pending_resumable = NULL, slot = 0 FROM (VALUES {}) AS v WHERE executions.id = v.column1 \
             AND executions.status IN {UNFINISHED} AND (v.column11 IS NULL OR executions.epoch = v.column11) \
             AND (v.column11 IS NOT NULL OR executions.attempt <= v.column3) \
             RETURNING executions.id",
            rows::values(chunk.len(), 12, None)
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

async fn apply(tx: &mut Transaction<'_, Sqlite>, write: &Write) -> Result<Written, StoreError> {
    let now = rows::now_ms();
    Ok(match write {
        Write::Insert { record, key, .. } => {
            if let Some(key) = key {
                let existing = sqlx::query(
                    "SELECT k.function, k.key, k.execution_id, k.fingerprint, k.expires_at_ms FROM idempotency_keys k \
                     JOIN executions e ON e.id = k.execution_id WHERE k.function = ? AND k.key = ? AND k.expires_at_ms > ?",
                )
                .bind(&key.function)
                .bind(&key.key)
                .bind(now)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some(row) = existing {
                    let existing = rows::read_key(&row)?;
                    if existing.execution_id != record.id {
                        return Ok(Written::Existing(existing));
                    }
                }
            }
            rows::bind_execution(sqlx::query(INSERT.as_str()), record)?.execute(&mut **tx).await?;
            if let Some(key) = key {
                put_key(tx, key).await?;
            }
            Written::Inserted
        }
        Write::Start { id, epoch, attempt, started_at } => {
            let done = sqlx::query(
                "UPDATE executions SET status = 'running', attempt = ?, started_at_ms = COALESCE(started_at_ms, ?) \
                 WHERE id = ? AND epoch = ? AND status IN ('queued', 'running')",
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
                "UPDATE executions SET pending_handle = ?, pending_attempt = ?, pending_resumable = ? \
                 WHERE id = ? AND epoch = ? AND status IN ('queued', 'running')",
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
        Write::Settle { id, epoch, terminal, .. } => {
            let epoch = epoch.map(|e| e as i64);
            let done = rows::bind_terminal(sqlx::query(SETTLE), terminal)
                .bind(id)
                .bind(epoch)
                .bind(epoch)
                .bind(epoch)
                .bind(i64::from(terminal.attempt))
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 1 {
                Written::Settled
            } else {
                let row = sqlx::query(
                    "SELECT status, attempt, started_at_ms, finished_at_ms, output_content_type, output, error_code, \
                     error_message, error_kind, finished_by FROM executions WHERE id = ?",
                )
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                rows::unsettled(row.as_ref().map(rows::read_snapshot).transpose()?, epoch.is_none(), terminal.attempt)
            }
        }
        // One process drives everything: slots are the host's own (see `queue`).
        Write::TakeSlot { .. } => Written::Slot(true),
        Write::Process(p) => {
            sqlx::query(
                "INSERT OR REPLACE INTO processes (replica, pgid, machine, start_ticks, execution_id) VALUES (?, ?, ?, ?, ?)",
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
            sqlx::query("DELETE FROM processes WHERE replica = ? AND pgid = ?")
                .bind(replica)
                .bind(i64::from(*pgid))
                .execute(&mut **tx)
                .await?;
            Written::Done
        }
        Write::ForgetKey { function, key } => {
            sqlx::query("DELETE FROM idempotency_keys WHERE function = ? AND key = ?")
                .bind(function)
                .bind(key)
                .execute(&mut **tx)
                .await?;
            Written::Done
        }
    })
}

async fn put_key(tx: &mut Transaction<'_, Sqlite>, key: &KeyRecord) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO idempotency_keys (function, key, execution_id, fingerprint, expires_at_ms) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (function, key) DO UPDATE SET execution_id = excluded.execution_id, \
         fingerprint = excluded.fingerprint, expires_at_ms = excluded.expires_at_ms",
    )
    .bind(&key.function)
    .bind(&key.key)
    .bind(&key.execution_id)
    .bind(key.fingerprint.to_vec())
    .bind(rows::to_ms(key.expires_at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
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
        let row = sqlx::query(SELECT.as_str()).bind(id).fetch_optional(&self.read).await?;
        row.map(|r| rows::read_execution(&r)).transpose()
    }

    async fn key(&self, function: &str, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT k.function, k.key, k.execution_id, k.fingerprint, k.expires_at_ms FROM idempotency_keys k \
             JOIN executions e ON e.id = k.execution_id WHERE k.function = ? AND k.key = ? AND k.expires_at_ms > ?",
        )
        .bind(function)
        .bind(key)
        .bind(rows::now_ms())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| rows::read_key(&r)).transpose()
    }

    async fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        let specs: Vec<(String, i64)> =
            sqlx::query_as("SELECT spec, version FROM functions ORDER BY name").fetch_all(&self.read).await?;
        specs.iter().map(|(s, v)| rows::read_function(s, *v)).collect()
    }

    async fn function(&self, name: &str) -> Result<Option<FunctionSpec>, StoreError> {
        let spec: Option<(String, i64)> = sqlx::query_as("SELECT spec, version FROM functions WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        spec.map(|(s, v)| rows::read_function(&s, v)).transpose()
    }

    async fn create_function(&self, spec: &FunctionSpec) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO functions (name, spec, version, updated_at_ms) VALUES (?, ?, 1, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&spec.name)
        .bind(rows::spec_json(spec))
        .bind(rows::now_ms())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_function(&self, spec: &FunctionSpec) -> Result<u64, StoreError> {
        let (version,): (i64,) = sqlx::query_as(
            "INSERT INTO functions (name, spec, version, updated_at_ms) VALUES (?, ?, 1, ?) \
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, version = functions.version + 1, \
             updated_at_ms = excluded.updated_at_ms RETURNING version",
        )
        .bind(&spec.name)
        .bind(rows::spec_json(spec))
        .bind(rows::now_ms())
        .fetch_one(&self.write)
        .await?;
        Ok(version as u64)
    }

    async fn replace_function(&self, spec: &FunctionSpec, expected: Option<u64>) -> Result<Replaced, StoreError> {
        let done: Option<(i64,)> = sqlx::query_as(
            "UPDATE functions SET spec = ?, version = version + 1, updated_at_ms = ? \
             WHERE name = ? AND (? IS NULL OR version = ?) RETURNING version",
        )
        .bind(rows::spec_json(spec))
        .bind(rows::now_ms())
        .bind(&spec.name)
        .bind(expected.map(|v| v as i64))
        .bind(expected.map(|v| v as i64))
        .fetch_optional(&self.write)
        .await?;
        if let Some((version,)) = done {
            return Ok(Replaced::Done(version as u64));
        }
        let current: Option<(i64,)> = sqlx::query_as("SELECT version FROM functions WHERE name = ?")
            .bind(&spec.name)
            .fetch_optional(&self.write)
            .await?;
        Ok(current.map_or(Replaced::Missing, |(v,)| Replaced::Changed(v as u64)))
    }

    async fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM functions WHERE name = ?").bind(name).execute(&self.write).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn secret(&self) -> Result<Vec<u8>, StoreError> {
        let fresh = super::new_secret();
        sqlx::query("INSERT INTO settings (name, value) VALUES ('callback_secret', ?) ON CONFLICT (name) DO NOTHING")
            .bind(&fresh)
            .execute(&self.write)
            .await?;
        let (value,): (String,) =
            sqlx::query_as("SELECT value FROM settings WHERE name = 'callback_secret'").fetch_one(&self.write).await?;
        Ok(value.into_bytes())
    }

    async fn join(&self, replica: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = rows::now_ms();
        sqlx::query("INSERT OR REPLACE INTO replicas (id, started_at_ms, expires_at_ms) VALUES (?, ?, ?)")
            .bind(replica)
            .bind(now)
            .bind(now + ttl.as_millis() as i64)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn renew(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = rows::now_ms();
        let done = sqlx::query("UPDATE replicas SET expires_at_ms = ? WHERE id = ?")
            .bind(now + ttl.as_millis() as i64)
            .bind(replica)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn leave(&self, replica: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = ?").bind(replica).execute(&self.write).await?;
        Ok(())
    }

    async fn take_over(&self, me: &str, scope: TakeOver) -> Result<TakenOver, StoreError> {
        // The lock file proves no other host process is alive, so every other replica is gone.
        debug_assert_eq!(scope, TakeOver::AllOthers, "an embedded store has one process");
        let mut tx = self.write.begin().await?;
        let mut replicas: Vec<String> =
            sqlx::query_as::<_, (String,)>("DELETE FROM replicas WHERE id <> ? RETURNING id")
                .bind(me)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(id,)| id)
                .collect();
        // Replicas that left executions or processes behind (their lease rows may be gone).
        let owners: Vec<(String,)> = sqlx::query_as(
            "SELECT owner FROM executions WHERE status IN ('queued', 'running') AND owner IS NOT NULL AND owner <> ? \
             UNION SELECT replica FROM processes WHERE replica <> ?",
        )
        .bind(me)
        .bind(me)
        .fetch_all(&mut *tx)
        .await?;
        let rows = sqlx::query(TAKE_OVER.as_str()).bind(me).bind(me).fetch_all(&mut *tx).await?;
        let records = rows.iter().map(rows::read_execution).collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        for (owner,) in owners {
            if !replicas.contains(&owner) {
                replicas.push(owner);
            }
        }
        Ok(TakenOver { records, replicas })
    }

    async fn take_processes(&self, replicas: &[String], machine: &str) -> Result<Vec<ProcessRecord>, StoreError> {
        let mut found = Vec::new();
        let mut tx = self.write.begin().await?;
        for replica in replicas {
            let rows = sqlx::query(
                "DELETE FROM processes WHERE replica = ? AND machine = ? RETURNING replica, pgid, machine, start_ticks, execution_id",
            )
            .bind(replica)
            .bind(machine)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                found.push(ProcessRecord {
                    replica: row.try_get("replica")?,
                    machine: row.try_get("machine")?,
                    pgid: row.try_get::<i64, _>("pgid")? as i32,
                    start_ticks: row.try_get::<i64, _>("start_ticks")? as u64,
                    execution_id: row.try_get("execution_id")?,
                });
            }
        }
        tx.commit().await?;
        Ok(found)
    }

    async fn evict(&self, retention: Duration, max_retained: usize) -> Result<u64, StoreError> {
        let now = rows::now_ms();
        let mut tx = self.write.begin().await?;
        let old = sqlx::query("DELETE FROM executions WHERE finished_at_ms IS NOT NULL AND finished_at_ms <= ?")
            .bind(now - retention.as_millis() as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let over = sqlx::query(
            "DELETE FROM executions WHERE id IN (SELECT id FROM executions WHERE finished_at_ms IS NOT NULL \
             ORDER BY finished_at_ms DESC LIMIT -1 OFFSET ?)",
        )
        .bind(max_retained as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_ms <= ?").bind(now).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(old + over)
    }

    fn events(&self) -> Option<broadcast::Receiver<Event>> {
        None
    }
}
