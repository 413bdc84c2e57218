//! Write nanofaas dispatcher plugins in Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2` that implements [`Dispatcher`] and
//! names it in [`export_dispatcher!`]:
//!
//! ```ignore
//! use nanofaas_plugin_sdk::prelude::*;
//!
//! struct Echo;
//!
//! impl Dispatcher for Echo {
//!     type Config = NoConfig;
//!
//!     fn dispatch(call: &Call<NoConfig>, input: &Payload) -> Result<Outcome, Failure> {
//!         Ok(Outcome::output(&call.content_type, input.share()))
//!     }
//! }
//!
//! nanofaas_plugin_sdk::export_dispatcher!(Echo);
//! ```
//!
//! What the SDK does for the plugin:
//! - the bindings of the contract (`wit/dispatcher.wit`) are generated once, here, and
//!   re-exported ([`bindings`], and the common types at the crate root);
//! - the function's `dispatcherConfig` is parsed into the plugin's own serde type once per call,
//!   before the plugin's code runs: at registration a config that does not parse is refused with
//!   serde's message (naming the field), and in later calls it is a `BAD_CONFIG` failure;
//! - [`Failure`] and [`Outcome`] have constructors for every result the contract allows, so a
//!   function's error, a platform failure and pending work each read as what they are;
//! - [`Payload`] reads whole (`bytes`, `text`, `json`) and builds from bytes or JSON values;
//!   the STDIO envelope of an invocation is [`envelope`];
//! - [`http`] has the request pattern: `send` starts a request and returns the pending outcome,
//!   `poll` takes the response when the host wakes the execution;
//! - `poll` and `release` have defaults for plugins that finish in `dispatch`.
//!
//! The rules the host enforces on every call are in `docs/plugins.md`.

// The generated bindings name their runtime through this crate, so a plugin depends on the SDK
// only (not on wit-bindgen).
extern crate self as nanofaas_plugin_sdk;

pub mod http;
mod payload;

/// The contract's bindings, generated from `wit/dispatcher.wit`.
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "dispatcher",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "nanofaas_plugin_sdk::bindings",
        runtime_path: "nanofaas_plugin_sdk::__private::wit_bindgen::rt",
    });
}

pub use bindings::nanofaas::dispatcher::types::{
    Failure, FunctionSpec, Invocation, Outcome, Output, Part, Payload, Pending, ReleaseReason, Resources,
};
pub use bindings::nanofaas::dispatcher::{kubernetes, process};
/// The function-side contract shared with the host and the runtime (environment variable
/// names, the STDIO envelope, the termination message).
pub use nanofaas_contract as contract;
pub use payload::envelope;

/// What a plugin module usually imports.
pub mod prelude {
    pub use crate::log;
    pub use crate::{
        Call, Dispatcher, Failure, FunctionSpec, Invocation, NoConfig, Outcome, Output, Part, Payload, ReleaseReason,
    };
}

use serde::de::DeserializeOwned;

/// A dispatcher plugin. Only `dispatch` is required; the other functions have the defaults a
/// plugin that finishes in `dispatch` wants.
///
/// No function may wait: work that takes function-time is started through a capability
/// ([`process`], [`http`], [`kubernetes`]) and answered with a pending outcome; the host calls
/// `poll` when it changes or when the pending outcome's `poll-after` passes.
pub trait Dispatcher {
    /// The plugin's `dispatcherConfig`, parsed with serde (`{}` when the function gave none).
    /// [`NoConfig`] accepts only an empty object.
    type Config: DeserializeOwned;

    /// Capabilities the plugin needs (`"process"`, `"http"`, `"kubernetes"`), reported in its
    /// metadata. The host also reads them from the component's imports; declaring them says so
    /// to the operator even for a capability used only on some paths. The operator grants them.
    const CAPABILITIES: &'static [&'static str] = &[];

    /// Whether the plugin keeps something per function (a warm Deployment): then the host
    /// calls [`apply`](Dispatcher::apply) and [`remove`](Dispatcher::remove) as its functions
    /// change. Off by default: the host never calls them.
    const LIFECYCLE: bool = false;

    /// At registration, after the config parsed: refuse the function with a message for the user
    /// (a 400 `DISPATCHER_REFUSED`). The default accepts every function.
    fn validate(spec: &FunctionSpec, config: &Self::Config) -> Result<(), String> {
        let _ = (spec, config);
        Ok(())
    }

    /// Starts one attempt. `Err` is a platform failure (retried when retryable); the function's
    /// own error is `Ok(Outcome::function_error(..))`.
    fn dispatch(call: &Call<Self::Config>, input: &Payload) -> Result<Outcome, Failure>;

    /// Checks on pending work named `handle`. The default, for plugins that never answer
    /// pending, fails the call.
    fn poll(call: &Call<Self::Config>, handle: String) -> Result<Outcome, Failure> {
        let _ = call;
        Err(Failure::new("UNKNOWN_HANDLE", format!("this plugin has no pending work named `{handle}`")))
    }

    /// Make what the plugin keeps for the function `spec` match it: after the function is
    /// registered or changed, and for every function at the host's start (with `LIFECYCLE`).
    /// Must be idempotent; a retryable failure is retried with backoff. No execution is running:
    /// capabilities that start an execution's work refuse.
    fn apply(spec: &FunctionSpec, config: &Self::Config) -> Result<(), Failure> {
        let _ = (spec, config);
        Ok(())
    }

    /// Remove what the plugin keeps for the function `name` (deleted, or moved to another
    /// plugin); idempotent, like `apply`.
    fn remove(name: &str) -> Result<(), Failure> {
        let _ = name;
        Ok(())
    }

    /// The host no longer needs the work named `handle` (called once per pending handle): stop
    /// it, clean up. It gets the invocation, not the config, so that cleaning up never depends
    /// on a config parsing. The default does nothing.
    fn release(inv: &Invocation, handle: String, reason: ReleaseReason) {
        let _ = (inv, handle, reason);
    }
}

