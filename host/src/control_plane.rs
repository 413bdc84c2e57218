//! The control plane: the one shared handle that owns functions, executions and plugins.
//!
//! [`ControlPlane`] is a cheap clone (an `Arc`) handed to the HTTP handlers and to every
//! execution's driver. It is where requests become executions: registration (host checks, then
//! the plugin's `validate`), admission (before an execution exists, so a refusal loses nothing),
//! idempotent re-attachment, completion callbacks, and the single place where an execution is
//! finished (metrics, retention and logs happen there and nowhere else).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::capability::kubernetes::Cluster;
use crate::capability::{Capabilities, Wake};
use crate::config::Config;
use crate::execution::{
    Attach, ErrorInfo, ErrorKind, Execution, ExecutionStore, Finish, FinishedBy, IdempotencyConflict, Input, Status,
    fingerprint,
};
use crate::function::{Function, FunctionSpec, Registry, SpecError};
use crate::metrics::Metrics;
use crate::plugin::{Catalog, Invocation, Output, PluginFault, Plugins, unix_ms};
use crate::queue::{FunctionQueue, Overload};
use crate::token::TokenKey;

#[derive(Clone)]
pub struct ControlPlane(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub registry: Registry,
    pub store: Arc<ExecutionStore>,
    pub plugins: Plugins,
    pub metrics: Metrics,
    tokens: TokenKey,
    /// Base URL for callbacks, e.g. `http://10.0.0.1:8080`.
    callback_base: String,
    ready: AtomicBool,
    drivers: TaskTracker,
}

impl std::ops::Deref for ControlPlane {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Why a function could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// A field the host checks is invalid.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// No plugin has that name.
    #[error("unknown dispatcher `{name}`; available: {}", available.join(", "))]
    UnknownDispatcher { name: String, available: Vec<String> },
    /// The plugin's `validate` refused the spec.
    #[error("dispatcher `{plugin}` refused the function: {reason}")]
    Refused { plugin: String, reason: String },
    /// The plugin failed while validating.
    #[error(transparent)]
    Fault(#[from] PluginFault),
    /// The name is taken.
    #[error("function `{0}` already exists")]
    Conflict(String),
}

/// Why an invocation was not accepted. Nothing was created in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("function `{0}` not found")]
    UnknownFunction(String),
    #[error("function `{function}` is at capacity: {concurrency} running and {queue_size} queued")]
    Overloaded { function: String, concurrency: u32, queue_size: u32 },
    #[error(transparent)]
    Idempotency(#[from] IdempotencyConflict),
}

/// What a caller asks for, besides the input.
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    pub trace_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Narrows the function's timeout (never widens it).
    pub timeout: Option<Duration>,
}

/// The body of a completion callback.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct CallbackResult {
    pub success: bool,
    #[serde(default)]
    pub output: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub error: Option<CallbackError>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct CallbackError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// What became of a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// It finished the execution.
    Accepted,
    /// The execution had already finished with a result (another callback, or the plugin).
    Duplicate,
    /// The execution had already timed out or been cancelled.
    Late,
}

impl CallbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackOutcome::Accepted => "accepted",
            CallbackOutcome::Duplicate => "duplicate",
            CallbackOutcome::Late => "late",
        }
    }
}

