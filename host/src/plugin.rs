//! The Wasm plugin runtime: loads dispatcher components and calls them, bounded.
//!
//! [`Catalog`] owns the one wasmtime `Engine` and every plugin compiled once and
//! pre-instantiated (`InstancePre`); it is expensive to build and cheap to share. [`Plugins`]
//! calls them on behalf of one host: each call gets a fresh `Store` and instance from the pooling
//! allocator — or the one a [`Held`] kept from the same attempt's previous call — behind a
//! semaphore no larger than the pool, and is bounded three ways: CPU by an
//! epoch deadline (1 ms ticks that yield to tokio, interrupt after the budget), wall clock by an
//! outer timeout (it also covers time spent in host capabilities), memory by a store limiter.
//! Whatever a plugin does — trap, loop, allocate without bound, return nonsense — fails that one
//! call with [`PluginFault`]; nothing outlives the call.
//!
//! The host-side types here ([`Invocation`], [`Outcome`], …) mirror the WIT contract; the
//! generated ones stay inside `bindings`. This module depends on functions and executions (the
//! function's view, an output), never the reverse.

mod bindings;
mod imports;
mod loader;
mod policy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::capability::{Capabilities, Grants};
use crate::config::PluginLimits;
pub use crate::execution::Output;
pub use crate::function::FunctionView;
use crate::metrics::Metrics;
use crate::otel::{Span, SpanKind};

pub use loader::{CatalogBuilder, LoadError, dir_signature};
pub use policy::{PluginPolicy, parse as parse_policies};

/// Host-owned bytes behind the WIT `payload` resource.
pub struct Payload(pub Bytes);

impl Plugin {
    /// Whether the host tells it about its functions (`lifecycle`): its metadata lists the
    /// interface, and the load checked that it exports it.
    pub fn has_lifecycle(&self) -> bool {
        self.metadata.as_ref().is_some_and(|m| m.implements.iter().any(|i| i == "lifecycle"))
    }
}

/// What a plugin says about itself: its `metadata` export, read once when it is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Its own name (its package's); functions use the name of its file.
    pub name: String,
    pub version: String,
    /// The contract version it says it was built against.
    pub contract: String,
    /// Capabilities it declares it needs (also counted in [`Plugin::needs`]).
    pub capabilities: Vec<String>,
    /// Optional interfaces it says it exports (checked at load).
    pub implements: Vec<String>,
}

/// Where a plugin came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Compiled into the `nanofaas` binary.
    Builtin,
    /// Loaded from the plugin directory.
    File(std::path::PathBuf),
}

impl Source {
    /// `built-in`, or the file name (not the host's path).
    pub fn label(&self) -> String {
        match self {
            Source::Builtin => "built-in".to_string(),
            Source::File(path) => path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        }
    }
}

/// One loaded plugin.
pub struct Plugin {
    pub name: String,
    pub source: Source,
    pub grants: Grants,
    /// The capabilities its imports name (what it would use), granted or not.
    pub needs: Grants,
    /// SHA-256 of the component's bytes (hex): what identifies this version of it.
    pub digest: String,
    /// The contract version of its `strategy` export (`0.1.0`, `0.1.1`).
    pub contract: String,
    /// What it says about itself; `None` for a plugin of contract 0.1.0.
    pub metadata: Option<Metadata>,
    pre: bindings::PluginPre,
}

/// The engine and the compiled plugins.
pub struct Catalog {
    engine: Engine,
    linker: Arc<wasmtime::component::Linker<HostState>>,
    plugins: BTreeMap<String, Arc<Plugin>>,
    /// The plugin directory and its grants, to read it again.
    dir: Option<std::path::PathBuf>,
    grants: BTreeMap<String, Grants>,
    /// Digests dropped-in plugins are pinned to, by name.
    pins: BTreeMap<String, String>,
    /// Whether a plugin importing a capability it is not granted is refused (else a warning).
    strict_imports: bool,
    /// Plugin files that were refused: name → reason.
    refused: BTreeMap<String, String>,
    pool_size: u32,
    memory_bytes: usize,
    limits: PluginLimits,
}

impl Catalog {
    /// Starts a catalog whose engine is tuned for `limits` (pool size, memory per instance).
    pub fn builder(limits: &PluginLimits) -> anyhow::Result<CatalogBuilder> {
        CatalogBuilder::new(limits)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.get(name)
    }

