//! Host implementations of the contract's imports, as seen from inside one plugin call.
//!
//! Every import checks the plugin's grants first; the work itself is done by `capability`.
//! Quotas (log lines, payload bytes and handles) are counted in the store and end the call with
//! a fault when exceeded, so a runaway guest cannot turn the host's memory or logs against it.

use wasmtime::component::Resource;

use super::bindings::nanofaas::dispatcher::{http, kubernetes, log, process, types};
use super::{FaultKind, HostAbort, HostState, Payload};
use crate::capability::Capability;
use crate::otel::{Span, SpanKind, TRACEPARENT};

impl HostState {
    /// The reason a capability cannot be used by this plugin now, if any.
    fn refused(&self, cap: Capability) -> Option<String> {
        if !self.grants.allows(cap) {
            return Some(format!("capability `{cap}` is not granted to plugin `{}`", self.plugin));
        }
        self.caps.unavailable(cap)
    }

    fn payload(&self, handle: &Resource<Payload>) -> wasmtime::Result<&Payload> {
        Ok(self.table.get(handle)?)
    }

    /// Creates a host payload, counted against the call's quotas.
    pub(super) fn new_payload(&mut self, bytes: bytes::Bytes) -> wasmtime::Result<Resource<Payload>> {
        let len = bytes.len() as u64;
        if self.handle_budget == 0 {
            return Err(HostAbort::error(FaultKind::Quota, "created too many payloads in one call"));
        }
        if len > self.payload_budget {
            return Err(HostAbort::error(
                FaultKind::Quota,
                "created more payload bytes in one call than the host allows",
            ));
        }
        self.handle_budget -= 1;
        self.payload_budget -= len;
        Ok(self.table.push(Payload(bytes))?)
    }
}

impl types::Host for HostState {}

impl types::HostPayload for HostState {
    async fn new(&mut self, parts: Vec<types::Part>) -> wasmtime::Result<Resource<Payload>> {
        let mut total = 0u64;
        for part in &parts {
            total += match part {
                types::Part::Bytes(b) => b.len() as u64,
                types::Part::Payload(p) => self.payload(p)?.0.len() as u64,
            };
        }
        if total > self.payload_budget {
            return Err(HostAbort::error(
                FaultKind::Quota,
                "created more payload bytes in one call than the host allows",
            ));
        }
        // One part that is a whole payload is shared, not copied.
        let bytes = match parts.as_slice() {
            [types::Part::Payload(p)] => self.payload(p)?.0.clone(),
            _ => {
                let mut buf = Vec::with_capacity(total as usize);
                for part in &parts {
                    match part {
                        types::Part::Bytes(b) => buf.extend_from_slice(b),
                        types::Part::Payload(p) => buf.extend_from_slice(&self.payload(p)?.0),
                    }
                }
                bytes::Bytes::from(buf)
            }
        };
        self.new_payload(bytes)
    }

    async fn size(&mut self, this: Resource<Payload>) -> wasmtime::Result<u64> {
        Ok(self.payload(&this)?.0.len() as u64)
    }

    async fn read(&mut self, this: Resource<Payload>, offset: u64, len: u32) -> wasmtime::Result<Vec<u8>> {
        let bytes = &self.payload(&this)?.0;
        let start = (offset.min(bytes.len() as u64)) as usize;
        let end = start.saturating_add(len as usize).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    async fn drop(&mut self, this: Resource<Payload>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        if self.log_budget == 0 {
            return Err(HostAbort::error(FaultKind::Quota, "wrote more log lines in one call than the host allows"));
        }
        self.log_budget -= 1;
        let plugin = &*self.plugin;
        let execution_id = self.ctx.execution_id.as_deref().unwrap_or("");
        let trace_id = self.ctx.trace_id.as_deref().unwrap_or("");
        let function = self.ctx.function.as_deref().unwrap_or("");
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "nanofaas::plugin", $lvl, plugin, execution_id, function, trace_id, attempt = self.ctx.attempt, "{message}")
            };
        }
        match level {
            log::Level::Trace => emit!(tracing::Level::TRACE),
            log::Level::Debug => emit!(tracing::Level::DEBUG),
            log::Level::Info => emit!(tracing::Level::INFO),
            log::Level::Warn => emit!(tracing::Level::WARN),
            log::Level::Error => emit!(tracing::Level::ERROR),
        }
        Ok(())
    }
}

impl HostState {
    /// The execution this call works for; capabilities that start work need one.
    fn owner(&self) -> Result<String, String> {
        self.ctx.execution_id.clone().ok_or_else(|| "only dispatch, poll and release may start or inspect work".into())
    }

