//! Drives one execution through its plugin: slot, dispatch, poll, retry, release.
//!
//! Each accepted execution gets one driver task. The driver races three things: the execution
//! becoming terminal elsewhere (a callback, a cancel) or being handed over, its deadline, and the
//! attempts. Whichever comes first decides; the others are dropped, which releases the
//! concurrency slot and any in-flight plugin call. So an execution ends by its deadline at the
//! latest, whatever plugins, pods or callbacks do. Afterwards the driver calls the plugin's
//! `release` for pending work — unless the execution was handed over, in which case only what
//! lives in this process is stopped and durable work (a Job) is left for the next driver.
//!
//! Retries: only `retryable` failures, with exponential backoff and jitter, while attempts
//! (`maxRetries`) and time remain. A plugin fault (`PLUGIN_FAULT`) is a bug, not bad luck, and is
//! never retried. Pending work is polled when `poll-after-ms` passes or when woken
//! ([`Execution::wake`]); a plugin that gives no interval is still polled at the safety interval.
//!
//! The driver's whole world is a [`Dispatcher`]: the plugins, the ledger (where transitions are
//! recorded), the retry policy and the callback credentials. It knows nothing of the API.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::execution::{ErrorKind, Execution, Finish, FinishedBy, PendingWork, Status};
use crate::ledger::Ledger;
use crate::otel::{self, Span, SpanKind};
use crate::plugin::{Failure, Held, Invocation, Outcome, Plugin, Plugins, ReleaseReason};
use crate::queue::Admission;
use crate::token::TokenKey;

/// Shortest wait between polls, whatever the plugin asks for.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long an attempt may keep its plugin instance while it waits for its next poll. A pool
/// request answers well within it, so dispatch → poll → release run on one instance; a longer
/// wait (a Job, a callback) drops the instance and holds no memory while it waits.
const HOLD_WINDOW: Duration = Duration::from_millis(50);

/// The failure code of an attempt that died with the host process that ran it.
pub const HOST_RESTARTED: &str = "HOST_RESTARTED";

/// How a driver begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new execution (or one that never started): attempt 1.
    Fresh,
    /// Taken up with pending work that survives the process that started it (a Job, or a
    /// callback awaited): poll it at once.
    Resume(PendingWork),
    /// Taken up after its attempt died with the process that ran it: that attempt failed with
    /// a retryable `HOST_RESTARTED`.
    Restarted { attempt: u32 },
}

/// Retry backoff bounds.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn of(config: &Config) -> Self {
        Self { base: config.retry_base, max: config.retry_max }
    }

    /// Delay before attempt `attempt + 1`: `base · 2^(attempt-1)`, capped, with equal jitter
    /// (uniform in the upper half), so retries of many executions do not move in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let half = capped / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
    }
}

/// Everything a driver needs, shared by all of them.
pub struct Dispatcher {
    plugins: Plugins,
    ledger: Arc<Ledger>,
    retry: RetryPolicy,
    safety_poll: Duration,
    tokens: TokenKey,
    /// Base URL for callbacks, e.g. `http://10.0.0.1:8080`.
    callback_base: String,
    drivers: TaskTracker,
}

/// What one attempt came to.
enum Step {
    Finished(Finish),
    Retry(Failure),
}

impl Dispatcher {
    pub fn new(
        plugins: Plugins,
        ledger: Arc<Ledger>,
        retry: RetryPolicy,
        safety_poll: Duration,
        tokens: TokenKey,
        callback_base: String,
    ) -> Self {
        Self { plugins, ledger, retry, safety_poll, tokens, callback_base, drivers: TaskTracker::new() }
    }

    pub fn plugins(&self) -> &Plugins {
        &self.plugins
    }

    /// Starts the driver of `exec`.
    pub fn spawn(self: &Arc<Self>, exec: Arc<Execution>, admission: Admission, start: Start) {
        self.drivers.spawn(self.clone().drive(exec, admission, start));
    }

    /// Drivers still running (for tests and diagnostics).
    pub fn running(&self) -> usize {
        self.drivers.len()
    }

