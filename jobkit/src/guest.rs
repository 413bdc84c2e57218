// Guest-side glue shared by the `k8s-job` and `job-poll` plugins, `include!`d by each after its
// `wit_bindgen::generate!` (it uses their generated types). Not a module of this crate.

use nanofaas::dispatcher::kubernetes::{ApiError, JobState};
use nanofaas::dispatcher::types::{Failure, FunctionSpec, Invocation, Outcome, Payload};

fn function(spec: &FunctionSpec) -> jobkit::Function<'_> {
    jobkit::Function {
        name: &spec.name,
        image: spec.image.as_deref(),
        command: &spec.command,
        env: &spec.env,
        cpu: spec.resources.cpu.as_deref(),
        memory: spec.resources.memory.as_deref(),
    }
}

/// `validate` of both plugins: the config, the spec, and a cluster to run in.
fn validate_spec(spec: &FunctionSpec) -> Result<(), String> {
    let config = jobkit::Config::parse(&spec.config)?;
    jobkit::validate(&function(spec), &config)?;
    nanofaas::dispatcher::kubernetes::available()
}

fn config_of(inv: &Invocation) -> Result<jobkit::Config, Failure> {
    jobkit::Config::parse(&inv.function.config).map_err(|e| Failure { code: "BAD_CONFIG".into(), message: e, retryable: false })
}

/// An API error as a platform failure (retryable when the API server says so).
fn api_failure(e: ApiError) -> Failure {
    let status = if e.status == 0 { String::new() } else { format!("{} ", e.status) };
    Failure { code: "K8S_ERROR".into(), message: format!("{status}{}: {}", e.reason, e.message), retryable: e.retryable }
}

/// A final error: the function's own (`done(err)`) or the platform's (`err`).
fn final_error(code: String, message: String, function_error: bool) -> Result<Outcome, Failure> {
    let failure = Failure { code, message, retryable: false };
    if function_error { Ok(Outcome::Done(Err(failure))) } else { Err(failure) }
}

/// Creates the Job of this attempt; returns its name.
fn create_job(inv: &Invocation, input: &Payload, config: &jobkit::Config) -> Result<String, Failure> {
    let size = input.size();
    let job_input = if nanofaas_contract::is_json(&inv.content_type) && size <= u64::from(config.inline_input_max_bytes) {
        jobkit::Input::Inline(String::from_utf8_lossy(&input.read(0, size as u32)).into_owned())
    } else {
        jobkit::Input::Fetch
    };
    let attempt = jobkit::Attempt {
        execution_id: &inv.execution_id,
        attempt: inv.attempt,
        trace_id: &inv.trace_id,
        deadline_unix_ms: inv.deadline_unix_ms,
        remaining_ms: inv.remaining_ms,
        callback_url: inv.callback_url.as_deref(),
        callback_token: &inv.callback_token,
        content_type: &inv.content_type,
        metadata: &inv.metadata,
    };
    let manifest = jobkit::manifest(&function(&inv.function), &attempt, job_input, config);
    nanofaas::dispatcher::kubernetes::create_job(&manifest.to_string()).map_err(api_failure)
}

fn state(s: JobState) -> jobkit::State {
    jobkit::State {
        conditions: s.conditions.into_iter().map(|c| (c.kind, c.status, c.reason, c.message)).collect(),
        pods: s
            .pods
            .into_iter()
            .map(|p| jobkit::Pod { phase: p.phase, exit_code: p.exit_code, reason: p.reason, termination_message: p.termination_message })
            .collect(),
    }
}
