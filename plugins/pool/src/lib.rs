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

use std::collections::BTreeMap;

use nanofaas_plugin_sdk::http::{self, HttpError, Received, Request};
use nanofaas_plugin_sdk::prelude::*;
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

/// The endpoint: the config's `url`, else the function's `endpointUrl`.
fn url(spec: &FunctionSpec, config: &Config) -> Result<String, String> {
    config
        .url
        .clone()
        .or_else(|| spec.endpoint_url.clone())
        .ok_or_else(|| "the pool dispatcher needs an `endpointUrl` (or dispatcherConfig.url)".to_string())
}

struct Pool;

impl Dispatcher for Pool {
    type Config = Config;
    const CAPABILITIES: &'static [&'static str] = &["http"];

    fn validate(spec: &FunctionSpec, config: &Config) -> Result<(), String> {
        let url = url(spec, config)?;
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
                return Err(format!(
                    "dispatcherConfig.headers.{name}: the value must not contain CR, LF or other control characters"
                ));
            }
        }
        http::check_url(&url)
    }

    fn dispatch(call: &Call<Config>, input: &Payload) -> Result<Outcome, Failure> {
        let url = url(call.function(), &call.config).map_err(Failure::bad_config)?;
        let (body, content_type) = match call.config.request {
            Body::Raw => (input.share(), call.content_type.as_str()),
            Body::Envelope => (nanofaas_plugin_sdk::envelope(call, input), "application/json"),
        };
        let key = call.idempotency_key.as_deref().unwrap_or(&call.execution_id);
        let mut request = Request::post(url).timeout_ms(call.config.timeout_ms);
        for (name, value) in &call.config.headers {
            request = request.header(name, value);
        }
        let request = request
            .header("content-type", content_type)
            .header("x-execution-id", &call.execution_id)
            .header("x-trace-id", &call.trace_id)
            .header("x-dispatch-attempt", call.attempt.to_string())
            .header("idempotency-key", key);
        http::send(&request, &body).map_err(error)
    }

    fn poll(_call: &Call<Config>, handle: String) -> Result<Outcome, Failure> {
        let response = match http::receive(handle) {
            Received::InFlight(waiting) => return Ok(waiting),
            Received::Failed(HttpError::TooLarge(n)) => {
                return Ok(Outcome::function_error(
                    "OUTPUT_TOO_LARGE",
                    format!("the endpoint's response ({n} bytes) is larger than the host accepts"),
                ));
            }
            Received::Failed(e) => return Err(error(e)),
            Received::Response(response) => response,
        };
        let answered = || format!("the endpoint answered {}: {}", response.status, response.body.excerpt(256));
        match response.status {
            200..=299 => {
                let content_type = response.header("content-type").unwrap_or("application/json").to_string();
                Ok(Outcome::output(&content_type, response.body))
            }
            400..=499 => Ok(Outcome::function_error("FUNCTION_ERROR", answered())),
            500..=599 => Err(Failure::retryable("ENDPOINT_ERROR", answered())),
            _ => Err(Failure::new("ENDPOINT_ERROR", answered())),
        }
    }

    // `release` is the default: the host aborts the requests of finished executions.
}

fn error(e: HttpError) -> Failure {
    match e {
        HttpError::NotAllowed(m) => Failure::new("ENDPOINT_NOT_ALLOWED", m),
        HttpError::Connect(m) => Failure::retryable("ENDPOINT_UNAVAILABLE", m),
        HttpError::Timeout => Failure::retryable("ENDPOINT_TIMEOUT", "the endpoint did not answer in time"),
        HttpError::TooLarge(n) => Failure::new("OUTPUT_TOO_LARGE", format!("{n} bytes")),
        HttpError::Other(m) => Failure::retryable("ENDPOINT_ERROR", m),
    }
}

nanofaas_plugin_sdk::export_dispatcher!(Pool);
