//! `testkit`: a dispatcher plugin whose behaviour is chosen by the function's
//! `dispatcherConfig`, so the tests can drive every path of the host, faults included.
//!
//! `{"behavior": …}`:
//! - `echo` (default): done at once with the input.
//! - `pending`: returns pending work (`pollAfterMs`, default none); each poll returns pending
//!   again with the next handle (`h1`, `h2`, …) until `completeAfterPolls` polls, then the input.
//! - `fail`: a platform failure (`code`, `retryable`) on attempts up to `failAttempts`
//!   (default: all), then the input.
//! - `function-error`: the function's own error.
//! - `trap`, `loop`, `oom`, `recurse`: a panic, an endless loop, unbounded allocation,
//!   unbounded recursion.
//! - `bad-utf8`, `empty-handle`, `bad-code`: results the contract does not allow.
//! - `log-spam`, `payload-bomb`: going past the host's quotas.
//! - `http`: GET `url` through the host's `http` capability; the output is `{"status": n}`.
//! - `instance`: pending work (`pollAfterMs`); the first poll answers `{"callsOnInstance": n}`,
//!   the number of calls this instance has served, so a test sees which calls shared one.
//!
//! `validate` refuses when `rejectValidate` is set and traps when `trapValidate` is true.
//!
//! `lifecycle.apply` logs `applied <name> <config>` and fails when `applyFails` is set
//! (`final` or `retryable`); `remove` logs `removed <name>`.

wit_bindgen::generate!({ world: "dispatcher", path: "../../../wit" });

use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::log::{Level, log};
use nanofaas::dispatcher::types::{
    Failure, FunctionSpec, Invocation, Outcome, Output, Part, Payload, Pending, ReleaseReason,
};
use serde::Deserialize;
use std::sync::atomic::{AtomicU32, Ordering};

/// Calls served by this instance (`instance` behaviour).
static CALLS: AtomicU32 = AtomicU32::new(0);