impl ControlPlane {
    /// A control plane with the plugins of `catalog`; `callback_base` is the URL remote runners
    /// use to reach this host. Fails on an invalid capability setting (an allow-list entry).
    pub fn new(
        config: Config,
        catalog: Arc<Catalog>,
        callback_base: String,
        cluster: Option<Cluster>,
    ) -> Result<Self, String> {
        let metrics = Metrics::new();
        let store = Arc::new(ExecutionStore::new(
            config.execution_retention,
            config.max_retained_executions,
            config.idempotency_ttl,
            metrics.clone(),
        ));
        let wake: Wake = {
            let store = Arc::downgrade(&store);
            Arc::new(move |id: &str| {
                if let Some(exec) = store.upgrade().and_then(|s| s.get(id)) {
                    exec.wake();
                }
            })
        };
        let caps = Arc::new(Capabilities::new(&config, wake, &metrics, cluster)?);
        let plugins = Plugins::new(catalog, config.plugin.clone(), caps, metrics.clone());
        let tokens = TokenKey::new(config.callback_secret.as_deref());
        Ok(Self(Arc::new(Inner {
            config,
            registry: Registry::default(),
            store,
            plugins,
            metrics,
            tokens,
            callback_base,
            ready: AtomicBool::new(false),
            drivers: TaskTracker::new(),
        })))
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Names of the loaded plugins.
    pub fn dispatchers(&self) -> Vec<String> {
        self.plugins.catalog().names().map(str::to_string).collect()
    }

    /// Registers a function: host checks, defaults, then the plugin's `validate`.
    pub async fn register(&self, spec: FunctionSpec) -> Result<FunctionSpec, RegisterError> {
        let spec = spec.resolve(self.config.max_timeout)?;
        let dispatcher = spec.dispatcher.clone().expect("resolve sets the dispatcher");
        let Some(plugin) = self.plugins.get(&dispatcher).cloned() else {
            return Err(RegisterError::UnknownDispatcher { name: dispatcher, available: self.dispatchers() });
        };
        if self.registry.get(&spec.name).is_some() {
            return Err(RegisterError::Conflict(spec.name));
        }
        let view = Arc::new(spec.view());
        if let Err(reason) = self.plugins.validate(&plugin, &view).await? {
            return Err(RegisterError::Refused { plugin: dispatcher, reason });
        }
        let queue = FunctionQueue::new(
            &spec.name,
            spec.concurrency.expect("resolved"),
            spec.queue_size.expect("resolved"),
            &self.metrics,
        );
        let function = Arc::new(Function { spec: spec.clone(), view, plugin, queue });
        if !self.registry.insert(function) {
            return Err(RegisterError::Conflict(spec.name));
        }
        tracing::info!(function = %spec.name, dispatcher = %dispatcher, "function registered");
        Ok(spec)
    }

    /// Removes a function. Its executions in flight finish normally.
    pub fn unregister(&self, name: &str) -> Option<Arc<Function>> {
        let removed = self.registry.remove(name);
        if removed.is_some() {
            tracing::info!(function = name, "function deleted");
        }
        removed
    }

    /// Accepts an invocation: re-attaches by idempotency key, or admits and starts a new
    /// execution. Returns only once the execution exists (so its status is queryable).
    pub fn submit(&self, function: &str, input: Input, opts: SubmitOptions) -> Result<Attach, SubmitError> {
        let f = self.registry.get(function).ok_or_else(|| SubmitError::UnknownFunction(function.to_string()))?;
        let timeout = opts.timeout.map_or(f.timeout(), |t| t.min(f.timeout()));
        let mut admitted = None;
        let key = opts.idempotency_key.as_deref().map(|k| (k, fingerprint(&input)));
        let attach = self.store.attach_or_create(function, key, || {
            let admission = f.queue.admit().map_err(|Overload::QueueFull { concurrency, queue_size }| {
                SubmitError::Overloaded { function: function.to_string(), concurrency, queue_size }
            })?;
            let exec = Arc::new(Execution::new(
                uuid::Uuid::new_v4().to_string(),
                f.clone(),
                opts.trace_id.clone().unwrap_or_else(new_trace_id),
                opts.idempotency_key.clone(),
                input,
                Instant::now() + timeout,
                unix_ms(SystemTime::now()) + timeout.as_millis() as u64,
            ));
            admitted = Some(admission);
            Ok(exec)
        })?;
        let attach = match attach {
            Ok(attach) => attach,
            Err(e) => {
                if let SubmitError::Overloaded { .. } = &e {
                    self.metrics.rejected.with_label_values(&[function, "queue_full"]).inc();
                }
                return Err(e);
            }
        };
        if let (Attach::New(exec), Some(admission)) = (&attach, admitted) {
            tracing::debug!(execution_id = %exec.id, function, trace_id = %exec.trace_id, "execution accepted");
            self.drivers.spawn(crate::dispatch::drive(self.clone(), exec.clone(), admission));
        }
        Ok(attach)
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
            idempotency_key: exec.idempotency_key.clone(),
            deadline_unix_ms: exec.deadline_unix_ms,
            remaining_ms: exec.deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
            callback_url: Some(format!("{}/v1/internal/executions/{}:complete", self.callback_base, exec.id)),
            callback_token: self.tokens.token(&exec.id),
        }
    }

