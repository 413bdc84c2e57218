//! `/v1/internal/executions/{id}…`: what remote runners call, authenticated by the
//! execution's bearer token.
//!
//! The token is checked before the execution is looked up, so an unauthenticated caller learns
//! nothing about which executions exist (401 before 404). A token names its attempt: one of an
//! attempt earlier than the execution's current one is refused (409 `STALE_ATTEMPT`), so a slow
//! pod of an earlier attempt cannot settle a newer one — with replicas, the store checks it too,
//! since the copy a replica holds may lag behind the driver's.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, Body, ErrorBody, PathParam, bearer, executions};
use crate::control_plane::{CallbackOutcome, CallbackResult, ControlPlane};
use crate::execution::{Execution, Status};

/// What a callback answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct CallbackAnswer<'a> {
    #[schema(value_type = String)]
    execution_id: &'a str,
    /// The execution's state after the callback.
    status: Status,
    outcome: CallbackOutcome,
}

/// A function runtime reports the result of its attempt.
#[utoipa::path(post, path = "/v1/internal/executions/{id}:complete", operation_id = "completeExecution", tag = "internal",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The execution")),
    request_body = CallbackResult,
    responses(
        (status = 200, description = "Received; `outcome` says what became of it", body = CallbackAnswer),
        (status = 404, description = "No such execution, or no such action", body = ErrorBody),
        (status = 409, description = "The token is for an earlier attempt than the execution's current one", body = ErrorBody),
))]
pub(super) async fn action(
    State(cp): State<ControlPlane>,
    PathParam(target): PathParam,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let Some((id, "complete")) = target.rsplit_once(':') else {
        return Err(ApiError::not_found("NOT_FOUND", "use /v1/internal/executions/{id}:complete"));
    };
    let attempt = authenticate(&cp, id, &headers)?;
    let exec = cp.ledger().find(id).await.map_err(ApiError::store)?.ok_or_else(|| executions::unknown(id))?;
    current(&exec, attempt)?;
    super::json_object(&body)?;
    let result: CallbackResult = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("INVALID_REQUEST", "body", format!("expected {{success, output, error}}: {e}"))
    })?;
    let parent = crate::otel::attempt(&exec.id, exec.trace, attempt);
    let mut span = crate::otel::Span::start("callback", crate::otel::SpanKind::Server, parent);
    if span.is_recording() {
        span.set("nanofaas.attempt", i64::from(attempt));
        span.set("nanofaas.callback.success", result.success);
    }
    let outcome = cp.complete(&exec, attempt, result).await;
    if span.is_recording() {
        span.set("nanofaas.callback.outcome", format!("{outcome:?}"));
    }
    span.end();
    if outcome == CallbackOutcome::Stale {
        current(&exec, attempt)?;
    }
    let body = CallbackAnswer { execution_id: &exec.id, status: exec.status(), outcome };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// The input of an execution, for runners that did not get it inline.
#[utoipa::path(get, path = "/v1/internal/executions/{id}/input", operation_id = "getExecutionInput", tag = "internal",
    params(("id" = String, Path, description = "The execution")),
    responses(
        (status = 200, description = "The input, in its content type", content_type = "*/*", body = Vec<u8>),
        (status = 404, description = "No such execution", body = ErrorBody),
        (status = 409, description = "The token is for an earlier attempt than the execution's current one", body = ErrorBody),
))]
pub(super) async fn input(
    State(cp): State<ControlPlane>,
    PathParam(id): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let attempt = authenticate(&cp, &id, &headers)?;
    let exec = cp.ledger().find(&id).await.map_err(ApiError::store)?.ok_or_else(|| executions::unknown(&id))?;
    current(&exec, attempt)?;
    let mut response = (StatusCode::OK, exec.input.body.clone()).into_response();
    if let Ok(v) = HeaderValue::from_str(&exec.input.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(response)
}

/// The attempt the request's token was made for.
fn authenticate(cp: &ControlPlane, id: &str, headers: &HeaderMap) -> Result<u32, ApiError> {
    match bearer(headers).and_then(|token| cp.verify_token(id, token)) {
        Some(attempt) => Ok(attempt),
        None => {
            cp.callback_rejected();
            Err(ApiError::unauthorized())
        }
    }
}

/// 409 when `attempt` is earlier than the execution's current attempt. A later one means this
/// replica's copy lags behind the replica that drives the execution (tokens are made only for
/// attempts that started): the copy catches up, and the store has the last word on a settle.
fn current(exec: &Execution, attempt: u32) -> Result<(), ApiError> {
    let now = exec.snapshot().attempt;
    if attempt >= now {
        exec.observe_attempt(attempt);
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "STALE_ATTEMPT",
        format!("this token is for attempt {attempt}; execution {} is at attempt {now}", exec.id),
    ))
}
