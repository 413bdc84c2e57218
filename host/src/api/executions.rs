//! `GET /v1/executions/{id}`, `POST /v1/executions/{id}:cancel`, and the JSON rendering of an
//! execution's result.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine as _;
use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::guard::{Caller, require};
use super::{ApiError, PathParam};
use crate::auth::Scope;
use crate::control_plane::ControlPlane;
use crate::execution::{DroppedOutput, ErrorInfo, Execution, Output, Snapshot};

/// The full record of an execution. The server writes `output` as raw JSON (`O` is
/// `Box<RawValue>`); a client reads it as a value.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionView<O = Box<RawValue>> {
    pub execution_id: String,
    pub function: String,
    pub dispatcher: String,
    pub status: Cow<'static, str>,
    pub attempt: u32,
    pub trace_id: String,
    pub accepted_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(flatten)]
    pub result: ResultView<O>,
}

/// `output` (+ how it is encoded when it is not JSON) and `error`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultView<O = Box<RawValue>> {
    pub output: Option<O>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_encoding: Option<Cow<'static, str>>,
    /// Instead of `output`, when it was over the retained-output cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_not_retained: Option<NotRetained>,
    pub error: Option<ErrorInfo>,
}

/// What a reader gets of an output that was not retained.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotRetained {
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

pub(super) async fn get(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(id): PathParam,
) -> Result<Json<ExecutionView>, ApiError> {
    let exec = cp.ledger().find(&id).await.map_err(ApiError::store)?.ok_or_else(|| unknown(&id))?;
    require(&cp, &grant, Scope::Invoke, exec.function.name())?;
    Ok(Json(ExecutionView::of(&exec)))
}

/// `POST /v1/executions/{id}:cancel`: 200 with the final state; 409 with the state when the
/// execution had already ended. Needs the `invoke` scope on its function.
pub(super) async fn action(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(target): PathParam,
) -> Result<Json<ExecutionView>, ApiError> {
    let Some((id, "cancel")) = target.rsplit_once(':') else {
        return Err(ApiError::not_found("NOT_FOUND", "use POST /v1/executions/{id}:cancel"));
    };
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

pub(super) fn unknown(id: &str) -> ApiError {
    ApiError::not_found("EXECUTION_NOT_FOUND", format!("execution `{id}` not found"))
}
