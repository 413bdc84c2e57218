//! The ledger: the executions this host holds, and the one place where they are accepted,
//! changed and settled — in memory and in the store, in the right order.
//!
//! In memory: every execution this host drives or waits for, and finished ones for their
//! retention (time and count bounds, oldest evicted first). In the store: what must survive
//! this process. Which executions are written (see ARCHITECTURE.md, "Durability"):
//! - with a durable store, every `:enqueue`d execution and every request with an
//!   `Idempotency-Key`, *before* it is acknowledged;
//! - a sync execution without a key is not written while it finishes in this process (its
//!   caller holds the truth); it is written when it goes pending on work that outlives this
//!   process (a Kubernetes Job), and from then on like any other;
//! - with a shared store, every execution (admission is decided there).
//!
//! Transitions of a written execution go to the store: attempts and pending work behind
//! (a crash may lose them; recovery redoes the step), the terminal state before it is visible
//! (so nothing a client saw can change after a crash). [`Ledger::finish`] is the only place an
//! execution becomes terminal, and where that is counted, logged and retained.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::execution::{
    ErrorInfo, ErrorKind, Execution, Finish, FinishedBy, Input, NewExecution, PendingWork, Record, ResultHold, Status,
};
use crate::function::{Function, FunctionSpec};
use crate::metrics::Metrics;
use crate::otel::{self, Parent, Span, SpanKind};
use crate::queue::{Admission, Overload, Slot};
use crate::store::{KeyRecord, Limit, Store, StoreError, Write, Written};

/// Builds the function an execution read back from the store runs with (the spec it was
/// accepted with, admitted through the registered function's queue when there is one).
pub type Restore = Arc<dyn Fn(&FunctionSpec) -> Arc<Function> + Send + Sync>;

/// What a finished execution held in memory costs besides its input and output bytes (its
/// record, ids, map and queue entries), as measured: 100,000 retained executions of 2-byte
/// bodies take ~116 MiB of RSS. Counted in the retained bytes, so `--max-retained-bytes` bounds
/// the real memory, not only the payloads.
pub const RECORD_OVERHEAD: usize = 1200;

/// How long a shared-store slot waiter sleeps between tries when no slot is freed meanwhile.
const SLOT_RETRY: Duration = Duration::from_secs(1);

/// How a request got its execution.
pub enum Attach {
    /// A new execution was created; a synchronous request holds its result from the start.
    New(Arc<Execution>, Option<ResultHold>),
    /// The `Idempotency-Key` named an existing execution with the same request.
    Existing(Arc<Execution>),
}

impl Attach {
    pub fn execution(&self) -> &Arc<Execution> {
        match self {
            Attach::New(e, _) | Attach::Existing(e) => e,
        }
    }

    /// A hold on the execution's whole result (taken at creation for a synchronous request, so
    /// that its output cannot be sealed before the request reads it).
    pub fn into_hold(self) -> ResultHold {
        match self {
            Attach::New(_, Some(hold)) => hold,
            Attach::New(e, None) | Attach::Existing(e) => e.hold_result(),
        }
    }
}

/// What [`Ledger::accept`] did.
pub enum Accepted {
    /// A new execution, admitted: the caller starts its driver with the admission.
    New(Arc<Execution>, Admission),
    Existing(Arc<Execution>),
}

/// Why an invocation was not accepted. Nothing was created in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("function `{0}` not found")]
    UnknownFunction(String),
    #[error("function `{function}` is at capacity: {concurrency} running and {queue_size} queued")]
    Overloaded { function: String, concurrency: u32, queue_size: u32 },
    /// The function is registered but its dispatcher is not loaded here.
    #[error("function `{function}` cannot run on this host: {reason}")]
    Unavailable { function: String, reason: String },
    #[error(transparent)]
    Idempotency(#[from] IdempotencyConflict),
    /// The store could not record the execution, so it was not accepted.
    #[error("the execution could not be recorded: {0}")]
    Store(#[from] StoreError),
}

/// The same `Idempotency-Key` came with a different request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key `{key}` was used for a different request (execution {execution_id})")]
pub struct IdempotencyConflict {
    pub key: String,
    pub execution_id: String,
}

/// What a caller asks for, besides the input.
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    pub trace_id: Option<String>,
    /// The caller's W3C `traceparent`; its trace is the execution's (over `trace_id`).
    pub caller: Option<Parent>,
    pub idempotency_key: Option<String>,
    /// Narrows the function's timeout (never widens it).
    pub timeout: Option<Duration>,
    /// The caller does not wait (`:enqueue`): the execution must be durable before the answer.
    pub asynchronous: bool,
}