    fn process_cap(&self) -> Result<&crate::capability::process::ProcessCapability, String> {
        if let Some(reason) = self.refused(Capability::Process) {
            return Err(reason);
        }
        self.caps.process.as_ref().ok_or_else(|| "local execution is switched off".into())
    }

    fn http_cap(&self) -> Result<&crate::capability::http::HttpCapability, String> {
        match self.refused(Capability::Http) {
            Some(reason) => Err(reason),
            None => Ok(&self.caps.http),
        }
    }
}

fn command_spec(cmd: process::Command) -> crate::capability::process::CommandSpec {
    crate::capability::process::CommandSpec { argv: cmd.argv, env: cmd.env, cwd: cmd.cwd }
}

impl process::Host for HostState {
    async fn check(&mut self, cmd: process::Command) -> wasmtime::Result<Result<(), String>> {
        Ok(self.process_cap().and_then(|p| p.check(&command_spec(cmd))))
    }

    async fn spawn(
        &mut self,
        cmd: process::Command,
        stdin: Resource<Payload>,
    ) -> wasmtime::Result<Result<String, String>> {
        let input = self.payload(&stdin)?.0.clone();
        let (owner, cap) = match (self.owner(), self.process_cap()) {
            (Ok(owner), Ok(cap)) => (owner, cap),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        let mut span = Span::start("process spawn", SpanKind::Internal, self.ctx.trace);
        let mut spec = command_spec(cmd);
        if let Some(program) = spec.argv.first().filter(|_| span.is_recording()) {
            span.set("process.executable.name", program.clone());
        }
        // The process may continue the trace, as a Job's pod may.
        if let Some(traceparent) = span.context().traceparent()
            && !spec.env.iter().any(|(k, _)| k == TRACEPARENT)
        {
            spec.env.push((TRACEPARENT.to_string(), traceparent));
        }
        let spawned = cap.spawn(&owner, spec, input).await;
        if let Err(e) = &spawned {
            span.fail(crate::otel::PLATFORM, "SPAWN_FAILED", e);
        }
        Ok(spawned)
    }

    async fn status(&mut self, handle: String) -> wasmtime::Result<Result<Option<process::Exit>, String>> {
        let status = self.owner().and_then(|owner| self.process_cap()?.status(&owner, &handle));
        let exit = match status {
            Ok(Some(exit)) => exit,
            Ok(None) => return Ok(Ok(None)),
            Err(e) => return Ok(Err(e)),
        };
        // Host-made payloads are not counted against the guest's quota.
        let stdout = self.table.push(Payload(exit.stdout))?;
        Ok(Ok(Some(process::Exit {
            code: exit.code,
            signal: exit.signal,
            stdout,
            stdout_truncated: exit.stdout_truncated,
            stderr_tail: exit.stderr_tail,
        })))
    }

    async fn kill(&mut self, handle: String) -> wasmtime::Result<()> {
        if let (Ok(owner), Ok(p)) = (self.owner(), self.process_cap()) {
            p.kill(&owner, &handle);
        }
        Ok(())
    }
}

fn http_error(f: crate::capability::http::HttpFailure) -> http::HttpError {
    use crate::capability::http::HttpFailure as F;
    match f {
        F::NotAllowed(m) => http::HttpError::NotAllowed(m),
        F::Connect(m) => http::HttpError::Connect(m),
        F::Timeout => http::HttpError::Timeout,
        F::TooLarge(n) => http::HttpError::TooLarge(n),
        F::Other(m) => http::HttpError::Other(m),
    }
}

impl http::Host for HostState {
    async fn check_url(&mut self, url: String) -> wasmtime::Result<Result<(), String>> {
        let cap = match self.http_cap() {
            Ok(cap) => cap,
            Err(e) => return Ok(Err(e)),
        };
        Ok(cap.check_url(&self.plugin, &url).await)
    }

    async fn start(
        &mut self,
        req: http::Request,
        body: Resource<Payload>,
    ) -> wasmtime::Result<Result<String, http::HttpError>> {
        let body = self.payload(&body)?.0.clone();
        let (owner, cap) = match (self.owner(), self.http_cap()) {
            (Ok(owner), Ok(cap)) => (owner, cap),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(http::HttpError::NotAllowed(e))),
        };
        // Bounded by the deadline plus a grace: the host's deadline decides (it aborts the
        // request), so a request timing out a hair earlier never races it into a retry.
        let remaining = self.ctx.deadline.map_or(std::time::Duration::from_secs(3600), |d| {
            d.saturating_duration_since(tokio::time::Instant::now()) + std::time::Duration::from_secs(1)
        });
        let request = crate::capability::http::HttpRequest {
            method: req.method,
            url: req.url,
            headers: req.headers,
            timeout: req.timeout_ms.map(|ms| std::time::Duration::from_millis(ms.into())),
        };
        Ok(cap.start(&self.plugin, &owner, request, body, remaining, self.ctx.trace).await.map_err(http_error))
    }

