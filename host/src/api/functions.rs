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
use super::{ApiError, Body, ErrorBody, PathParam, method_not_allowed};
use crate::auth::{Grant, Scope};
use crate::control_plane::ControlPlane;
use crate::function::FunctionSpec;

/// What an env value reads as to a caller without `deploy`.
pub const REDACTED: &str = "<redacted>";

/// Register a function.
#[utoipa::path(post, path = "/v1/functions", operation_id = "registerFunction", tag = "functions", request_body = FunctionSpec, responses(
    (status = 201, description = "Registered; the body is the resolved spec (every default filled in)", body = FunctionSpec,
     headers(("Location" = String), ("ETag" = String, description = "The version, quoted"),
             ("Warning" = String, description = "`299 nanofaas \"…\"` for each field accepted and ignored"))),
    (status = 403, description = "The token has no `deploy` scope on this function", body = ErrorBody),
    (status = 409, description = "A function of that name exists", body = ErrorBody),
    (status = 502, description = "The dispatcher plugin failed while validating the spec", body = ErrorBody),
))]
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

/// Replace a function; executions already accepted keep the version they were accepted with.
#[utoipa::path(put, path = "/v1/functions/{name}", operation_id = "updateFunction", tag = "functions", request_body = FunctionSpec,
    params(("name" = String, Path, example = "echo", description = "The function"),
           ("If-Match" = Option<String>, Header, nullable = false, description = "`*` or the quoted version the change is made against")),
    responses(
        (status = 200, description = "Replaced (or unchanged, when the definition is the same)", body = FunctionSpec,
         headers(("ETag" = String), ("Warning" = String))),
        (status = 403, description = "The token has no `deploy` scope on this function", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 405, description = "An action (`…:invoke`) takes POST", body = ErrorBody),
        (status = 412, description = "The function changed since the version in `If-Match` (or the body's `version`)", body = ErrorBody),
        (status = 502, description = "The dispatcher plugin failed while validating the spec", body = ErrorBody),
))]
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
        let quoted = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = HeaderValue::from_str(&format!("299 nanofaas \"{quoted}\"")) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
}

/// The functions the token sees.
#[utoipa::path(get, path = "/v1/functions", operation_id = "listFunctions", tag = "functions", responses(
    (status = 200, description = "Functions; without the `deploy` scope, `env` values are redacted and `dispatcherConfig` left out", body = Vec<FunctionSpec>),
))]
pub(super) async fn list(State(cp): State<ControlPlane>, Extension(grant): Caller) -> Json<Vec<FunctionSpec>> {
    let visible = cp.registry().list().into_iter().filter(|f| grant.sees(f.name()));
    Json(visible.map(|f| shown(&grant, &f.spec)).collect())
}

/// One function.
#[utoipa::path(get, path = "/v1/functions/{name}", operation_id = "getFunction", tag = "functions",
    params(("name" = String, Path, example = "echo", description = "The function")),
    responses(
        (status = 200, description = "The resolved spec", body = FunctionSpec, headers(("ETag" = String))),
        (status = 403, description = "The token has no scope on this function", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 405, description = "An action (`…:invoke`) takes POST", body = ErrorBody),
))]
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

/// Delete a function; executions already accepted run to their end.
#[utoipa::path(delete, path = "/v1/functions/{name}", operation_id = "deleteFunction", tag = "functions",
    params(("name" = String, Path, example = "echo", description = "The function")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The token has no `deploy` scope on this function", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 405, description = "An action (`…:invoke`) takes POST", body = ErrorBody),
))]
pub(super) async fn delete(
    State(cp): State<ControlPlane>,
    Extension(grant): Caller,
    PathParam(name): PathParam,
) -> Result<StatusCode, ApiError> {
    if name.contains(':') {
        return Err(method_not_allowed("POST"));
    }
    require(&cp, &grant, Scope::Deploy, &name)?;
    if cp.unregister(&name).await.map_err(ApiError::store)? { Ok(StatusCode::NO_CONTENT) } else { Err(unknown(&name)) }
}

/// A spec from a request body, or a 400 naming the field.
fn parse_spec(body: &[u8]) -> Result<FunctionSpec, ApiError> {
    super::json_object(body)?;
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
