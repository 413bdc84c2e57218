//! The `echo` dispatcher plugin: every execution finishes at once with its input as output.
//!
//! It is the smallest complete plugin and the template for plugin authors (see `docs/plugins.md`):
//! it exports the `strategy` interface, uses one capability (`log`) and hands the input payload
//! back without copying its bytes into guest memory.

wit_bindgen::generate!({ world: "dispatcher", path: "../../wit" });

use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::log::{Level, log};
use nanofaas::dispatcher::types::{
    Failure, FunctionSpec, Invocation, Outcome, Output, Part, Payload, ReleaseReason,
};

struct Echo;

impl Guest for Echo {
    fn validate(spec: FunctionSpec) -> Result<(), String> {
        // `echo` takes no configuration; anything else is a mistake worth reporting.
        match spec.config.trim() {
            "" | "{}" => Ok(()),
            other => Err(format!("echo takes no dispatcherConfig, got {other}")),
        }
    }

    fn dispatch(inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        log(Level::Debug, &format!("echo {} bytes", input.size()));
        let body = Payload::new(&[Part::Payload(input)]);
        Ok(Outcome::Done(Ok(Output { content_type: inv.content_type, body })))
    }

    fn poll(_inv: Invocation, handle: String) -> Result<Outcome, Failure> {
        // `echo` never returns `pending`, so the host never has a handle to poll.
        Err(Failure {
            code: "UNKNOWN_HANDLE".into(),
            message: format!("echo has no pending work named {handle}"),
            retryable: false,
        })
    }

    fn release(_inv: Invocation, _handle: String, _reason: ReleaseReason) {}
}

export!(Echo);
