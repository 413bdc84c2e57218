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

use jobkit::guest::{final_error, verdict};
use jobkit::{Envelope, Verdict};
use nanofaas_plugin_sdk::kubernetes;
use nanofaas_plugin_sdk::prelude::*;

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

impl Dispatcher for JobPoll {
    type Config = jobkit::Config;
    const CAPABILITIES: &'static [&'static str] = &["kubernetes"];

    fn validate(spec: &FunctionSpec, config: &jobkit::Config) -> Result<(), String> {
        jobkit::guest::validate(spec, config)
    }

    fn dispatch(call: &Call<jobkit::Config>, input: &Payload) -> Result<Outcome, Failure> {
        let mut config = call.config.clone();
        // The result is read from the pod once it exits: don't let the runtime wait long for a
        // callback that may be impossible.
        config.callback_budget_ms.get_or_insert(DEFAULT_CALLBACK_BUDGET_MS);
        let name = jobkit::guest::create_job(call, input, &config)?;
        log::debug(&format!("job {name} created; following its status"));
        Ok(Outcome::poll_after(handle(&name, 0), backoff(0, config.poll_interval_ms)))
    }

    fn poll(call: &Call<jobkit::Config>, current: String) -> Result<Outcome, Failure> {
        let (name, polls) = parse_handle(&current);
        let Some(verdict) = verdict(name)? else {
            return final_error("JOB_VANISHED", format!("the Job {name} disappeared before it finished"), false);
        };
        match verdict {
            Verdict::Running => {
                Ok(Outcome::poll_after(handle(name, polls + 1), backoff(polls + 1, call.config.poll_interval_ms)))
            }
            Verdict::Failed { code, message, function_error } => final_error(&code, message, function_error),
            Verdict::Succeeded(Some(Envelope::Output(json))) => {
                Ok(Outcome::output("application/json", Payload::from_bytes(json)))
            }
            Verdict::Succeeded(Some(Envelope::TooLarge { size, sha256 })) => final_error(
                "OUTPUT_UNAVAILABLE",
                format!(
                    "the Job {name} succeeded but its output ({size} bytes, sha256 {sha256}) is too large for the termination message and no callback delivered it"
                ),
                false,
            ),
            Verdict::Succeeded(Some(Envelope::Error { code, message, .. })) => final_error(&code, message, true),
            Verdict::Succeeded(None) => final_error(
                "RESULT_UNAVAILABLE",
                format!("the Job {name} completed without a result envelope in its termination message"),
                false,
            ),
        }
    }

    fn release(_inv: &Invocation, current: String, _reason: ReleaseReason) {
        let (name, _) = parse_handle(&current);
        if let Err(e) = kubernetes::delete_job(name) {
            log::warn(&format!("cannot delete job {name}: {}", e.message));
        }
    }
}

nanofaas_plugin_sdk::export_dispatcher!(JobPoll);
