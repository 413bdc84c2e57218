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
use super::{ApiError, Body, PathParam, method_not_allowed};
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

async fn invoke(cp: &ControlPlane, name: &str, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
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

async fn enqueue(cp: &ControlPlane, name: &str, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
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
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted<'a> {
    pub execution_id: Cow<'a, str>,
    pub status: Cow<'a, str>,
}

/// The answer to a sync `:invoke` (`O` as in [`ResultView`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvocationResponse<'a, O = Box<RawValue>> {
    pub execution_id: Cow<'a, str>,
    pub status: Cow<'a, str>,
    #[serde(flatten)]
    pub result: ResultView<O>,
}

#[derive(Deserialize)]
struct InvokeRequest<'a> {
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
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
