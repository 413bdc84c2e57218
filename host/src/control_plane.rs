//! The control plane: what the HTTP API (and the host's own loops) call.
//!
//! [`ControlPlane`] is a cheap clone (an `Arc`) over the function registry, the [`Ledger`] of
//! executions and the [`Dispatcher`] that drives them. Requests become executions here:
//! registration (host checks, then the plugin's `validate`, then the store), admission (before
//! an execution exists, so a refusal loses nothing), idempotent re-attachment, completion
//! callbacks. Executions are driven by `dispatch`, which depends on the ledger and the plugins,
//! never on this module.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::api::guard::HostNames;
use crate::auth::Auth;
use crate::capability::kubernetes::Cluster;
use crate::capability::pod_policy::PodPolicy;
use crate::capability::process::Journal;
use crate::capability::{Capabilities, Capability, Wake};
use crate::config::Config;
use crate::dispatch::{Dispatcher, RetryPolicy, Start};
use crate::execution::{ErrorInfo, ErrorKind, Execution, Finish, FinishedBy, Input, Output, Status};
use crate::function::{DEPLOYMENT_DISPATCHER, ExecutionMode, Function, FunctionSpec, Registry, SpecError};
use crate::ledger::{Accepted, Ledger, Restore, Retention};
use crate::metrics::Metrics;
use crate::plugin::{Catalog, Invocation, PluginFault, Plugins};
use crate::queue::FunctionQueue;
use crate::store::{Replaced, Store, StoreError};
use crate::token::TokenKey;

pub use crate::ledger::{Attach, IdempotencyConflict, SubmitError, SubmitOptions, new_trace_id};

#[derive(Clone)]
pub struct ControlPlane(Arc<Inner>);

pub struct Inner {
    config: Config,
    registry: Arc<Registry>,
    ledger: Arc<Ledger>,
    dispatcher: Arc<Dispatcher>,
    metrics: Metrics,
    ready: AtomicBool,
    auth: Auth,
    host_names: HostNames,
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
    /// An update of a function that does not exist.
    #[error("function `{0}` not found")]
    NotFound(String),
    /// An update made against a version that is no longer the current one.
    #[error("function `{name}` is at version {current}, not {expected}: it changed since it was read")]
    VersionMismatch { name: String, expected: u64, current: u64 },
    /// The store could not record the function.
    #[error("the function could not be recorded: {0}")]
    Store(#[from] StoreError),
}

/// Why a control plane could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// A capability setting is invalid (an allow-list entry).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The body of a completion callback, as the contract crate defines it for its writers.
pub use nanofaas_contract::callback::{Body as CallbackResult, Error as CallbackError};

/// What became of a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallbackOutcome {
    /// It finished the execution.
    Accepted,
    /// The execution had already finished with a result (another callback, or the plugin).
    Duplicate,
    /// The execution had already timed out or been cancelled.
    Late,
    /// The callback is for an earlier attempt than the execution's current one.
    Stale,
}

impl CallbackOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackOutcome::Accepted => "accepted",
            CallbackOutcome::Duplicate => "duplicate",
            CallbackOutcome::Late => "late",
            CallbackOutcome::Stale => "stale",
        }
    }
}

/// What a control plane is built from.
pub struct Parts {
    pub config: Config,
    pub catalog: Arc<Catalog>,
    /// The URL remote runners use to reach this host.
    pub callback_base: String,
    pub cluster: Option<Cluster>,
    pub store: Arc<dyn Store>,
    /// This host process's id in the store.
    pub replica: String,
    /// This machine's id ([`crate::capability::process::machine_id`]).
    pub machine: String,
}

/// Logs what a spec says that will not be acted on (the API also answers it as `Warning`
/// headers; the functions file has only the log).
fn log_warnings(spec: &FunctionSpec) {
    for warning in spec.warnings() {
        tracing::warn!(function = %spec.name, %warning, "function spec warning");
    }
}

