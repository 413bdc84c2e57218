//! Executions: the record of one invocation, its states and the legal transitions.
//!
//! `queued → running → success | error | timeout | cancelled`. Terminal states are final, and
//! becoming terminal takes two steps so that a durable store can be written in between: the
//! first [`Execution::claim`] wins the right to finish (every later claim — a duplicate or late
//! callback, a poll result after the deadline — fails and says so), then
//! [`Execution::publish`] makes the terminal state visible and wakes the waiters. Nobody sees a
//! terminal state that the store has not recorded.
//!
//! An execution can also be *detached*: its replica gives it up without finishing it (a graceful
//! shutdown hands durable executions over, a replica that lost its lease lets go). Its driver
//! stops and its waiters are told, but its state stays as it was — another driver takes it up.
//!
//! The state lives behind a sync mutex that is never held across an `.await`. This module knows
//! nothing of plugins or stores: they depend on it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::function::{Function, FunctionSpec};
use crate::otel::Parent;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    pub const ALL: [Status; 6] =
        [Status::Queued, Status::Running, Status::Success, Status::Error, Status::Timeout, Status::Cancelled];

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

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
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

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Function => "function",
            ErrorKind::Platform => "platform",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ErrorKind::Function, ErrorKind::Platform].into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

/// A function's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub content_type: String,
    pub body: Bytes,
}

/// Bytes below this size are copied into an allocation of their own before they are kept.
const COMPACT_BELOW: usize = 16 * 1024;

/// `bytes`, in an allocation of its own when it is small. A small body is usually a view into a
/// larger buffer (the connection's read buffer a request body was split from): kept as a view,
/// it would keep that whole buffer alive for as long as the execution is retained — measured at
/// ~6 KiB per retained execution with 2-byte bodies.
pub fn compact(bytes: Bytes) -> Bytes {
    if bytes.len() < COMPACT_BELOW { Bytes::copy_from_slice(&bytes) } else { bytes }
}

/// What is kept of an output larger than the retained-output cap: it went to the callers that
/// waited for it; later readers learn its size and digest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DroppedOutput {
    pub content_type: String,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the output.
    pub sha256: String,
}

impl DroppedOutput {
    pub fn of(output: &Output) -> Self {
        use sha2::Digest;
        Self {
            content_type: output.content_type.clone(),
            bytes: output.body.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&output.body)),
        }
    }
}

/// How an execution ended; the argument of a finish.
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

impl FinishedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishedBy::Plugin => "plugin",
            FinishedBy::Callback => "callback",
            FinishedBy::Deadline => "deadline",
            FinishedBy::Cancel => "cancel",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [FinishedBy::Plugin, FinishedBy::Callback, FinishedBy::Deadline, FinishedBy::Cancel]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
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
    /// Whether another host process can take the work up by polling the handle: true when the
    /// attempt started nothing that lives only in this process (a local process, a request in
    /// flight) — a Kubernetes Job, or nothing at all (waiting for a callback).
    pub resumable: bool,
}

/// A point-in-time copy of an execution's mutable state.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub status: Status,
    pub attempt: u32,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub output: Option<Output>,
    /// Set instead of `output` when the output was over the retained-output cap.
    pub dropped_output: Option<DroppedOutput>,
    pub error: Option<ErrorInfo>,
    pub error_kind: Option<ErrorKind>,
    pub finished_by: Option<FinishedBy>,
}

impl Snapshot {
    pub fn queued() -> Self {
        Self {
            status: Status::Queued,
            attempt: 0,
            started_at: None,
            finished_at: None,
            output: None,
            dropped_output: None,
            error: None,
            error_kind: None,
            finished_by: None,
        }
    }

    /// This snapshot as it is retained: an output over `cap` bytes becomes its size and digest.
    pub fn retained(mut self, cap: usize) -> Self {
        if let Some(output) = self.output.take_if(|o| o.body.len() > cap) {
            self.dropped_output = Some(DroppedOutput::of(&output));
        }
        self
    }
}

/// Everything that is durable about an execution: what a store writes and reads back.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: String,
    /// The resolved spec the execution was accepted with (it keeps it, whatever happens to the
    /// function later).
    pub spec: FunctionSpec,
    pub trace_id: String,
    pub idempotency_key: Option<String>,
    pub input: Input,
    pub accepted_at: SystemTime,
    pub deadline_unix_ms: u64,
    pub snapshot: Snapshot,
    pub pending: Option<PendingWork>,
    /// The replica that drives it.
    pub owner: Option<String>,
    /// Incremented each time another replica takes it over; every driver write checks it.
    pub epoch: u64,
}