/// One call of an attempt: the invocation (also reachable through `Deref`) and the config.
pub struct Call<C> {
    pub inv: Invocation,
    pub config: C,
}

impl<C> std::ops::Deref for Call<C> {
    type Target = Invocation;

    fn deref(&self) -> &Invocation {
        &self.inv
    }
}

impl<C> Call<C> {
    /// The function this call is for.
    pub fn function(&self) -> &FunctionSpec {
        &self.inv.function
    }
}

/// The config of a plugin that takes none: only `{}` (or nothing) is accepted.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Parses a `dispatcherConfig` (JSON object text; empty means `{}`) into `C`. The message
/// names the offending field, as serde reports it.
pub fn parse_config<C: DeserializeOwned>(text: &str) -> Result<C, String> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| format!("invalid dispatcherConfig: {e}"))
}

impl Failure {
    /// A final failure: never retried.
    pub fn new(code: &str, message: impl Into<String>) -> Failure {
        debug_assert!(nanofaas_contract::results::valid_code(code), "failure codes are UPPER_SNAKE_CASE: {code}");
        Failure { code: code.to_string(), message: message.into(), retryable: false }
    }

    /// A failure that trying again could cure (the host retries while attempts and the
    /// deadline remain). Only meaningful as a platform failure (`Err`).
    pub fn retryable(code: &str, message: impl Into<String>) -> Failure {
        Failure { retryable: true, ..Failure::new(code, message) }
    }

    /// The config no longer parses (it did at registration: the plugin changed since).
    pub fn bad_config(message: impl Into<String>) -> Failure {
        Failure::new("BAD_CONFIG", message)
    }
}

impl Outcome {
    /// Finished with `body` as the output.
    pub fn output(content_type: &str, body: Payload) -> Outcome {
        Outcome::Done(Ok(Output { content_type: content_type.to_string(), body }))
    }

    /// Finished with `value` serialized as the JSON output.
    pub fn json(value: &impl serde::Serialize) -> Outcome {
        Outcome::output("application/json", Payload::from_json(value))
    }

    /// Finished with the function's own error (final; a 500 `code` to the caller).
    pub fn function_error(code: &str, message: impl Into<String>) -> Outcome {
        Outcome::Done(Err(Failure::new(code, message)))
    }

    /// Work named `handle` was started: polled only when the host sees it change (a process
    /// exits, a response arrives, a watched Job changes).
    pub fn wait(handle: impl Into<String>) -> Outcome {
        let handle = handle.into();
        debug_assert!(nanofaas_contract::results::valid_handle(&handle), "handles are 1 to 253 bytes");
        Outcome::Pending(Pending { handle, poll_after_ms: None })
    }

    /// Work named `handle` was started: polled after `ms` milliseconds, or sooner on a change.
    pub fn poll_after(handle: impl Into<String>, ms: u32) -> Outcome {
        let handle = handle.into();
        debug_assert!(nanofaas_contract::results::valid_handle(&handle), "handles are 1 to 253 bytes");
        Outcome::Pending(Pending { handle, poll_after_ms: Some(ms) })
    }
}

/// Log lines, attributed by the host to the plugin and the execution (100 per call by default;
/// past the quota the call fails).
pub mod log {
    use crate::bindings::nanofaas::dispatcher::log::{Level, log};

    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// [`export_dispatcher!`]'s glue: the exported `strategy` functions, with the config parsed.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use super::*;

    pub fn validate<D: Dispatcher>(spec: FunctionSpec) -> Result<(), String> {
        let config = parse_config::<D::Config>(&spec.config)?;
        D::validate(&spec, &config)
    }

    fn call<D: Dispatcher>(inv: Invocation) -> Result<Call<D::Config>, Failure> {
        let config = parse_config::<D::Config>(&inv.function.config).map_err(Failure::bad_config)?;
        Ok(Call { inv, config })
    }

    pub fn dispatch<D: Dispatcher>(inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        D::dispatch(&call::<D>(inv)?, input)
    }

    pub fn poll<D: Dispatcher>(inv: Invocation, handle: String) -> Result<Outcome, Failure> {
        D::poll(&call::<D>(inv)?, handle)
    }

    pub fn release<D: Dispatcher>(inv: Invocation, handle: String, reason: ReleaseReason) {
        D::release(&inv, handle, reason)
    }