    async fn take_response(
        &mut self,
        handle: String,
    ) -> wasmtime::Result<Option<Result<http::Response, http::HttpError>>> {
        let (Ok(owner), Ok(cap)) = (self.owner(), self.http_cap()) else { return Ok(None) };
        match cap.take_response(&owner, &handle) {
            None => Ok(None),
            Some(Err(f)) => Ok(Some(Err(http_error(f)))),
            Some(Ok(r)) => {
                let body = self.table.push(Payload(r.body))?;
                Ok(Some(Ok(http::Response { status: r.status, headers: r.headers, body })))
            }
        }
    }
}

fn api_error(f: crate::capability::kubernetes::ApiFailure) -> kubernetes::ApiError {
    kubernetes::ApiError { status: f.status, reason: f.reason, message: f.message, retryable: f.retryable }
}

impl HostState {
    fn kube_cap(&self) -> Result<&crate::capability::kubernetes::KubernetesCapability, kubernetes::ApiError> {
        let refused = |message: String| kubernetes::ApiError {
            status: 0,
            reason: "Unavailable".into(),
            message,
            retryable: false,
        };
        if let Some(reason) = self.refused(Capability::Kubernetes) {
            return Err(refused(reason));
        }
        self.caps.kubernetes.as_ref().ok_or_else(|| refused("no Kubernetes cluster is configured".into()))
    }

    fn kube_owner(&self) -> Result<String, kubernetes::ApiError> {
        self.owner().map_err(|message| kubernetes::ApiError {
            status: 0,
            reason: "Forbidden".into(),
            message,
            retryable: false,
        })
    }
}

impl kubernetes::Host for HostState {
    async fn available(&mut self) -> wasmtime::Result<Result<(), String>> {
        Ok(self.kube_cap().map(|_| ()).map_err(|e| e.message))
    }

    async fn create_job(&mut self, manifest: String) -> wasmtime::Result<Result<String, kubernetes::ApiError>> {
        let (cap, owner) = match (self.kube_cap(), self.kube_owner()) {
            (Ok(cap), Ok(owner)) => (cap, owner),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        let function = self.ctx.function.clone().unwrap_or_default();
        let mut span = Span::start("kubernetes job create", SpanKind::Client, self.ctx.trace);
        let traceparent = span.context().traceparent();
        let created = cap.create_job(&owner, &function, self.ctx.attempt, &manifest, traceparent.as_deref()).await;
        match &created {
            Ok(name) if span.is_recording() => span.set("k8s.job.name", name.clone()),
            Ok(_) => {}
            Err(e) => span.fail(crate::otel::PLATFORM, &e.reason, &e.message),
        }
        Ok(created.map_err(api_error))
    }

    async fn job_status(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Option<kubernetes::JobState>, kubernetes::ApiError>> {
        let (cap, owner) = match (self.kube_cap(), self.kube_owner()) {
            (Ok(cap), Ok(owner)) => (cap, owner),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        Ok(cap.job_status(&owner, &name).map_err(api_error).map(|state| {
            state.map(|s| kubernetes::JobState {
                active: s.active,
                succeeded: s.succeeded,
                failed: s.failed,
                conditions: s
                    .conditions
                    .into_iter()
                    .map(|c| kubernetes::JobCondition {
                        kind: c.kind,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                    })
                    .collect(),
                pods: s
                    .pods
                    .into_iter()
                    .map(|p| kubernetes::PodState {
                        name: p.name,
                        phase: p.phase,
                        exit_code: p.exit_code,
                        reason: p.reason,
                        termination_message: p.termination_message,
                    })
                    .collect(),
            })
        }))
    }

    async fn delete_job(&mut self, name: String) -> wasmtime::Result<Result<(), kubernetes::ApiError>> {
        let (cap, owner) = match (self.kube_cap(), self.kube_owner()) {
            (Ok(cap), Ok(owner)) => (cap, owner),
            (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
        };
        let mut span = Span::start("kubernetes job delete", SpanKind::Client, self.ctx.trace);
        if span.is_recording() {
            span.set("k8s.job.name", name.clone());
        }
        let deleted = cap.delete_job(&owner, &name).await;
        if let Err(e) = &deleted {
            span.fail(crate::otel::PLATFORM, &e.reason, &e.message);
        }
        Ok(deleted.map_err(api_error))
    }
}