    /// Waits (up to `grace`) for every driver to end; false when some did not.
    pub async fn wait(&self, grace: Duration) -> bool {
        self.drivers.close();
        tokio::time::timeout(grace, self.drivers.wait()).await.is_ok()
    }

    /// The invocation record plugins get for an attempt.
    pub fn invocation(&self, exec: &Execution, attempt: u32) -> Invocation {
        Invocation {
            execution_id: exec.id.clone(),
            attempt,
            function: exec.function.view.clone(),
            content_type: exec.input.content_type.clone(),
            metadata: exec.input.metadata.clone(),
            trace_id: exec.trace_id.clone(),
            trace: otel::attempt(&exec.id, exec.trace, attempt),
            idempotency_key: exec.idempotency_key.clone(),
            deadline_unix_ms: exec.deadline_unix_ms,
            remaining_ms: exec.deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
            callback_url: Some(format!("{}/v1/internal/executions/{}:complete", self.callback_base, exec.id)),
            callback_token: self.tokens.token(&exec.id, attempt),
        }
    }

    /// The attempt of execution `id` that `token` authenticates callbacks for, if any.
    pub fn verify_token(&self, id: &str, token: &str) -> Option<u32> {
        self.tokens.verify(id, token)
    }

    /// Runs an execution until it is terminal or handed over.
    ///
    /// The futures of plugin calls and store writes are boxed: a task is as large as the largest
    /// state of its future, and a pending execution's task should not keep room for a call it is
    /// not making (4.3 KB per driver before, 2.2 KB after; see BENCHMARKS.md).
    async fn drive(self: Arc<Self>, exec: Arc<Execution>, admission: Admission, start: Start) {
        let span = tracing::info_span!(
            "execution",
            execution_id = %exec.id,
            function = %exec.function.name(),
            trace_id = %exec.trace_id,
        );
        async {
            // The plugin version this execution runs on, to its release: a plugin reloaded
            // meanwhile serves the executions that start after it.
            let plugin = self.plugins.get(exec.function.dispatcher());
            // The attempt's instance, kept for its release when the attempt was quick.
            let mut held = Held::default();
            let ended = tokio::select! {
                biased;
                () = exec.wait_done() => None,
                () = sleep_until(exec.deadline) => Some((Finish::Timeout, FinishedBy::Deadline)),
                ended = self.attempts(&exec, plugin.as_deref(), admission, start, &mut held) => ended,
            };
            if let Some((finish, by)) = ended {
                Box::pin(self.ledger.finish(&exec, finish, by)).await;
            }
            let caps = self.plugins.capabilities();
            if exec.is_detached() {
                // Handed over: what lives only in this process stops; a Job stays for the next driver.
                caps.hand_over(&exec.id);
                return;
            }
            self.release(&exec, plugin.as_deref(), None, &mut held).await;
            held.clear();
            // Whatever the plugin did or did not clean up, nothing the execution started outlives it.
            caps.release_owner(&exec.id);
        }
        .instrument(span)
        .await;
    }