    pub use crate::bindings::exports::nanofaas::dispatcher::metadata::PluginInfo as Info;

    /// The plugin's metadata: its package's name and version (`env!` in the plugin crate).
    pub fn info<D: Dispatcher>(name: &str, version: &str) -> Info {
        Info {
            name: name.to_string(),
            version: version.to_string(),
            contract: nanofaas_contract::CONTRACT_VERSION.to_string(),
            capabilities: D::CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            implements: if D::LIFECYCLE { vec!["lifecycle".to_string()] } else { Vec::new() },
        }
    }

    pub fn apply<D: Dispatcher>(spec: FunctionSpec) -> Result<(), Failure> {
        let config = parse_config::<D::Config>(&spec.config).map_err(Failure::bad_config)?;
        D::apply(&spec, &config)
    }

    pub fn remove<D: Dispatcher>(name: String) -> Result<(), Failure> {
        D::remove(&name)
    }
}

/// Exports a [`Dispatcher`] as the plugin's `strategy` (once per plugin crate).
#[macro_export]
macro_rules! export_dispatcher {
    ($plugin:ty) => {
        const _: () = {
            struct NanofaasStrategy;

            impl $crate::bindings::exports::nanofaas::dispatcher::strategy::Guest for NanofaasStrategy {
                fn validate(spec: $crate::FunctionSpec) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::validate::<$plugin>(spec)
                }
                fn dispatch(
                    inv: $crate::Invocation,
                    input: &$crate::Payload,
                ) -> ::core::result::Result<$crate::Outcome, $crate::Failure> {
                    $crate::__private::dispatch::<$plugin>(inv, input)
                }
                fn poll(
                    inv: $crate::Invocation,
                    handle: ::std::string::String,
                ) -> ::core::result::Result<$crate::Outcome, $crate::Failure> {
                    $crate::__private::poll::<$plugin>(inv, handle)
                }
                fn release(inv: $crate::Invocation, handle: ::std::string::String, reason: $crate::ReleaseReason) {
                    $crate::__private::release::<$plugin>(inv, handle, reason)
                }
            }

            impl $crate::bindings::exports::nanofaas::dispatcher::lifecycle::Guest for NanofaasStrategy {
                fn apply(spec: $crate::FunctionSpec) -> ::core::result::Result<(), $crate::Failure> {
                    $crate::__private::apply::<$plugin>(spec)
                }
                fn remove(name: ::std::string::String) -> ::core::result::Result<(), $crate::Failure> {
                    $crate::__private::remove::<$plugin>(name)
                }
            }

            impl $crate::bindings::exports::nanofaas::dispatcher::metadata::Guest for NanofaasStrategy {
                fn info() -> $crate::__private::Info {
                    $crate::__private::info::<$plugin>(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
                }
            }

    $crate::bindings::__export_world!(NanofaasStrategy with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        prefix: String,
        poll_ms: Option<u32>,
    }

    #[test]
    fn configs_parse_into_the_plugins_type_and_errors_name_the_field() {
        assert_eq!(parse_config::<Config>(""), Ok(Config { prefix: String::new(), poll_ms: None }));
        assert_eq!(parse_config::<Config>(r#"{"pollMs": 5}"#), Ok(Config { prefix: String::new(), poll_ms: Some(5) }));
        let e = parse_config::<Config>(r#"{"prefx": "> "}"#).unwrap_err();
        assert!(e.contains("unknown field `prefx`") && e.contains("prefix"), "{e}");
        let e = parse_config::<Config>(r#"{"pollMs": "soon"}"#).unwrap_err();
        assert!(e.starts_with("invalid dispatcherConfig") && e.contains("u32"), "{e}");
        parse_config::<NoConfig>("{}").unwrap();
        parse_config::<NoConfig>("  ").unwrap();
        let e = parse_config::<NoConfig>(r#"{"a": 1}"#).unwrap_err();
        assert!(e.contains("unknown field `a`"), "{e}");
    }

    #[test]
    fn failures_and_outcomes_say_what_they_are() {
        let f = Failure::retryable("ENDPOINT_DOWN", "refused");
        assert_eq!((f.code.as_str(), f.message.as_str(), f.retryable), ("ENDPOINT_DOWN", "refused", true));
        assert!(!Failure::new("X", "m").retryable);
        assert_eq!(Failure::bad_config("m").code, "BAD_CONFIG");
        match Outcome::function_error("FUNCTION_ERROR", "no") {
            Outcome::Done(Err(f)) => assert_eq!((f.code.as_str(), f.retryable), ("FUNCTION_ERROR", false)),
            _ => panic!("a function's error is done(err)"),
        }
        match (Outcome::wait("h1"), Outcome::poll_after("h2", 250)) {
            (Outcome::Pending(a), Outcome::Pending(b)) => {
                assert_eq!((a.handle.as_str(), a.poll_after_ms), ("h1", None));
                assert_eq!((b.handle.as_str(), b.poll_after_ms), ("h2", Some(250)));
            }
            _ => panic!("pending outcomes"),
        }
    }
}
