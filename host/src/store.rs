//! The durable store: functions, executions, idempotency keys, the callback secret, replica
//! leases and the local processes the host started — behind one contract, [`Store`].
//!
//! Drivers: `memory:` keeps nothing across restarts (idempotency keys only, in memory);
//! `sqlite:PATH` is embedded, for one host process (an exclusive lock file makes sure of it);
//! `postgres://…` is shared by several host replicas. Nothing above this module knows SQL.
//!
//! Writes go through a group-commit writer ([`batch`]): many writes, from many requests, are
//! applied in one transaction, in the order they were made. A caller that needs durability
//! awaits [`Store::write`] (an accepted `:enqueue`, a terminal state); transitions that a crash
//! may lose without harm — recovery redoes them — are [`Store::write_behind`].
//!
//! Every write a driver makes for a running execution is conditional: on the execution not
//! being terminal (the first finish recorded wins, across replicas) and, for the replica that
//! drives it, on the lease epoch it holds (a replica that lost an execution cannot touch it).

mod batch;
pub mod memory;
pub mod postgres;
mod rows;
pub mod sqlite;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::execution::{PendingWork, Record, Snapshot};
use crate::function::FunctionSpec;

/// Where the store is: the `--store` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `memory:` — nothing survives a restart.
    Memory,
    /// `sqlite:PATH` — embedded; one host process.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…` — shared by several replicas.
    Postgres(String),
}

impl FromStr for Location {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "memory:" || s == "memory" {
            return Ok(Location::Memory);
        }
        if let Some(path) = s.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("`sqlite:` needs a path, e.g. sqlite:/var/lib/nanofaas/nanofaas.db".into());
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Location::Postgres(s.to_string()));
        }
        Err(format!("unknown store `{s}`: use memory:, sqlite:PATH or postgres://USER@HOST/DB"))
    }
}

impl Location {
    /// The embedded default: `sqlite:` in the user's state directory
    /// (`$XDG_STATE_HOME/nanofaas`, else `~/.local/state/nanofaas`, else `./nanofaas.db`).
    pub fn default_sqlite() -> Self {
        let dir = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".local/state"))
        });
        Location::Sqlite(match dir {
            Some(dir) => dir.join("nanofaas").join("nanofaas.db"),
            None => PathBuf::from("nanofaas.db"),
        })
    }

    /// The location as it may be printed: a PostgreSQL password is masked.
    pub fn display(&self) -> String {
        match self {
            Location::Memory => "memory: (nothing survives a restart)".into(),
            Location::Sqlite(path) => format!("sqlite:{}", path.display()),
            Location::Postgres(url) => match url::Url::parse(url) {
                Ok(mut u) if u.password().is_some() => {
                    let _ = u.set_password(Some("***"));
                    u.to_string()
                }
                _ => url.clone(),
            },
        }
    }
}

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the operation.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The database holds a schema this host does not know.
    #[error("{0}")]
    Schema(String),
    /// Another host process holds the embedded store.
    #[error("{0}")]
    Locked(String),
    /// A stored value could not be read back.
    #[error("the store holds an unreadable value: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// An `Idempotency-Key` and the request it was first used for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub function: String,
    pub key: String,
    pub fingerprint: [u8; 32],
    pub execution_id: String,
    pub expires_at: SystemTime,
}

/// A local process group a replica started, so that a later host on the same machine can kill
/// it if the replica died without doing so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    pub replica: String,
    pub machine: String,
    pub pgid: i32,
    /// The process's start time in clock ticks since boot (`/proc/PID/stat`), so a reused
    /// process id is never mistaken for it.
    pub start_ticks: u64,
    pub execution_id: String,
}