    /// Plugin names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.keys().map(String::as_str)
    }

    /// Why functions of dispatcher `name` cannot run here; `None` when it is loaded.
    pub fn unavailable(&self, name: &str) -> Option<String> {
        if self.plugins.contains_key(name) {
            return None;
        }
        Some(match self.refused.get(name) {
            Some(reason) => format!("dispatcher `{name}` is not loaded on this host: its file was refused ({reason})"),
            None => format!(
                "dispatcher `{name}` is not loaded on this host (loaded: {})",
                self.names().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }
}

/// One attempt of one execution (the WIT `invocation`).
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    pub execution_id: String,
    pub attempt: u32,
    pub function: Arc<FunctionView>,
    pub content_type: String,
    pub metadata: Vec<(String, String)>,
    pub trace_id: String,
    /// The attempt's span, parent of the plugin calls (host-side, not given to plugins).
    pub trace: crate::otel::Parent,
    pub idempotency_key: Option<String>,
    pub deadline_unix_ms: u64,
    pub remaining_ms: u64,
    pub callback_url: Option<String>,
    pub callback_token: String,
}

/// Why a step produced no output (the WIT `failure`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// What a dispatch or poll step produced (the WIT `outcome`).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done(Result<Output, Failure>),
    Pending { handle: String, poll_after: Option<Duration> },
}

/// Why the host lets go of pending work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    Completed,
    Timeout,
    Cancelled,
}

/// A plugin call that failed for reasons of the plugin itself: the platform error
/// `PLUGIN_FAULT`. The message is what callers see: the plugin, the call and a short reason.
/// The guest's stderr and the wasm backtrace go to the host's log, with the execution id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct PluginFault {
    pub kind: FaultKind,
    pub message: String,
}

/// How a plugin call failed; the `kind` label of `nanofaas_plugin_faults_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The guest trapped (a panic, an abort, an out-of-bounds access).
    Trap,
    /// The guest used up its CPU budget.
    Cpu,
    /// The guest went past its memory limit.
    Memory,
    /// The call took longer than its wall-clock limit.
    Timeout,
    /// The guest returned a result the host cannot accept.
    Malformed,
    /// The guest went past a host resource quota (log lines, payload bytes).
    Quota,
    /// The plugin could not be instantiated.
    Instantiate,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Cpu => "cpu",
            FaultKind::Memory => "memory",
            FaultKind::Timeout => "timeout",
            FaultKind::Malformed => "malformed",
            FaultKind::Quota => "quota",
            FaultKind::Instantiate => "instantiate",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host-side error raised inside a call, carried through wasmtime as a trap so the guest
/// stops at once; classified back into a [`PluginFault`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct HostAbort {
    pub kind: FaultKind,
    pub message: String,
}

impl HostAbort {
    pub(crate) fn error(kind: FaultKind, message: impl Into<String>) -> wasmtime::Error {
        wasmtime::Error::new(HostAbort { kind, message: message.into() })
    }
}

/// Who a call is made for: carried into logs and capabilities.
#[derive(Clone, Debug, Default)]
pub struct CallContext {
    pub execution_id: Option<String>,
    pub function: Option<String>,
    pub trace_id: Option<String>,
    /// Under a call of an invocation, its attempt's span; within the call, the call's span.
    pub trace: crate::otel::Parent,
    pub attempt: u32,
    /// The execution's deadline, which bounds what the call starts (an HTTP request).
    pub deadline: Option<Instant>,
}

impl CallContext {
    pub fn for_invocation(inv: &Invocation) -> Self {
        Self {
            execution_id: Some(inv.execution_id.clone()),
            function: Some(inv.function.name.clone()),
            trace_id: Some(inv.trace_id.clone()),
            trace: inv.trace,
            attempt: inv.attempt,
            deadline: Some(Instant::now() + Duration::from_millis(inv.remaining_ms)),
        }
    }
}

/// The data of one `Store`: lives for one plugin call.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: Arc<str>,
    grants: Grants,
    ctx: CallContext,
    caps: Arc<Capabilities>,
    /// Epoch ticks of CPU left.
    ticks_left: u32,
    /// Log lines left.
    log_budget: u32,
    /// Bytes of host payloads the guest may still create.
    payload_budget: u64,
    /// Payload handles the guest may still create.
    handle_budget: u32,
}

