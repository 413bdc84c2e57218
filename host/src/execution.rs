//! Executions: the record of one invocation, its states and the legal transitions.
//!
//! `queued → running → success | error | timeout | cancelled`. Terminal states are final: the
//! first [`Execution::finish`] wins and every later one (a duplicate or late callback, a poll
//! result after the deadline) changes nothing and says so. Waiters are woken exactly when the
//! execution becomes terminal. The state lives behind a sync mutex that is never held across
//! an `.await`.

mod store;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::function::Function;
use crate::plugin::Output;

pub use store::{Attach, ExecutionStore, IdempotencyConflict, fingerprint};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Success,
    Error,
    Timeout,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Success => "success",
            Status::Error => "error",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Whose fault an error is; decides the HTTP status of a sync invoke (500 or 502).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The function's own error (`FUNCTION_ERROR` and plugin-reported function failures).
    Function,
    /// The platform's: dispatch failures, plugin faults, Kubernetes errors.
    Platform,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// How an execution ended; the argument of [`Execution::finish`].
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    Success(Output),
    Error { kind: ErrorKind, error: ErrorInfo },
    Timeout,
    Cancelled(String),
}

impl Finish {
    pub fn error(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Finish::Error { kind, error: ErrorInfo { code: code.into(), message: message.into() } }
    }

    pub fn status(&self) -> Status {
        match self {
            Finish::Success(_) => Status::Success,
            Finish::Error { .. } => Status::Error,
            Finish::Timeout => Status::Timeout,
            Finish::Cancelled(_) => Status::Cancelled,
        }
    }
}

/// Who ended an execution, to classify what comes after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishedBy {
    /// The plugin (a `done` outcome or a final failure).
    Plugin,
    /// A completion callback.
    Callback,
    /// The deadline.
    Deadline,
    /// Cancellation (shutdown, explicit cancel).
    Cancel,
}

/// The input of an execution.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub content_type: String,
    pub body: Bytes,
    pub metadata: Vec<(String, String)>,
}

/// Pending work the plugin started, to poll and eventually release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWork {
    pub handle: String,
    pub attempt: u32,
}

/// A point-in-time copy of an execution's mutable state.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub status: Status,
    pub attempt: u32,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub output: Option<Output>,
    pub error: Option<ErrorInfo>,
    pub error_kind: Option<ErrorKind>,
    pub finished_by: Option<FinishedBy>,
}

struct State {
    snapshot: Snapshot,
    pending: Option<PendingWork>,
}

pub struct Execution {
    pub id: String,
    pub function: Arc<Function>,
    pub trace_id: String,
    pub idempotency_key: Option<String>,
    pub input: Input,
    pub accepted_at: SystemTime,
    /// Host clock instant at which the execution times out.
    pub deadline: Instant,
    /// The same deadline on the wall clock, for plugins and remote runners.
    pub deadline_unix_ms: u64,
    state: Mutex<State>,
    done: Notify,
    wake: Notify,
}

