//! The HTTP API, compatible with nanofaas v1, and the admin endpoints.
//!
//! [`router`] and [`admin_router`] are plain functions of the control plane, so handler tests
//! drive them with `oneshot` and no socket. Handlers are thin: they parse and check the request,
//! call the control plane, and render; all errors go through [`ApiError`]. Request metrics are
//! labelled by the matched route template (plus the `:action` suffix), never the raw URI.

mod error;
mod executions;
mod functions;
pub mod guard;
mod internal;
mod invoke;
mod openapi;
mod plugins;

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::time::Instant;

pub use error::{ApiError, ErrorBody, ErrorDetail, truncate};
pub use executions::{ExecutionView, LogEntry, LogsView, NotRetained, ResultView};
pub use invoke::{Accepted, InvocationResponse};
pub use openapi::{document, document_json};
pub use plugins::PluginView;

use crate::control_plane::ControlPlane;

/// The public API.
pub fn router(cp: ControlPlane) -> Router {
    let limit = cp.config().max_body_bytes;
    Router::new()
        .route("/v1/functions", post(functions::register).get(functions::list))
        .route(
            "/v1/functions/{name}",
            get(functions::get).put(functions::update).delete(functions::delete).post(invoke::action),
        )
        .route("/v1/executions/{id}", get(executions::get).post(executions::action))
        .route("/v1/executions/{id}/logs", get(executions::logs))
        .route("/v1/plugins", get(plugins::list))
        .route("/openapi.json", get(openapi::serve(cp.config().max_timeout)))
        .route("/v1/internal/executions/{id}", post(internal::action))
        .route("/v1/internal/executions/{id}/input", get(internal::input))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed_fallback)
        // After routing: a method the route does not take is a 405 whatever its content type.
        .route_layer(middleware::from_fn(guard::content_type))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            guard::BodyBudget::new(cp.config().max_inflight_body_bytes, limit),
            guard::budget,
        ))
        .layer(middleware::from_fn_with_state(cp.clone(), guard::guard))
        .layer(middleware::from_fn_with_state(cp.clone(), track))
        .with_state(cp)
}

/// `/metrics`, `/health/live`, `/health/ready`.
pub fn admin_router(cp: ControlPlane) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(|| async { axum::Json(serde_json::json!({"status": "UP"})) }))
        .route("/health/ready", get(ready))
        .fallback(not_found)
        .with_state(cp)
}

async fn metrics(State(cp): State<ControlPlane>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], cp.metrics().render())
}

async fn ready(State(cp): State<ControlPlane>) -> Response {
    let down = |reason: Option<String>| {
        let body = serde_json::json!({"status": "DOWN", "reason": reason});
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    };
    if !cp.is_ready() {
        return down(None);
    }
    match cp.unhealthy() {
        Some(reason) => down(Some(reason)),
        None => axum::Json(serde_json::json!({"status": "UP"})).into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("NOT_FOUND", "no such route")
}

async fn method_not_allowed_fallback(request: Request) -> ApiError {
    method_not_allowed(allowed_methods(&request))
}

/// The methods a request's route takes. One template serves a resource and its `:action`s,
/// which take POST.
fn allowed_methods(request: &Request) -> &'static str {
    let template = request.extensions().get::<MatchedPath>().map_or("", MatchedPath::as_str);
    let action = request.uri().path().rsplit('/').next().is_some_and(|last| last.contains(':'));
    match (template, action) {
        (_, true) | ("/v1/internal/executions/{id}", _) => "POST",
        ("/v1/functions", _) => "GET, POST",
        ("/v1/functions/{name}", _) => "GET, PUT, DELETE",
        _ => "GET",
    }
}

/// 405 with the methods the route has.
fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError {
        allow: Some(allow),
        ..ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", format!("this route takes {allow}"))
    }
}

/// The one path parameter of a route; a parameter that does not decode is a JSON 400.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            Err(rejection) => Err(ApiError::bad_request("INVALID_PATH", "path", rejection.body_text())),
        }
    }
}

