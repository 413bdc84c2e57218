//! The `job-poll` dispatcher plugin: one Kubernetes Job per invocation, completion from the Job's
//! status — whichever comes first of the callback and the status.
//!
//! The Job is the same as `k8s-job`'s. When it completes, the result is read from the pod's
//! termination message, which `nanofaas-runtime` writes before it even tries the callback: so the
//! result is recovered when the callback is lost (the pod could not reach the host). Outputs
//! larger than the 4 KiB message arrive only by callback; without one, the execution ends with
//! `OUTPUT_UNAVAILABLE` naming the output's size and digest. A failed Job ends the execution with
//! its reason and exit code. Polls back off from 250 ms to `pollIntervalMs`, and the host's watch
//! wakes the execution on every change of the Job or its pod.

wit_bindgen::generate!({ world: "dispatcher", path: "../../wit" });

use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::kubernetes;
use nanofaas::dispatcher::log::{Level, log};
use nanofaas::dispatcher::types::{Output, Part, Pending, ReleaseReason};

include!("../../../jobkit/src/guest.rs");

/// How long the runtime tries the callback before it exits, unless configured.
const DEFAULT_CALLBACK_BUDGET_MS: u32 = 5000;

/// The handle carries the Job's name and how many polls came before (for the backoff).
fn handle(name: &str, polls: u32) -> String {
    format!("{name}#{polls}")
}

fn parse_handle(handle: &str) -> (&str, u32) {
    match handle.rsplit_once('#') {
        Some((name, n)) => (name, n.parse().unwrap_or(0)),
        None => (handle, 0),
    }
}

fn backoff(polls: u32, cap_ms: u32) -> u32 {
    (250u32 << polls.min(8)).min(cap_ms)
}

struct JobPoll;

impl Guest for JobPoll {
    fn validate(spec: FunctionSpec) -> Result<(), String> {
        validate_spec(&spec)
    }

    fn dispatch(inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        let mut config = config_of(&inv)?;
        // The result is read from the pod once it exits: don't let the runtime wait long for a
        // callback that may be impossible.
        config.callback_budget_ms.get_or_insert(DEFAULT_CALLBACK_BUDGET_MS);
        let name = create_job(&inv, input, &config)?;
        log(Level::Debug, &format!("job {name} created; following its status"));
        Ok(Outcome::Pending(Pending { handle: handle(&name, 0), poll_after_ms: Some(backoff(0, config.poll_interval_ms)) }))
    }

    fn poll(inv: Invocation, current: String) -> Result<Outcome, Failure> {
        let config = jobkit::Config::parse(&inv.function.config).unwrap_or_default();
        let (name, polls) = parse_handle(&current);
        let Some(status) = kubernetes::job_status(name).map_err(api_failure)? else {
            return final_error("JOB_VANISHED".into(), format!("the Job {name} disappeared before it finished"), false);
        };
        match jobkit::verdict(&state(status)) {
            jobkit::Verdict::Running => Ok(Outcome::Pending(Pending {
                handle: handle(name, polls + 1),
                poll_after_ms: Some(backoff(polls + 1, config.poll_interval_ms)),
            })),
            jobkit::Verdict::Failed { code, message, function_error } => final_error(code, message, function_error),
            jobkit::Verdict::Succeeded(Some(jobkit::Envelope::Output(json))) => {
                let body = Payload::new(&[Part::Bytes(json.into_bytes())]);
                Ok(Outcome::Done(Ok(Output { content_type: "application/json".into(), body })))
            }
            jobkit::Verdict::Succeeded(Some(jobkit::Envelope::TooLarge { size, sha256 })) => final_error(
                "OUTPUT_UNAVAILABLE".into(),
                format!("the Job {name} succeeded but its output ({size} bytes, sha256 {sha256}) is too large for the termination message and no callback delivered it"),
                false,
            ),
            jobkit::Verdict::Succeeded(Some(jobkit::Envelope::Error { code, message, .. })) => final_error(code, message, true),
            jobkit::Verdict::Succeeded(None) => final_error(
                "RESULT_UNAVAILABLE".into(),
                format!("the Job {name} completed without a result envelope in its termination message"),
                false,
            ),
        }
    }

    fn release(_inv: Invocation, current: String, _reason: ReleaseReason) {
        let (name, _) = parse_handle(&current);
        if let Err(e) = kubernetes::delete_job(name) {
            log(Level::Warn, &format!("cannot delete job {name}: {}", e.message));
        }
    }
}

export!(JobPoll);
