//! `POST /v1/functions/{name}:invoke` (sync) and `…:enqueue` (async).
//!
//! Inputs are JSON (`{"input": …, "metadata": {…}}`, the input kept byte for byte) or raw bytes
//! (`application/octet-stream`). A sync invoke answers 200 / 500 (function error) / 502 (platform
//! error) / 504 (timeout) with `{executionId, status, output, error}`; the execution itself is
//! host-owned and goes on even if the client hangs up.

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::executions::{NotRetained, ResultView};
use super::guard::{Caller, require};
use super::openapi::InvocationFailure;
use super::{ApiError, Body, ErrorBody, PathParam, method_not_allowed};
use crate::auth::Scope;
use crate::control_plane::{ControlPlane, SubmitOptions};
use crate::execution::{ErrorKind, Execution, Input, Snapshot, Status};
use crate::ledger::Attach;

pub(super) async fn action(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(target): PathParam,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let Some((name, action)) = target.rsplit_once(':') else {
        return Err(method_not_allowed("GET, PUT, DELETE"));
    };
    require(&cp, &grant, Scope::Invoke, name)?;
    match action {
        "invoke" => invoke(&cp, name, &headers, body).await,
        "enqueue" => enqueue(&cp, name, &headers, body).await,
        _ => Err(ApiError::not_found(
            "NOT_FOUND",
            format!("no action in `{target}`: use /v1/functions/{{name}}:invoke or :enqueue"),
        )),
    }
}

/// Run a function and wait for its result (until its deadline at the latest).
#[utoipa::path(post, path = "/v1/functions/{name}:invoke", operation_id = "invokeFunction", tag = "invocations",
    params(("name" = String, Path, example = "echo", description = "The function"),
           ("X-Timeout-Ms" = Option<u64>, Header, nullable = false, minimum = 1, description = "A deadline shorter than the function's, 1 to the host's maximum"),
           ("X-Trace-Id" = Option<String>, Header, nullable = false, description = "1 to 128 of `[A-Za-z0-9._:-]`; anything else is replaced by a generated id"),
           ("traceparent" = Option<String>, Header, nullable = false, description = "W3C trace context: the execution joins the caller's trace (its trace id becomes the traceId); an invalid one is ignored"),
           ("Idempotency-Key" = Option<String>, Header, nullable = false, max_length = 255, pattern = "^[!-~]*$", description = "The same key and input attach to the same execution; 1 to 255 visible ASCII characters (empty: none)"),
           ("Accept" = Option<String>, Header, nullable = false, description = "`application/octet-stream` for the raw output of a success")),
    request_body(description = "`{\"input\": …}` as JSON, or raw bytes as `application/octet-stream`",
        content((InvokeRequest<'static> = "application/json"), (Vec<u8> = "application/octet-stream"))),
    responses(
        (status = 200, description = "The function succeeded", headers(("X-Execution-Id" = String)),
         content((InvocationResponse<'static> = "application/json"), (Vec<u8> = "application/octet-stream"))),
        (status = 403, description = "The token has no `invoke` scope on this function", body = ErrorBody),
        (status = 404, description = "No such function, or no such action", body = ErrorBody),
        (status = 410, description = "The output was over the retained-output cap and this caller attached late", body = ErrorBody),
        (status = 422, description = "The `Idempotency-Key` was used with another input", body = ErrorBody),
        (status = 429, description = "The function's queue is full", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 500, description = "The function failed (`error.code` is the function's)", body = InvocationFailure),
        (status = 502, description = "The platform failed to run the function", body = InvocationFailure),
        (status = 504, description = "The execution timed out", body = InvocationResponse<'static>),
))]
pub(super) async fn invoke(
    cp: &ControlPlane,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (input, opts) = request(cp, headers, body, false)?;
    let hold = cp.submit(name, input, opts).await?.into_hold();
    let exec = hold.execution();
    let snapshot = hold.wait().await;
    if !snapshot.status.is_terminal() {
        // Handed over (this host is shutting down): it goes on elsewhere.
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "HANDED_OVER",
            format!("this host is shutting down; execution {} goes on: GET /v1/executions/{}", exec.id, exec.id),
        )
        .into_response();
        set_execution_headers(&mut response, &exec.id, true);
        return Ok(response);
    }
    let wants_raw = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    Ok(finished(exec, snapshot, wants_raw))
}

/// Accept an execution and answer at once; follow it at `Location`.
#[utoipa::path(post, path = "/v1/functions/{name}:enqueue", operation_id = "enqueueFunction", tag = "invocations",
    params(("name" = String, Path, example = "echo", description = "The function"),
           ("X-Timeout-Ms" = Option<u64>, Header, nullable = false, minimum = 1, description = "A deadline shorter than the function's, 1 to the host's maximum"),
           ("X-Trace-Id" = Option<String>, Header, nullable = false, description = "1 to 128 of `[A-Za-z0-9._:-]`; anything else is replaced by a generated id"),
           ("traceparent" = Option<String>, Header, nullable = false, description = "W3C trace context: the execution joins the caller's trace (its trace id becomes the traceId); an invalid one is ignored"),
           ("Idempotency-Key" = Option<String>, Header, nullable = false, max_length = 255, pattern = "^[!-~]*$", description = "The same key and input attach to the same execution; 1 to 255 visible ASCII characters (empty: none)")),
    request_body(description = "`{\"input\": …}` as JSON, or raw bytes as `application/octet-stream`",
        content((InvokeRequest<'static> = "application/json"), (Vec<u8> = "application/octet-stream"))),
    responses(
        (status = 202, description = "Accepted (or attached to the execution of the same idempotency key)", body = Accepted<'static>,
         headers(("Location" = String), ("X-Execution-Id" = String))),
        (status = 403, description = "The token has no `invoke` scope on this function", body = ErrorBody),
        (status = 404, description = "No such function, or no such action", body = ErrorBody),
        (status = 422, description = "The `Idempotency-Key` was used with another input", body = ErrorBody),
        (status = 429, description = "The function's queue is full", body = ErrorBody, headers(("Retry-After" = u64))),
))]
pub(super) async fn enqueue(
    cp: &ControlPlane,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (input, opts) = request(cp, headers, body, true)?;
    let attach = cp.submit(name, input, opts).await?;
    let (exec, status) = match &attach {
        // Fresh: `queued` by definition, even if a worker already picked it up.
        Attach::New(exec, _) => (exec, Status::Queued),
        Attach::Existing(exec) => (exec, exec.status()),
    };
    let body = Json(Accepted { execution_id: Cow::Borrowed(&exec.id), status: Cow::Borrowed(status.as_str()) });
    let mut response = (StatusCode::ACCEPTED, body).into_response();
    set_execution_headers(&mut response, &exec.id, true);
    Ok(response)
}

/// The answer to `:enqueue`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted<'a> {
    #[schema(value_type = String)]
    pub execution_id: Cow<'a, str>,
    #[schema(value_type = Status)]
    pub status: Cow<'a, str>,
}

// `O` as in `ResultView`.
/// The answer to a sync `:invoke`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(bound = "")]
pub struct InvocationResponse<'a, O = Box<RawValue>> {
    #[schema(value_type = String)]
    pub execution_id: Cow<'a, str>,
    #[schema(value_type = Status)]
    pub status: Cow<'a, str>,
    #[serde(flatten)]
    #[schema(value_type = ResultView)]
    pub result: ResultView<O>,
}

/// The JSON body of an invocation.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct InvokeRequest<'a> {
    /// The function's input, any JSON value (`null` too). Only a missing `input` is an error.
    #[serde(borrow, default, deserialize_with = "present")]
    #[schema(value_type = Value, required = true)]
    input: Option<&'a RawValue>,
    /// Passed to the function with the input.
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// `Some` for any value of a field that is there, `null` included (`Option`'s own
/// deserializer reads `null` as `None`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Parses the body and the headers into an input and options.
fn request(
    cp: &ControlPlane,
    headers: &HeaderMap,
    body: Bytes,
    asynchronous: bool,
) -> Result<(Input, SubmitOptions), ApiError> {
    let content_type = super::header(headers, "content-type")?.unwrap_or("application/json");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let input = match mime.as_str() {
        "application/json" | "" => {
            super::json_object(&body)?;
            let req: InvokeRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("INVALID_REQUEST", "body", format!("invalid JSON body: {e}")))?;
            let raw = req.input.ok_or_else(|| {
                ApiError::bad_request("INVALID_REQUEST", "input", "`input` is required (use {\"input\": …})")
            })?;
            Input {
                content_type: "application/json".into(),
                body: crate::execution::compact(body.slice_ref(raw.get().as_bytes())),
                metadata: req.metadata.unwrap_or_default().into_iter().collect(),
            }
        }
        "application/octet-stream" => {
            Input { content_type: mime, body: crate::execution::compact(body), metadata: Vec::new() }
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                format!("content type `{other}` is not supported: use application/json or application/octet-stream"),
            ));
        }
    };
    // nanofaas v1 reads X-Timeout-Ms on sync calls only; here it narrows async deadlines too.
    let opts = SubmitOptions {
        trace_id: super::trace_id(headers),
        caller: super::traceparent(headers),
        idempotency_key: super::idempotency_key(headers)?,
        timeout: super::timeout(headers, cp.config().max_timeout)?,
        asynchronous,
    };
    Ok((input, opts))
}