/// What makes two requests "the same" for an idempotency key: the content type, the metadata
/// and the input — for JSON its value (keys in any order, any whitespace), otherwise its bytes.
pub fn fingerprint(input: &Input) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(input.content_type.as_bytes());
    h.update([0]);
    let json = (input.content_type == "application/json")
        .then(|| serde_json::from_slice::<serde_json::Value>(&input.body).ok())
        .flatten();
    match json {
        Some(value) => hash_json(&mut h, &value),
        None => h.update(&input.body),
    }
    for (k, v) in &input.metadata {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([1]);
        h.update(v.as_bytes());
    }
    h.finalize().into()
}

/// Feeds a JSON value to `h` in one canonical form: object keys sorted, no whitespace.
fn hash_json(h: &mut Sha256, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            h.update(b"{");
            for (key, value) in entries {
                h.update(serde_json::to_string(key).expect("a string serializes").as_bytes());
                h.update(b":");
                hash_json(h, value);
                h.update(b",");
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for item in items {
                hash_json(h, item);
                h.update(b",");
            }
            h.update(b"]");
        }
        scalar => h.update(scalar.to_string().as_bytes()),
    }
}

/// A new trace id: 32 lower-case hex digits (W3C trace-id shaped).
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<Execution>>,
    /// Finished executions in the order they finished, with the bytes each holds.
    finished: VecDeque<(Instant, String, usize)>,
    /// Input and output bytes of the finished executions held.
    retained_bytes: usize,
    /// Executions another replica drives, held here for a local waiter.
    remote: HashSet<String>,
}

impl Table {
    /// Starts holding a finished execution, counting its input and retained output bytes (an
    /// output over `output_cap` is sealed to its digest once its waiters have it).
    fn push_finished(&mut self, exec: &Execution, now: Instant, output_cap: usize) {
        exec.seal(output_cap);
        let output = exec.snapshot().output.map_or(0, |o| o.body.len());
        let bytes = RECORD_OVERHEAD + exec.input.body.len() + if output > output_cap { 0 } else { output };
        self.retained_bytes += bytes;
        self.finished.push_back((now, exec.id.clone(), bytes));
    }
}

/// Retention of finished executions and idempotency keys.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub executions: Duration,
    pub max_executions: usize,
    /// Input and output bytes of finished executions held in memory at most.
    pub max_bytes: usize,
    /// Largest output kept with a finished execution (in memory and in the store).
    pub max_output_bytes: usize,
    pub keys: Duration,
}

pub struct Ledger {
    store: Arc<dyn Store>,
    table: Mutex<Table>,
    retention: Retention,
    metrics: Metrics,
    /// This host process's id: the owner of what it drives.
    replica: String,
    restore: Restore,
    slot_freed: Notify,
}