impl ControlPlane {
    /// A control plane over `parts`. The callback secret is the configured one, else the
    /// store's (generated once and kept, so tokens survive restarts and hold across replicas).
    pub async fn new(parts: Parts) -> Result<Self, ControlPlaneError> {
        let Parts { config, catalog, callback_base, cluster, store, replica, machine } = parts;
        let metrics = Metrics::new();
        let auth = match &config.auth_tokens {
            Some(path) => Auth::from_file(path).map_err(ControlPlaneError::Config)?,
            None => Auth::off(),
        };
        let host_names = HostNames::new(&config.allowed_hosts, &callback_base);
        let secret = match config.callback_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => s.as_bytes().to_vec(),
            None => store.secret().await?,
        };
        let registry = Arc::new(Registry::default());
        let restore: Restore = {
            let (registry, metrics, shared) = (registry.clone(), metrics.clone(), store.info().shared);
            Arc::new(move |spec: &FunctionSpec| build_function(&registry, &metrics, shared, spec.clone()))
        };
        let retention = Retention {
            executions: config.execution_retention,
            max_executions: config.max_retained_executions,
            max_bytes: config.max_retained_bytes,
            max_output_bytes: config.max_retained_output_bytes,
            keys: config.idempotency_ttl,
        };
        let journal = store.info().durable.then(|| Journal { store: store.clone(), replica: replica.clone(), machine });
        let ledger = Arc::new(Ledger::new(store, replica, retention, metrics.clone(), restore));
        let wake: Wake = {
            let ledger = Arc::downgrade(&ledger);
            Arc::new(move |id: &str| {
                if let Some(exec) = ledger.upgrade().and_then(|l| l.get(id)) {
                    exec.wake();
                }
            })
        };
        let capabilities =
            Capabilities::new(&config, wake, &metrics, cluster, journal).map_err(ControlPlaneError::Config)?;
        let plugins = Plugins::new(
            catalog,
            config.plugin.clone(),
            &config.plugin_policies,
            Arc::new(capabilities),
            metrics.clone(),
        );
        let dispatcher = Arc::new(Dispatcher::new(
            plugins,
            ledger.clone(),
            RetryPolicy::of(&config),
            config.plugin.safety_poll,
            TokenKey::new(&secret),
            callback_base,
        ));
        lifecycle::spawn(&registry, &dispatcher, RetryPolicy::of(&config));
        let ready = AtomicBool::new(false);
        Ok(Self(Arc::new(Inner { config, registry, ledger, dispatcher, metrics, ready, auth, host_names })))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// Who may call the API.
    pub fn auth(&self) -> &Auth {
        &self.0.auth
    }

    /// The names the API answers to.
    pub fn host_names(&self) -> &HostNames {
        &self.0.host_names
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.0.ledger
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.0.dispatcher
    }

    pub fn plugins(&self) -> &Plugins {
        self.0.dispatcher.plugins()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.0.ledger.store()
    }

    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// Deletes the host-owned Jobs that no execution follows any more: theirs is finished, or
    /// unknown (gone from the store, or of a host process before a restart with `memory:`).
    /// Jobs of executions another replica drives are left alone (the store says they run).
    pub async fn sweep_jobs(&self) {
        let Some(k) = &self.plugins().capabilities().kubernetes else { return };
        for (job, id) in k.untracked() {
            match self.0.ledger.find(&id).await {
                Ok(None) => k.sweep(job, "unknown"),
                Ok(Some(exec)) if exec.is_terminal() => k.sweep(job, "terminal"),
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!(job = %job, error = %e, "sweep: cannot read the Job's execution"),
            }
        }
    }

    /// Why this host cannot serve well right now although it runs (see
    /// [`Capabilities::unhealthy`](crate::capability::Capabilities::unhealthy)).
    pub fn unhealthy(&self) -> Option<String> {
        self.plugins().capabilities().unhealthy()
    }

    /// Names of the loaded plugins.
    pub fn dispatchers(&self) -> Vec<String> {
        self.plugins().catalog().names().map(str::to_string).collect()
    }