/// The response to a sync invoke of a finished execution.
fn finished(exec: &Execution, snapshot: Snapshot, wants_raw: bool) -> Response {
    if let Some(dropped) = &snapshot.dropped_output {
        // A re-attach after the output was sealed: the caller asked for an output that is gone.
        let mut response =
            ApiError::new(StatusCode::GONE, NotRetained::CODE, NotRetained::message(dropped)).into_response();
        set_execution_headers(&mut response, &exec.id, true);
        return response;
    }
    let status = match (snapshot.status, snapshot.error_kind) {
        (Status::Success, _) => StatusCode::OK,
        (Status::Timeout, _) => StatusCode::GATEWAY_TIMEOUT,
        (Status::Error, Some(ErrorKind::Function)) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut response = match (&snapshot.output, wants_raw && status == StatusCode::OK) {
        (Some(output), true) => {
            let mut r = (StatusCode::OK, output.body.clone()).into_response();
            if let Ok(v) = HeaderValue::from_str(&output.content_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        _ => {
            let body = InvocationResponse {
                execution_id: Cow::Borrowed(&exec.id),
                status: Cow::Borrowed(snapshot.status.as_str()),
                result: ResultView::of(&snapshot),
            };
            (status, Json(body)).into_response()
        }
    };
    set_execution_headers(&mut response, &exec.id, false);
    response
}

fn set_execution_headers(response: &mut Response, id: &str, location: bool) {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert("x-execution-id", v);
    }
    if location && let Ok(v) = HeaderValue::from_str(&format!("/v1/executions/{id}")) {
        headers.insert(header::LOCATION, v);
    }
}
