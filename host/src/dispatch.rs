//! Drives one execution through its plugin: slot, dispatch, poll, retry, release.
//!
//! Each accepted execution gets one driver task. The driver races three things: the execution
//! becoming terminal elsewhere (a callback, a cancel), its deadline, and the attempts. Whichever
//! comes first decides; the others are dropped, which releases the concurrency slot and any
//! in-flight plugin call. So an execution ends by its deadline at the latest, whatever plugins,
//! pods or callbacks do. Afterwards the driver calls the plugin's `release` for pending work.
//!
//! Retries: only `retryable` failures, with exponential backoff and jitter, while attempts
//! (`maxRetries`) and time remain. A plugin fault (`PLUGIN_FAULT`) is a bug, not bad luck, and is
//! never retried. Pending work is polled when `poll-after-ms` passes or when woken
//! ([`Execution::wake`]); a plugin that gives no interval is still polled at the safety interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};
use tracing::Instrument;

use crate::config::Config;
use crate::control_plane::ControlPlane;
use crate::execution::{ErrorKind, Execution, Finish, FinishedBy, PendingWork, Status};
use crate::plugin::{Failure, Outcome, ReleaseReason};
use crate::queue::Admission;

/// Shortest wait between polls, whatever the plugin asks for.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Runs an execution to its end. Never returns before the execution is terminal.
pub(crate) async fn drive(cp: ControlPlane, exec: Arc<Execution>, admission: Admission) {
    let span = tracing::info_span!(
        "execution",
        execution_id = %exec.id,
        function = %exec.function.name(),
        trace_id = %exec.trace_id,
    );
    async {
        let ended = tokio::select! {
            biased;
            () = exec.wait_done() => None,
            () = sleep_until(exec.deadline) => Some((Finish::Timeout, FinishedBy::Deadline)),
            ended = attempts(&cp, &exec, admission) => Some(ended),
        };
        if let Some((finish, by)) = ended {
            cp.finish(&exec, finish, by);
        }
        release(&cp, &exec, None).await;
        // Whatever the plugin did or did not clean up, nothing the execution started outlives it.
        cp.plugins.capabilities().release_owner(&exec.id);
    }
    .instrument(span)
    .await;
}

/// What one attempt came to.
enum Step {
    Finished(Finish),
    Retry(Failure),
}

async fn attempts(cp: &ControlPlane, exec: &Execution, admission: Admission) -> (Finish, FinishedBy) {
    let _slot = admission.slot().await;
    let max_attempts = exec.function.max_retries() + 1;
    let mut attempt = 0;
    loop {
        attempt += 1;
        if !exec.start_attempt(attempt) {
            // Finished elsewhere; `drive` sees it too. The value is ignored (first finish wins).
            return (Finish::Cancelled("finished elsewhere".into()), FinishedBy::Cancel);
        }
        if attempt > 1 {
            cp.metrics.retries.with_label_values(&[exec.function.name()]).inc();
        }
        tracing::debug!(attempt, "attempt started");
        let failure = match attempt_once(cp, exec, attempt).await {
            Step::Finished(finish) => return (finish, FinishedBy::Plugin),
            Step::Retry(failure) => failure,
        };
        let give_up = |why: &str| {
            let message = format!("{} ({why} after attempt {attempt})", failure.message);
            (Finish::error(ErrorKind::Platform, failure.code.clone(), message), FinishedBy::Plugin)
        };
        if attempt >= max_attempts {
            return give_up("no retries left");
        }
        let delay = backoff(&cp.config, attempt);
        if Instant::now() + delay >= exec.deadline {
            return give_up("no time left for another attempt");
        }
        tracing::info!(attempt, code = %failure.code, delay_ms = delay.as_millis() as u64, "retrying");
        sleep(delay).await;
    }
}

/// Dispatches one attempt and follows it while it is pending.
async fn attempt_once(cp: &ControlPlane, exec: &Execution, attempt: u32) -> Step {
    let plugin = &exec.function.plugin;
    let inv = cp.invocation(exec, attempt);
    let mut step = cp.plugins.dispatch(plugin, &inv, exec.input.body.clone()).await;
    loop {
        let outcome = match step {
            Err(fault) => {
                return Step::Finished(Finish::error(ErrorKind::Platform, "PLUGIN_FAULT", fault.message));
            }
            Ok(Err(failure)) if failure.retryable => {
                release(cp, exec, Some(ReleaseReason::Cancelled)).await;
                return Step::Retry(failure);
            }
            Ok(Err(failure)) => {
                return Step::Finished(Finish::error(ErrorKind::Platform, failure.code, failure.message));
            }
            Ok(Ok(outcome)) => outcome,
        };
        let (handle, poll_after) = match outcome {
            Outcome::Done(Ok(output)) => return Step::Finished(Finish::Success(output)),
            Outcome::Done(Err(f)) => return Step::Finished(Finish::error(ErrorKind::Function, f.code, f.message)),
            Outcome::Pending { handle, poll_after } => (handle, poll_after),
        };
        exec.set_pending(PendingWork { handle: handle.clone(), attempt });
        let wait = poll_after.unwrap_or(cp.config.plugin.safety_poll).max(MIN_POLL_INTERVAL);
        tokio::select! {
            () = sleep(wait) => {}
            () = exec.woken() => {}
        }
        let inv = cp.invocation(exec, attempt);
        step = cp.plugins.poll(plugin, &inv, &handle).await;
    }
}

/// Hands pending work back to the plugin. `reason` defaults to what the terminal state says.
async fn release(cp: &ControlPlane, exec: &Execution, reason: Option<ReleaseReason>) {
    let Some(work) = exec.take_pending() else { return };
    let reason = reason.unwrap_or(match exec.status() {
        Status::Timeout => ReleaseReason::Timeout,
        Status::Cancelled => ReleaseReason::Cancelled,
        _ => ReleaseReason::Completed,
    });
    let inv = cp.invocation(exec, work.attempt);
    // A fault here is counted and logged by the plugin runtime; the execution's result stands.
    let _ = cp.plugins.release(&exec.function.plugin, &inv, &work.handle, reason).await;
}

/// Delay before attempt `attempt + 1`: `base · 2^(attempt-1)`, capped, with equal jitter
/// (uniform in the upper half), so retries of many executions do not move in lockstep.
pub fn backoff(config: &Config, attempt: u32) -> Duration {
    let exp = config.retry_base.saturating_mul(1 << (attempt - 1).min(20));
    let capped = exp.min(config.retry_max);
    let half = capped / 2;
    half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let config = Config {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
            ..Config::default()
        };
        for _ in 0..100 {
            let d1 = backoff(&config, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
            let d3 = backoff(&config, 3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
            let d10 = backoff(&config, 10);
            assert!(d10 >= Duration::from_millis(500) && d10 <= Duration::from_millis(1000), "{d10:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| backoff(&config, 2)).collect();
        assert!(distinct.len() > 1, "jitter varies the delay");
    }
}
