//! The `k8s-job` dispatcher plugin: one Kubernetes Job per invocation, result by callback.
//!
//! The Job runs the function under `nanofaas-runtime`, which POSTs the result to the host's
//! authenticated callback — that is what normally completes the execution (the host handles the
//! callback; this plugin is not called for it). The plugin keeps a slow safety poll on the Job's
//! status, served from the host's watch cache and also triggered by every change the watch sees,
//! so a failed Job or a vanished Job ends the execution with an error before the deadline
//! instead of waiting for a callback that cannot come. `release` deletes the Job.
//!
//! A Job that completes while no callback arrived ends as `CALLBACK_LOST` (the runtime could
//! not reach the host); the `job-poll` dispatcher recovers such results from the pod.

use jobkit::Verdict;
use jobkit::guest::{final_error, verdict};
use nanofaas_plugin_sdk::kubernetes;
use nanofaas_plugin_sdk::prelude::*;

struct K8sJob;

impl Dispatcher for K8sJob {
    type Config = jobkit::Config;
    const CAPABILITIES: &'static [&'static str] = &["kubernetes"];

    fn validate(spec: &FunctionSpec, config: &jobkit::Config) -> Result<(), String> {
        jobkit::guest::validate(spec, config)
    }

    fn dispatch(call: &Call<jobkit::Config>, input: &Payload) -> Result<Outcome, Failure> {
        let name = jobkit::guest::create_job(call, input, &call.config)?;
        log::debug(&format!("job {name} created; waiting for its callback"));
        Ok(Outcome::poll_after(name, call.config.poll_interval_ms))
    }

    fn poll(call: &Call<jobkit::Config>, handle: String) -> Result<Outcome, Failure> {
        match verdict(&handle)? {
            None => {
                final_error("JOB_VANISHED", format!("the Job {handle} disappeared before the function reported"), false)
            }
            Some(Verdict::Running) => Ok(Outcome::poll_after(handle, call.config.poll_interval_ms)),
            Some(Verdict::Failed { code, message, function_error }) => final_error(&code, message, function_error),
            Some(Verdict::Succeeded(_)) => final_error(
                "CALLBACK_LOST",
                format!(
                    "the Job {handle} completed but its callback never reached the host (the job-poll dispatcher reads results from the pod)"
                ),
                false,
            ),
        }
    }

    fn release(_inv: &Invocation, handle: String, _reason: ReleaseReason) {
        if let Err(e) = kubernetes::delete_job(&handle) {
            log::warn(&format!("cannot delete job {handle}: {}", e.message));
        }
    }
}

nanofaas_plugin_sdk::export_dispatcher!(K8sJob);
