//! `GET /v1/executions/{id}`, `POST /v1/executions/{id}:cancel`, `GET /v1/executions/{id}/logs`,
//! and the JSON rendering of an execution's result.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine as _;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::guard::{Caller, require};
use super::{ApiError, ErrorBody, PathParam};
use crate::auth::Scope;
use crate::capability::Logs;
use crate::control_plane::ControlPlane;
use crate::execution::{DroppedOutput, ErrorInfo, Execution, Output, Snapshot, Status};

// The server writes `output` as raw JSON (`O` is `Box<RawValue>`); a client reads it as a value.
/// The full record of an execution.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(bound = "")]
pub struct ExecutionView<O = Box<RawValue>> {
    pub execution_id: String,
    pub function: String,
    pub dispatcher: String,
    #[schema(value_type = Status)]
    pub status: Cow<'static, str>,
    pub attempt: u32,
    pub trace_id: String,
    /// RFC 3339, in milliseconds.
    #[schema(format = DateTime)]
    pub accepted_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = ResultView)]
    pub result: ResultView<O>,
}

/// `output` (+ how it is encoded when it is not JSON) and `error`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(bound = "")]
pub struct ResultView<O = Box<RawValue>> {
    /// The output: JSON as is; text as a JSON string; other bytes as base64.
    #[schema(value_type = Option<Value>)]
    pub output: Option<O>,
    /// The output's content type, when it was not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_content_type: Option<String>,
    /// `base64` when the output was not text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub output_encoding: Option<Cow<'static, str>>,
    /// Instead of `output`, when it was over the retained-output cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_not_retained: Option<NotRetained>,
    pub error: Option<ErrorInfo>,
}

/// What a reader gets of an output that was not retained.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotRetained {
    #[schema(value_type = String)]
    pub code: Cow<'static, str>,
    pub message: String,
    #[serde(flatten)]
    pub output: DroppedOutput,
}

impl NotRetained {
    pub const CODE: &'static str = "OUTPUT_NOT_RETAINED";

    pub fn of(output: &DroppedOutput) -> Self {
        Self { code: Cow::Borrowed(Self::CODE), message: Self::message(output), output: output.clone() }
    }

    pub fn message(output: &DroppedOutput) -> String {
        format!(
            "the output ({} bytes) was larger than the retained-output cap: it went to the callers that waited \
             for it, and only its size and SHA-256 digest are kept",
            output.bytes
        )
    }
}

impl ResultView {
    /// JSON output is embedded as is; text becomes a JSON string; other bytes a base64 string.
    pub fn of(snapshot: &Snapshot) -> Self {
        let mut view = ResultView {
            output: None,
            output_content_type: None,
            output_encoding: None,
            output_not_retained: snapshot.dropped_output.as_ref().map(NotRetained::of),
            error: snapshot.error.clone(),
        };
        let Some(Output { content_type, body }) = &snapshot.output else { return view };
        let is_json = content_type.starts_with("application/json") || content_type.contains("+json");
        if is_json && let Ok(raw) = serde_json::from_slice::<&RawValue>(body) {
            view.output = Some(raw.to_owned());
            return view;
        }
        view.output_content_type = Some(content_type.clone());
        let (text, encoding) = match std::str::from_utf8(body) {
            Ok(text) => (text.to_string(), None),
            Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), Some("base64")),
        };
        view.output_encoding = encoding.map(Cow::Borrowed);
        view.output =
            Some(RawValue::from_string(serde_json::to_string(&text).expect("strings serialize")).expect("valid JSON"));
        view
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl ExecutionView {
    pub fn of(exec: &Execution) -> Self {
        let s = exec.snapshot();
        Self {
            execution_id: exec.id.clone(),
            function: exec.function.name().to_string(),
            dispatcher: exec.function.dispatcher().to_string(),
            status: Cow::Borrowed(s.status.as_str()),
            attempt: s.attempt,
            trace_id: exec.trace_id.clone(),
            accepted_at: rfc3339(exec.accepted_at),
            started_at: s.started_at.map(rfc3339),
            finished_at: s.finished_at.map(rfc3339),
            result: ResultView::of(&s),
        }
    }
}

/// An execution's state and result.
#[utoipa::path(get, path = "/v1/executions/{id}", operation_id = "getExecution", tag = "executions",
    params(("id" = String, Path, description = "The execution")),
    responses(
        (status = 200, description = "The execution", body = ExecutionView),
        (status = 403, description = "The token has no `invoke` scope on its function", body = ErrorBody),
        (status = 404, description = "No such execution (or no longer retained)", body = ErrorBody),
))]
pub(super) async fn get(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(id): PathParam,
) -> Result<Json<ExecutionView>, ApiError> {
    let exec = cp.ledger().find(&id).await.map_err(ApiError::store)?.ok_or_else(|| unknown(&id))?;
    require(&cp, &grant, Scope::Invoke, exec.function.name())?;
    Ok(Json(ExecutionView::of(&exec)))
}

