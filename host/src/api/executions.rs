//! `GET /v1/executions/{id}` and the JSON rendering of an execution's result.

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Serialize;
use serde_json::value::RawValue;

use super::guard::{Caller, require};
use super::{ApiError, PathParam};
use crate::auth::Scope;
use crate::control_plane::ControlPlane;
use crate::execution::{DroppedOutput, ErrorInfo, Execution, Output, Snapshot};

/// The full record of an execution.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExecutionView {
    execution_id: String,
    function: String,
    dispatcher: String,
    status: &'static str,
    attempt: u32,
    trace_id: String,
    accepted_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    #[serde(flatten)]
    result: ResultView,
}

/// `output` (+ how it is encoded when it is not JSON) and `error`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResultView {
    pub output: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_encoding: Option<&'static str>,
    /// Instead of `output`, when it was over the retained-output cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_not_retained: Option<NotRetained>,
    pub error: Option<ErrorInfo>,
}

/// What a reader gets of an output that was not retained.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NotRetained {
    code: &'static str,
    message: String,
    #[serde(flatten)]
    output: DroppedOutput,
}

impl NotRetained {
    pub const CODE: &'static str = "OUTPUT_NOT_RETAINED";

    pub fn of(output: &DroppedOutput) -> Self {
        Self { code: Self::CODE, message: Self::message(output), output: output.clone() }
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
        view.output_encoding = encoding;
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
            status: s.status.as_str(),
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

pub(super) fn unknown(id: &str) -> ApiError {
    ApiError::not_found("EXECUTION_NOT_FOUND", format!("execution `{id}` not found"))
}