/// What a new execution is made of.
pub struct NewExecution {
    pub id: String,
    pub function: Arc<Function>,
    pub trace_id: String,
    /// The caller's `traceparent`, when it sent one (then `trace_id` is its trace).
    pub caller: Option<Parent>,
    pub idempotency_key: Option<String>,
    pub input: Input,
    pub timeout: Duration,
}

struct State {
    snapshot: Snapshot,
    pending: Option<PendingWork>,
    /// A finish was claimed and is being recorded.
    finishing: bool,
    /// Recorded in the store; every transition from now on is written.
    durable: bool,
    epoch: u64,
    detached: bool,
    /// [`ResultHold`]s alive.
    waiters: usize,
    /// The retained-output cap to apply once the last waiter has its result.
    seal: Option<usize>,
}

impl State {
    /// Keeps the snapshot as retained in memory: sealed, and a small output in an allocation of
    /// its own (see [`compact`]; a store write copies the bytes anyway, so only memory needs it).
    fn seal_now(&mut self, cap: usize) {
        self.snapshot = std::mem::replace(&mut self.snapshot, Snapshot::queued()).retained(cap);
        if let Some(output) = self.snapshot.output.as_mut() {
            output.body = compact(std::mem::take(&mut output.body));
        }
    }
}

pub struct Execution {
    pub id: String,
    pub function: Arc<Function>,
    pub trace_id: String,
    /// Where the execution's spans hang: the caller's span when it sent a `traceparent` (known
    /// to the process that accepted it only), else the start of the trace `trace_id` names.
    pub trace: Parent,
    pub idempotency_key: Option<String>,
    pub input: Input,
    pub accepted_at: SystemTime,
    /// Host clock instant at which the execution times out.
    pub deadline: Instant,
    /// The same deadline on the wall clock: what the store keeps, and what plugins and remote
    /// runners get.
    pub deadline_unix_ms: u64,
    state: Mutex<State>,
    done: Notify,
    wake: Notify,
}

impl Execution {
    pub fn new(n: NewExecution) -> Self {
        let accepted_at = SystemTime::now();
        let deadline_unix_ms = unix_ms(accepted_at) + n.timeout.as_millis() as u64;
        Self::with_state(
            n.id,
            n.function,
            n.trace_id,
            n.caller,
            n.idempotency_key,
            n.input,
            accepted_at,
            deadline_unix_ms,
            Instant::now() + n.timeout,
            State {
                snapshot: Snapshot::queued(),
                pending: None,
                finishing: false,
                durable: false,
                epoch: 1,
                detached: false,
                waiters: 0,
                seal: None,
            },
        )
    }