    /// Resolves and validates a spec: host checks, defaults, then the plugin's `validate`.
    async fn validate(&self, spec: FunctionSpec) -> Result<FunctionSpec, RegisterError> {
        let spec = spec.resolve(self.0.config.max_timeout)?;
        let dispatcher = spec.dispatcher.clone().expect("resolve sets the dispatcher");
        let Some(plugin) = self.plugins().get(&dispatcher) else {
            if spec.execution_mode == Some(ExecutionMode::Deployment) && dispatcher == DEPLOYMENT_DISPATCHER {
                return Err(SpecError::new(
                    "executionMode",
                    format!(
                        "DEPLOYMENT needs a `{DEPLOYMENT_DISPATCHER}` dispatcher, which this host has not loaded; \
                         use POOL with an `endpointUrl` (a warm endpoint you run), REMOTE (a Kubernetes Job per \
                         invocation) or LOCAL, or name a `dispatcher` (loaded: {})",
                        self.dispatchers().join(", ")
                    ),
                )
                .into());
            }
            return Err(RegisterError::UnknownDispatcher { name: dispatcher, available: self.dispatchers() });
        };
        // The pod policy, where the spec already says what the Job will run as.
        if plugin.grants.allows(Capability::Kubernetes)
            && let Some(account) = spec.dispatcher_config.as_ref().and_then(|c| c.get("serviceAccountName"))
        {
            let policy = PodPolicy::new(&self.0.config.kube_allowed_service_accounts);
            policy
                .check_service_account(Some(account.as_str().unwrap_or_default()))
                .map_err(|m| SpecError::new("dispatcherConfig.serviceAccountName", m))?;
        }
        if let Err(reason) = self.plugins().validate(&plugin, &spec.view()).await? {
            return Err(RegisterError::Refused { plugin: dispatcher, reason });
        }
        log_warnings(&spec);
        Ok(spec)
    }

    /// Registers a function: validation, then the store (which refuses a taken name across
    /// replicas), then this host's registry.
    pub async fn register(&self, spec: FunctionSpec) -> Result<FunctionSpec, RegisterError> {
        let mut spec = self.validate(spec).await?;
        if self.registry().get(&spec.name).is_some() || !self.store().create_function(&spec).await? {
            return Err(RegisterError::Conflict(spec.name));
        }
        spec.version = Some(1);
        let function = self.function_of(spec.clone());
        if self.store().info().durable {
            // The store decided (across replicas); the registry follows it.
            self.registry().put(function);
        } else if !self.registry().insert(function) {
            return Err(RegisterError::Conflict(spec.name));
        }
        tracing::info!(function = %spec.name, dispatcher = spec.dispatcher.as_deref().unwrap_or(""), "function registered");
        Ok(spec)
    }

    /// Registers or replaces a function (the functions file at start). Returns whether anything
    /// changed.
    ///
    /// A function whose dispatcher is not loaded is applied all the same, as unavailable (its
    /// invocations answer 503 with the reason): the file says what the functions are, and one
    /// missing or refused plugin should not stop a host that serves the others.
    pub async fn apply(&self, spec: FunctionSpec) -> Result<bool, RegisterError> {
        let mut spec = match self.validate(spec.clone()).await {
            Err(RegisterError::UnknownDispatcher { .. }) => {
                let spec = spec.resolve(self.0.config.max_timeout)?;
                self.warn_if_unavailable(&spec);
                log_warnings(&spec);
                spec
            }
            validated => validated?,
        };
        if self.registry().get(&spec.name).is_some_and(|f| f.spec.same_definition(&spec)) {
            return Ok(false);
        }
        spec.version = Some(self.store().put_function(&spec).await?);
        self.registry().put(self.function_of(spec));
        Ok(true)
    }

    /// Replaces a function in one step: validated like a registration, then swapped in if it is
    /// still at version `expected` (any, when `None`); an identical definition is left as it is. Executions already accepted keep the
    /// version they were accepted with, and its queue; new ones get the new version.
    pub async fn update(&self, spec: FunctionSpec, expected: Option<u64>) -> Result<FunctionSpec, RegisterError> {
        let mut spec = self.validate(spec).await?;
        let name = spec.name.clone();
        // The same definition again changes nothing, not even the version (`fn apply` of an
        // unchanged file).
        if let Some(current) = self.registry().get(&name)
            && current.spec.same_definition(&spec)
            && expected.is_none_or(|v| current.spec.version == Some(v))
        {
            return Ok(current.spec.clone());
        }
        match self.store().replace_function(&spec, expected).await? {
            Replaced::Done(version) => spec.version = Some(version),
            Replaced::Missing => return Err(RegisterError::NotFound(name)),
            Replaced::Changed(current) => {
                let expected = expected.unwrap_or_default();
                return Err(RegisterError::VersionMismatch { name, expected, current });
            }
        }
        self.registry().put(self.function_of(spec.clone()));
        tracing::info!(function = %name, version = spec.version.unwrap_or_default(), "function updated");
        Ok(spec)
    }