fn count_call() -> u32 {
    CALLS.fetch_add(1, Ordering::Relaxed) + 1
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Config {
    behavior: Option<String>,
    poll_after_ms: Option<u32>,
    complete_after_polls: Option<u32>,
    code: Option<String>,
    retryable: bool,
    fail_attempts: Option<u32>,
    reject_validate: Option<String>,
    trap_validate: bool,
    url: Option<String>,
    /// Log the callback token (so a test can call back as a remote runner would).
    log_token: bool,
    /// `lifecycle.apply` fails: `final` or `retryable`.
    apply_fails: Option<String>,
}

fn config(json: &str) -> Config {
    serde_json::from_str(json).unwrap_or_default()
}

fn echo(inv: &Invocation, input: &Payload) -> Outcome {
    let body = Payload::new(&[Part::Payload(input)]);
    Outcome::Done(Ok(Output { content_type: inv.content_type.clone(), body }))
}

fn done_json(text: &str) -> Outcome {
    let body = Payload::new(&[Part::Bytes(text.as_bytes().to_vec())]);
    Outcome::Done(Ok(Output { content_type: "application/json".into(), body }))
}

struct Testkit;

impl Guest for Testkit {
    fn validate(spec: FunctionSpec) -> Result<(), String> {
        let c = config(&spec.config);
        if c.trap_validate {
            panic!("validate trapped on purpose");
        }
        match c.reject_validate {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn dispatch(inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        let c = config(&inv.function.config);
        match c.behavior.as_deref().unwrap_or("echo") {
            "echo" => Ok(echo(&inv, input)),
            "instance" => {
                count_call();
                Ok(Outcome::Pending(Pending { handle: "i".into(), poll_after_ms: c.poll_after_ms }))
            }
            "pending" => {
                if c.log_token {
                    log(Level::Info, &format!("callback-token {} {}", inv.execution_id, inv.callback_token));
                }
                Ok(Outcome::Pending(Pending { handle: "h0".into(), poll_after_ms: c.poll_after_ms }))
            }
            "fail" => {
                if inv.attempt <= c.fail_attempts.unwrap_or(u32::MAX) {
                    Err(Failure {
                        code: c.code.unwrap_or_else(|| "ENDPOINT_UNAVAILABLE".into()),
                        message: format!("attempt {} failed on purpose", inv.attempt),
                        retryable: c.retryable,
                    })
                } else {
                    Ok(echo(&inv, input))
                }
            }
            "function-error" => Ok(Outcome::Done(Err(Failure {
                code: "FUNCTION_ERROR".into(),
                message: "the function failed on purpose".into(),
                retryable: false,
            }))),
            "trap" => panic!("dispatch trapped on purpose"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => Ok(done_json(&recurse(std::hint::black_box(1)).to_string())),
            "bad-utf8" => {
                let bytes = vec![b'x', 0xff, 0xfe];
                // On purpose: the host must refuse a string that is not UTF-8 when lifting it.
                #[allow(unsafe_code)]
                let content_type = unsafe { String::from_utf8_unchecked(bytes) };
                let body = Payload::new(&[Part::Bytes(b"1".to_vec())]);
                Ok(Outcome::Done(Ok(Output { content_type, body })))
            }
            "empty-handle" => Ok(Outcome::Pending(Pending { handle: String::new(), poll_after_ms: None })),
            "bad-code" => Err(Failure { code: "not a code".into(), message: "x".into(), retryable: false }),
            "log-spam" => {
                for i in 0..10_000 {
                    log(Level::Info, &format!("line {i}"));
                }
                Ok(echo(&inv, input))
            }
            "payload-bomb" => {
                let mut p = Payload::new(&[Part::Bytes(vec![7u8; 1 << 20])]);
                loop {
                    p = Payload::new(&[Part::Payload(&p), Part::Payload(&p)]);
                }
            }
            "http" => {
                let request = nanofaas::dispatcher::http::Request {
                    method: "GET".into(),
                    url: c.url.unwrap_or_default(),
                    headers: Vec::new(),
                    timeout_ms: None,
                };
                let empty = Payload::new(&[]);
                match nanofaas::dispatcher::http::start(&request, &empty) {
                    Ok(handle) => Ok(Outcome::Pending(Pending { handle, poll_after_ms: None })),
                    Err(e) => Err(Failure { code: "HTTP_REFUSED".into(), message: format!("{e:?}"), retryable: false }),
                }
            }
            other => Err(Failure { code: "UNKNOWN_BEHAVIOR".into(), message: other.into(), retryable: false }),
        }
    }

    fn poll(inv: Invocation, handle: String) -> Result<Outcome, Failure> {
        let c = config(&inv.function.config);
        if c.behavior.as_deref() == Some("http") {
            return match nanofaas::dispatcher::http::take_response(&handle) {
                None => Ok(Outcome::Pending(Pending { handle, poll_after_ms: None })),
                Some(Ok(r)) => Ok(done_json(&format!("{{\"status\":{}}}", r.status))),
                Some(Err(e)) => Err(Failure { code: "HTTP_FAILED".into(), message: format!("{e:?}"), retryable: false }),
            };
        }
        if c.behavior.as_deref() == Some("instance") {
            return Ok(done_json(&format!("{{\"callsOnInstance\":{}}}", count_call())));
        }
        let polls: u32 = handle.trim_start_matches('h').parse().unwrap_or(0) + 1;
        log(Level::Debug, &format!("poll {polls} of {handle}"));
        match c.complete_after_polls {
            Some(n) if polls >= n => Ok(done_json(&format!("{{\"polls\":{polls}}}"))),
            _ => Ok(Outcome::Pending(Pending { handle: format!("h{polls}"), poll_after_ms: c.poll_after_ms })),
        }
    }

    fn release(_inv: Invocation, handle: String, reason: ReleaseReason) {
        log(Level::Info, &format!("released {handle}: {reason:?} (call {} on this instance)", count_call()));
    }
}

fn recurse(n: u64) -> u64 {
    if n == u64::MAX {
        return 0;
    }
    let buf = std::hint::black_box([n; 64]);
    recurse(buf[3] + 1) + buf[7]
}

impl exports::nanofaas::dispatcher::lifecycle::Guest for Testkit {
    fn apply(spec: FunctionSpec) -> Result<(), Failure> {
        log(Level::Info, &format!("applied {} {}", spec.name, spec.config));
        match config(&spec.config).apply_fails.as_deref() {
            None => Ok(()),
            Some(how) => Err(Failure {
                code: "APPLY_FAILED".into(),
                message: format!("apply of {} fails on purpose", spec.name),
                retryable: how == "retryable",
            }),
        }
    }

    fn remove(name: String) -> Result<(), Failure> {
        log(Level::Info, &format!("removed {name}"));
        Ok(())
    }
}

impl exports::nanofaas::dispatcher::metadata::Guest for Testkit {
    fn info() -> exports::nanofaas::dispatcher::metadata::PluginInfo {
        exports::nanofaas::dispatcher::metadata::PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            contract: "0.1.2".into(),
            capabilities: vec!["http".into()],
            implements: vec!["lifecycle".into()],
        }
    }
}

export!(Testkit);
