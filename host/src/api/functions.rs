//! `/v1/functions`: register, list, get, delete.
//!
//! Registering and deleting need the `deploy` scope on the function's name. Reading needs any
//! scope on it; a caller without `deploy` gets the spec with its `env` values redacted and no
//! `dispatcherConfig` (both may hold credentials).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::guard::{Caller, require};
use super::{ApiError, Body, PathParam, method_not_allowed};
use crate::auth::{Grant, Scope};
use crate::control_plane::ControlPlane;
use crate::function::FunctionSpec;

/// What an env value reads as to a caller without `deploy`.
pub const REDACTED: &str = "<redacted>";

pub(super) async fn register(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let spec = FunctionSpec::from_json(&body).map_err(|e| {
        ApiError::bad_request("INVALID_FUNCTION", e.field.clone(), format!("{}: {}", e.field, e.message))
    })?;
    require(&cp, &grant, Scope::Deploy, &spec.name)?;
    let resolved = cp.register(spec).await?;
    let location = format!("/v1/functions/{}", resolved.name);
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, location)], Json(resolved)).into_response())
}

pub(super) async fn list(State(cp): State<ControlPlane>, Extension(grant): Caller) -> Json<Vec<FunctionSpec>> {
    let visible = cp.registry().list().into_iter().filter(|f| grant.sees(f.name()));
    Json(visible.map(|f| shown(&grant, &f.spec)).collect())
}

pub(super) async fn get(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(name): PathParam,
) -> Result<Json<FunctionSpec>, ApiError> {
    if name.contains(':') {
        return Err(method_not_allowed("POST"));
    }
    if !grant.sees(&name) {
        require(&cp, &grant, Scope::Invoke, &name)?;
    }
    cp.registry().get(&name).map(|f| Json(shown(&grant, &f.spec))).ok_or_else(|| unknown(&name))
}

pub(super) async fn delete(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(name): PathParam,
) -> Result<StatusCode, ApiError> {
    if name.contains(':') {
        return Err(method_not_allowed("POST"));
    }
    require(&cp, &grant, Scope::Deploy, &name)?;
    cp.unregister(&name).await.map_err(ApiError::store)?.map(|_| StatusCode::NO_CONTENT).ok_or_else(|| unknown(&name))
}

/// The spec as this caller may see it.
fn shown(grant: &Grant, spec: &FunctionSpec) -> FunctionSpec {
    if grant.allows(Scope::Deploy, &spec.name) {
        return spec.clone();
    }
    let mut spec = spec.clone();
    if let Some(env) = &mut spec.env {
        env.values_mut().for_each(|v| *v = REDACTED.to_string());
    }
    spec.dispatcher_config = None;
    spec
}

pub(super) fn unknown(name: &str) -> ApiError {
    ApiError::not_found("FUNCTION_NOT_FOUND", format!("function `{name}` not found"))
}