    /// The attempts of an execution; `None` when it ended (or was lost) without them deciding.
    /// `held` is left with the last attempt's instance when it may still be kept.
    async fn attempts(
        &self,
        exec: &Execution,
        plugin: Option<&Plugin>,
        admission: Admission,
        start: Start,
        held: &mut Held,
    ) -> Option<(Finish, FinishedBy)> {
        let queued = if start == Start::Fresh { exec.accepted_at } else { std::time::SystemTime::now() };
        let Some(_slot) = Box::pin(self.ledger.slot(exec, admission)).await else {
            // Another replica drives it now.
            exec.detach();
            return None;
        };
        Span::start("queue", SpanKind::Internal, otel::execution(&exec.id, exec.trace)).since(queued).end();
        let Some(plugin) = plugin else {
            let message = self.plugins.catalog().unavailable(exec.function.dispatcher()).unwrap_or_default();
            return Some((Finish::error(ErrorKind::Platform, "PLUGIN_UNAVAILABLE", message), FinishedBy::Plugin));
        };
        let max_attempts = exec.function.max_retries() + 1;
        let (mut attempt, mut carried) = match start {
            Start::Fresh => (0, None),
            Start::Resume(work) => {
                tracing::info!(attempt = work.attempt, handle = %work.handle, "execution resumed");
                let mut span = self.attempt_span(exec, work.attempt);
                span.set("nanofaas.resumed", true);
                let step = self.follow(exec, plugin, work.attempt, work.handle, held).await;
                Self::end_attempt(span, &step);
                (work.attempt, Some(step))
            }
            Start::Restarted { attempt } => {
                let message = "the host process running this attempt stopped".to_string();
                (attempt, Some(Step::Retry(Failure { code: HOST_RESTARTED.into(), message, retryable: true })))
            }
        };
        loop {
            let step = match carried.take() {
                Some(step) => step,
                None => {
                    attempt += 1;
                    if !Box::pin(self.ledger.start_attempt(exec, attempt)).await {
                        // Finished or handed over elsewhere; `drive` sees it too.
                        return None;
                    }
                    if attempt > 1 {
                        self.ledger_metrics_retry(exec);
                    }
                    tracing::debug!(attempt, "attempt started");
                    let span = self.attempt_span(exec, attempt);
                    let step = self.attempt_once(exec, plugin, attempt, held).await;
                    Self::end_attempt(span, &step);
                    step
                }
            };
            let failure = match step {
                Step::Finished(finish) => return Some((finish, FinishedBy::Plugin)),
                Step::Retry(failure) => failure,
            };
            // The next attempt starts on a fresh instance.
            held.clear();
            let give_up = |why: &str| {
                let message = format!("{} ({why} after attempt {attempt})", failure.message);
                Some((Finish::error(ErrorKind::Platform, failure.code.clone(), message), FinishedBy::Plugin))
            };
            if attempt >= max_attempts {
                return give_up("no retries left");
            }
            let delay = self.retry.backoff(attempt.max(1));
            if Instant::now() + delay >= exec.deadline {
                return give_up("no time left for another attempt");
            }
            tracing::info!(attempt, code = %failure.code, delay_ms = delay.as_millis() as u64, "retrying");
            sleep(delay).await;
        }
    }

    /// The span of one attempt (ended when its step is known, or when the driver drops it).
    fn attempt_span(&self, exec: &Execution, attempt: u32) -> Span {
        let (parent, own) = (otel::execution(&exec.id, exec.trace), otel::attempt(&exec.id, exec.trace, attempt));
        let mut span = Span::derived("attempt", SpanKind::Internal, parent, own);
        span.set("nanofaas.attempt", i64::from(attempt));
        span
    }

    fn end_attempt(mut span: Span, step: &Step) {
        match step {
            Step::Finished(Finish::Error { kind, error }) => span.fail(kind.as_str(), &error.code, &error.message),
            Step::Retry(failure) => {
                span.set("nanofaas.retryable", true);
                span.fail(otel::PLATFORM, &failure.code, &failure.message);
            }
            Step::Finished(_) => {}
        }
        span.end();
    }

    fn ledger_metrics_retry(&self, exec: &Execution) {
        self.plugins.metrics().retries.with_label_values(&[exec.function.name()]).inc();
    }

    /// Dispatches one attempt and follows it while it is pending.
    async fn attempt_once(&self, exec: &Execution, plugin: &Plugin, attempt: u32, held: &mut Held) -> Step {
        let inv = self.invocation(exec, attempt);
        let step = Box::pin(self.plugins.dispatch(plugin, &inv, exec.input.body.clone(), held)).await;
        match self.outcome(exec, plugin, step).await {
            Ok(step) => step,
            Err((handle, poll_after)) => {
                self.pending(exec, &handle, attempt).await;
                self.wait_poll(exec, poll_after, held).await;
                self.follow(exec, plugin, attempt, handle, held).await
            }
        }
    }