    /// Removes a function; whether there was one. Its executions in flight finish normally.
    ///
    /// The store's answer counts: with replicas, this host's own event about the delete may
    /// reach its registry before this call does, and the function is no less deleted for it.
    pub async fn unregister(&self, name: &str) -> Result<bool, StoreError> {
        let stored = self.store().delete_function(name).await?;
        let removed = self.registry().remove(name);
        if let Some(f) = &removed {
            self.0.metrics.forget_function(name, f.dispatcher());
        }
        let deleted = removed.is_some() || (stored && self.store().info().durable);
        if deleted {
            tracing::info!(function = name, "function deleted");
        }
        Ok(deleted)
    }

    /// Loads every function the store holds (at start), without calling plugins: they were
    /// validated when they were registered. A function whose plugin is not loaded stays
    /// registered; its invocations fail with `PLUGIN_UNAVAILABLE`.
    pub async fn load_functions(&self) -> Result<usize, StoreError> {
        let specs = self.store().functions().await?;
        for spec in &specs {
            self.warn_if_unavailable(spec);
            self.registry().put(self.function_of(spec.clone()));
        }
        Ok(specs.len())
    }

    /// Re-reads one function from the store (another replica changed it).
    pub async fn reload_function(&self, name: &str) -> Result<(), StoreError> {
        match self.store().function(name).await? {
            Some(spec) => {
                if self.registry().get(name).is_none_or(|f| f.spec != spec) {
                    self.warn_if_unavailable(&spec);
                    self.registry().put(self.function_of(spec));
                }
            }
            None => {
                self.registry().remove(name);
            }
        }
        Ok(())
    }

    /// Re-reads every function from the store.
    pub async fn reload_functions(&self) -> Result<(), StoreError> {
        let specs = self.store().functions().await?;
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        for f in self.registry().list() {
            if !names.iter().any(|n| n == f.name()) {
                self.registry().remove(f.name());
            }
        }
        for spec in specs {
            if self.registry().get(&spec.name).is_none_or(|f| f.spec != spec) {
                self.registry().put(self.function_of(spec));
            }
        }
        Ok(())
    }

    fn warn_if_unavailable(&self, spec: &FunctionSpec) {
        let dispatcher = spec.dispatcher.as_deref().unwrap_or_default();
        if let Some(reason) = self.plugins().catalog().unavailable(dispatcher) {
            tracing::warn!(function = %spec.name, %reason, "function loaded as unavailable: its invocations answer 503");
        }
    }

    /// A new function object for a resolved spec (with a queue of its own).
    fn function_of(&self, spec: FunctionSpec) -> Arc<Function> {
        let queue = new_queue(&spec, &self.0.metrics, self.store().info().shared);
        Arc::new(Function::new(spec, queue))
    }

    /// Accepts an invocation: re-attaches by idempotency key, or admits, records and starts a
    /// new execution. Returns only once the execution exists (so its status is queryable) and,
    /// for an asynchronous one on a durable store, once it is recorded.
    pub async fn submit(&self, function: &str, input: Input, opts: SubmitOptions) -> Result<Attach, SubmitError> {
        let f = self.registry().get(function).ok_or_else(|| SubmitError::UnknownFunction(function.to_string()))?;
        if let Some(reason) = self.plugins().catalog().unavailable(f.dispatcher()) {
            return Err(SubmitError::Unavailable { function: function.to_string(), reason });
        }
        let store_first = self.0.ledger.durable_at_accept(&opts) || opts.idempotency_key.is_some();
        let asynchronous = opts.asynchronous;
        let cp = self.clone();
        let accept = async move {
            Ok(match cp.0.ledger.accept(&f, input, opts).await? {
                Accepted::New(exec, admission) => {
                    let hold = (!asynchronous).then(|| exec.hold_result());
                    cp.0.dispatcher.spawn(exec.clone(), admission, Start::Fresh);
                    Attach::New(exec, hold)
                }
                Accepted::Existing(exec) => Attach::Existing(exec),
            })
        };
        if store_first {
            // Once the store has an execution it must be driven, even if the request that
            // brought it is dropped meanwhile (the client hung up): accepting runs to its end on
            // a task of its own.
            tokio::spawn(accept).await.expect("accepting does not panic")
        } else {
            accept.await
        }
    }

    /// The invocation record plugins get for an attempt.
    pub fn invocation(&self, exec: &Execution, attempt: u32) -> Invocation {
        self.0.dispatcher.invocation(exec, attempt)
    }

    /// The attempt of execution `id` that `token` authenticates callbacks for, if any.
    pub fn verify_token(&self, id: &str, token: &str) -> Option<u32> {
        self.0.dispatcher.verify_token(id, token)
    }

