//! `/v1/functions`: register, list, get, update, delete.
//!
//! Every spec carries its `version`; `GET` and `PUT` answer it as the `ETag` too, and `PUT` takes
//! `If-Match` (or the body's `version`) to refuse, with 412, a change made against an older
//! version. Registering, updating and deleting need the `deploy` scope on the function's name. Reading needs any
//! scope on it; a caller without `deploy` gets the spec with its `env` values redacted and no
//! `dispatcherConfig` (both may hold credentials).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
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
    let spec = parse_spec(&body)?;
    require(&cp, &grant, Scope::Deploy, &spec.name)?;
    let resolved = cp.register(spec).await?;
    let location = format!("/v1/functions/{}", resolved.name);
    let mut response = (StatusCode::CREATED, [(header::LOCATION, location)], Json(&resolved)).into_response();
    add_warnings(&mut response, &resolved);
    add_etag(&mut response, &resolved);
    Ok(response)
}

/// `PUT /v1/functions/{name}`: replaces the function, 200 with the new spec; 404 when there is
/// none; 412 when `If-Match` (or the body's `version`) is not the current version.
pub(super) async fn update(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(name): PathParam,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    if name.contains(':') {
        return Err(method_not_allowed("POST"));
    }
    require(&cp, &grant, Scope::Deploy, &name)?;
    let spec = parse_spec(&body)?;
    if spec.name != name {
        let message = format!("name: `{}` does not match the function in the path, `{name}`", spec.name);
        return Err(ApiError::bad_request("INVALID_FUNCTION", "name", message));
    }
    let expected = match if_match(&headers)? {
        IfMatch::Absent => spec.version,
        IfMatch::Any => None,
        IfMatch::Version(v) => Some(v),
    };
    let resolved = cp.update(spec, expected).await?;
    let mut response = Json(&resolved).into_response();
    add_warnings(&mut response, &resolved);
    add_etag(&mut response, &resolved);
    Ok(response)
}

enum IfMatch {
    Absent,
    Any,
    Version(u64),
}

/// `If-Match`: `*`, or one version as an entity tag (`"3"`, `W/"3"`) or bare (`3`).
fn if_match(headers: &HeaderMap) -> Result<IfMatch, ApiError> {
    let Some(value) = super::header(headers, "if-match")? else { return Ok(IfMatch::Absent) };
    if value == "*" {
        return Ok(IfMatch::Any);
    }
    let tag = value.strip_prefix("W/").unwrap_or(value);
    let tag = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag);
    tag.parse().map(IfMatch::Version).map_err(|_| {
        ApiError::bad_request(
            "INVALID_HEADER",
            "If-Match",
            format!("If-Match must be `*` or a function version such as \"3\", got `{value}`"),
        )
    })
}

/// `ETag: "<version>"`.
fn add_etag(response: &mut Response, spec: &FunctionSpec) {
    if let Some(version) = spec.version {
        let tag = HeaderValue::from_str(&format!("\"{version}\"")).expect("digits and quotes");
        response.headers_mut().insert(header::ETAG, tag);
    }
}

/// One `Warning: 299 nanofaas "…"` header (RFC 7234's shape, as the Kubernetes API server sends)
/// for each part of the spec that was accepted but will not be acted on.
fn add_warnings(response: &mut Response, spec: &FunctionSpec) {
    for warning in spec.warnings() {
        tracing::warn!(function = %spec.name, %warning, "function spec warning");
        let quoted = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = HeaderValue::from_str(&format!("299 nanofaas \"{quoted}\"")) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
}

pub(super) async fn list(State(cp): State<ControlPlane>, Extension(grant): Caller) -> Json<Vec<FunctionSpec>> {
    let visible = cp.registry().list().into_iter().filter(|f| grant.sees(f.name()));
    Json(visible.map(|f| shown(&grant, &f.spec)).collect())
}

pub(super) async fn get(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    if name.contains(':') {
        return Err(method_not_allowed("POST"));
    }
    if !grant.sees(&name) {
        require(&cp, &grant, Scope::Invoke, &name)?;
    }
    let function = cp.registry().get(&name).ok_or_else(|| unknown(&name))?;
    let mut response = Json(shown(&grant, &function.spec)).into_response();
    add_etag(&mut response, &function.spec);
    Ok(response)
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

/// A spec from a request body, or a 400 naming the field.
fn parse_spec(body: &[u8]) -> Result<FunctionSpec, ApiError> {
    FunctionSpec::from_json(body)
        .map_err(|e| ApiError::bad_request("INVALID_FUNCTION", e.field.clone(), format!("{}: {}", e.field, e.message)))
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