impl Ledger {
    pub fn new(
        store: Arc<dyn Store>,
        replica: String,
        retention: Retention,
        metrics: Metrics,
        restore: Restore,
    ) -> Self {
        Self { store, table: Mutex::default(), retention, metrics, replica, restore, slot_freed: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("ledger lock")
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// An execution held in memory.
    pub fn get(&self, id: &str) -> Option<Arc<Execution>> {
        self.lock().by_id.get(id).cloned()
    }

    /// An execution held in memory or, failing that, in the store (as a detached copy).
    pub async fn find(&self, id: &str) -> Result<Option<Arc<Execution>>, StoreError> {
        if let Some(exec) = self.get(id) {
            // With replicas, another one may have finished it a moment ago: the store says.
            if self.store.info().shared && !exec.is_terminal() {
                self.refresh(&exec).await;
            }
            return Ok(Some(exec));
        }
        Ok(self.store.execution(id).await?.map(|record| self.restored(record)))
    }

    /// Executions held in memory that are not terminal.
    pub fn active(&self) -> Vec<Arc<Execution>> {
        self.lock().by_id.values().filter(|e| !e.is_terminal()).cloned().collect()
    }

    /// Executions held in memory.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn restored(&self, record: Record) -> Arc<Execution> {
        let function = (self.restore)(&record.spec);
        Arc::new(Execution::restore(record, function))
    }

    /// Accepts an invocation of `function`: re-attaches by idempotency key, or admits and
    /// records a new execution. Returns once the execution exists (so its status can be read,
    /// and — when it had to be written — once the store has it).
    pub async fn accept(
        &self,
        function: &Arc<Function>,
        input: Input,
        opts: SubmitOptions,
    ) -> Result<Accepted, SubmitError> {
        let name = function.name();
        let key = opts.idempotency_key.as_deref().map(|k| (k, fingerprint(&input)));
        if let Some((key, fp)) = key
            && let Some(existing) = self.store.key(name, key).await?
            && let Some(exec) = self.attach(&existing, fp).await?
        {
            return Ok(Accepted::Existing(exec));
        }
        let mut admission = function.queue.admit().map_err(|Overload::QueueFull { concurrency, queue_size }| {
            self.metrics.rejected.with_label_values(&[name, "queue_full"]).inc();
            SubmitError::Overloaded { function: name.to_string(), concurrency, queue_size }
        })?;
        let timeout = opts.timeout.map_or(function.timeout(), |t| t.min(function.timeout()));
        let durable = self.durable_at_accept(&opts);
        let exec = Arc::new(Execution::new(NewExecution {
            // Time-ordered (UUIDv7): new rows go to the end of the store's index, not anywhere.
            id: uuid::Uuid::now_v7().to_string(),
            function: function.clone(),
            trace_id: opts.caller.map(|c| c.trace_hex()).or(opts.trace_id).unwrap_or_else(new_trace_id),
            caller: opts.caller,
            idempotency_key: opts.idempotency_key.clone(),
            input,
            timeout,
        }));
        let info = self.store.info();
        if durable || key.is_some() {
            if durable {
                exec.make_durable();
            }
            let key_record = key.map(|(k, fingerprint)| KeyRecord {
                function: name.to_string(),
                key: k.to_string(),
                fingerprint,
                execution_id: exec.id.clone(),
                expires_at: SystemTime::now() + self.retention.keys,
            });
            let limit = info
                .shared
                .then(|| Limit { total: function.queue.capacity(), concurrency: function.queue.concurrency() });
            // Twice at most: once more after forgetting a key whose execution is gone.
            for _ in 0..2 {
                let record = Box::new(exec.record(Some(&self.replica)));
                let write = Write::Insert { record, key: key_record.clone(), limit };
                match self.timed_write(write, "insert").await? {
                    Written::Existing(existing) => {
                        let fp = key.expect("a key was sent").1;
                        if let Some(found) = self.attach(&existing, fp).await? {
                            return Ok(Accepted::Existing(found));
                        }
                        let forget = Write::ForgetKey { function: existing.function, key: existing.key };
                        self.store.write(forget).await?;
                    }
                    Written::Overloaded => {
                        self.metrics.rejected.with_label_values(&[name, "queue_full"]).inc();
                        let queue = &function.queue;
                        return Err(SubmitError::Overloaded {
                            function: name.to_string(),
                            concurrency: queue.concurrency(),
                            queue_size: queue.capacity() - queue.concurrency(),
                        });
                    }
                    // A shared store had a slot free: no need to ask for one.
                    Written::InsertedWithSlot => {
                        admission = Admission::Running(function.queue.shared_slot());
                        break;
                    }
                    _ => break,
                }
            }
        }
        self.lock().by_id.insert(exec.id.clone(), exec.clone());
        tracing::debug!(execution_id = %exec.id, function = name, trace_id = %exec.trace_id, durable, "execution accepted");
        let mut span = Span::start("accept", SpanKind::Internal, otel::execution(&exec.id, exec.trace));
        span.set("nanofaas.durable", durable);
        span.since(exec.accepted_at).end();
        Ok(Accepted::New(exec, admission))
    }

    /// Whether an execution accepted with `opts` is written to the store before it is
    /// acknowledged (see the module documentation).
    pub fn durable_at_accept(&self, opts: &SubmitOptions) -> bool {
        let info = self.store.info();
        info.durable && (opts.asynchronous || opts.idempotency_key.is_some() || info.shared)
    }

    /// The execution a live key names, if the request is the same one.
    async fn attach(&self, key: &KeyRecord, fp: [u8; 32]) -> Result<Option<Arc<Execution>>, SubmitError> {
        if key.fingerprint != fp {
            return Err(IdempotencyConflict { key: key.key.clone(), execution_id: key.execution_id.clone() }.into());
        }
        Ok(self.watch(&key.execution_id).await?)
    }

    /// An execution to wait for: held here, or read from the store and held until it
    /// finishes (another replica drives it and the store says when it is done).
    pub async fn watch(&self, id: &str) -> Result<Option<Arc<Execution>>, StoreError> {
        if let Some(exec) = self.get(id) {
            return Ok(Some(exec));
        }
        let Some(record) = self.store.execution(id).await? else { return Ok(None) };
        let exec = self.restored(record);
        {
            let mut table = self.lock();
            if let Some(held) = table.by_id.get(id) {
                return Ok(Some(held.clone()));
            }
            table.by_id.insert(exec.id.clone(), exec.clone());
            if exec.is_terminal() {
                table.push_finished(&exec, Instant::now(), self.retention.max_output_bytes);
            } else {
                table.remote.insert(exec.id.clone());
            }
        }
        // It may have finished between the read and being held: look once more.
        if !exec.is_terminal() {
            self.refresh(&exec).await;
        }
        Ok(Some(exec))
    }

    /// Holds executions taken up from the store (recovery); the caller drives them.
    pub fn adopt(&self, record: Record) -> Arc<Execution> {
        let exec = self.restored(record);
        self.lock().by_id.insert(exec.id.clone(), exec.clone());
        exec
    }

    /// Marks the start of an attempt, when the execution is written: the first one behind (the
    /// hot path), a retry before it runs — so a callback of the attempt before, arriving at any
    /// replica, finds the store at the new attempt and is refused.
    pub async fn start_attempt(&self, exec: &Execution, attempt: u32) -> bool {
        if !exec.start_attempt(attempt) {
            return false;
        }
        if exec.is_durable() {
            let started_at = exec.snapshot().started_at.unwrap_or_else(SystemTime::now);
            let write = Write::Start { id: exec.id.clone(), epoch: exec.epoch(), attempt, started_at };
            if attempt == 1 {
                self.store.write_behind(write);
            } else if let Err(e) = self.timed_write(write, "start").await {
                // The attempt runs all the same; only the stale-callback check at other
                // replicas is weaker until a later write lands.
                tracing::warn!(execution_id = %exec.id, error = %e, "cannot record a retry's start");
            }
        }
        true
    }

    /// Records the pending work of an attempt. A sync execution that was not written yet is
    /// written now if its work can outlive this process.
    pub async fn set_pending(&self, exec: &Execution, work: PendingWork) {
        let resumable = work.resumable;
        exec.set_pending(work.clone());
        if exec.is_durable() {
            self.store.write_behind(Write::Pending { id: exec.id.clone(), epoch: exec.epoch(), pending: Some(work) });
        } else if resumable && self.store.info().durable && exec.make_durable() {
            let record = Box::new(exec.record(Some(&self.replica)));
            if let Err(e) = self.timed_write(Write::Insert { record, key: None, limit: None }, "insert").await {
                tracing::warn!(execution_id = %exec.id, error = %e, "cannot record a pending execution");
            }
        }
    }

    /// Takes the pending work back (to release it), clearing it in the store.
    pub fn take_pending(&self, exec: &Execution) -> Option<PendingWork> {
        let work = exec.take_pending()?;
        if exec.is_durable() && !exec.is_terminal() {
            self.store.write_behind(Write::Pending { id: exec.id.clone(), epoch: exec.epoch(), pending: None });
        }
        Some(work)
    }

    /// A concurrency slot for `exec`: the local queue's, or — with a shared store — one the
    /// store grants when fewer than `concurrency` executions of the function hold one.
    /// `None` when the execution was lost to another replica or finished meanwhile.
    pub async fn slot(&self, exec: &Execution, admission: Admission) -> Option<Slot> {
        if let Some(slot) = admission.slot().await {
            return Some(slot);
        }
        let queue = &exec.function.queue;
        loop {
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let write = Write::TakeSlot {
                id: exec.id.clone(),
                epoch: exec.epoch(),
                function: exec.function.name().to_string(),
                concurrency: queue.concurrency(),
            };
            match self.store.write(write).await {
                Ok(Written::Slot(true)) => return Some(queue.shared_slot()),
                Ok(Written::Lost) => return None,
                Ok(_) => {}
                Err(e) => tracing::warn!(execution_id = %exec.id, error = %e, "cannot take a slot; retrying"),
            }
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep(SLOT_RETRY) => {}
            }
        }
    }