/// Counts and times every request by matched route.
async fn track(State(cp): State<ControlPlane>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = route_label(&request);
    let response = next.run(request).await;
    let status = response.status();
    cp.metrics().http_requests.with_label_values(&[route.as_str(), method.as_str(), status.as_str()]).inc();
    cp.metrics()
        .http_duration
        .with_label_values(&[route.as_str(), method.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `/v1/functions/{name}:invoke` for an action on a matched route, else the route template.
fn route_label(request: &Request) -> String {
    let Some(matched) = request.extensions().get::<MatchedPath>() else {
        return "unmatched".into();
    };
    let last = request.uri().path().rsplit('/').next().unwrap_or("");
    match last.rsplit_once(':') {
        Some((_, action @ ("invoke" | "enqueue" | "complete"))) => format!("{}:{action}", matched.as_str()),
        Some(_) => format!("{}:other", matched.as_str()),
        None => matched.as_str().to_string(),
    }
}

/// A request body within the configured limit; over it, 413 with a JSON error.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is larger than the host accepts",
            )),
            Err(rejection) => Err(ApiError::bad_request("INVALID_REQUEST", "body", rejection.body_text())),
        }
    }
}

/// A header as text, if present; 400 naming the header when it is not valid text.
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ApiError::bad_request("INVALID_HEADER", name, format!("{name} is not valid text"))),
    }
}

/// `X-Trace-Id`: 1 to 128 of `[A-Za-z0-9._:-]`. Anything else (an X-Ray header, a blank one,
/// bytes that are not text) is what a proxy or SDK may add on its own, so it is not the caller's
/// mistake: the id is replaced by a generated one, and the replacement is logged.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("x-trace-id")?;
    let value = raw.to_str().map(str::trim).unwrap_or_default();
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if !ok {
        tracing::info!(
            header = %String::from_utf8_lossy(&raw.as_bytes()[..raw.len().min(160)]),
            "X-Trace-Id is not 1 to 128 of [A-Za-z0-9._:-]; a generated trace id replaces it"
        );
        return None;
    }
    Some(value.to_string())
}

/// W3C `traceparent`: the caller's span, parent of the execution's. One that is not valid is
/// ignored (the specification says to start a new trace), as an odd `X-Trace-Id` is.
fn traceparent(headers: &HeaderMap) -> Option<crate::otel::Parent> {
    let raw = headers.get("traceparent")?;
    let parent = raw.to_str().ok().and_then(crate::otel::Parent::from_traceparent);
    if parent.is_none() {
        tracing::info!(
            header = %String::from_utf8_lossy(&raw.as_bytes()[..raw.len().min(160)]),
            "traceparent is not a W3C trace context; the execution starts a trace of its own"
        );
    }
    parent
}

/// A JSON body must be an object: serde reads a struct from an array too (`[input, metadata]`),
/// which no client means.
fn json_object(body: &[u8]) -> Result<(), ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::bad_request("INVALID_REQUEST", "body", "the body must be a JSON object")),
    }
}

/// `X-Timeout-Ms`: 1 to the host's maximum.
fn timeout(headers: &HeaderMap, max: Duration) -> Result<Option<Duration>, ApiError> {
    let Some(v) = header(headers, "x-timeout-ms")? else { return Ok(None) };
    let max_ms = max.as_millis() as u64;
    match v.parse::<u64>() {
        Ok(ms) if (1..=max_ms).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(ApiError::bad_request(
            "INVALID_HEADER",
            "X-Timeout-Ms",
            format!("X-Timeout-Ms must be a whole number of milliseconds from 1 to {max_ms}, got `{v}`"),
        )),
    }
}

/// `Idempotency-Key`: 1 to 255 visible ASCII characters; a blank one means none.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = header(headers, "idempotency-key")?.filter(|v| !v.is_empty()) else { return Ok(None) };
    if v.len() > 255 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "INVALID_HEADER",
            "Idempotency-Key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(v.to_string()))
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

#[cfg(test)]
mod tests;