/// A write, applied in order with every other write of this host.
#[derive(Clone, Debug)]
pub enum Write {
    /// A new execution, owned by `record.owner`. With `key`, re-attaches instead when the key
    /// names a live execution ([`Written::Existing`]). With `limit` (shared stores), refused when
    /// the function already has `limit.total` unfinished executions ([`Written::Overloaded`]);
    /// when fewer than `limit.concurrency` hold a slot, the store may grant it one at once
    /// ([`Written::InsertedWithSlot`]).
    Insert { record: Box<Record>, key: Option<KeyRecord>, limit: Option<Limit> },
    /// An attempt started.
    Start { id: String, epoch: u64, attempt: u32, started_at: SystemTime },
    /// The pending work of the current attempt (none: no work pending).
    Pending { id: String, epoch: u64, pending: Option<PendingWork> },
    /// The terminal state. `epoch: None` for a settle that does not come from a driver (a
    /// callback, which may arrive at any replica): it applies only while the execution is at
    /// `terminal.attempt` or an earlier attempt the store has not heard about yet.
    Settle { id: String, function: String, epoch: Option<u64>, terminal: Snapshot },
    /// A concurrency slot of `function` for the execution (shared stores): granted when fewer
    /// than `concurrency` of its executions hold one.
    TakeSlot { id: String, epoch: u64, function: String, concurrency: u32 },
    /// A process was started.
    Process(ProcessRecord),
    /// A process group is gone.
    ForgetProcess { replica: String, pgid: i32 },
    /// An idempotency key whose execution is gone (evicted) is free again.
    ForgetKey { function: String, key: String },
}

/// A function's bounds, for a shared store's admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Limit {
    /// Unfinished executions at most (concurrency + queue).
    pub total: u32,
    /// Executions holding a slot at most.
    pub concurrency: u32,
}

/// What a write did.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    Done,
    Inserted,
    /// Inserted, and granted a concurrency slot (shared stores).
    InsertedWithSlot,
    /// The idempotency key names this live execution.
    Existing(KeyRecord),
    /// The function is at capacity (shared admission).
    Overloaded,
    Settled,
    /// Another finish was recorded first: this one.
    AlreadyFinished(Box<Snapshot>),
    /// The execution is driven under another epoch now: this replica lost it.
    Lost,
    /// A callback's settle for an attempt older than the execution's current one (this one).
    Stale(u32),
    NotFound,
    /// Whether a slot was granted.
    Slot(bool),
}

/// What replacing a function did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replaced {
    /// Replaced; the new version.
    Done(u64),
    /// No function has that name.
    Missing,
    /// The function is at another version than the one expected: this one.
    Changed(u64),
}

/// Which unfinished executions a replica takes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// Every one not owned by the caller: the embedded store, whose lock proves that no other
    /// host process is alive.
    AllOthers,
    /// Those of replicas whose lease expired.
    Expired,
}

/// What a takeover claimed.
#[derive(Clone, Debug, Default)]
pub struct TakenOver {
    /// The executions, now owned by the caller under a new epoch.
    pub records: Vec<Record>,
    /// The replicas they came from (now gone from the lease table).
    pub replicas: Vec<String>,
}

/// Something another replica did, pushed by a shared store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An execution reached a terminal state.
    Finished(String),
    /// A function was created, replaced or deleted.
    Function(String),
    /// A concurrency slot of a function was freed.
    SlotFreed(String),
    /// Events may have been missed (the connection was re-established): re-read what matters.
    Resync,
}

/// What a store is.
#[derive(Clone, Debug)]
pub struct Info {
    pub location: Location,
    /// Whether it outlives the host process.
    pub durable: bool,
    /// Whether several replicas share it (admission and slots are then kept in the store).
    pub shared: bool,
}