    /// Ends an execution: the one place where terminal states are recorded, counted and
    /// logged. Returns whether this call ended it. `FinishedBy::Callback` settles whichever
    /// replica drives the execution; the others write under the driver's lease epoch.
    pub async fn finish(&self, exec: &Execution, finish: Finish, by: FinishedBy) -> bool {
        let Some(terminal) = exec.claim(finish, by) else { return false };
        if exec.is_durable() {
            // A callback or a cancel ends the execution whoever drives it; the driver's own
            // ends (its plugin, its deadline) stand only while it still holds it.
            let epoch = (!matches!(by, FinishedBy::Callback | FinishedBy::Cancel)).then(|| exec.epoch());
            let write = Write::Settle {
                id: exec.id.clone(),
                function: exec.function.name().to_string(),
                epoch,
                terminal: terminal.clone().retained(self.retention.max_output_bytes),
            };
            match self.timed_write(write, "settle").await {
                Ok(Written::Settled | Written::NotFound) => {}
                Ok(Written::AlreadyFinished(first)) => {
                    // Another replica recorded a finish first (a callback there): that one stands.
                    exec.publish(*first);
                    self.retain(&exec.id);
                    return false;
                }
                Ok(Written::Stale(attempt)) => {
                    // A callback of an earlier attempt, refused by the store: the execution
                    // goes on, at the attempt the store knows.
                    exec.withdraw_claim(attempt);
                    return false;
                }
                Ok(_) => {
                    // Another replica took the execution over: it is no longer ours to end.
                    tracing::info!(execution_id = %exec.id, "execution lost to another replica; letting go");
                    exec.release_claim();
                    self.forget(&exec.id);
                    return false;
                }
                // The result is still the truth for whoever waits; it is served from memory, and
                // a crash before the store is back loses it (recovery then runs it again).
                Err(e) => tracing::error!(execution_id = %exec.id, error = %e, "cannot record a terminal state"),
            }
        }
        // This finish is the recorded one. (An event about it may have published it already.)
        exec.publish(terminal);
        self.count_finished(exec);
        self.retain(&exec.id);
        true
    }

