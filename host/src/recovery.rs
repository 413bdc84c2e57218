//! Taking up unfinished executions from the store: what the previous host process left when
//! this one starts, and what a replica left when it died. One path for both.
//!
//! First the local process groups the dead process(es) started on this machine are killed, so
//! no attempt runs twice at once and nothing is left behind. Then each execution, by what the
//! store says of it:
//! - its deadline passed while nobody drove it: it ends `timeout` at once, and its Jobs are
//!   deleted;
//! - `queued` (or no attempt recorded): it runs, from attempt 1 (a Job that attempt already
//!   created is adopted by name, not created again);
//! - pending on work that survives a host process (a Job, a callback): re-attached — its Jobs
//!   are found in the watch cache by their labels and its plugin is polled with the handle;
//! - running on work that died with the process (a local process, a request in flight): that
//!   attempt failed with a retryable `HOST_RESTARTED`; any Jobs of it are deleted, and it is
//!   retried while attempts and deadline remain.

use std::time::{Duration, SystemTime};

use crate::capability::process::kill_leftover;
use crate::control_plane::ControlPlane;
use crate::dispatch::Start;
use crate::execution::{Finish, FinishedBy, Record, Status, unix_ms};
use crate::store::TakenOver;

/// How long recovery waits for the Kubernetes watches' first list (to find earlier Jobs).
const WATCH_SYNC_LIMIT: Duration = Duration::from_secs(30);

/// What recovery did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub resumed: usize,
    pub restarted: usize,
    pub requeued: usize,
    pub timed_out: usize,
    pub processes_killed: usize,
}

/// Takes up what a takeover claimed; `machine` is this machine's id (only process groups
/// started here can be killed from here).
pub async fn take_up(cp: &ControlPlane, taken: TakenOver, machine: &str) -> Recovered {
    let mut done = Recovered::default();
    let caps = cp.plugins().capabilities().clone();
    if !taken.replicas.is_empty() {
        match cp.store().take_processes(&taken.replicas, machine).await {
            Ok(leftovers) => {
                for p in leftovers {
                    if kill_leftover(&p) {
                        tracing::info!(execution_id = %p.execution_id, pgid = p.pgid, "killed a process group a stopped host left");
                        done.processes_killed += 1;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the process groups of stopped hosts"),
        }
    }
    if taken.records.is_empty() {
        return done;
    }
    if let Some(k) = &caps.kubernetes
        && !k.synced(WATCH_SYNC_LIMIT).await
    {
        tracing::warn!("the Kubernetes watches have not listed yet; earlier Jobs may not be found");
    }
    // Those that held slots first, then the queue in the order it was accepted.
    let mut records = taken.records;
    records.sort_by_key(|r| (r.snapshot.status != Status::Running, r.accepted_at));
    let now = unix_ms(SystemTime::now());
    for record in records {
        let action = take_up_one(cp, record, now).await;
        cp.metrics().recovered.with_label_values(&[action]).inc();
        match action {
            "resumed" => done.resumed += 1,
            "restarted" => done.restarted += 1,
            "requeued" => done.requeued += 1,
            _ => done.timed_out += 1,
        }
    }
    tracing::info!(
        resumed = done.resumed,
        restarted = done.restarted,
        requeued = done.requeued,
        timed_out = done.timed_out,
        processes_killed = done.processes_killed,
        "unfinished executions taken up"
    );
    done
}

async fn take_up_one(cp: &ControlPlane, record: Record, now: u64) -> &'static str {
    let caps = cp.plugins().capabilities().clone();
    let kube = caps.kubernetes.as_ref();
    let pending = record.pending.clone();
    let (status, attempt, expired) = (record.snapshot.status, record.snapshot.attempt, record.deadline_unix_ms <= now);
    let exec = cp.ledger().adopt(record);
    if expired {
        if let Some(k) = kube {
            k.release_found(&exec.id);
        }
        cp.finish(&exec, Finish::Timeout, FinishedBy::Deadline).await;
        return "timed_out";
    }
    let admission = exec.function.queue.readmit();
    let (start, action) = match pending {
        _ if status == Status::Queued || attempt == 0 => (Start::Fresh, "requeued"),
        Some(work) if work.resumable => {
            if let Some(k) = kube {
                k.adopt(&exec.id);
            }
            (Start::Resume(work), "resumed")
        }
        _ => {
            if let Some(k) = kube {
                k.release_found(&exec.id);
            }
            // The handle named work that is gone; the next attempt starts its own.
            cp.ledger().take_pending(&exec);
            (Start::Restarted { attempt }, "restarted")
        }
    };
    tracing::info!(execution_id = %exec.id, function = %exec.function.name(), attempt, action, "execution taken up");
    cp.dispatcher().spawn(exec, admission, start);
    action
}
