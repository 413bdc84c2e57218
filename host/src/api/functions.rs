//! `/v1/functions`: register, list, get, delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{ApiError, Body};
use crate::control_plane::ControlPlane;
use crate::function::FunctionSpec;

pub(super) async fn register(State(cp): State<ControlPlane>, Body(body): Body) -> Result<Response, ApiError> {
    let spec = FunctionSpec::from_json(&body).map_err(|e| {
        ApiError::bad_request("INVALID_FUNCTION", e.field.clone(), format!("{}: {}", e.field, e.message))
    })?;
    let resolved = cp.register(spec).await?;
    let location = format!("/v1/functions/{}", resolved.name);
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, location)], Json(resolved)).into_response())
}

pub(super) async fn list(State(cp): State<ControlPlane>) -> Json<Vec<FunctionSpec>> {
    Json(cp.registry().list().iter().map(|f| f.spec.clone()).collect())
}

pub(super) async fn get(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<FunctionSpec>, ApiError> {
    cp.registry().get(&name).map(|f| Json(f.spec.clone())).ok_or_else(|| unknown(&name))
}

pub(super) async fn delete(State(cp): State<ControlPlane>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    cp.unregister(&name).await.map_err(ApiError::store)?.map(|_| StatusCode::NO_CONTENT).ok_or_else(|| unknown(&name))
}

pub(super) fn unknown(name: &str) -> ApiError {
    ApiError::not_found("FUNCTION_NOT_FOUND", format!("function `{name}` not found"))
}