    /// An execution read back from a store, run by `function` (built from the record's spec).
    /// The deadline is the record's wall-clock deadline, mapped onto the host clock.
    pub fn restore(record: Record, function: Arc<Function>) -> Self {
        let left = Duration::from_millis(record.deadline_unix_ms.saturating_sub(unix_ms(SystemTime::now())));
        Self::with_state(
            record.id,
            function,
            record.trace_id,
            None,
            record.idempotency_key,
            record.input,
            record.accepted_at,
            record.deadline_unix_ms,
            Instant::now() + left,
            State {
                snapshot: record.snapshot,
                pending: record.pending,
                finishing: false,
                durable: true,
                epoch: record.epoch,
                detached: false,
                waiters: 0,
                seal: None,
            },
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with_state(
        id: String,
        function: Arc<Function>,
        trace_id: String,
        caller: Option<Parent>,
        idempotency_key: Option<String>,
        input: Input,
        accepted_at: SystemTime,
        deadline_unix_ms: u64,
        deadline: Instant,
        state: State,
    ) -> Self {
        Self {
            id,
            function,
            trace: caller.unwrap_or_else(|| Parent::root(&trace_id)),
            trace_id,
            idempotency_key,
            input,
            accepted_at,
            deadline,
            deadline_unix_ms,
            state: Mutex::new(state),
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

    /// Everything durable about the execution now, owned by `owner`.
    pub fn record(&self, owner: Option<&str>) -> Record {
        let state = self.lock();
        Record {
            id: self.id.clone(),
            spec: self.function.spec.clone(),
            trace_id: self.trace_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            input: self.input.clone(),
            accepted_at: self.accepted_at,
            deadline_unix_ms: self.deadline_unix_ms,
            snapshot: state.snapshot.clone(),
            pending: state.pending.clone(),
            owner: owner.map(str::to_string),
            epoch: state.epoch,
        }
    }

    /// Whether the store has this execution (so every transition must be written).
    pub fn is_durable(&self) -> bool {
        self.lock().durable
    }

    /// Marks the execution durable unless it is already finishing; returns whether it is now
    /// durable. Called just before its record is handed to the store, so a finish that comes
    /// later is written after it, and a finish that came earlier keeps it out of the store.
    pub fn make_durable(&self) -> bool {
        let mut state = self.lock();
        if state.finishing || state.snapshot.status.is_terminal() {
            return false;
        }
        state.durable = true;
        true
    }

    /// The lease epoch the driver writes with.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Marks the start of an attempt. Returns false (and changes nothing) once terminal,
    /// finishing or detached.
    pub fn start_attempt(&self, attempt: u32) -> bool {
        let mut state = self.lock();
        if state.finishing || state.detached || state.snapshot.status.is_terminal() {
            return false;
        }
        let s = &mut state.snapshot;
        s.status = Status::Running;
        s.attempt = attempt;
        s.started_at.get_or_insert_with(SystemTime::now);
        true
    }

    /// Claims the right to finish: the first claim wins and gets the terminal snapshot to
    /// record; later claims (and claims on a detached execution) get `None`.
    pub fn claim(&self, finish: Finish, by: FinishedBy) -> Option<Snapshot> {
        let mut state = self.lock();
        if state.finishing || state.detached || state.snapshot.status.is_terminal() {
            return None;
        }
        state.finishing = true;
        let mut s = state.snapshot.clone();
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
        Some(s)
    }

    /// Makes a terminal snapshot visible and wakes everyone waiting. Returns false when the
    /// execution was already terminal (then nothing changes).
    pub fn publish(&self, terminal: Snapshot) -> bool {
        debug_assert!(terminal.status.is_terminal());
        {
            let mut state = self.lock();
            if state.snapshot.status.is_terminal() {
                return false;
            }
            state.snapshot = terminal;
            state.finishing = false;
        }
        self.done.notify_waiters();
        // The driver may be waiting for a wake-up rather than for `done`.
        self.wake.notify_one();
        true
    }

    /// Gives the execution up without finishing it (its state stays as it is, for another
    /// driver). Returns false when it was already terminal, finishing or detached.
    pub fn detach(&self) -> bool {
        {
            let mut state = self.lock();
            if state.detached || state.finishing || state.snapshot.status.is_terminal() {
                return false;
            }
            state.detached = true;
        }
        self.done.notify_waiters();
        self.wake.notify_one();
        true
    }

    /// Raises the attempt of a copy that lags behind its driver (another replica drives the
    /// execution and started `attempt`; the store or its events have not said so yet).
    pub fn observe_attempt(&self, attempt: u32) {
        let mut state = self.lock();
        let s = &mut state.snapshot;
        if !s.status.is_terminal() && attempt > s.attempt {
            s.status = Status::Running;
            s.attempt = attempt;
        }
    }

    /// Gives up a claim refused because the execution is at a later `attempt` than the claim's
    /// (a stale callback): it goes on, seen at that attempt.
    pub fn withdraw_claim(&self, attempt: u32) {
        self.lock().finishing = false;
        self.observe_attempt(attempt);
    }

    /// Gives up a claimed finish that could not be recorded because another replica drives
    /// the execution now: it is detached instead (its driver stops; its state is not ours).
    pub fn release_claim(&self) {
        {
            let mut state = self.lock();
            state.finishing = false;
            state.detached = true;
        }
        self.done.notify_waiters();
        self.wake.notify_one();
    }

    pub fn is_detached(&self) -> bool {
        self.lock().detached
    }

    /// Waits until the execution is terminal, or detached from this host.
    pub async fn wait_done(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let state = self.lock();
                if state.snapshot.status.is_terminal() || state.detached {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Holds this execution's whole result for a caller that will wait for it: an output over
    /// the retained-output cap is sealed only once every hold is dropped.
    pub fn hold_result(self: &Arc<Self>) -> ResultHold {
        self.lock().waiters += 1;
        ResultHold(self.clone())
    }

    /// Applies the retained-output cap to a finished execution: now, or when its last waiter
    /// has its result.
    pub fn seal(&self, cap: usize) {
        let mut state = self.lock();
        if !state.snapshot.status.is_terminal() {
            return;
        }
        if state.waiters == 0 {
            state.seal_now(cap);
        } else {
            state.seal = Some(cap);
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

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The wall-clock time of `ms` milliseconds since the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(ms)
}

/// A caller's hold on an execution's whole result (see [`Execution::hold_result`]).
pub struct ResultHold(Arc<Execution>);

impl ResultHold {
    pub fn execution(&self) -> &Arc<Execution> {
        &self.0
    }

    /// Waits like [`Execution::wait_done`] and returns the state then, output whole.
    pub async fn wait(&self) -> Snapshot {
        self.0.wait_done().await;
        self.0.snapshot()
    }
}

impl Drop for ResultHold {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.waiters -= 1;
        if state.waiters == 0
            && let Some(cap) = state.seal.take()
        {
            state.seal_now(cap);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An execution of a throwaway function, for state tests.
    pub(crate) fn execution(function: Arc<Function>) -> Execution {
        let input = Input { content_type: "application/json".into(), body: Bytes::from_static(b"1"), metadata: vec![] };
        Execution::new(NewExecution {
            id: "e1".into(),
            function,
            trace_id: "t".into(),
            caller: None,
            idempotency_key: None,
            input,
            timeout: Duration::ZERO,
        })
    }

    pub(crate) fn output(text: &str) -> Output {
        Output { content_type: "application/json".into(), body: Bytes::copy_from_slice(text.as_bytes()) }
    }

    fn finish(exec: &Execution, finish: Finish, by: FinishedBy) -> bool {
        match exec.claim(finish, by) {
            Some(terminal) => exec.publish(terminal),
            None => false,
        }
    }

    #[tokio::test]
    async fn first_finish_wins_and_terminal_is_final() {
        let exec = execution(crate::control_plane::tests::echo_function().await);
        assert_eq!(exec.status(), Status::Queued);
        assert!(exec.start_attempt(1));
        assert_eq!(exec.status(), Status::Running);
        assert!(finish(&exec, Finish::Success(output("1")), FinishedBy::Callback));
        assert!(!finish(&exec, Finish::Timeout, FinishedBy::Deadline));
        assert!(!finish(&exec, Finish::error(ErrorKind::Function, "X", "y"), FinishedBy::Plugin));
        assert!(!exec.start_attempt(2), "no attempt after the end");
        let s = exec.snapshot();
        assert_eq!((s.status, s.attempt, s.finished_by), (Status::Success, 1, Some(FinishedBy::Callback)));
        assert_eq!(s.output, Some(output("1")));
        assert!(s.error.is_none());
        assert!(s.finished_at.is_some() && s.started_at.is_some());
    }

    #[tokio::test]
    async fn a_claimed_finish_is_invisible_until_published_and_excludes_others() {
        let exec = execution(crate::control_plane::tests::echo_function().await);
        exec.start_attempt(1);
        let terminal = exec.claim(Finish::Timeout, FinishedBy::Deadline).expect("first claim");
        assert_eq!(exec.status(), Status::Running, "not visible while it is being recorded");
        assert!(exec.claim(Finish::Success(output("1")), FinishedBy::Callback).is_none(), "a second claim loses");
        assert!(!exec.make_durable(), "a finishing execution is not newly written");
        assert!(!exec.detach(), "a finishing execution is not handed over");
        assert!(exec.publish(terminal));
        assert_eq!(exec.status(), Status::Timeout);
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
        finish(&exec, Finish::Cancelled("bye".into()), FinishedBy::Cancel);
        waiter.await.unwrap();
        // A waiter that comes after the end returns at once.
        exec.wait_done().await;
        let s = exec.snapshot();
        assert_eq!(s.error.unwrap().code, "CANCELLED");
    }

    #[tokio::test]
    async fn detaching_wakes_waiters_and_keeps_the_state() {
        let exec = Arc::new(execution(crate::control_plane::tests::echo_function().await));
        exec.start_attempt(1);
        let waiter = tokio::spawn({
            let exec = exec.clone();
            async move { exec.wait_done().await }
        });
        tokio::task::yield_now().await;
        assert!(exec.detach());
        waiter.await.unwrap();
        assert_eq!(exec.status(), Status::Running, "handed over, not finished");
        assert!(!exec.start_attempt(2) && exec.claim(Finish::Timeout, FinishedBy::Deadline).is_none());
    }

    #[tokio::test]
    async fn timeout_records_a_platform_error() {
        let exec = execution(crate::control_plane::tests::echo_function().await);
        finish(&exec, Finish::Timeout, FinishedBy::Deadline);
        let s = exec.snapshot();
        assert_eq!(s.status, Status::Timeout);
        assert_eq!(s.error_kind, Some(ErrorKind::Platform));
        assert_eq!(s.error.unwrap().code, "TIMEOUT");
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        for b in [FinishedBy::Plugin, FinishedBy::Callback, FinishedBy::Deadline, FinishedBy::Cancel] {
            assert_eq!(FinishedBy::parse(b.as_str()), Some(b));
        }
        assert_eq!(ErrorKind::parse("platform"), Some(ErrorKind::Platform));
        assert_eq!(Status::parse("nope"), None);
    }

    #[test]
    fn small_bodies_are_compacted_out_of_the_buffer_they_were_split_from() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let small = compact(buffer.slice(10..12));
        assert_eq!(small.as_ref(), &[7, 7]);
        assert!(!range.contains(&(small.as_ptr() as usize)), "a copy of its own");
        let large = compact(buffer.slice(0..32 * 1024));
        assert!(range.contains(&(large.as_ptr() as usize)), "large bodies are not copied");
    }
}