impl wasmtime_wasi::WasiView for HostState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Plugin calls on behalf of one host.
pub struct Plugins {
    /// Swapped whole when the plugin directory is read again; a call holds the `Arc<Plugin>` it
    /// started with, so calls in flight finish on the version they began on.
    catalog: std::sync::RwLock<Arc<Catalog>>,
    /// The engine every catalog of this host compiles with, and its memory per instance.
    engine: Engine,
    memory_bytes: usize,
    permits: Arc<Semaphore>,
    /// The size of `permits`.
    slots: usize,
    limits: PluginLimits,
    /// Plugins the operator's plugin config names: their own limits and share of the pool.
    shares: BTreeMap<String, Share>,
    caps: Arc<Capabilities>,
    metrics: Metrics,
}

/// One plugin's limits, and the permits of its share of the pool when it has one. Kept by name,
/// so a reloaded version of the plugin shares them with the one it replaces.
struct Share {
    limits: PluginLimits,
    permits: Option<Arc<Semaphore>>,
}

/// An instance kept between the calls of one attempt (dispatch, then the poll and release that
/// follow soon after), with its pool slot. Empty by default; dropping it frees the slot. It never
/// outlives the attempt, so no state is shared between attempts or executions.
#[derive(Default)]
pub struct Held(Option<Box<Live>>);

impl Held {
    /// Whether it holds an instance.
    pub fn is_live(&self) -> bool {
        self.0.is_some()
    }

    /// Drops the instance and frees its slot.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

pub(crate) struct Live {
    store: Store<HostState>,
    /// `None` until instantiated (or when instantiation failed).
    instance: Option<bindings::PluginInstance>,
    stderr: MemoryOutputPipe,
    /// Its slot of the pool, and of its plugin's share (when it has one).
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

impl Live {
    /// Readies a kept instance for its next call: that call's context and fresh budgets.
    fn renew(&mut self, ctx: CallContext, limits: &PluginLimits) {
        let state = self.store.data_mut();
        state.ctx = ctx;
        state.ticks_left = limits.cpu_budget_ticks;
        state.log_budget = limits.log_budget;
        state.payload_budget = limits.payload_bytes;
        state.handle_budget = HANDLE_BUDGET;
        self.store.set_epoch_deadline(1);
    }
}

/// Payload handles a guest may create in one call.
const HANDLE_BUDGET: u32 = 10_000;

impl Plugins {
    /// Calls `catalog`'s plugins with `limits`, and with their own for the plugins `policies`
    /// name (checked already: values out of the host's bounds are clamped to them).
    pub fn new(
        catalog: Arc<Catalog>,
        limits: PluginLimits,
        policies: &BTreeMap<String, PluginPolicy>,
        caps: Arc<Capabilities>,
        metrics: Metrics,
    ) -> Self {
        // Never more instances in flight than the pool has slots: past that, instantiation
        // fails instead of waiting.
        let slots = limits.instances.min(catalog.pool_size).max(1) as usize;
        let (engine, memory_bytes) = (catalog.engine.clone(), catalog.memory_bytes);
        let shares = policies
            .iter()
            .map(|(name, policy)| {
                let limits = policy.limits(&limits, memory_bytes);
                let permits =
                    policy.instances.map(|_| Arc::new(Semaphore::new((limits.instances as usize).min(slots))));
                (name.clone(), Share { limits, permits })
            })
            .collect();
        let catalog = std::sync::RwLock::new(catalog);
        let permits = Arc::new(Semaphore::new(slots));
        Self { catalog, engine, memory_bytes, permits, slots, limits, shares, caps, metrics }
    }

    /// The limits of `plugin`'s calls.
    pub fn limits_of(&self, plugin: &str) -> &PluginLimits {
        self.shares.get(plugin).map_or(&self.limits, |s| &s.limits)
    }

    /// Whether an instance may be kept between two calls of an attempt: only while at least half
    /// of the pool is free, so kept instances never make other calls wait for a slot.
    pub fn can_hold(&self) -> bool {
        self.permits.available_permits() * 2 >= self.slots
    }

