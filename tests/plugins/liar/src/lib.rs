//! `liar`: a plugin of the current contract whose metadata names a capability that does not
//! exist and an optional interface it does not export (`teleporter`); the host must refuse it, naming both.

wit_bindgen::generate!({ world: "dispatcher", path: "../../../wit" });

use exports::nanofaas::dispatcher::metadata::PluginInfo as Info;
use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::types::{Failure, FunctionSpec, Invocation, Outcome, Payload, ReleaseReason};

struct Liar;

fn refuse() -> Failure {
    Failure { code: "NEVER_LOADED".into(), message: "this plugin is refused at load".into(), retryable: false }
}

impl Guest for Liar {
    fn validate(_spec: FunctionSpec) -> Result<(), String> {
        Ok(())
    }
    fn dispatch(_inv: Invocation, _input: &Payload) -> Result<Outcome, Failure> {
        Err(refuse())
    }
    fn poll(_inv: Invocation, _handle: String) -> Result<Outcome, Failure> {
        Err(refuse())
    }
    fn release(_inv: Invocation, _handle: String, _reason: ReleaseReason) {}
}

impl exports::nanofaas::dispatcher::metadata::Guest for Liar {
    fn info() -> Info {
        Info {
            name: "liar".into(),
            version: "1.0.0".into(),
            contract: "0.1.2".into(),
            capabilities: vec!["teleport".into()],
            implements: vec!["teleporter".into()],
        }
    }
}

impl exports::nanofaas::dispatcher::lifecycle::Guest for Liar {
    fn apply(_spec: FunctionSpec) -> Result<(), Failure> {
        Ok(())
    }
    fn remove(_name: String) -> Result<(), Failure> {
        Ok(())
    }
}

export!(Liar);