/// Cancel a queued or running execution.
///
/// Its work is released (process group killed, request aborted, Job deleted) and it ends as
/// `cancelled`. Needs the `invoke` scope on its function.
#[utoipa::path(post, path = "/v1/executions/{id}:cancel", operation_id = "cancelExecution", tag = "executions",
    params(("id" = String, Path, description = "The execution")),
    request_body(description = "Ignored (`{}` will do): a POST needs a JSON content type", content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "Cancelled: the final state", body = ExecutionView),
        (status = 403, description = "The token has no `invoke` scope on its function", body = ErrorBody),
        (status = 404, description = "No such execution, or no such action", body = ErrorBody),
        (status = 409, description = "The execution had already ended; `status` is its state", body = ErrorBody),
))]
pub(super) async fn action(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(target): PathParam,
) -> Result<Json<ExecutionView>, ApiError> {
    let Some((id, action)) = target.rsplit_once(':') else {
        return Err(super::method_not_allowed("GET"));
    };
    if action != "cancel" {
        return Err(ApiError::not_found("NOT_FOUND", "use POST /v1/executions/{id}:cancel"));
    }
    let exec = cp.ledger().find(id).await.map_err(ApiError::store)?.ok_or_else(|| unknown(id))?;
    require(&cp, &grant, Scope::Invoke, exec.function.name())?;
    if !cp.cancel(&exec, "cancelled through the API").await {
        let status = exec.status().as_str();
        let message = format!("execution `{id}` has already ended: {status}");
        return Err(ApiError {
            state: Some(status),
            ..ApiError::new(StatusCode::CONFLICT, "EXECUTION_ENDED", message)
        });
    }
    Ok(Json(ExecutionView::of(&exec)))
}

/// The logs of an execution, as this host has them.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsView {
    pub execution_id: String,
    /// One entry per local process (all of them in one) or per pod, oldest first.
    pub logs: Vec<LogEntry>,
}

/// The log of a local process or of a pod.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// `process` (the end of its stderr, 4 KiB) or `pod` (its log, at most 1000 lines and 64 KiB).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The log; absent when it could not be read (`error` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The logs of an execution's local processes (the end of their stderr, kept for the last 256
/// executions), or of its Kubernetes pods through the API server while the pods exist.
#[utoipa::path(get, path = "/v1/executions/{id}/logs", operation_id = "getExecutionLogs", tag = "executions",
    params(("id" = String, Path, description = "The execution")),
    responses(
        (status = 200, description = "The logs", body = LogsView),
        (status = 403, description = "The token has no `deploy` scope on its function", body = ErrorBody),
        (status = 404, description = "No such execution, or no logs of it here (`LOGS_NOT_AVAILABLE`: its pods are gone, or it ran nothing with logs on this host)", body = ErrorBody),
))]
pub(super) async fn logs(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(id): PathParam,
) -> Result<Json<LogsView>, ApiError> {
    let exec = cp.ledger().find(&id).await.map_err(ApiError::store)?.ok_or_else(|| unknown(&id))?;
    // Logs show what the function prints, secrets included: for those who may deploy it.
    require(&cp, &grant, Scope::Deploy, exec.function.name())?;
    let logs = match cp.plugins().capabilities().logs(&id).await {
        Logs::Process(text) => {
            vec![LogEntry { source: "process".into(), pod: None, text: Some(text), error: None }]
        }
        Logs::Pods(pods) => pods
            .into_iter()
            .map(|p| {
                let (text, error) = match p.text {
                    Ok(text) => (Some(text), None),
                    Err(e) => (None, Some(super::truncate(&e, 1024))),
                };
                LogEntry { source: "pod".into(), pod: Some(p.pod), text, error }
            })
            .collect(),
        Logs::None => {
            return Err(ApiError::not_found(
                "LOGS_NOT_AVAILABLE",
                format!(
                    "no logs of execution `{id}` (dispatcher `{}`) here: a local process's stderr is kept for \
                     the last 256 executions of the host that ran it, a pod's log only while the pod exists \
                     (its Job is deleted when the execution ends)",
                    exec.function.dispatcher()
                ),
            ));
        }
    };
    Ok(Json(LogsView { execution_id: id, logs }))
}

pub(super) fn unknown(id: &str) -> ApiError {
    ApiError::not_found("EXECUTION_NOT_FOUND", format!("execution `{id}` not found"))
}