    pub fn capabilities(&self) -> &Arc<Capabilities> {
        &self.caps
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The catalog now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.catalog.read().expect("catalog lock").get(name).cloned()
    }

    /// Serves `catalog` from now on (calls in flight keep the plugins they hold).
    pub fn replace(&self, catalog: Arc<Catalog>) {
        *self.catalog.write().expect("catalog lock") = catalog;
    }

    /// `validate` at registration: `Ok(Err(reason))` when the plugin refuses the spec.
    /// `lifecycle.apply` for a function of `plugin` (which [`Plugin::has_lifecycle`]).
    pub async fn apply(&self, plugin: &Plugin, spec: &FunctionView) -> Result<Result<(), Failure>, PluginFault> {
        let spec = bindings::to_spec(spec);
        self.call(plugin, "apply", CallContext::default(), &mut Held::default(), async |store, inst| {
            plugin.pre.apply(store, inst, &spec).await
        })
        .await
    }

    /// `lifecycle.remove` for the function `name`.
    pub async fn remove(&self, plugin: &Plugin, name: &str) -> Result<Result<(), Failure>, PluginFault> {
        self.call(plugin, "remove", CallContext::default(), &mut Held::default(), async |store, inst| {
            plugin.pre.remove(store, inst, name).await
        })
        .await
    }

    pub async fn validate(&self, plugin: &Plugin, spec: &FunctionView) -> Result<Result<(), String>, PluginFault> {
        let spec = bindings::to_spec(spec);
        self.call(plugin, "validate", CallContext::default(), &mut Held::default(), async |store, inst| {
            inst.strategy.call_validate(store, &spec).await
        })
        .await
    }

    /// `dispatch`: starts one attempt with `input` as the payload. The instance is left in
    /// `held` for the attempt's next call (and dropped with it).
    pub async fn dispatch(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        input: Bytes,
        held: &mut Held,
    ) -> Result<Result<Outcome, Failure>, PluginFault> {
        let wit_inv = bindings::to_invocation(inv);
        self.call(plugin, "dispatch", CallContext::for_invocation(inv), held, async |store, inst| {
            let input = store.data_mut().table.push(Payload(input))?;
            let borrowed = wasmtime::component::Resource::new_borrow(input.rep());
            let result = inst.strategy.call_dispatch(&mut *store, &wit_inv, borrowed).await?;
            store.data_mut().table.delete(input)?;
            bindings::from_step(store, result)
        })
        .await
    }

    /// `poll`: checks on pending work.
    pub async fn poll(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        handle: &str,
        held: &mut Held,
    ) -> Result<Result<Outcome, Failure>, PluginFault> {
        let wit_inv = bindings::to_invocation(inv);
        self.call(plugin, "poll", CallContext::for_invocation(inv), held, async |store, inst| {
            let result = inst.strategy.call_poll(&mut *store, &wit_inv, handle).await?;
            bindings::from_step(store, result)
        })
        .await
    }

    /// `release`: lets go of pending work.
    pub async fn release(
        &self,
        plugin: &Plugin,
        inv: &Invocation,
        handle: &str,
        reason: ReleaseReason,
        held: &mut Held,
    ) -> Result<(), PluginFault> {
        let wit_inv = bindings::to_invocation(inv);
        let reason = bindings::to_reason(reason);
        self.call(plugin, "release", CallContext::for_invocation(inv), held, async |store, inst| {
            inst.strategy.call_release(store, &wit_inv, handle, reason).await
        })
        .await
    }

