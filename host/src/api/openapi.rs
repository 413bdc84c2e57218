//! The OpenAPI 3.1 document of the public API, generated from the handlers' annotations and
//! the wire types' schemas, and served at `GET /openapi.json`.
//!
//! The operations are described on the handlers (`#[utoipa::path]`); what every operation can
//! answer because of the guards in front of them (a bad `Host`, no token, a full body budget, a
//! store that is down) is added here once, by [`Guarded`]. `docs/openapi.json` is this
//! document as committed; a test fails when the two differ.

use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, HttpMethod, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{ErrorBody, InvocationResponse};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "nanofaas",
        description = "A function-as-a-service control plane: register functions, invoke them \
                       synchronously or asynchronously, follow and cancel executions. Every request \
                       but the callbacks of function runtimes (`/v1/internal/…`) and this document \
                       needs `Authorization: Bearer <token>`. Health and metrics are served on the \
                       admin port, outside this document.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::functions::register,
        super::functions::list,
        super::functions::get,
        super::functions::update,
        super::functions::delete,
        super::invoke::invoke,
        super::invoke::enqueue,
        super::executions::get,
        super::executions::action,
        super::executions::logs,
        super::plugins::list,
        super::internal::action,
        super::internal::input,
        serve,
    ),
    modifiers(&Guarded),
    security(("bearer" = [])),
    tags(
        (name = "functions", description = "Register, update, list and delete functions"),
        (name = "invocations", description = "Run a function, waiting for its result or not"),
        (name = "executions", description = "Follow and cancel executions, read their logs"),
        (name = "plugins", description = "The dispatcher plugins this host loaded"),
        (name = "internal", description = "Callbacks of function runtimes, authenticated by the execution's token"),
    ),
)]
struct ApiDoc;

/// The document of a host whose longest deadline is `max_timeout` (`--max-timeout-ms`): the
/// bounds of `X-Timeout-Ms` and `timeoutMs` are that host's.
pub fn document(max_timeout: Duration) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let max = Value::from(max_timeout.as_millis() as u64);
    let operations = doc["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut());
    let parameters = operations
        .flat_map(|item| item.as_object_mut().into_iter().flat_map(|item| item.values_mut()))
        .flat_map(|operation| operation.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten());
    for parameter in parameters.filter(|p| p["name"] == "X-Timeout-Ms") {
        parameter["schema"]["maximum"] = max.clone();
    }
    doc["components"]["schemas"]["FunctionSpec"]["properties"]["timeoutMs"]["maximum"] = max;
    doc
}

/// The document of a host with the default settings, as `nanofaas openapi` prints it and
/// `docs/openapi.json` holds it: pretty JSON and a final newline.
pub fn document_json() -> String {
    let doc = document(Duration::from_millis(crate::config::defaults::MAX_TIMEOUT_MS));
    let mut text = serde_json::to_string_pretty(&doc).expect("the document serializes");
    text.push('\n');
    text
}

// Built once, when the router is.
/// This host's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "getOpenApi", security(()), responses(
    (status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"),
))]
pub(super) fn serve(max_timeout: Duration) -> impl Fn() -> std::future::Ready<Response> + Clone {
    let body = Bytes::from(serde_json::to_vec(&document(max_timeout)).expect("the document serializes"));
    move || std::future::ready(([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response())
}

/// A failed invocation: the execution's record when the function ran and failed (its
/// `error.code` says why), or an error when the host could not run it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes a response; the handlers write one of the two types
pub(super) enum InvocationFailure {
    Execution(InvocationResponse<'static>),
    Error(ErrorBody<'static>),
}

/// Adds the answers of the guards in front of every operation, and the bearer scheme.
struct Guarded;

impl Modify for Guarded {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("token").build()),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = path == "/openapi.json";
            let methods = [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
            ];
            for (method, operation) in methods {
                if let Some(operation) = operation {
                    guard_responses(operation, &method, public);
                }
            }
        }
    }
}

fn guard_responses(operation: &mut Operation, method: &HttpMethod, public: bool) {
    let mut add = |status: &str, description: &str| {
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name("ErrorBody"))))
                    .build(),
            )
            .build();
        operation.responses.responses.entry(status.to_string()).or_insert(RefOr::T(response));
    };
    add("400", "Invalid input: `error.field` names the field or header at fault");
    add("421", "The `Host` header names no host this server answers to (DNS-rebinding defence)");
    add("503", "Not accepted now: the store is unavailable or request bodies in flight are over budget");
    if !public {
        add("401", "No valid `Authorization: Bearer <token>`");
    }
    if matches!(method, HttpMethod::Post | HttpMethod::Put) {
        add("413", "The request body is larger than the host accepts");
        add("415", "A POST needs `Content-Type: application/json` or `application/octet-stream`");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    /// `docs/openapi.json` is the document; `UPDATE_OPENAPI=1 cargo test` rewrites it.
    #[test]
    fn committed_document_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let current = super::document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &current).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json differs from the API's document: run `UPDATE_OPENAPI=1 cargo test -p nanofaas \
             committed_document_is_current` and commit the result"
        );
    }

    #[test]
    fn every_route_is_described() {
        let doc = super::document(Duration::from_secs(60));
        let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
        for path in [
            "/v1/functions",
            "/v1/functions/{name}",
            "/v1/functions/{name}:invoke",
            "/v1/functions/{name}:enqueue",
            "/v1/executions/{id}",
            "/v1/executions/{id}:cancel",
            "/v1/executions/{id}/logs",
            "/v1/plugins",
            "/v1/internal/executions/{id}:complete",
            "/v1/internal/executions/{id}/input",
            "/openapi.json",
        ] {
            assert!(paths.contains(&path), "{path} is not in the document: {paths:?}");
        }
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .map(|operation| operation["operationId"].as_str().expect("every operation has an id"))
            .collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "operation ids are unique: {ids:?}");
    }

    /// The bounds of deadlines are the host's.
    #[test]
    fn deadlines_are_bounded_by_the_hosts_maximum() {
        let doc = super::document(Duration::from_secs(60));
        let invoke = &doc["paths"]["/v1/functions/{name}:invoke"]["post"]["parameters"];
        let timeout = invoke.as_array().unwrap().iter().find(|p| p["name"] == "X-Timeout-Ms").unwrap();
        assert_eq!(timeout["schema"]["maximum"], 60_000);
        assert_eq!(timeout["schema"]["minimum"], 1);
        assert_eq!(doc["components"]["schemas"]["FunctionSpec"]["properties"]["timeoutMs"]["maximum"], 60_000);
    }
}
