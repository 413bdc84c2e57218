//! What every API request passes before a handler: the `Host` it names, the content type of a
//! write, and the caller's token.
//!
//! The order is fixed: a request for a foreign host (DNS rebinding) is refused before anything
//! else (421); a POST whose body is not declared JSON or bytes (a cross-site form or a simple
//! `fetch`) gets 415; then the caller is authenticated (401) and its [`Grant`] goes into the
//! request's extensions for the handlers to check scopes against (403). The callback and input
//! routes carry per-attempt tokens of their own and skip the API token. Last, a request with a
//! body takes its share of the [`BodyBudget`] (503 when the budget is spent) and holds it until
//! it is answered, so the bodies held at once are bounded by bytes, whatever the connections.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, bearer};
use crate::auth::{Grant, Scope};
use crate::control_plane::ControlPlane;

/// Bytes of request bodies held at once, in KiB permits. A request is charged its
/// `Content-Length`, or the body limit when it has none (chunked), from before its body is
/// read until its response is produced.
#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<tokio::sync::Semaphore>,
    total_kib: u32,
    max_body: usize,
}

impl BodyBudget {
    pub fn new(total_bytes: usize, max_body: usize) -> Self {
        let total_kib = u32::try_from(total_bytes.div_ceil(1024)).unwrap_or(u32::MAX).max(1);
        Self { permits: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)), total_kib, max_body }
    }

    fn charge(&self, request: &Request) -> u32 {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
        let bytes = match declared {
            Some(n) => n.min(self.max_body),
            None if chunked => self.max_body,
            None => 0,
        };
        u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).min(self.total_kib)
    }
}

pub(super) async fn budget(State(budget): State<BodyBudget>, request: Request, next: Next) -> Response {
    let kib = budget.charge(&request);
    if kib == 0 {
        return next.run(request).await;
    }
    let Ok(_held) = budget.permits.clone().try_acquire_many_owned(kib) else {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            "the request bodies this host holds are at --max-inflight-body-bytes; retry later",
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}

/// The names this host answers to (besides IP addresses and `localhost`).
#[derive(Clone, Debug, Default)]
pub struct HostNames {
    names: Vec<String>,
    any: bool,
}

impl HostNames {
    /// `allowed` names (`*`: any) plus the host of `callback_base`.
    pub fn new(allowed: &[String], callback_base: &str) -> Self {
        let mut names: Vec<String> = allowed.iter().map(|n| n.trim().to_ascii_lowercase()).collect();
        if let Ok(url) = url::Url::parse(callback_base)
            && let Some(host) = url.host_str()
        {
            names.push(host.to_ascii_lowercase());
        }
        let any = names.iter().any(|n| n == "*");
        Self { names, any }
    }

    /// Whether a `Host` header value (name or address, optional port) is this host.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        if name.parse::<IpAddr>().is_ok() {
            // A page can only send an address as Host if it was loaded from that address,
            // which is then this host: no rebinding is possible.
            return true;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || self.names.contains(&name)
    }
}

pub(super) async fn guard(State(cp): State<ControlPlane>, mut request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    match host {
        Some(host) if cp.host_names().allows(&host) => {}
        Some(host) => {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "UNKNOWN_HOST",
                format!(
                    "this host does not answer to `{}`; add the name with --allowed-host",
                    super::truncate(&host, 100)
                ),
            )
            .field("Host")
            .into_response();
        }
        None => return ApiError::bad_request("MISSING_HOST", "Host", "a Host header is required").into_response(),
    }
    let path = request.uri().path();
    if !path.starts_with("/v1/internal/") && path != "/openapi.json" {
        match cp.auth().authenticate(bearer(request.headers())) {
            Ok(grant) => {
                request.extensions_mut().insert(grant);
            }
            Err(_) => {
                cp.metrics().auth_rejections.with_label_values(&["unauthenticated"]).inc();
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "a valid `Authorization: Bearer <token>` is required",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// A POST needs a content type that a page cannot send cross-site without a CORS preflight
/// (`text/plain` and the form types it can), so a page cannot drive the API from a browser.
pub(super) async fn content_type(request: Request, next: Next) -> Response {
    // A POST that the route does not take is answered 405 by its handler.
    let takes_post = super::allowed_methods(&request).contains("POST");
    if request.method() == Method::POST && takes_post && !writable_content_type(&request) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "a POST needs `Content-Type: application/json` or `application/octet-stream`",
        )
        .field("Content-Type")
        .into_response();
    }
    next.run(request).await
}

fn writable_content_type(request: &Request) -> bool {
    let Some(value) = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json") || mime.eq_ignore_ascii_case("application/octet-stream")
}

/// 403 unless the caller's grant has `scope` on `function`.
pub(super) fn require(cp: &ControlPlane, grant: &Grant, scope: Scope, function: &str) -> Result<(), ApiError> {
    if grant.allows(scope, function) {
        return Ok(());
    }
    cp.metrics().auth_rejections.with_label_values(&["forbidden"]).inc();
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
        format!(
            "token `{}` has no `{}` scope on function `{}`",
            grant.name,
            scope.as_str(),
            super::truncate(function, 100)
        ),
    ))
}

/// The caller of a request that passed [`guard`].
pub(super) type Caller = axum::Extension<Arc<Grant>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let names = HostNames::new(&["api.example.com".into()], "http://nanofaas.ns.svc:8080");
        for ok in [
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.0.0.7",
            "localhost:8080",
            "LOCALHOST",
            "api.example.com",
            "nanofaas.ns.svc:8080",
        ] {
            assert!(names.allows(ok), "{ok}");
        }
        for bad in ["attacker.example:8080", "evil.localhost.attacker", "example.com", ""] {
            assert!(!names.allows(bad), "{bad}");
        }
        assert!(HostNames::new(&["*".into()], "").allows("anything"));
    }
}
