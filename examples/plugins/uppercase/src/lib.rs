//! `uppercase`: an example dispatcher plugin, built outside the host (see docs/plugins.md).
//!
//! Input: a JSON string. Output: the string upper-cased, with an optional `prefix` from the
//! function's `dispatcherConfig`. Any other input is the function's own error.

// Generates the bindings from the contract. Outside this repository, copy nanofaas's `wit/`
// folder next to Cargo.toml and write `path: "wit"`.
wit_bindgen::generate!({ world: "dispatcher", path: "../../../wit" });

use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::log::{Level, log};
use nanofaas::dispatcher::types::{
    Failure, FunctionSpec, Invocation, Outcome, Output, Part, Payload, ReleaseReason,
};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    prefix: String,
}

struct Uppercase;

impl Guest for Uppercase {
    /// Called once at registration: refuse a bad config here, not at every call.
    fn validate(spec: FunctionSpec) -> Result<(), String> {
        serde_json::from_str::<Config>(&spec.config).map(|_| ()).map_err(|e| format!("bad dispatcherConfig: {e}"))
    }

    fn dispatch(inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        let config: Config = serde_json::from_str(&inv.function.config).unwrap_or_default();
        // Payloads live in the host; read them only when the plugin needs the bytes.
        let bytes = input.read(0, input.size() as u32);
        let Ok(text) = serde_json::from_slice::<String>(&bytes) else {
            return Ok(Outcome::Done(Err(Failure {
                code: "FUNCTION_ERROR".into(),
                message: "uppercase expects a JSON string as input".into(),
                retryable: false,
            })));
        };
        log(Level::Info, &format!("upper-casing {} characters", text.chars().count()));
        let output = serde_json::to_vec(&format!("{}{}", config.prefix, text.to_uppercase())).expect("a string serializes");
        let body = Payload::new(&[Part::Bytes(output)]);
        Ok(Outcome::Done(Ok(Output { content_type: "application/json".into(), body })))
    }

    /// Only plugins that return `pending` are ever polled.
    fn poll(_inv: Invocation, handle: String) -> Result<Outcome, Failure> {
        Err(Failure { code: "UNKNOWN_HANDLE".into(), message: handle, retryable: false })
    }

    fn release(_inv: Invocation, _handle: String, _reason: ReleaseReason) {}
}

export!(Uppercase);