    /// Ends an execution (see [`Ledger::finish`]).
    pub async fn finish(&self, exec: &Execution, finish: Finish, by: FinishedBy) -> bool {
        self.0.ledger.finish(exec, finish, by).await
    }

    /// Cancels an execution that has not ended: it ends as `cancelled` (recorded in the store
    /// first when it is durable), and its driver — here or on the replica that holds it — lets
    /// go of the remote work through the plugin's `release` (a process group killed, a request
    /// aborted, a Job deleted). `false` when it had already ended; `exec` then shows how.
    pub async fn cancel(&self, exec: &Execution, reason: &str) -> bool {
        let cancelled = self.finish(exec, Finish::Cancelled(reason.to_string()), FinishedBy::Cancel).await;
        if cancelled {
            tracing::info!(execution_id = %exec.id, function = %exec.function.name(), reason, "execution cancelled");
        }
        cancelled
    }

    /// Applies a completion callback whose token was already checked.
    pub async fn complete(&self, exec: &Execution, attempt: u32, result: CallbackResult) -> CallbackOutcome {
        let finish = if result.success {
            let body = result.output.map_or_else(|| "null".to_string(), |raw| raw.get().to_string());
            Finish::Success(Output { content_type: "application/json".into(), body: body.into() })
        } else {
            let error = result.error.unwrap_or_default();
            Finish::Error {
                kind: ErrorKind::Function,
                error: ErrorInfo {
                    code: error.code.unwrap_or_else(|| "FUNCTION_ERROR".into()),
                    message: error.message.unwrap_or_else(|| "the function reported an error".into()),
                },
            }
        };
        let outcome = if self.finish(exec, finish, FinishedBy::Callback).await {
            CallbackOutcome::Accepted
        } else {
            let now = exec.snapshot();
            match now.status {
                Status::Timeout | Status::Cancelled => CallbackOutcome::Late,
                status if !status.is_terminal() && now.attempt > attempt => CallbackOutcome::Stale,
                _ => CallbackOutcome::Duplicate,
            }
        };
        self.0.metrics.callbacks.with_label_values(&[outcome.as_str()]).inc();
        if outcome != CallbackOutcome::Accepted {
            tracing::info!(execution_id = %exec.id, outcome = outcome.as_str(), "callback ignored");
        }
        outcome
    }

    /// Counts a callback refused for its token.
    pub fn callback_rejected(&self) {
        self.0.metrics.callbacks.with_label_values(&["rejected"]).inc();
    }

    /// Stops driving: with a durable store, unfinished executions are handed over (the next host
    /// process, or another replica, takes them up); the rest are cancelled. Waits (up to
    /// `grace`) for the drivers to release what they hold.
    pub async fn shutdown(&self, grace: Duration) {
        self.set_ready(false);
        let handed = self.0.ledger.hand_over("the host is shutting down").await;
        if handed > 0 {
            tracing::info!(count = handed, "unfinished executions handed over");
        }
        if !self.0.dispatcher.wait(grace).await {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown: some executions did not release in time");
        }
        if let Err(e) = self.store().leave(self.0.ledger.replica()).await {
            tracing::warn!(error = %e, "cannot end this replica's lease");
        }
    }

    /// Drivers still running (for tests and diagnostics).
    pub fn running_drivers(&self) -> usize {
        self.0.dispatcher.running()
    }
}

/// A function for `spec` admitted through the registered function of the same name (so
/// executions taken up from the store share its concurrency), else through a queue of its own.
fn build_function(registry: &Registry, metrics: &Metrics, shared: bool, spec: FunctionSpec) -> Arc<Function> {
    let queue = match registry.get(&spec.name) {
        Some(f) => f.queue.clone(),
        None => new_queue(&spec, metrics, shared),
    };
    Arc::new(Function::new(spec, queue))
}

fn new_queue(spec: &FunctionSpec, metrics: &Metrics, shared: bool) -> Arc<FunctionQueue> {
    let (concurrency, queue_size) = (spec.concurrency.expect("resolved"), spec.queue_size.expect("resolved"));
    if shared {
        FunctionQueue::shared(&spec.name, concurrency, queue_size, metrics)
    } else {
        FunctionQueue::new(&spec.name, concurrency, queue_size, metrics)
    }
}

mod lifecycle;

#[cfg(test)]
pub(crate) mod tests;
