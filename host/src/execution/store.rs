//! The execution store: every execution by id, idempotency keys, and bounded retention.
//!
//! Memory stays bounded under any load: executions that are not terminal are bounded by the
//! functions' queues and slots (admission happens before an execution exists); finished ones
//! stay queryable for the retention period and are evicted oldest-first beyond
//! `max_retained`; idempotency keys expire after their TTL. Eviction is amortised into inserts
//! and finishes, plus [`ExecutionStore::evict_expired`] on a timer.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Execution, Input};
use crate::metrics::Metrics;

/// How a request got its execution.
pub enum Attach {
    /// A new execution was created.
    New(Arc<Execution>),
    /// The `Idempotency-Key` named an existing execution with the same request.
    Existing(Arc<Execution>),
}

impl Attach {
    pub fn execution(&self) -> &Arc<Execution> {
        match self {
            Attach::New(e) | Attach::Existing(e) => e,
        }
    }
}

/// The same `Idempotency-Key` came with a different request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key `{key}` was used for a different request (execution {execution_id})")]
pub struct IdempotencyConflict {
    pub key: String,
    pub execution_id: String,
}

struct KeyEntry {
    execution_id: String,
    fingerprint: [u8; 32],
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Arc<Execution>>,
    /// Finished executions in the order they finished.
    finished: VecDeque<(Instant, String)>,
    keys: HashMap<(String, String), KeyEntry>,
    /// Keys in the order they were set (their expiry order).
    key_order: VecDeque<(Instant, (String, String))>,
}

pub struct ExecutionStore {
    inner: Mutex<Inner>,
    retention: Duration,
    max_retained: usize,
    key_ttl: Duration,
    metrics: Metrics,
}

/// What makes two requests "the same" for an idempotency key.
pub fn fingerprint(input: &Input) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(input.content_type.as_bytes());
    h.update([0]);
    h.update(&input.body);
    for (k, v) in &input.metadata {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([1]);
        h.update(v.as_bytes());
    }
    h.finalize().into()
}

impl ExecutionStore {
    pub fn new(retention: Duration, max_retained: usize, key_ttl: Duration, metrics: Metrics) -> Self {
        Self { inner: Mutex::new(Inner::default()), retention, max_retained, key_ttl, metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("execution store lock")
    }

    pub fn get(&self, id: &str) -> Option<Arc<Execution>> {
        self.lock().by_id.get(id).cloned()
    }

    /// Executions not yet terminal.
    pub fn active(&self) -> Vec<Arc<Execution>> {
        self.lock().by_id.values().filter(|e| !e.is_terminal()).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-attaches to the execution of `(function, key)` when the request is the same, or
    /// creates one with `create` (which may refuse, e.g. when the queue is full). Atomic: two
    /// requests with the same key never create two executions.
    /// `key` is the request's `Idempotency-Key` with the request's [`fingerprint`].
    pub fn attach_or_create<E>(
        &self,
        function: &str,
        key: Option<(&str, [u8; 32])>,
        create: impl FnOnce() -> Result<Arc<Execution>, E>,
    ) -> Result<Result<Attach, E>, IdempotencyConflict> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.evict(&mut inner, now);
        if let Some((key, fp)) = key {
            let existing = inner
                .keys
                .get(&(function.to_string(), key.to_string()))
                .map(|e| (e.execution_id.clone(), e.fingerprint == fp));
            if let Some((execution_id, same)) = existing {
                if !same {
                    return Err(IdempotencyConflict { key: key.to_string(), execution_id });
                }
                if let Some(exec) = inner.by_id.get(&execution_id) {
                    return Ok(Ok(Attach::Existing(exec.clone())));
                }
            }
        }
        let exec = match create() {
            Ok(exec) => exec,
            Err(e) => return Ok(Err(e)),
        };
        inner.by_id.insert(exec.id.clone(), exec.clone());
        if let Some((key, fingerprint)) = key {
            let k = (function.to_string(), key.to_string());
            let expires = now + self.key_ttl;
            inner.keys.insert(k.clone(), KeyEntry { execution_id: exec.id.clone(), fingerprint, expires });
            inner.key_order.push_back((expires, k));
        }
        Ok(Ok(Attach::New(exec)))
    }

    /// Records that an execution reached its terminal state (starts its retention).
    pub fn finished(&self, id: &str) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.finished.push_back((now, id.to_string()));
        self.evict(&mut inner, now);
    }

    /// Evicts what has expired; call periodically.
    pub fn evict_expired(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        self.evict(&mut inner, now);
    }

    fn evict(&self, inner: &mut Inner, now: Instant) {
        while let Some((at, _)) = inner.finished.front() {
            let expired = *at + self.retention <= now;
            let over = inner.finished.len() > self.max_retained;
            if !(expired || over) {
                break;
            }
            let (_, id) = inner.finished.pop_front().expect("front exists");
            if inner.by_id.remove(&id).is_some() {
                let reason = if expired { "retention" } else { "capacity" };
                self.metrics.evicted.with_label_values(&[reason]).inc();
            }
        }
        while let Some((expires, _)) = inner.key_order.front() {
            if *expires > now {
                break;
            }
            let (expires, key) = inner.key_order.pop_front().expect("front exists");
            // Only remove the entry this queue item was for (the key may have been set again).
            if inner.keys.get(&key).is_some_and(|e| e.expires == expires) {
                inner.keys.remove(&key);
            }
        }
    }
}
