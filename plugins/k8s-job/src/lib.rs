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

wit_bindgen::generate!({ world: "dispatcher", path: "../../wit" });

use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::kubernetes;
use nanofaas::dispatcher::log::{Level, log};
use nanofaas::dispatcher::types::{Pending, ReleaseReason};

include!("../../../jobkit/src/guest.rs");

struct K8sJob;

impl Guest for K8sJob {
    fn validate(spec: FunctionSpec) -> Result<(), String> {
        validate_spec(&spec)
    }

    fn dispatch(inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        let config = config_of(&inv)?;
        let name = create_job(&inv, input, &config)?;
        log(Level::Debug, &format!("job {name} created; waiting for its callback"));
        Ok(Outcome::Pending(Pending { handle: name, poll_after_ms: Some(config.poll_interval_ms) }))
    }

    fn poll(inv: Invocation, handle: String) -> Result<Outcome, Failure> {
        let config = jobkit::Config::parse(&inv.function.config).unwrap_or_default();
        let pending = Outcome::Pending(Pending { handle: handle.clone(), poll_after_ms: Some(config.poll_interval_ms) });
        let Some(status) = kubernetes::job_status(&handle).map_err(api_failure)? else {
            return final_error("JOB_VANISHED".into(), format!("the Job {handle} disappeared before the function reported"), false);
        };
        match jobkit::verdict(&state(status)) {
            jobkit::Verdict::Running => Ok(pending),
            jobkit::Verdict::Failed { code, message, function_error } => final_error(code, message, function_error),
            jobkit::Verdict::Succeeded(_) => final_error(
                "CALLBACK_LOST".into(),
                format!("the Job {handle} completed but its callback never reached the host (the job-poll dispatcher reads results from the pod)"),
                false,
            ),
        }
    }

    fn release(_inv: Invocation, handle: String, _reason: ReleaseReason) {
        if let Err(e) = kubernetes::delete_job(&handle) {
            log(Level::Warn, &format!("cannot delete job {handle}: {}", e.message));
        }
    }
}

export!(K8sJob);
