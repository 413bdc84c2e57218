//! Group commit: one writer task per store applies writes in batches, one transaction each.
//!
//! Writes queue in the order they are made. The writer takes everything queued (up to
//! [`MAX_BATCH`]), applies it in one transaction through its [`Driver`], and answers each
//! awaited write once the transaction has committed. So a burst of `:enqueue` requests costs one
//! commit, not one per request, and no write overtakes an earlier one. A transaction that fails
//! as a whole (the database went away) is tried again with backoff for a bounded time before
//! its writers are told.
//!
//! Within a transaction a driver does not send a statement per write: [`Plan`] groups the
//! common writes by kind (new executions, attempt starts, pending work, terminal states) so
//! that each group is one multi-row statement, whatever the batch size. Grouping keeps the
//! order that matters — an execution is inserted before it is started, started before its
//! pending work is recorded, and all of that before it is settled — and a start or pending
//! write followed by a later one of the same execution in the same batch is answered by the
//! later one (only the last state is written).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{StoreError, Write, Written};

/// Most writes in one transaction.
const MAX_BATCH: usize = 512;
/// Backoff of a failed transaction: doubles from the first to the last, then the writes fail.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_LAST: Duration = Duration::from_secs(2);

/// Applies a batch of writes in one transaction. One result per write, in order: a write that
/// fails alone (rolled back to its own savepoint) does not fail the others; `Err` means nothing
/// was committed.
#[async_trait::async_trait]
pub(super) trait Driver: Send + 'static {
    async fn apply(&mut self, writes: &[Write]) -> Result<Vec<Result<Written, StoreError>>, StoreError>;
}

/// How a batch is applied: which writes go one by one, and which in groups.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Applied first, one by one, in order: the writes that decide something (an insert with an
    /// idempotency key or a capacity limit, a slot) and the rare kinds.
    pub singles: Vec<usize>,
    /// Inserts without an idempotency key (a shared store admits them by function, as a group).
    pub inserts: Vec<usize>,
    /// The last start of each execution.
    pub starts: Vec<usize>,
    /// The last pending write of each execution.
    pub pendings: Vec<usize>,
    /// The first settle of each execution.
    pub settles: Vec<usize>,
    /// Applied last, one by one: further settles of an execution already settled above.
    pub after: Vec<usize>,
    /// Writes answered by another: (write, the write whose result it gets).
    pub folded: Vec<(usize, usize)>,
}

impl Plan {
    pub(super) fn of(writes: &[Write]) -> Self {
        use std::collections::HashMap;
        let mut plan = Plan::default();
        let mut last_start: HashMap<&str, usize> = HashMap::new();
        let mut last_pending: HashMap<&str, usize> = HashMap::new();
        let mut settled: HashMap<&str, usize> = HashMap::new();
        for (i, write) in writes.iter().enumerate() {
            match write {
                Write::Insert { key: None, .. } => plan.inserts.push(i),
                Write::Start { id, .. } => {
                    if let Some(earlier) = last_start.insert(id, i) {
                        plan.folded.push((earlier, i));
                    }
                }
                Write::Pending { id, .. } => {
                    if let Some(earlier) = last_pending.insert(id, i) {
                        plan.folded.push((earlier, i));
                    }
                }
                Write::Settle { id, .. } => {
                    if settled.contains_key(id.as_str()) {
                        plan.after.push(i);
                    } else {
                        settled.insert(id, i);
                    }
                }
                _ => plan.singles.push(i),
            }
        }
        // A start settled in the same batch is written by the settle (which carries the start
        // time): one row update instead of two.
        last_start.retain(|id, start| match settled.get(id) {
            Some(&settle) => {
                plan.folded.push((*start, settle));
                false
            }
            None => true,
        });
        plan.starts = last_start.into_values().collect();
        plan.pendings = last_pending.into_values().collect();
        plan.settles = settled.into_values().collect();
        for group in [&mut plan.starts, &mut plan.pendings, &mut plan.settles] {
            group.sort_unstable();
        }
        plan
    }

    /// Fills the results of folded writes from the writes that answered for them.
    pub(super) fn unfold(&self, results: &mut [Option<Result<Written, StoreError>>]) {
        // Later folds may point at writes that were folded themselves: resolve from the end.
        for &(write, by) in self.folded.iter().rev() {
            let answer = match &results[by] {
                Some(Ok(w)) => Ok(w.clone()),
                Some(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                None => Err(StoreError::Unavailable("unanswered write".into())),
            };
            results[write] = Some(answer);
        }
    }
}

/// Rows per multi-row statement: SQLite takes at most 32,766 parameters, PostgreSQL 65,535.
pub(super) const ROWS_PER_STATEMENT: usize = 400;

/// A SQL database as a batch writer: how it applies one write, and a whole batch in one
/// transaction. [`Driver`] comes with it: the batch in one transaction, and — when one write
/// fails it — each write in a transaction of its own, so one bad write fails only itself.
#[async_trait::async_trait]
pub(super) trait Sql: Send + Sync + 'static {
    type Db: sqlx::Database;