impl Execution {
    pub fn new(
        id: String,
        function: Arc<Function>,
        trace_id: String,
        idempotency_key: Option<String>,
        input: Input,
        deadline: Instant,
        deadline_unix_ms: u64,
    ) -> Self {
        Self {
            id,
            function,
            trace_id,
            idempotency_key,
            input,
            accepted_at: SystemTime::now(),
            deadline,
            deadline_unix_ms,
            state: Mutex::new(State {
                snapshot: Snapshot {
                    status: Status::Queued,
                    attempt: 0,
                    started_at: None,
                    finished_at: None,
                    output: None,
                    error: None,
                    error_kind: None,
                    finished_by: None,
                },
                pending: None,
            }),
            done: Notify::new(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("execution state lock")
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot.clone()
    }

    pub fn status(&self) -> Status {
        self.lock().snapshot.status
    }

    pub fn is_terminal(&self) -> bool {
        self.status().is_terminal()
    }

    /// Marks the start of an attempt. Returns false (and changes nothing) once terminal.
    pub fn start_attempt(&self, attempt: u32) -> bool {
        let mut state = self.lock();
        let s = &mut state.snapshot;
        if s.status.is_terminal() {
            return false;
        }
        s.status = Status::Running;
        s.attempt = attempt;
        s.started_at.get_or_insert_with(SystemTime::now);
        true
    }

    /// Ends the execution. The first call wins and returns true; later calls return false and
    /// change nothing.
    pub fn finish(&self, finish: Finish, by: FinishedBy) -> bool {
        {
            let mut state = self.lock();
            let s = &mut state.snapshot;
            if s.status.is_terminal() {
                return false;
            }
            s.status = finish.status();
            s.finished_at = Some(SystemTime::now());
            s.finished_by = Some(by);
            match finish {
                Finish::Success(output) => s.output = Some(output),
                Finish::Error { kind, error } => {
                    s.error = Some(error);
                    s.error_kind = Some(kind);
                }
                Finish::Timeout => {
                    s.error = Some(ErrorInfo {
                        code: "TIMEOUT".into(),
                        message: format!(
                            "the execution did not finish within its deadline ({} ms)",
                            self.function.timeout().as_millis()
                        ),
                    });
                    s.error_kind = Some(ErrorKind::Platform);
                }
                Finish::Cancelled(reason) => {
                    s.error = Some(ErrorInfo { code: "CANCELLED".into(), message: reason });
                    s.error_kind = Some(ErrorKind::Platform);
                }
            }
        }
        self.done.notify_waiters();
        // The driver may be waiting for a wake-up rather than for `done`.
        self.wake.notify_one();
        true
    }

    /// Waits until the execution is terminal.
    pub async fn wait_done(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_terminal() {
                return;
            }
            notified.await;
        }
    }

    /// Asks the driver to poll now (a watched Job changed, a process exited).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits for [`Execution::wake`] (or a permit stored by an earlier one).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    pub fn set_pending(&self, work: PendingWork) {
        self.lock().pending = Some(work);
    }

    pub fn take_pending(&self) -> Option<PendingWork> {
        self.lock().pending.take()
    }

    pub fn pending(&self) -> Option<PendingWork> {
        self.lock().pending.clone()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::plugin::Output;

    /// An execution of a throwaway function, for state tests.
    pub(crate) fn execution(function: Arc<Function>) -> Execution {
        let input = Input { content_type: "application/json".into(), body: Bytes::from_static(b"1"), metadata: vec![] };
        Execution::new("e1".into(), function, "t".into(), None, input, Instant::now(), 0)
    }

    pub(crate) fn output(text: &str) -> Output {
        Output { content_type: "application/json".into(), body: Bytes::copy_from_slice(text.as_bytes()) }
    }

    #[tokio::test]
    async fn first_finish_wins_and_terminal_is_final() {
        let exec = execution(crate::control_plane::tests::echo_function().await);
        assert_eq!(exec.status(), Status::Queued);
        assert!(exec.start_attempt(1));
        assert_eq!(exec.status(), Status::Running);
        assert!(exec.finish(Finish::Success(output("1")), FinishedBy::Callback));
        assert!(!exec.finish(Finish::Timeout, FinishedBy::Deadline));
        assert!(!exec.finish(Finish::error(ErrorKind::Function, "X", "y"), FinishedBy::Plugin));
        assert!(!exec.start_attempt(2), "no attempt after the end");
        let s = exec.snapshot();
        assert_eq!((s.status, s.attempt, s.finished_by), (Status::Success, 1, Some(FinishedBy::Callback)));
        assert_eq!(s.output, Some(output("1")));
        assert!(s.error.is_none());
        assert!(s.finished_at.is_some() && s.started_at.is_some());
    }

    #[tokio::test]
    async fn waiters_wake_exactly_at_the_end() {
        let exec = Arc::new(execution(crate::control_plane::tests::echo_function().await));
        let waiter = tokio::spawn({
            let exec = exec.clone();
            async move { exec.wait_done().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        exec.start_attempt(1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        exec.finish(Finish::Cancelled("bye".into()), FinishedBy::Cancel);
        waiter.await.unwrap();
        // A waiter that comes after the end returns at once.
        exec.wait_done().await;
        let s = exec.snapshot();
        assert_eq!(s.error.unwrap().code, "CANCELLED");
    }

    #[tokio::test]
    async fn timeout_records_a_platform_error() {
        let exec = execution(crate::control_plane::tests::echo_function().await);
        exec.finish(Finish::Timeout, FinishedBy::Deadline);
        let s = exec.snapshot();
        assert_eq!(s.status, Status::Timeout);
        assert_eq!(s.error_kind, Some(ErrorKind::Platform));
        assert_eq!(s.error.unwrap().code, "TIMEOUT");
    }
}