    /// One bounded call, on the instance `held` kept for `plugin` or on a fresh one. A call that
    /// succeeds leaves its instance in `held`; one that fails drops it (a trapped or interrupted
    /// instance is never entered again).
    async fn call<T>(
        &self,
        plugin: &Plugin,
        call: &'static str,
        mut ctx: CallContext,
        held: &mut Held,
        f: impl AsyncFnOnce(&mut Store<HostState>, &bindings::PluginInstance) -> wasmtime::Result<T>,
    ) -> Result<T, PluginFault> {
        let name = match call {
            "dispatch" => "plugin dispatch",
            "poll" => "plugin poll",
            "release" => "plugin release",
            "apply" => "plugin apply",
            "remove" => "plugin remove",
            _ => "plugin validate",
        };
        let mut span = Span::start(name, SpanKind::Internal, ctx.trace);
        if span.is_recording() {
            span.set("nanofaas.plugin", plugin.name.clone());
        }
        ctx.trace = span.context();
        let limits = self.limits_of(&plugin.name);
        let mut live = match held.0.take().filter(|live| *live.store.data().plugin == *plugin.name) {
            Some(mut live) => {
                live.renew(ctx, limits);
                live
            }
            None => {
                // The plugin's own share first, so a call waiting for it holds no pool slot.
                let share = match self.shares.get(&plugin.name).and_then(|s| s.permits.clone()) {
                    Some(permits) => Some(permits.acquire_owned().await.expect("the semaphore is never closed")),
                    None => None,
                };
                let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
                let stderr = MemoryOutputPipe::new(limits.stderr_bytes);
                let store = self.new_store(plugin, limits, ctx, stderr.clone());
                Box::new(Live { store, instance: None, stderr, _permits: (permit, share) })
            }
        };
        let started = Instant::now();
        let Live { store, instance, .. } = &mut *live;
        let result = tokio::time::timeout(limits.call_timeout, async {
            let instance = match instance {
                Some(instance) => &*instance,
                None => {
                    self.metrics.plugin_instances.with_label_values(&[plugin.name.as_str()]).inc();
                    let fresh =
                        plugin.pre.instantiate_async(&mut *store).await.map_err(|e| {
                            HostAbort::error(FaultKind::Instantiate, format!("cannot instantiate: {e:#}"))
                        })?;
                    &*instance.insert(fresh)
                }
            };
            f(store, instance).await
        })
        .await;
        self.metrics
            .plugin_call_duration
            .with_label_values(&[plugin.name.as_str(), call])
            .observe(started.elapsed().as_secs_f64());
        let (fault, detail) = match result {
            Ok(Ok(value)) => {
                held.0 = Some(live);
                return Ok(value);
            }
            Ok(Err(error)) => classify(&error),
            Err(_) => {
                let message = format!("{call} did not finish within {} ms", limits.call_timeout.as_millis());
                (PluginFault { kind: FaultKind::Timeout, message }, String::new())
            }
        };
        self.metrics.plugin_faults.with_label_values(&[plugin.name.as_str(), call, fault.kind.as_str()]).inc();
        let stderr = String::from_utf8_lossy(&live.stderr.contents()).trim().to_string();
        tracing::warn!(
            plugin = %plugin.name,
            call,
            execution_id = live.store.data().ctx.execution_id.as_deref().unwrap_or(""),
            kind = %fault.kind,
            error = %fault.message,
            detail = %detail,
            stderr = %stderr,
            "plugin fault"
        );
        let reason = crate::api::truncate(&fault.message, MAX_FAULT_REASON);
        span.fail(crate::otel::PLATFORM, "PLUGIN_FAULT", &format!("{}: {reason}", fault.kind));
        Err(PluginFault { message: format!("plugin `{}` {call}: {reason}", plugin.name), ..fault })
    }

    fn new_store(
        &self,
        plugin: &Plugin,
        limits: &PluginLimits,
        ctx: CallContext,
        stderr: MemoryOutputPipe,
    ) -> Store<HostState> {
        let memory = if self.shares.contains_key(&plugin.name) { limits.memory_bytes } else { self.memory_bytes };
        let budget = Budget { memory_bytes: memory, ..Budget::of(limits) };
        new_store(&self.engine, &plugin.name, plugin.grants.clone(), budget, self.caps.clone(), ctx, stderr)
    }
}

/// Reads a freshly compiled plugin's metadata (`None` when it exports none): one instance,
/// granted nothing, bounded by `limits` like any call. It runs on a thread of its own with a
/// runtime of its own, so loading code can wait for it whether or not it runs on a runtime.
fn read_metadata(engine: &Engine, plugin: &Plugin, limits: &PluginLimits) -> Result<Option<Metadata>, String> {
    static CAPS: std::sync::OnceLock<Arc<Capabilities>> = std::sync::OnceLock::new();
    if !plugin.pre.has_metadata() {
        return Ok(None);
    }
    let caps = CAPS
        .get_or_init(|| {
            let config = crate::config::Config { local_exec: false, ..Default::default() };
            Arc::new(Capabilities::detached(&config))
        })
        .clone();
    let probe = async {
        let stderr = MemoryOutputPipe::new(limits.stderr_bytes);
        let mut store =
            new_store(engine, &plugin.name, Grants::none(), Budget::of(limits), caps, CallContext::default(), stderr);
        let result = tokio::time::timeout(limits.call_timeout, async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            plugin.pre.info(&mut store, &instance).await
        })
        .await;
        match result {
            Ok(Ok(metadata)) => Ok(metadata),
            Ok(Err(error)) => Err(classify(&error).0.message),
            Err(_) => Err(format!("did not finish within {} ms", limits.call_timeout.as_millis())),
        }
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build();
                runtime.map_err(|e| format!("cannot start a runtime: {e}"))?.block_on(probe)
            })
            .join()
            .unwrap_or_else(|_| Err("the metadata call panicked the host thread".into()))
    })
}

