//! Group commit: one writer task per store applies writes in batches, one transaction each.
//!
//! Writes queue in the order they are made. The writer takes everything queued (up to
//! [`MAX_BATCH`]), applies it in one transaction through its [`Driver`], and answers each
//! awaited write once the transaction has committed. So a burst of `:enqueue` requests costs one
//! commit, not one per request, and no write overtakes an earlier one. A transaction that fails
//! as a whole (the database went away) is tried again with backoff for a bounded time before
//! its writers are told.

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
        match driver.apply(writes).await {
            Ok(results) => return results,
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
