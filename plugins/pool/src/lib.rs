//! The `pool` dispatcher plugin: POSTs each invocation to a warm HTTP endpoint.
//!
//! The endpoint is the function's `endpointUrl` (or `dispatcherConfig.url`), which must be an
//! allow-listed destination — checked at registration and, by the host, at every call. The body
//! is nanofaas v1's `{"input": …, "metadata": {…}}` (or the raw input with `"request": "raw"`),
//! with `X-Execution-Id`, `X-Trace-Id`, `X-Dispatch-Attempt` and an `Idempotency-Key` that stays
//! the same on every attempt (the caller's key, else the execution id), so the endpoint can
//! deduplicate retries. The request runs in the host, bounded by the remaining deadline, over
//! reused connections; the plugin returns `pending` and is polled when the response is complete.
//!
//! Results: 2xx → output (content type from the response; JSON by default); 4xx → the function's
//! error (`FUNCTION_ERROR`); 5xx, refused or reset connections and timeouts → retryable platform
//! errors (`ENDPOINT_ERROR`, `ENDPOINT_UNAVAILABLE`, `ENDPOINT_TIMEOUT`) with the status and the
//! start of the body.
//! `dispatcherConfig`: `{"url": "…", "request": "envelope" | "raw", "timeoutMs": n, "headers": {…}}`.

wit_bindgen::generate!({ world: "dispatcher", path: "../../wit" });

use std::collections::BTreeMap;

use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::http::{self, HttpError, Request};
use nanofaas::dispatcher::types::{
    Failure, FunctionSpec, Invocation, Outcome, Output, Part, Payload, Pending, ReleaseReason,
};
use serde::Deserialize;

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Body {
    #[default]
    Envelope,
    Raw,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    url: Option<String>,
    #[serde(default)]
    request: Body,
    timeout_ms: Option<u32>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn config(spec: &FunctionSpec) -> Result<(Config, String), String> {
    let config: Config = serde_json::from_str(&spec.config).map_err(|e| format!("invalid dispatcherConfig: {e}"))?;
    let url = config
        .url
        .clone()
        .or_else(|| spec.endpoint_url.clone())
        .ok_or("the pool dispatcher needs an `endpointUrl` (or dispatcherConfig.url)")?;
    if config.timeout_ms == Some(0) {
        return Err("dispatcherConfig.timeoutMs must be at least 1".into());
    }
    for (name, value) in &config.headers {
        // RFC 9110 token characters for names; no control characters (CR, LF, NUL) in values.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(format!("dispatcherConfig.headers: `{name}` is not a valid header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(format!("dispatcherConfig.headers.{name}: the value must not contain CR, LF or other control characters"));
        }
    }
    Ok((config, url))
}

fn failure(code: &str, message: String, retryable: bool) -> Failure {
    Failure { code: code.into(), message, retryable }
}

struct Pool;

impl Guest for Pool {
    fn validate(spec: FunctionSpec) -> Result<(), String> {
        let (_, url) = config(&spec)?;
        http::check_url(&url)
    }

    fn dispatch(inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        let (config, url) = config(&inv.function).map_err(|e| failure("BAD_CONFIG", e, false))?;
        let (body, content_type) = match config.request {
            Body::Raw => (Payload::new(&[Part::Payload(input)]), inv.content_type.clone()),
            Body::Envelope => (envelope(&inv, input), "application/json".to_string()),
        };
        let mut headers: Vec<(String, String)> = config.headers.into_iter().collect();
        headers.extend([
            ("content-type".to_string(), content_type),
            ("x-execution-id".to_string(), inv.execution_id.clone()),
            ("x-trace-id".to_string(), inv.trace_id.clone()),
            ("x-dispatch-attempt".to_string(), inv.attempt.to_string()),
            ("idempotency-key".to_string(), inv.idempotency_key.clone().unwrap_or_else(|| inv.execution_id.clone())),
        ]);
        let request = Request { method: "POST".into(), url, headers, timeout_ms: config.timeout_ms };
        match http::start(&request, &body) {
            Ok(handle) => Ok(Outcome::Pending(Pending { handle, poll_after_ms: None })),
            Err(e) => Err(error(e)),
        }
    }

    fn poll(_inv: Invocation, handle: String) -> Result<Outcome, Failure> {
        let response = match http::take_response(&handle) {
            None => return Ok(Outcome::Pending(Pending { handle, poll_after_ms: None })),
            Some(Err(HttpError::TooLarge(n))) => {
                return Ok(Outcome::Done(Err(failure(
                    "OUTPUT_TOO_LARGE",
                    format!("the endpoint's response ({n} bytes) is larger than the host accepts"),
                    false,
                ))));
            }
            Some(Err(e)) => return Err(error(e)),
            Some(Ok(response)) => response,
        };
        let excerpt = || {
            let bytes = response.body.read(0, 256);
            String::from_utf8_lossy(&bytes).trim().to_string()
        };
        match response.status {
            200..=299 => {
                let content_type = response
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| "application/json".into());
                Ok(Outcome::Done(Ok(Output { content_type, body: response.body })))
            }
            400..=499 => Ok(Outcome::Done(Err(failure(
                "FUNCTION_ERROR",
                format!("the endpoint answered {}: {}", response.status, excerpt()),
                false,
            )))),
            500..=599 => Err(failure("ENDPOINT_ERROR", format!("the endpoint answered {}: {}", response.status, excerpt()), true)),
            other => Err(failure("ENDPOINT_ERROR", format!("the endpoint answered {other}: {}", excerpt()), false)),
        }
    }

    fn release(_inv: Invocation, _handle: String, _reason: ReleaseReason) {
        // The host aborts requests of finished executions; nothing else to clean up.
    }
}

fn error(e: HttpError) -> Failure {
    match e {
        HttpError::NotAllowed(m) => failure("ENDPOINT_NOT_ALLOWED", m, false),
        HttpError::Connect(m) => failure("ENDPOINT_UNAVAILABLE", m, true),
        HttpError::Timeout => failure("ENDPOINT_TIMEOUT", "the endpoint did not answer in time".into(), true),
        HttpError::TooLarge(n) => failure("OUTPUT_TOO_LARGE", format!("{n} bytes"), false),
        HttpError::Other(m) => failure("ENDPOINT_ERROR", m, true),
    }
}

include!("../../common/envelope.rs");

export!(Pool);