/// What one call may use.
#[derive(Clone, Copy)]
struct Budget {
    memory_bytes: usize,
    cpu_ticks: u32,
    log_lines: u32,
    payload_bytes: u64,
}

impl Budget {
    fn of(limits: &PluginLimits) -> Self {
        Budget {
            memory_bytes: limits.memory_bytes,
            cpu_ticks: limits.cpu_budget_ticks,
            log_lines: limits.log_budget,
            payload_bytes: limits.payload_bytes,
        }
    }
}

/// A store for one call of the plugin `name`: its grants, `budget`, the call's context.
fn new_store(
    engine: &Engine,
    name: &str,
    grants: Grants,
    budget: Budget,
    caps: Arc<Capabilities>,
    ctx: CallContext,
    stderr: MemoryOutputPipe,
) -> Store<HostState> {
    let wasi = WasiCtx::builder().stderr(stderr).build();
    let store_limits = StoreLimitsBuilder::new()
        .memory_size(budget.memory_bytes)
        .instances(16)
        .tables(16)
        .memories(4)
        .trap_on_grow_failure(true)
        .build();
    let state = HostState {
        wasi,
        table: ResourceTable::new(),
        limits: store_limits,
        plugin: Arc::from(name),
        grants,
        ctx,
        caps,
        ticks_left: budget.cpu_ticks,
        log_budget: budget.log_lines,
        payload_budget: budget.payload_bytes,
        handle_budget: HANDLE_BUDGET,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut cx| {
        let state = cx.data_mut();
        if state.ticks_left == 0 {
            return Ok(UpdateDeadline::Interrupt);
        }
        state.ticks_left -= 1;
        // Give the tick back to tokio so a busy guest cannot starve other tasks.
        Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
    });
    store
}

/// Longest reason of a fault shown to callers, in bytes.
const MAX_FAULT_REASON: usize = 200;

/// Turns a wasmtime error into a fault with a short reason, and the detail for the log (the
/// whole error chain, with its wasm backtrace).
fn classify(error: &wasmtime::Error) -> (PluginFault, String) {
    let detail = format!("{error:?}");
    if let Some(abort) = error.downcast_ref::<HostAbort>() {
        return (PluginFault { kind: abort.kind, message: abort.message.clone() }, detail);
    }
    let fault = |kind, message: String| (PluginFault { kind, message }, detail.clone());
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => fault(FaultKind::Cpu, "used up its CPU budget (interrupted)".into()),
            wasmtime::Trap::AllocationTooLarge => fault(FaultKind::Memory, "went past its memory limit".into()),
            other => fault(FaultKind::Trap, format!("trapped: {other}")),
        };
    }
    let text = format!("{error:#}");
    if text.contains("memory") && (text.contains("grow") || text.contains("limit")) {
        return fault(FaultKind::Memory, "went past its memory limit".into());
    }
    // Everything else comes from lifting the guest's results (invalid UTF-8, unknown handles,
    // bad discriminants): the plugin returned something the contract does not allow. The root
    // cause says what; the chain above it (and the backtrace) is for the log.
    let cause = error.root_cause().to_string();
    let cause = cause.lines().next().unwrap_or("");
    fault(FaultKind::Malformed, format!("returned a malformed result: {cause}"))
}