    fn pool(&self) -> &sqlx::Pool<Self::Db>;

    /// Applies one write.
    async fn one(&self, tx: &mut sqlx::Transaction<'_, Self::Db>, write: &Write) -> Result<Written, StoreError>;

    /// Applies a batch (planned with [`Plan`]); `Err` when any write failed.
    async fn batch(
        &self,
        tx: &mut sqlx::Transaction<'_, Self::Db>,
        writes: &[Write],
    ) -> Result<Vec<Result<Written, StoreError>>, StoreError>;
}

#[async_trait::async_trait]
impl<S: Sql> Driver for S {
    async fn apply(&mut self, writes: &[Write]) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let mut tx = self.pool().begin().await?;
        match self.batch(&mut tx, writes).await {
            Ok(results) => {
                tx.commit().await?;
                return Ok(results);
            }
            Err(e) if writes.len() == 1 => return Err(e),
            Err(_) => drop(tx),
        }
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            let mut tx = self.pool().begin().await?;
            let result = self.one(&mut tx, write).await;
            if result.is_ok() {
                tx.commit().await?;
            }
            results.push(result);
        }
        Ok(results)
    }
}

struct Job {
    write: Write,
    reply: Option<oneshot::Sender<Result<Written, StoreError>>>,
}

/// The handle on a writer task; the task ends when the last handle is dropped.
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    pub(super) fn start(mut driver: impl Driver, name: &'static str) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(MAX_BATCH);
            let mut writes = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
                writes.extend(jobs.iter().map(|j: &Job| j.write.clone()));
                let results = apply_with_retry(&mut driver, &writes, name).await;
                writes.clear();
                for (job, result) in jobs.drain(..).zip(results) {
                    match job.reply {
                        Some(reply) => {
                            let _ = reply.send(result);
                        }
                        None => {
                            if let Err(e) = result {
                                tracing::error!(store = name, error = %e, "a background store write was lost");
                            }
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Queues `write` and waits until it is committed.
    pub(super) async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { write, reply: Some(reply) }).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Queues `write` behind everything queued before it.
    pub(super) fn write_behind(&self, write: Write) {
        let _ = self.tx.send(Job { write, reply: None });
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

async fn apply_with_retry(
    driver: &mut impl Driver,
    writes: &[Write],
    name: &'static str,
) -> Vec<Result<Written, StoreError>> {
    let mut delay = RETRY_FIRST;
    loop {
        let started = std::time::Instant::now();
        match driver.apply(writes).await {
            Ok(results) => {
                tracing::trace!(
                    store = name,
                    writes = writes.len(),
                    us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
                return results;
            }
            Err(e) if delay <= RETRY_LAST => {
                tracing::warn!(store = name, error = %e, writes = writes.len(), retry_ms = delay.as_millis() as u64,
                    "store transaction failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                let message = e.to_string();
                return writes.iter().map(|_| Err(StoreError::Unavailable(message.clone()))).collect();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::execution::Snapshot;

    fn start(id: &str, attempt: u32) -> Write {
        Write::Start { id: id.into(), epoch: 1, attempt, started_at: SystemTime::UNIX_EPOCH }
    }

    fn settle(id: &str) -> Write {
        Write::Settle { id: id.into(), function: "f".into(), epoch: None, terminal: Snapshot::queued() }
    }

    #[test]
    fn plans_group_by_kind_and_keep_the_last_state() {
        let writes = vec![
            start("a", 1),
            Write::ForgetKey { function: "f".into(), key: "k".into() },
            start("b", 1),
            start("a", 2),
            settle("b"),
            Write::Pending { id: "a".into(), epoch: 1, pending: None },
            settle("b"),
        ];
        let plan = Plan::of(&writes);
        assert_eq!(plan.singles, [1]);
        assert_eq!(plan.starts, [3], "the last start of each execution, unless it is settled in the batch");
        assert_eq!(plan.pendings, [5]);
        assert_eq!(plan.settles, [4]);
        assert_eq!(plan.after, [6], "a second settle of one execution goes after the first");
        assert_eq!(plan.folded, [(0, 3), (2, 4)]);
        let mut results: Vec<Option<Result<Written, StoreError>>> = (0..writes.len()).map(|_| None).collect();
        results[3] = Some(Ok(Written::Lost));
        plan.unfold(&mut results);
        assert!(matches!(results[0], Some(Ok(Written::Lost))), "answered like the start that superseded it");
    }
}