    /// Polls pending work until it yields a step.
    async fn follow(
        &self,
        exec: &Execution,
        plugin: &Plugin,
        attempt: u32,
        mut handle: String,
        held: &mut Held,
    ) -> Step {
        loop {
            let inv = self.invocation(exec, attempt);
            let step = Box::pin(self.plugins.poll(plugin, &inv, &handle, held)).await;
            match self.outcome(exec, plugin, step).await {
                Ok(step) => return step,
                Err((next, poll_after)) => {
                    if next != handle {
                        self.pending(exec, &next, attempt).await;
                        handle = next;
                    }
                    self.wait_poll(exec, poll_after, held).await;
                }
            }
        }
    }

    /// A dispatch or poll result as a step, or `Err` with the pending handle to poll next.
    async fn outcome(
        &self,
        exec: &Execution,
        plugin: &Plugin,
        step: Result<Result<Outcome, Failure>, crate::plugin::PluginFault>,
    ) -> Result<Step, (String, Option<Duration>)> {
        match step {
            Err(fault) => Ok(Step::Finished(Finish::error(ErrorKind::Platform, "PLUGIN_FAULT", fault.message))),
            Ok(Err(failure)) if failure.retryable => {
                self.release(exec, Some(plugin), Some(ReleaseReason::Cancelled), &mut Held::default()).await;
                Ok(Step::Retry(failure))
            }
            Ok(Err(failure)) => Ok(Step::Finished(Finish::error(ErrorKind::Platform, failure.code, failure.message))),
            Ok(Ok(Outcome::Done(Ok(output)))) => Ok(Step::Finished(Finish::Success(output))),
            Ok(Ok(Outcome::Done(Err(f)))) => Ok(Step::Finished(Finish::error(ErrorKind::Function, f.code, f.message))),
            Ok(Ok(Outcome::Pending { handle, poll_after })) => Err((handle, poll_after)),
        }
    }

    /// Records pending work, noting whether another process could take it up.
    async fn pending(&self, exec: &Execution, handle: &str, attempt: u32) {
        let resumable = self.plugins.capabilities().is_resumable(&exec.id);
        Box::pin(self.ledger.set_pending(exec, PendingWork { handle: handle.to_string(), attempt, resumable })).await;
    }

    /// Waits for the next poll: `poll_after` or a wake-up. The instance in `held` is kept for at
    /// most [`HOLD_WINDOW`] of that wait, and only while the pool has room to spare.
    async fn wait_poll(&self, exec: &Execution, poll_after: Option<Duration>, held: &mut Held) {
        let until = Instant::now() + poll_after.unwrap_or(self.safety_poll).max(MIN_POLL_INTERVAL);
        if held.is_live() && self.plugins.can_hold() {
            let window = until.min(Instant::now() + HOLD_WINDOW);
            tokio::select! {
                () = sleep_until(window) => if window == until { return },
                () = exec.woken() => return,
            }
        }
        held.clear();
        tokio::select! {
            () = sleep_until(until) => {}
            () = exec.woken() => {}
        }
    }

    /// Hands pending work back to the plugin. `reason` defaults to what the terminal state says.
    async fn release(&self, exec: &Execution, plugin: Option<&Plugin>, reason: Option<ReleaseReason>, held: &mut Held) {
        let Some(work) = self.ledger.take_pending(exec) else { return };
        let Some(plugin) = plugin else { return };
        let reason = reason.unwrap_or(match exec.status() {
            Status::Timeout => ReleaseReason::Timeout,
            Status::Cancelled => ReleaseReason::Cancelled,
            _ => ReleaseReason::Completed,
        });
        let inv = self.invocation(exec, work.attempt);
        // A fault here is counted and logged by the plugin runtime; the execution's result stands.
        let _ = Box::pin(self.plugins.release(plugin, &inv, &work.handle, reason, held)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let retry = RetryPolicy { base: Duration::from_millis(100), max: Duration::from_millis(1000) };
        for _ in 0..100 {
            let d1 = retry.backoff(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
            let d3 = retry.backoff(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
            let d10 = retry.backoff(10);
            assert!(d10 >= Duration::from_millis(500) && d10 <= Duration::from_millis(1000), "{d10:?}");
        }
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| retry.backoff(2)).collect();
        assert!(distinct.len() > 1, "jitter varies the delay");
    }
}