    fn count_finished(&self, exec: &Execution) {
        let snapshot = exec.snapshot();
        let function = exec.function.name();
        let outcome = snapshot.status.as_str();
        self.metrics.invocations.with_label_values(&[function, exec.function.dispatcher(), outcome]).inc();
        let elapsed = SystemTime::now().duration_since(exec.accepted_at).unwrap_or_default();
        self.metrics
            .invocation_duration
            .with_label_values(&[function, exec.function.dispatcher(), outcome])
            .observe(elapsed.as_secs_f64());
        if snapshot.status == Status::Timeout {
            self.metrics.timeouts.with_label_values(&[function]).inc();
        }
        if otel::enabled() {
            let own = otel::execution(&exec.id, exec.trace);
            let mut span = Span::derived(format!("execution {function}"), SpanKind::Server, exec.trace, own);
            span.set("faas.invocation_id", exec.id.clone());
            span.set("faas.name", function.to_string());
            span.set("nanofaas.dispatcher", exec.function.dispatcher().to_string());
            span.set("nanofaas.status", outcome);
            span.set("nanofaas.attempts", i64::from(snapshot.attempt));
            span.set("nanofaas.trace_id", exec.trace_id.clone());
            if let Some(ErrorInfo { code, message }) = &snapshot.error {
                span.fail(snapshot.error_kind.unwrap_or(ErrorKind::Platform).as_str(), code, message);
            }
            span.since(exec.accepted_at).end();
        }
        match &snapshot.error {
            None => tracing::info!(target: crate::telemetry::ACCESS, execution_id = %exec.id, function,
                trace_id = %exec.trace_id, attempt = snapshot.attempt, status = outcome, "execution finished"),
            Some(ErrorInfo { code, message }) => tracing::info!(target: crate::telemetry::ACCESS,
                execution_id = %exec.id, function,
                trace_id = %exec.trace_id, attempt = snapshot.attempt, status = outcome, code, message,
                "execution finished"),
        }
    }

