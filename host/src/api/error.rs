//! The API's one error type and its one conversion to a response.
//!
//! Every error is JSON: `{"error": {"code": "...", "message": "...", "field": "..."}, "message":
//! "..."}` with a stable upper-case `code`, a message for humans and, for invalid input, the field
//! at fault. The top-level `message` repeats the message for clients of the reference nanofaas,
//! which read `message` beside `error`.
//! Internal errors are logged with their detail and answered with a generic message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::control_plane::{RegisterError, SubmitError};

/// Longest error message, in bytes.
pub const MAX_MESSAGE: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary), marked with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
    /// Methods of the route, for 405.
    pub allow: Option<&'static str>,
    /// The execution's state, when it is what the request conflicts with (409).
    pub state: Option<&'static str>,
}

/// An error as it travels: what the server writes and the CLI reads.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
    /// `error.message` again, for clients of the reference nanofaas.
    #[serde(default)]
    #[schema(value_type = String)]
    pub message: Cow<'a, str>,
    /// The execution's state, when that is what the request conflicts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::execution::Status>)]
    pub status: Option<Cow<'a, str>>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable, upper-case: `INVALID_FUNCTION`, `FUNCTION_NOT_FOUND`, `QUEUE_FULL`, …
    #[schema(value_type = String)]
    pub code: Cow<'a, str>,
    #[schema(value_type = String)]
    pub message: Cow<'a, str>,
    /// The field or header at fault, for invalid input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub field: Option<Cow<'a, str>>,
}

impl ApiError {
    /// An error; a message longer than [`MAX_MESSAGE`] is cut (inputs are never echoed whole).
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let message = truncate(&message.into(), MAX_MESSAGE);
        Self { status, code, message, field: None, retry_after: None, allow: None, state: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(truncate(&field.into(), 200));
        self
    }

    pub fn bad_request(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message).field(field)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid `Authorization: Bearer <token>` for this execution is required",
        )
    }

    /// The store could not do what the request needs: 503, nothing was accepted.
    pub fn store(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE", e.to_string())
        }
    }

    /// Logs the detail; the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error; see the host's logs")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = ErrorDetail {
            code: Cow::Borrowed(self.code),
            message: Cow::Borrowed(&self.message),
            field: self.field.as_deref().map(Cow::Borrowed),
        };
        let body =
            ErrorBody { error: detail, message: Cow::Borrowed(&self.message), status: self.state.map(Cow::Borrowed) };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        let message = e.to_string();
        match e {
            RegisterError::Invalid(spec) => ApiError::bad_request(
                "INVALID_FUNCTION",
                spec.field.clone(),
                format!("{}: {}", spec.field, spec.message),
            ),
            RegisterError::UnknownDispatcher { .. } => {
                ApiError::bad_request("UNKNOWN_DISPATCHER", "dispatcher", message)
            }
            RegisterError::Refused { .. } => ApiError::bad_request("DISPATCHER_REFUSED", "dispatcherConfig", message),
            RegisterError::Fault(_) => ApiError::new(StatusCode::BAD_GATEWAY, "PLUGIN_FAULT", message),
            RegisterError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "FUNCTION_EXISTS", message),
            RegisterError::NotFound(_) => ApiError::not_found("FUNCTION_NOT_FOUND", message),
            RegisterError::VersionMismatch { .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "VERSION_MISMATCH", message).field("If-Match")
            }
            RegisterError::Store(e) => ApiError::store(e),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::UnknownFunction(_) => ApiError::not_found("FUNCTION_NOT_FOUND", message),
            SubmitError::Overloaded { .. } => {
                ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "QUEUE_FULL", message) }
            }
            SubmitError::Idempotency(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED", message)
                    .field("Idempotency-Key")
            }
            SubmitError::Unavailable { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "PLUGIN_UNAVAILABLE", message)
            }
            SubmitError::Store(e) => ApiError::store(e),
        }
    }
}
