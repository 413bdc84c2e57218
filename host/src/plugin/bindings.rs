//! The one `bindgen!` of the host: Rust types and traits generated from `wit/`, and the
//! conversions between them and the host-side types of `plugin`. Nothing generated here is
//! visible outside `plugin`.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{FaultKind, HostAbort, HostState, Output, Payload};

wasmtime::component::bindgen!({
    world: "dispatcher",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
    with: { "nanofaas:dispatcher/types.payload": super::Payload },
});

use self::exports::nanofaas::dispatcher::{lifecycle, metadata, strategy};
use self::nanofaas::dispatcher::types as wit;

/// A plugin's component, pre-instantiated, and where its exports are: `strategy` always,
/// `metadata` and `lifecycle` when it has them (plugins of contract 0.1.0 have neither). Export names are looked up
/// semver-compatibly, so a plugin exporting `strategy@0.1.0` is found as `strategy@0.1.1`.
pub(super) struct PluginPre {
    pre: InstancePre<HostState>,
    strategy: strategy::GuestIndices,
    metadata: Option<metadata::GuestIndices>,
    lifecycle: Option<lifecycle::GuestIndices>,
}

/// One instance of a plugin: its `strategy` functions, type-checked.
pub(super) struct PluginInstance {
    instance: wasmtime::component::Instance,
    pub strategy: strategy::Guest,
}

impl PluginPre {
    pub fn new(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        let strategy = strategy::GuestIndices::new(&pre)?;
        let metadata = metadata::GuestIndices::new(&pre).ok();
        let lifecycle = lifecycle::GuestIndices::new(&pre).ok();
        Ok(Self { pre, strategy, metadata, lifecycle })
    }

    pub fn has_metadata(&self) -> bool {
        self.metadata.is_some()
    }

    /// Calls `lifecycle.apply` (a plugin without the export has nothing to apply).
    pub async fn apply(
        &self,
        store: &mut Store<HostState>,
        inst: &PluginInstance,
        spec: &wit::FunctionSpec,
    ) -> wasmtime::Result<Result<(), super::Failure>> {
        let Some(indices) = &self.lifecycle else { return Ok(Ok(())) };
        let result = indices.load(&mut *store, &inst.instance)?.call_apply(&mut *store, spec).await?;
        result.map_or_else(|f| Ok(Err(from_failure(f)?)), |()| Ok(Ok(())))
    }

    /// Calls `lifecycle.remove`.
    pub async fn remove(
        &self,
        store: &mut Store<HostState>,
        inst: &PluginInstance,
        name: &str,
    ) -> wasmtime::Result<Result<(), super::Failure>> {
        let Some(indices) = &self.lifecycle else { return Ok(Ok(())) };
        let result = indices.load(&mut *store, &inst.instance)?.call_remove(&mut *store, name).await?;
        result.map_or_else(|f| Ok(Err(from_failure(f)?)), |()| Ok(Ok(())))
    }

    pub async fn instantiate_async(&self, store: &mut Store<HostState>) -> wasmtime::Result<PluginInstance> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let strategy = self.strategy.load(&mut *store, &instance)?;
        Ok(PluginInstance { instance, strategy })
    }

    /// Calls `metadata.info` on `inst`, when the plugin exports it.
    pub async fn info(
        &self,
        store: &mut Store<HostState>,
        inst: &PluginInstance,
    ) -> wasmtime::Result<Option<super::Metadata>> {
        let Some(indices) = &self.metadata else { return Ok(None) };
        let info = indices.load(&mut *store, &inst.instance)?.call_info(&mut *store).await?;
        Ok(Some(super::Metadata {
            name: info.name,
            version: info.version,
            contract: info.contract,
            capabilities: info.capabilities,
            implements: info.implements,
        }))
    }
}

pub(super) fn to_spec(spec: &super::FunctionView) -> wit::FunctionSpec {
    wit::FunctionSpec {
        name: spec.name.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        env: spec.env.clone(),
        resources: wit::Resources { cpu: spec.cpu.clone(), memory: spec.memory.clone() },
        timeout_ms: spec.timeout_ms,
        endpoint_url: spec.endpoint_url.clone(),
        config: spec.config.clone(),
    }
}

pub(super) fn to_invocation(inv: &super::Invocation) -> wit::Invocation {
    wit::Invocation {
        execution_id: inv.execution_id.clone(),
        attempt: inv.attempt,
        function: to_spec(&inv.function),
        content_type: inv.content_type.clone(),
        metadata: inv.metadata.clone(),
        trace_id: inv.trace_id.clone(),
        idempotency_key: inv.idempotency_key.clone(),
        deadline_unix_ms: inv.deadline_unix_ms,
        remaining_ms: inv.remaining_ms,
        callback_url: inv.callback_url.clone(),
        callback_token: inv.callback_token.clone(),
    }
}

pub(super) fn to_reason(reason: super::ReleaseReason) -> wit::ReleaseReason {
    match reason {
        super::ReleaseReason::Completed => wit::ReleaseReason::Completed,
        super::ReleaseReason::Timeout => wit::ReleaseReason::Timeout,
        super::ReleaseReason::Cancelled => wit::ReleaseReason::Cancelled,
    }
}

fn from_failure(f: wit::Failure) -> wasmtime::Result<super::Failure> {
    if !nanofaas_contract::results::valid_code(&f.code) {
        return Err(malformed(format!("failure code `{}` is not an UPPER_SNAKE_CASE code", f.code)));
    }
    Ok(super::Failure { code: f.code, message: f.message, retryable: f.retryable })
}

/// Takes a step's result out of the store, checking what the contract requires beyond types.
pub(super) fn from_step(
    store: &mut Store<HostState>,
    result: Result<wit::Outcome, wit::Failure>,
) -> wasmtime::Result<Result<super::Outcome, super::Failure>> {
    let outcome = match result {
        Err(failure) => return Ok(Err(from_failure(failure)?)),
        Ok(outcome) => outcome,
    };
    Ok(Ok(match outcome {
        wit::Outcome::Done(Ok(output)) => {
            let Payload(body) = store.data_mut().table.delete(output.body)?;
            if output.content_type.is_empty() || output.content_type.len() > 255 {
                return Err(malformed("output content type is empty or too long".into()));
            }
            super::Outcome::Done(Ok(Output { content_type: output.content_type, body }))
        }
        wit::Outcome::Done(Err(failure)) => super::Outcome::Done(Err(from_failure(failure)?)),
        wit::Outcome::Pending(p) => {
            if !nanofaas_contract::results::valid_handle(&p.handle) {
                let max = nanofaas_contract::results::HANDLE_MAX;
                return Err(malformed(format!("pending handle must be 1 to {max} bytes")));
            }
            super::Outcome::Pending {
                handle: p.handle,
                poll_after: p.poll_after_ms.map(|ms| std::time::Duration::from_millis(ms.into())),
            }
        }
    }))
}

fn malformed(message: String) -> wasmtime::Error {
    HostAbort::error(FaultKind::Malformed, format!("returned a malformed result: {message}"))
}
