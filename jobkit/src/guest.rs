//! What the `k8s-job` and `job-poll` plugins do the same way, through the plugin SDK: validate a
//! function, create the Job of an attempt, read a verdict from the host's view of a Job, and
//! turn API errors into failures.

use nanofaas_plugin_sdk::kubernetes::{self, ApiError, JobState};
use nanofaas_plugin_sdk::{Failure, FunctionSpec, Invocation, Outcome, Payload};

use crate::{Attempt, Config, Function, Input, Pod, State, Verdict};

fn function(spec: &FunctionSpec) -> Function<'_> {
    Function {
        name: &spec.name,
        image: spec.image.as_deref(),
        command: &spec.command,
        env: &spec.env,
        cpu: spec.resources.cpu.as_deref(),
        memory: spec.resources.memory.as_deref(),
    }
}

/// `validate` of both plugins: the config, the spec, and a cluster to run in.
pub fn validate(spec: &FunctionSpec, config: &Config) -> Result<(), String> {
    config.check()?;
    crate::validate(&function(spec), config)?;
    kubernetes::available()
}

/// An API error as a platform failure (retryable when the API server says so).
pub fn api_failure(e: ApiError) -> Failure {
    let status = if e.status == 0 { String::new() } else { format!("{} ", e.status) };
    Failure {
        code: "K8S_ERROR".into(),
        message: format!("{status}{}: {}", e.reason, e.message),
        retryable: e.retryable,
    }
}

/// A final error: the function's own (`done(err)`) or the platform's (`err`).
pub fn final_error(code: &str, message: String, function_error: bool) -> Result<Outcome, Failure> {
    if function_error { Ok(Outcome::function_error(code, message)) } else { Err(Failure::new(code, message)) }
}

/// Creates the Job of this attempt; returns its name.
pub fn create_job(inv: &Invocation, input: &Payload, config: &Config) -> Result<String, Failure> {
    let size = input.size();
    let job_input = if nanofaas_contract::is_json(&inv.content_type) && size <= u64::from(config.inline_input_max_bytes)
    {
        Input::Inline(input.text())
    } else {
        Input::Fetch
    };
    let attempt = Attempt {
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
    let manifest = crate::manifest(&function(&inv.function), &attempt, job_input, config);
    kubernetes::create_job(&manifest.to_string()).map_err(api_failure)
}

/// The verdict on Job `name` from the host's watch cache; `None` when the Job is gone.
pub fn verdict(name: &str) -> Result<Option<Verdict>, Failure> {
    Ok(kubernetes::job_status(name).map_err(api_failure)?.map(|s| crate::verdict(&state(s))))
}

fn state(s: JobState) -> State {
    State {
        conditions: s.conditions.into_iter().map(|c| (c.kind, c.status, c.reason, c.message)).collect(),
        pods: s
            .pods
            .into_iter()
            .map(|p| Pod {
                phase: p.phase,
                exit_code: p.exit_code,
                reason: p.reason,
                termination_message: p.termination_message,
            })
            .collect(),
    }
}
