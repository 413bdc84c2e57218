//! `spinner`: a plugin of the current contract whose metadata call spins forever; loading it
//! must end with a refusal at its CPU budget, not hang the host.

wit_bindgen::generate!({ world: "dispatcher", path: "../../../wit" });

use exports::nanofaas::dispatcher::metadata::PluginInfo;
use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::types::{Failure, FunctionSpec, Invocation, Outcome, Payload, ReleaseReason};

struct Spinner;

fn refuse() -> Failure {
    Failure { code: "NEVER_LOADED".into(), message: "this plugin is refused at load".into(), retryable: false }
}

impl Guest for Spinner {
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

impl exports::nanofaas::dispatcher::metadata::Guest for Spinner {
    fn info() -> PluginInfo {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

impl exports::nanofaas::dispatcher::lifecycle::Guest for Spinner {
    fn apply(_spec: FunctionSpec) -> Result<(), Failure> {
        Ok(())
    }
    fn remove(_name: String) -> Result<(), Failure> {
        Ok(())
    }
}

export!(Spinner);
