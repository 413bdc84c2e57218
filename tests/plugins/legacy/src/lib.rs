//! `legacy`: a plugin as it was written for `nanofaas:dispatcher@0.1.0`, against a frozen copy
//! of that contract (`wit/`), with no metadata export. The host must keep serving it: it answers
//! `{"legacy": <input size>}` and logs one line (an import of the old version).

wit_bindgen::generate!({ world: "dispatcher", path: "wit" });

use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::log::{Level, log};
use nanofaas::dispatcher::types::{Failure, FunctionSpec, Invocation, Outcome, Output, Part, Payload, ReleaseReason};

struct Legacy;

impl Guest for Legacy {
    fn validate(_spec: FunctionSpec) -> Result<(), String> {
        Ok(())
    }

    fn dispatch(_inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        log(Level::Info, "legacy plugin dispatching");
        let body = format!("{{\"legacy\":{}}}", input.size());
        let body = Payload::new(&[Part::Bytes(body.into_bytes())]);
        Ok(Outcome::Done(Ok(Output { content_type: "application/json".into(), body })))
    }

    fn poll(_inv: Invocation, handle: String) -> Result<Outcome, Failure> {
        Err(Failure { code: "UNKNOWN_HANDLE".into(), message: format!("no work named {handle}"), retryable: false })
    }

    fn release(_inv: Invocation, _handle: String, _reason: ReleaseReason) {}
}

export!(Legacy);