/// The contract every driver keeps; `tests/store.rs` checks it against SQLite and PostgreSQL.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    fn info(&self) -> &Info;

    /// Applies `write` (grouped with others into one transaction) and returns once it is durable.
    async fn write(&self, write: Write) -> Result<Written, StoreError>;

    /// Queues `write` behind every write made before it, without waiting for it.
    fn write_behind(&self, write: Write);

    /// An execution by id.
    async fn execution(&self, id: &str) -> Result<Option<Record>, StoreError>;

    /// A live idempotency key.
    async fn key(&self, function: &str, key: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Every registered function, each with its `version`.
    async fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError>;

    async fn function(&self, name: &str) -> Result<Option<FunctionSpec>, StoreError>;

    /// Registers a function unless the name is taken; returns whether it was created (at
    /// version 1). The spec's own `version` is ignored: the store keeps the count.
    async fn create_function(&self, spec: &FunctionSpec) -> Result<bool, StoreError>;

    /// Registers or replaces a function; returns its new version.
    async fn put_function(&self, spec: &FunctionSpec) -> Result<u64, StoreError>;

    /// Replaces an existing function in one step, if it is at version `expected` (at any
    /// version when `None`).
    async fn replace_function(&self, spec: &FunctionSpec, expected: Option<u64>) -> Result<Replaced, StoreError>;

    /// Returns whether the function existed.
    async fn delete_function(&self, name: &str) -> Result<bool, StoreError>;

    /// The callback-token secret, generated on first use and kept.
    async fn secret(&self) -> Result<Vec<u8>, StoreError>;

    /// Registers a replica with a lease of `ttl`.
    async fn join(&self, replica: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Renews a replica's lease; false when it had already expired or was taken over (the
    /// replica has lost its executions and must let go of them).
    async fn renew(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Ends a replica's lease at once, so others take its executions over without waiting.
    async fn leave(&self, replica: &str) -> Result<(), StoreError>;

    /// Claims unfinished executions for `me` under a new epoch.
    async fn take_over(&self, me: &str, scope: TakeOver) -> Result<TakenOver, StoreError>;

    /// The process groups `replicas` started on `machine`, and forgets them.
    async fn take_processes(&self, replicas: &[String], machine: &str) -> Result<Vec<ProcessRecord>, StoreError>;

    /// Deletes finished executions older than `retention` and beyond `max_retained` (oldest
    /// first), and expired keys; returns how many executions went.
    async fn evict(&self, retention: Duration, max_retained: usize) -> Result<u64, StoreError>;

    /// What other replicas do (shared stores only).
    fn events(&self) -> Option<broadcast::Receiver<Event>>;
}

/// Opens the store at `location`: creates it, applies the schema migrations, and takes the
/// embedded store's lock.
pub async fn open(location: &Location) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        Location::Memory => Arc::new(memory::MemoryStore::new()),
        Location::Sqlite(path) => Arc::new(sqlite::open(path).await?),
        Location::Postgres(url) => Arc::new(postgres::open(url).await?),
    })
}

/// The schema migrations of a driver (`(version, description, SQL)`), applied at start.
pub(crate) fn migrator(migrations: &[(i64, &str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|(version, description, sql)| {
                let description = std::borrow::Cow::Owned(description.to_string());
                Migration::new(
                    *version,
                    description,
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    false,
                )
            })
            .collect(),
    )
}

/// A fresh callback secret: 32 random bytes, hex.
pub(crate) fn new_secret() -> String {
    let bytes: Vec<u8> =
        uuid::Uuid::new_v4().into_bytes().into_iter().chain(uuid::Uuid::new_v4().into_bytes()).collect();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The newest schema version this host knows; a store at a newer one is refused.
pub(crate) fn check_schema(applied: Option<i64>, known: i64, location: &str) -> Result<(), StoreError> {
    match applied {
        Some(v) if v > known => Err(StoreError::Schema(format!(
            "the store {location} has schema version {v}, newer than this nanofaas knows ({known}); \
             run a nanofaas at least as new as the one that last used it"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!("memory:".parse::<Location>(), Ok(Location::Memory));
        assert_eq!("sqlite:/tmp/x.db".parse::<Location>(), Ok(Location::Sqlite("/tmp/x.db".into())));
        assert_eq!("sqlite://tmp/x.db".parse::<Location>(), Ok(Location::Sqlite("tmp/x.db".into())));
        assert_eq!("sqlite:rel.db".parse::<Location>(), Ok(Location::Sqlite("rel.db".into())));
        assert!(matches!("postgres://u@h/db".parse::<Location>(), Ok(Location::Postgres(_))));
        assert!(matches!("postgresql://u@h/db".parse::<Location>(), Ok(Location::Postgres(_))));
        assert!("sqlite:".parse::<Location>().unwrap_err().contains("needs a path"));
        assert!("redis://x".parse::<Location>().unwrap_err().contains("unknown store"));
    }

    #[test]
    fn passwords_are_not_printed() {
        let l: Location = "postgres://nf:s3cret@db:5432/nanofaas".parse().unwrap();
        assert_eq!(l.display(), "postgres://nf:***@db:5432/nanofaas");
        assert!(Location::default_sqlite().display().ends_with("nanofaas.db"));
    }

    #[test]
    fn newer_schemas_are_refused_by_name() {
        assert!(check_schema(None, 1, "x").is_ok());
        assert!(check_schema(Some(1), 1, "x").is_ok());
        let e = check_schema(Some(3), 1, "sqlite:/x").unwrap_err().to_string();
        assert!(e.contains("schema version 3") && e.contains("(1)") && e.contains("sqlite:/x"), "{e}");
    }
}