    /// Starts the retention of a finished execution.
    fn retain(&self, id: &str) {
        let now = Instant::now();
        let mut table = self.lock();
        table.remote.remove(id);
        if let Some(exec) = table.by_id.get(id).cloned() {
            table.push_finished(&exec, now, self.retention.max_output_bytes);
        }
        self.evict(&mut table, now);
    }

    /// Stops holding an execution (another replica owns it now).
    fn forget(&self, id: &str) {
        let mut table = self.lock();
        table.by_id.remove(id);
        table.remote.remove(id);
    }

    /// Another replica finished `id` (a store event): publish it here if it is held.
    pub async fn finished_elsewhere(&self, id: &str) {
        if let Some(exec) = self.get(id).filter(|e| !e.is_terminal()) {
            self.refresh(&exec).await;
        }
    }

    /// Re-reads a held, unfinished execution from the store and publishes its end if it has one.
    async fn refresh(&self, exec: &Execution) {
        match self.store.execution(&exec.id).await {
            Ok(Some(record)) if record.snapshot.status.is_terminal() => {
                if exec.publish(record.snapshot) {
                    self.retain(&exec.id);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(execution_id = %exec.id, error = %e, "cannot read an execution back"),
        }
    }

    /// Re-reads every execution held for a waiter (after missed store events, and as a safety
    /// net for them).
    pub async fn refresh_remote(&self) {
        let remote: Vec<_> = {
            let table = self.lock();
            table.remote.iter().filter_map(|id| table.by_id.get(id).cloned()).collect()
        };
        for exec in remote {
            self.refresh(&exec).await;
        }
    }

    /// A slot was freed somewhere: shared-store slot waiters try again.
    pub fn slot_freed(&self) {
        self.slot_freed.notify_waiters();
    }

    /// Lets go of every unfinished execution this host drives without ending it (the lease is
    /// lost, or the host shuts down with a durable store): another driver takes them up. Those
    /// the store does not have cannot be taken up and are cancelled instead.
    pub async fn hand_over(&self, reason: &str) -> usize {
        let mut handed = 0;
        for exec in self.active() {
            if exec.is_durable() {
                if exec.detach() {
                    handed += 1;
                }
            } else {
                self.finish(&exec, Finish::Cancelled(reason.to_string()), FinishedBy::Cancel).await;
            }
        }
        handed
    }

    /// Evicts what has expired from memory only (the store is evicted on its own timer).
    pub fn evict_memory(&self) {
        let now = Instant::now();
        let mut table = self.lock();
        self.evict(&mut table, now);
    }

    /// Evicts finished executions and expired keys from the store.
    pub async fn evict_store(&self) {
        match self.store.evict(self.retention.executions, self.retention.max_executions).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(count = n, "finished executions evicted from the store"),
            Err(e) => tracing::warn!(error = %e, "cannot evict from the store"),
        }
    }

    fn evict(&self, table: &mut Table, now: Instant) {
        while let Some((at, _, _)) = table.finished.front() {
            let expired = *at + self.retention.executions <= now;
            let over = table.finished.len() > self.retention.max_executions;
            let too_big = table.retained_bytes > self.retention.max_bytes;
            if !(expired || over || too_big) {
                break;
            }
            let (_, id, bytes) = table.finished.pop_front().expect("front exists");
            table.retained_bytes -= bytes;
            if table.by_id.remove(&id).is_some() {
                let reason = if expired {
                    "retention"
                } else if over {
                    "capacity"
                } else {
                    "bytes"
                };
                self.metrics.evicted.with_label_values(&[reason]).inc();
            }
        }
        self.metrics.retained_bytes.set(table.retained_bytes as i64);
    }

    /// An awaited store write, timed.
    async fn timed_write(&self, write: Write, what: &'static str) -> Result<Written, StoreError> {
        let started = Instant::now();
        let result = self.store.write(write).await;
        self.metrics.store_write_duration.with_label_values(&[what]).observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.store_errors.with_label_values(&[what]).inc();
        }
        result
    }
}