    /// Whether `token` authenticates callbacks for execution `id`.
    pub fn verify_token(&self, id: &str, token: &str) -> bool {
        self.tokens.verify(id, token)
    }

    /// Ends an execution: the one place where terminal states are recorded, counted and logged.
    pub fn finish(&self, exec: &Execution, finish: Finish, by: FinishedBy) -> bool {
        if !exec.finish(finish, by) {
            return false;
        }
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
        match &snapshot.error {
            None => tracing::info!(execution_id = %exec.id, function, trace_id = %exec.trace_id,
                attempt = snapshot.attempt, status = outcome, "execution finished"),
            Some(ErrorInfo { code, message }) => tracing::info!(execution_id = %exec.id, function,
                trace_id = %exec.trace_id, attempt = snapshot.attempt, status = outcome, code, message,
                "execution finished"),
        }
        self.store.finished(&exec.id);
        true
    }

    /// Applies a completion callback whose token was already checked.
    pub fn complete(&self, exec: &Execution, result: CallbackResult) -> CallbackOutcome {
        let finish = if result.success {
            let body = result.output.map_or_else(|| "null".to_string(), |raw| raw.get().to_string());
            Finish::Success(Output { content_type: "application/json".into(), body: body.into() })
        } else {
            let error = result.error.unwrap_or(CallbackError { code: None, message: None });
            Finish::Error {
                kind: ErrorKind::Function,
                error: ErrorInfo {
                    code: error.code.unwrap_or_else(|| "FUNCTION_ERROR".into()),
                    message: error.message.unwrap_or_else(|| "the function reported an error".into()),
                },
            }
        };
        let outcome = if self.finish(exec, finish, FinishedBy::Callback) {
            CallbackOutcome::Accepted
        } else {
            match exec.status() {
                Status::Timeout | Status::Cancelled => CallbackOutcome::Late,
                _ => CallbackOutcome::Duplicate,
            }
        };
        self.metrics.callbacks.with_label_values(&[outcome.as_str()]).inc();
        if outcome != CallbackOutcome::Accepted {
            tracing::info!(execution_id = %exec.id, outcome = outcome.as_str(), "callback ignored");
        }
        outcome
    }

    /// Counts a callback refused for its token.
    pub fn callback_rejected(&self) {
        self.metrics.callbacks.with_label_values(&["rejected"]).inc();
    }

    /// Cancels every execution still running and waits (up to `grace`) for their plugins to
    /// release pending work.
    pub async fn shutdown(&self, grace: Duration) {
        self.set_ready(false);
        for exec in self.store.active() {
            self.finish(&exec, Finish::Cancelled("the host is shutting down".into()), FinishedBy::Cancel);
        }
        self.drivers.close();
        if tokio::time::timeout(grace, self.drivers.wait()).await.is_err() {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown: some executions did not release in time");
        }
    }

    /// Drivers still running (for tests and diagnostics).
    pub fn running_drivers(&self) -> usize {
        self.drivers.len()
    }
}

/// A new trace id: 32 lower-case hex digits (W3C trace-id shaped).
pub fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
pub(crate) mod tests;
