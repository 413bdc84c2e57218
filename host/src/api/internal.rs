//! `/v1/internal/executions/{id}…`: what remote runners call, authenticated by the
//! execution's bearer token.
//!
//! The token is checked before the execution is looked up, so an unauthenticated caller learns
//! nothing about which executions exist (401 before 404).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, Body, bearer, executions};
use crate::control_plane::{CallbackResult, ControlPlane};

pub(super) async fn action(
    State(cp): State<ControlPlane>,
    Path(target): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let Some((id, "complete")) = target.rsplit_once(':') else {
        return Err(ApiError::not_found("NOT_FOUND", "use /v1/internal/executions/{id}:complete"));
    };
    authenticate(&cp, id, &headers)?;
    let exec = cp.ledger().find(id).await.map_err(ApiError::store)?.ok_or_else(|| executions::unknown(id))?;
    let result: CallbackResult = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("INVALID_REQUEST", "body", format!("expected {{success, output, error}}: {e}"))
    })?;
    let outcome = cp.complete(&exec, result).await;
    let body = serde_json::json!({
        "executionId": exec.id,
        "status": exec.status().as_str(),
        "outcome": outcome.as_str(),
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// The input of an execution, for runners that did not get it inline.
pub(super) async fn input(
    State(cp): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&cp, &id, &headers)?;
    let exec = cp.ledger().find(&id).await.map_err(ApiError::store)?.ok_or_else(|| executions::unknown(&id))?;
    let mut response = (StatusCode::OK, exec.input.body.clone()).into_response();
    if let Ok(v) = HeaderValue::from_str(&exec.input.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(response)
}

fn authenticate(cp: &ControlPlane, id: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    match bearer(headers) {
        Some(token) if cp.verify_token(id, token) => Ok(()),
        _ => {
            cp.callback_rejected();
            Err(ApiError::unauthorized())
        }
    }
}
