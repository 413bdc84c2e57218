//! Handler tests through the router, without sockets.

use axum::body::Body as AxumBody;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::config::Config;
use crate::control_plane::tests::control_plane;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    raw: Bytes,
}

async fn send(app: &Router, method: Method, uri: &str, headers: &[(&str, &str)], body: impl Into<AxumBody>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "localhost:8080");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = app.clone().oneshot(req.body(body.into()).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let raw = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Reply { status, headers, body, raw }
}

const JSON: (&str, &str) = ("content-type", "application/json");

async fn post_json(app: &Router, uri: &str, body: Value) -> Reply {
    send(app, Method::POST, uri, &[JSON], body.to_string()).await
}

async fn app_with(config: Config) -> (ControlPlane, Router) {
    let cp = control_plane(config).await;
    cp.set_ready(true);
    (cp.clone(), router(cp))
}

async fn app() -> (ControlPlane, Router) {
    app_with(Config::default()).await
}

async fn with_echo(app: &Router, name: &str) {
    let r = post_json(app, "/v1/functions", json!({"name": name, "executionMode": "LOCAL"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn function_crud() {
    let (_, app) = app().await;
    let r =
        post_json(&app, "/v1/functions", json!({"name": "hello", "executionMode": "LOCAL", "timeoutMs": 5000})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["dispatcher"], "echo");
    assert_eq!(r.body["timeoutMs"], 5000);
    assert_eq!(r.body["concurrency"], 4);
    assert_eq!(r.headers["location"], "/v1/functions/hello");

    let r = post_json(&app, "/v1/functions", json!({"name": "hello", "executionMode": "LOCAL"})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.body["error"]["code"], "FUNCTION_EXISTS");

    let r = send(&app, Method::GET, "/v1/functions", &[], AxumBody::empty()).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = send(&app, Method::GET, "/v1/functions/hello", &[], AxumBody::empty()).await;
    assert_eq!((r.status, r.body["name"].clone()), (StatusCode::OK, json!("hello")));
    let r = send(&app, Method::DELETE, "/v1/functions/hello", &[], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for method in [Method::GET, Method::DELETE] {
        let r = send(&app, method, "/v1/functions/hello", &[], AxumBody::empty()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.body["error"]["code"], "FUNCTION_NOT_FOUND");
    }
}

#[tokio::test]
async fn invalid_specs_name_the_field() {
    let (_, app) = app().await;
    for (body, field) in [
        (json!({"name": "Bad Name", "executionMode": "LOCAL"}), "name"),
        (json!({"name": "ok", "executionMode": "LOCAL", "timeoutMs": 0}), "timeoutMs"),
        (json!({"name": "ok", "executionMode": "LOCAL", "concurrency": "four"}), "concurrency"),
        (json!({"name": "ok", "executionMode": "SOMEWHERE"}), "executionMode"),
        (json!({"name": "ok", "dispatcher": "missing"}), "dispatcher"),
        (json!({"name": "ok", "dispatcher": "echo", "dispatcherConfig": {"a": 1}}), "dispatcherConfig"),
        (json!({"executionMode": "LOCAL"}), "name"),
    ] {
        let r = post_json(&app, "/v1/functions", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["error"]["field"], field, "{body} → {}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap().len() > 5);
    }
    let r = post_json(&app, "/v1/functions", json!({"name": "ok", "dispatcher": "missing"})).await;
    assert_eq!(r.body["error"]["code"], "UNKNOWN_DISPATCHER");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("echo"), "lists what is available");
    let r = send(&app, Method::POST, "/v1/functions", &[JSON], "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["code"], "INVALID_FUNCTION");
}

#[tokio::test]
async fn sync_invoke_returns_the_output() {
    let (_, app) = app().await;
    with_echo(&app, "echo").await;
    let r =
        post_json(&app, "/v1/functions/echo:invoke", json!({"input": {"message": "hi"}, "metadata": {"k": "v"}})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "success");
    assert_eq!(r.body["output"], json!({"message": "hi"}));
    assert_eq!(r.body["error"], Value::Null);
    let id = r.body["executionId"].as_str().unwrap();
    assert_eq!(r.headers["x-execution-id"], id);

    let r = send(&app, Method::GET, &format!("/v1/executions/{id}"), &[], AxumBody::empty()).await;
    assert_eq!(r.body["status"], "success");
    assert_eq!(r.body["function"], "echo");
    assert_eq!(r.body["attempt"], 1);
    assert!(r.body["finishedAt"].as_str().unwrap().ends_with('Z'));

    // `null` is an input like any other; only a missing `input` is refused.
    let r = post_json(&app, "/v1/functions/echo:invoke", json!({"input": null})).await;
    assert_eq!((r.status, r.body["output"].clone()), (StatusCode::OK, Value::Null));
    assert_eq!(r.body["status"], "success");
}

#[tokio::test]
async fn octet_stream_in_and_out() {
    let (_, app) = app().await;
    with_echo(&app, "echo").await;
    let bytes: &[u8] = &[0, 159, 146, 150, 255];
    let r = send(
        &app,
        Method::POST,
        "/v1/functions/echo:invoke",
        &[("content-type", "application/octet-stream")],
        bytes.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["outputEncoding"], "base64");
    assert_eq!(r.body["outputContentType"], "application/octet-stream");
    assert_eq!(r.body["output"], "AJ+Slv8=");
    let r = send(
        &app,
        Method::POST,
        "/v1/functions/echo:invoke",
        &[("content-type", "application/octet-stream"), ("accept", "application/octet-stream")],
        bytes.to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.raw.as_ref(), bytes, "raw bytes back when asked for");
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    assert!(r.headers.contains_key("x-execution-id"));
}

#[tokio::test]
async fn bad_invoke_requests_are_refused_with_json() {
    let (cp, app) = app().await;
    with_echo(&app, "echo").await;
    let r = post_json(&app, "/v1/functions/echo:invoke", json!({"payload": 1})).await;
    assert_eq!((r.status, r.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("input")));
    // serde would read `[input, metadata]` as the struct.
    let r = post_json(&app, "/v1/functions/echo:invoke", json!([null, null])).await;
    assert_eq!((r.status, r.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("body")));
    let r = post_json(&app, "/v1/functions", json!(["echo"])).await;
    assert_eq!((r.status, r.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("body")));
    let r = send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON], "{").await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("INVALID_REQUEST")));
    let r = send(&app, Method::POST, "/v1/functions/echo:invoke", &[("content-type", "text/csv")], "a,b").await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, json!("UNSUPPORTED_MEDIA_TYPE"))
    );
    let r = post_json(&app, "/v1/functions/nope:invoke", json!({"input": 1})).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("FUNCTION_NOT_FOUND")));
    let r = post_json(&app, "/v1/functions/nope:enqueue", json!({"input": 1})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post_json(&app, "/v1/functions/echo:explode", json!({"input": 1})).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("NOT_FOUND")));
    let r = send(&app, Method::PUT, "/v1/functions", &[], AxumBody::empty()).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!("METHOD_NOT_ALLOWED"))
    );
    let r = send(&app, Method::GET, "/nowhere", &[], AxumBody::empty()).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("NOT_FOUND")));
    assert!(cp.ledger().is_empty(), "no execution was created by a refused request");
}

#[tokio::test]
async fn header_validation() {
    let (cp, app) = app_with(Config { max_timeout: std::time::Duration::from_secs(60), ..Config::default() }).await;
    with_echo(&app, "echo").await;
    for (name, value) in [
        ("x-timeout-ms", "0"),
        ("x-timeout-ms", "60001"),
        ("x-timeout-ms", "soon"),
        ("idempotency-key", "has space"),
        ("idempotency-key", "k".repeat(256).as_str()),
    ] {
        let r = send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON, (name, value)], r#"{"input":1}"#).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name}: {value}");
        assert_eq!(r.body["error"]["code"], "INVALID_HEADER");
        assert!(r.body["error"]["field"].as_str().unwrap().eq_ignore_ascii_case(name));
    }
    let r = send(
        &app,
        Method::POST,
        "/v1/functions/echo:invoke",
        &[JSON, ("x-timeout-ms", "60000"), ("x-trace-id", "trace-1")],
        r#"{"input":1}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let exec = cp.ledger().get(r.body["executionId"].as_str().unwrap()).unwrap();
    assert_eq!(exec.trace_id, "trace-1", "the caller's trace id travels with the execution");
    let r = post_json(&app, "/v1/functions/echo:invoke", json!({"input": 1})).await;
    let exec = cp.ledger().get(r.body["executionId"].as_str().unwrap()).unwrap();
    assert_eq!(exec.trace_id.len(), 32, "generated when absent");
}

#[tokio::test]
async fn odd_optional_headers_from_proxies_are_tolerated() {
    let (cp, app) = app_with(Config::default()).await;
    with_echo(&app, "echo").await;
    let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    let long = "t".repeat(129);
    for value in [xray, "a/b", long.as_str(), "   ", "has space"] {
        let headers = [JSON, ("x-trace-id", value), ("idempotency-key", "  ")];
        let r = send(&app, Method::POST, "/v1/functions/echo:invoke", &headers, r#"{"input":1}"#).await;
        assert_eq!(r.status, StatusCode::OK, "{value}: {:?}", r.body);
        let exec = cp.ledger().get(r.body["executionId"].as_str().unwrap()).unwrap();
        assert_eq!(exec.trace_id.len(), 32, "{value}: replaced by a generated id");
        assert!(exec.trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    // A blank Idempotency-Key is none: two requests make two executions.
    assert_eq!(cp.ledger().len(), 5);
}

#[tokio::test]
async fn idempotency_compares_the_json_value_not_its_bytes() {
    let (cp, app) = app_with(Config::default()).await;
    with_echo(&app, "echo").await;
    let headers = [JSON, ("idempotency-key", "k-1")];
    let first =
        send(&app, Method::POST, "/v1/functions/echo:enqueue", &headers, r#"{"input":{"a":1,"b":[1,2]}}"#).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{:?}", first.body);
    let same = r#"{ "input" : { "b" : [ 1, 2 ], "a" : 1 } }"#;
    let again = send(&app, Method::POST, "/v1/functions/echo:enqueue", &headers, same).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{:?}", again.body);
    assert_eq!(again.body["executionId"], first.body["executionId"], "the same request");
    let other = send(&app, Method::POST, "/v1/functions/echo:enqueue", &headers, r#"{"input":{"a":2}}"#).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", other.body);
    assert_eq!(cp.ledger().len(), 1);
}

#[tokio::test]
async fn body_limit_is_a_json_413() {
    let (cp, app) = app_with(Config { max_body_bytes: 64, ..Config::default() }).await;
    with_echo(&app, "echo").await;
    let big = json!({"input": "x".repeat(100)}).to_string();
    let r = send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON], big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.body["error"]["code"], "PAYLOAD_TOO_LARGE");
    assert!(cp.ledger().is_empty());
    let r = post_json(&app, "/v1/functions/echo:invoke", json!({"input": "small"})).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_function_whose_plugin_is_not_loaded_answers_503_with_the_reason() {
    let (cp, app) = app().await;
    let spec =
        crate::function::FunctionSpec { name: "orphan".into(), dispatcher: Some("gone".into()), ..Default::default() };
    cp.apply(spec).await.unwrap();
    for action in ["invoke", "enqueue"] {
        let r = post_json(&app, &format!("/v1/functions/orphan:{action}"), json!({"input": 1})).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "PLUGIN_UNAVAILABLE");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("orphan") && message.contains("dispatcher `gone` is not loaded"), "{message}");
    }
    // It is listed: it exists, it just cannot run here.
    let r = send(&app, Method::GET, "/v1/functions/orphan", &[], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn enqueue_then_status() {
    let (_, app) = app().await;
    with_echo(&app, "echo").await;
    let r = post_json(&app, "/v1/functions/echo:enqueue", json!({"input": [1, 2, 3]})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["status"], "queued");
    let id = r.body["executionId"].as_str().unwrap().to_string();
    assert_eq!(r.headers["location"], format!("/v1/executions/{id}"));
    // Queryable from the moment of accept, until it finishes.
    loop {
        let r = send(&app, Method::GET, &format!("/v1/executions/{id}"), &[], AxumBody::empty()).await;
        assert_eq!(r.status, StatusCode::OK);
        if r.body["status"] == "success" {
            assert_eq!(r.body["output"], json!([1, 2, 3]));
            break;
        }
        assert!(["queued", "running"].contains(&r.body["status"].as_str().unwrap()));
        tokio::task::yield_now().await;
    }
    let r = send(&app, Method::GET, "/v1/executions/unknown", &[], AxumBody::empty()).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("EXECUTION_NOT_FOUND")));
}

#[tokio::test]
async fn idempotency_over_http() {
    let (_, app) = app().await;
    with_echo(&app, "echo").await;
    let key = ("idempotency-key", "order-42");
    let a = send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON, key], r#"{"input":1}"#).await;
    let b = send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON, key], r#"{"input":1}"#).await;
    assert_eq!(a.body["executionId"], b.body["executionId"]);
    let e = send(&app, Method::POST, "/v1/functions/echo:enqueue", &[JSON, key], r#"{"input":1}"#).await;
    assert_eq!((e.status, e.body["executionId"].clone()), (StatusCode::ACCEPTED, a.body["executionId"].clone()));
    assert_eq!(e.body["status"], "success", "a re-attached enqueue reports the current status");
    let c = send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON, key], r#"{"input":2}"#).await;
    assert_eq!(c.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(c.body["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn callback_authentication() {
    let (cp, app) = app().await;
    with_echo(&app, "echo").await;
    let r = post_json(&app, "/v1/functions/echo:invoke", json!({"input": 1})).await;
    let id = r.body["executionId"].as_str().unwrap().to_string();
    let uri = format!("/v1/internal/executions/{id}:complete");
    let body = r#"{"success":true,"output":5}"#;

    let r = send(&app, Method::POST, &uri, &[JSON], body).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("UNAUTHORIZED")));
    let r = send(&app, Method::POST, &uri, &[JSON, ("authorization", "Bearer forged")], body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let other = cp.invocation(&cp.ledger().get(&id).unwrap(), 1).callback_token;
    let r = send(
        &app,
        Method::POST,
        "/v1/internal/executions/other-id:complete",
        &[JSON, ("authorization", &format!("Bearer {other}"))],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a token is good for its own execution only");
    assert_eq!(cp.metrics().callbacks.with_label_values(&["rejected"]).get(), 3);

    let auth = format!("Bearer {other}");
    let r = send(&app, Method::POST, &uri, &[JSON, ("authorization", &auth)], body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["outcome"], "duplicate", "echo finished it already");
    let r = send(&app, Method::POST, &uri, &[JSON, ("authorization", &auth)], "{}").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // A valid token for an id the host does not know: 404.
    assert_eq!(cp.verify_token("ghost", "x"), None);
    let input = send(
        &app,
        Method::GET,
        &format!("/v1/internal/executions/{id}/input"),
        &[("authorization", &auth)],
        AxumBody::empty(),
    )
    .await;
    assert_eq!((input.status, input.raw.as_ref()), (StatusCode::OK, b"1".as_ref()));
}

#[tokio::test]
async fn unknown_execution_with_valid_token_is_404() {
    let (cp, app) = app_with(Config { callback_secret: Some("s".into()), ..Config::default() }).await;
    let token = crate::token::TokenKey::new(b"s").token("ghost", 1);
    assert_eq!(cp.verify_token("ghost", &token), Some(1));
    let r = send(
        &app,
        Method::POST,
        "/v1/internal/executions/ghost:complete",
        &[JSON, ("authorization", &format!("Bearer {token}"))],
        r#"{"success":true}"#,
    )
    .await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("EXECUTION_NOT_FOUND")));
}

#[tokio::test]
async fn metrics_and_health() {
    let (cp, app) = app().await;
    with_echo(&app, "echo").await;
    post_json(&app, "/v1/functions/echo:invoke", json!({"input": 1})).await;
    send(&app, Method::GET, "/v1/executions/abc", &[], AxumBody::empty()).await;
    let admin = admin_router(cp.clone());
    let r = send(&admin, Method::GET, "/metrics", &[], AxumBody::empty()).await;
    let text = String::from_utf8(r.raw.to_vec()).unwrap();
    assert!(
        text.contains(r#"nanofaas_invocations_total{dispatcher="echo",function="echo",outcome="success"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="/v1/functions/{name}:invoke""#), "routes are templates");
    assert!(text.contains(r#"route="/v1/executions/{id}""#));
    assert!(!text.contains("/v1/executions/abc"), "raw URIs never become labels");
    assert!(text.contains("nanofaas_plugin_call_duration_seconds_bucket"));
    let r = send(&admin, Method::GET, "/health/live", &[], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&admin, Method::GET, "/health/ready", &[], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::OK);
    cp.set_ready(false);
    let r = send(&admin, Method::GET, "/health/ready", &[], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A host with three tokens: `ops` (admin), `ci` (deploy+invoke on `team-a-*`), `app` (invoke).
async fn app_with_tokens() -> (ControlPlane, Router, tempfile::NamedTempFile) {
    use crate::auth::digest_hex;
    let file = tempfile::NamedTempFile::new().unwrap();
    let text = format!(
        "tokens:\n  - {{name: ops, sha256: {}, scopes: [admin]}}\n  \
         - {{name: ci, sha256: {}, scopes: [deploy, invoke], functions: ['team-a-*']}}\n  \
         - {{name: app, sha256: {}, scopes: [invoke]}}\n",
        digest_hex("ops-secret"),
        digest_hex("ci-secret"),
        digest_hex("app-secret"),
    );
    std::fs::write(file.path(), text).unwrap();
    let (cp, app) = app_with(Config { auth_tokens: Some(file.path().to_path_buf()), ..Config::default() }).await;
    (cp, app, file)
}

const OPS: (&str, &str) = ("authorization", "Bearer ops-secret");
const CI: (&str, &str) = ("authorization", "Bearer ci-secret");
const APP: (&str, &str) = ("authorization", "Bearer app-secret");

#[tokio::test]
async fn tokens_scope_every_route() {
    let (cp, app, _file) = app_with_tokens().await;
    let spec = |name: &str| json!({"name": name, "executionMode": "LOCAL", "env": {"API_KEY": "hunter2"}}).to_string();

    // No token, a wrong one: 401, and nothing is registered.
    let r = send(&app, Method::POST, "/v1/functions", &[JSON], spec("team-a-x")).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("UNAUTHENTICATED")));
    let r = send(&app, Method::GET, "/v1/functions", &[("authorization", "Bearer nope")], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(cp.registry().list().is_empty());

    // Scope and pattern decide: 403 as JSON naming the token and scope.
    let r = send(&app, Method::POST, "/v1/functions", &[JSON, APP], spec("team-a-x")).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::FORBIDDEN, json!("FORBIDDEN")));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("`app` has no `deploy`"), "{}", r.body);
    let r = send(&app, Method::POST, "/v1/functions", &[JSON, CI], spec("team-b-x")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(&app, Method::POST, "/v1/functions", &[JSON, CI], spec("team-a-x")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = send(&app, Method::POST, "/v1/functions", &[JSON, OPS], spec("team-b-x")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(cp.metrics().auth_rejections.with_label_values(&["forbidden"]).get(), 2);

    // Reading: deploy sees secrets; invoke gets them redacted; patterns filter the list.
    let r = send(&app, Method::GET, "/v1/functions/team-a-x", &[CI], AxumBody::empty()).await;
    assert_eq!(r.body["env"]["API_KEY"], "hunter2");
    let r = send(&app, Method::GET, "/v1/functions", &[APP], AxumBody::empty()).await;
    assert_eq!(r.body.as_array().unwrap().len(), 2);
    assert!(!r.raw.windows(7).any(|w| w == b"hunter2"), "no secret to an invoke-only caller: {}", r.body);
    assert_eq!(r.body[0]["env"]["API_KEY"], super::functions::REDACTED);
    let r = send(&app, Method::GET, "/v1/functions", &[CI], AxumBody::empty()).await;
    let names: Vec<_> = r.body.as_array().unwrap().iter().map(|f| f["name"].clone()).collect();
    assert_eq!(names, [json!("team-a-x")]);
    let r = send(&app, Method::GET, "/v1/functions/team-b-x", &[CI], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Invoking and reading executions need invoke on the function.
    let r = send(&app, Method::POST, "/v1/functions/team-b-x:invoke", &[JSON, CI], r#"{"input":1}"#).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(&app, Method::POST, "/v1/functions/team-b-x:invoke", &[JSON, APP], r#"{"input":1}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let id = r.body["executionId"].as_str().unwrap().to_string();
    let r = send(&app, Method::GET, &format!("/v1/executions/{id}"), &[CI], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(&app, Method::GET, &format!("/v1/executions/{id}"), &[APP], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::OK);
    // Logs show what the function prints: deploy on the function, not invoke.
    let r = send(&app, Method::GET, &format!("/v1/executions/{id}/logs"), &[APP], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(&app, Method::GET, &format!("/v1/executions/{id}/logs"), &[OPS], AxumBody::empty()).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("LOGS_NOT_AVAILABLE")));

    // Deleting needs deploy.
    let r = send(&app, Method::DELETE, "/v1/functions/team-a-x", &[APP], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = send(&app, Method::DELETE, "/v1/functions/team-a-x", &[CI], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn cross_site_and_rebinding_requests_fail() {
    let (cp, app) = app().await;
    let attack = r#"{"name":"x","dispatcher":"local","command":["sh","-c","touch pwned"]}"#;
    // A cross-site fetch may send text/plain (or a form type) without a preflight: 415.
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let r = send(&app, Method::POST, "/v1/functions", &[("content-type", ct)], attack).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}");
        assert_eq!(r.body["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
    }
    // No Content-Type at all: 415 too, for registration and for invocation.
    let r = send(&app, Method::POST, "/v1/functions", &[], attack).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    with_echo(&app, "echo").await;
    let r = send(&app, Method::POST, "/v1/functions/echo:invoke", &[], r#"{"input":1}"#).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // DNS rebinding: the page's own name arrives as Host: 421, before anything else.
    let r = send(&app, Method::POST, "/v1/functions", &[JSON, ("host", "attacker.example:8080")], attack).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::MISDIRECTED_REQUEST, json!("UNKNOWN_HOST")));
    let r = send(&app, Method::GET, "/v1/functions", &[("host", "attacker.example")], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "reads too: a rebound page must not read env");
    assert_eq!(cp.registry().list().len(), 1, "only the echo registered");
    // No CORS: a preflight gets no permission.
    let r = send(
        &app,
        Method::OPTIONS,
        "/v1/functions",
        &[("origin", "http://attacker.example"), ("access-control-request-method", "POST")],
        AxumBody::empty(),
    )
    .await;
    assert!(r.headers.get("access-control-allow-origin").is_none());
    // The names of the host do work.
    for host in ["127.0.0.1:8080", "localhost", "[::1]:8080"] {
        let r = send(&app, Method::GET, "/v1/functions", &[("host", host)], AxumBody::empty()).await;
        assert_eq!(r.status, StatusCode::OK, "{host}");
    }
}

/// An execution at attempt 2 (held, not driven: as a replica holds one another replica drives).
fn held_at_attempt_two(cp: &ControlPlane) -> std::sync::Arc<crate::execution::Execution> {
    use crate::execution::{Record, Snapshot, Status, unix_ms};
    let spec = crate::control_plane::tests::echo_spec("echo").resolve(std::time::Duration::from_secs(60)).unwrap();
    let now = std::time::SystemTime::now();
    cp.ledger().adopt(Record {
        id: "held".into(),
        spec,
        trace_id: "t".into(),
        idempotency_key: None,
        input: crate::control_plane::tests::json_input("1"),
        accepted_at: now,
        deadline_unix_ms: unix_ms(now) + 60_000,
        snapshot: Snapshot { status: Status::Running, attempt: 2, ..Snapshot::queued() },
        pending: None,
        owner: Some("elsewhere".into()),
        epoch: 1,
    })
}

async fn complete_with(app: &Router, id: &str, token: &str) -> Reply {
    send(
        app,
        Method::POST,
        &format!("/v1/internal/executions/{id}:complete"),
        &[JSON, ("authorization", &format!("Bearer {token}"))],
        r#"{"success":true,"output":2}"#,
    )
    .await
}

#[tokio::test]
async fn a_stale_attempts_token_cannot_settle_the_current_attempt() {
    let (cp, app) = app().await;
    with_echo(&app, "echo").await;
    let exec = held_at_attempt_two(&cp);
    let r = complete_with(&app, &exec.id, &cp.invocation(&exec, 1).callback_token).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("STALE_ATTEMPT")));
    assert!(!exec.is_terminal());
    // A token of a later attempt than this copy knows: the copy lags behind the driver, which
    // made the token when it started that attempt.
    let r = complete_with(&app, &exec.id, &cp.invocation(&exec, 3).callback_token).await;
    assert_eq!((r.status, r.body["outcome"].clone()), (StatusCode::OK, json!("accepted")), "{}", r.body);
    let s = exec.snapshot();
    assert_eq!((s.status.as_str(), s.attempt), ("success", 3));
}

#[tokio::test]
async fn wrong_methods_bad_paths_and_huge_inputs_get_short_json_errors() {
    let (_, app) = app().await;
    with_echo(&app, "echo").await;
    let r = send(&app, Method::GET, "/v1/functions/echo:invoke", &[], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");
    let r = send(&app, Method::POST, "/v1/functions/echo", &[JSON], "{}").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "GET, PUT, DELETE");
    let r = send(&app, Method::PUT, "/v1/executions/x", &[JSON], "{}").await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!("METHOD_NOT_ALLOWED"))
    );
    assert!(r.headers.get("allow").is_some());
    let r = send(&app, Method::GET, "/v1/functions/%FF%FE", &[], AxumBody::empty()).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("INVALID_PATH")));
    let huge = json!({"name": "a".repeat(2 << 20)}).to_string();
    let r = send(&app, Method::POST, "/v1/functions", &[JSON], huge).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.raw.len() < 4096, "the error does not echo the input: {} bytes", r.raw.len());
}

#[tokio::test]
async fn deleted_functions_leave_no_metric_series() {
    let (cp, app) = app().await;
    for i in 0..50 {
        let name = format!("f{i}");
        with_echo(&app, &name).await;
        let r = post_json(&app, &format!("/v1/functions/{name}:invoke"), json!({"input": i})).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(&app, Method::DELETE, &format!("/v1/functions/{name}"), &[], AxumBody::empty()).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    with_echo(&app, "kept").await;
    post_json(&app, "/v1/functions/kept:invoke", json!({"input": 1})).await;
    let scrape = cp.metrics().render();
    assert!(!scrape.contains("function=\"f1"), "no series of deleted functions:\n{scrape}");
    assert!(scrape.contains("nanofaas_invocations_total{dispatcher=\"echo\",function=\"kept\",outcome=\"success\"} 1"));
}

#[tokio::test]
async fn retained_results_are_capped_by_bytes_oldest_first() {
    let cap = crate::ledger::RECORD_OVERHEAD + 1000;
    let (cp, app) = app_with(Config { max_retained_bytes: cap, ..Config::default() }).await;
    with_echo(&app, "echo").await;
    let text = "x".repeat(300);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = post_json(&app, "/v1/functions/echo:invoke", json!({"input": text})).await;
        assert_eq!(r.status, StatusCode::OK);
        ids.push(r.body["executionId"].as_str().unwrap().to_string());
        // A record plus input and output of ~300 bytes each: at most one execution fits.
        assert!(cp.metrics().retained_bytes.get() as usize <= cap, "{}", cp.metrics().retained_bytes.get());
    }
    assert!(cp.metrics().retained_bytes.get() > 0);
    let newest = send(&app, Method::GET, &format!("/v1/executions/{}", ids[4]), &[], AxumBody::empty()).await;
    assert_eq!(newest.status, StatusCode::OK, "the newest stays");
    let oldest = send(&app, Method::GET, &format!("/v1/executions/{}", ids[0]), &[], AxumBody::empty()).await;
    assert_eq!(oldest.status, StatusCode::NOT_FOUND, "the oldest went first");
    assert_eq!(cp.metrics().evicted.with_label_values(&["bytes"]).get(), 4);
}

#[tokio::test]
async fn an_output_over_the_retained_cap_goes_to_its_waiter_then_only_its_digest_stays() {
    use sha2::Digest;
    let (cp, app) = app_with(Config { max_retained_output_bytes: 64, ..Config::default() }).await;
    with_echo(&app, "echo").await;
    let text = "x".repeat(200);
    let output = serde_json::to_string(&text).unwrap();
    let key = ("idempotency-key", "big");
    let r =
        send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON, key], json!({"input": text}).to_string()).await;
    assert_eq!((r.status, r.body["output"].clone()), (StatusCode::OK, json!(text)), "the waiter gets it whole");
    let id = r.body["executionId"].as_str().unwrap().to_string();
    // Readers after it get the size and the digest, with a reason.
    let read = send(&app, Method::GET, &format!("/v1/executions/{id}"), &[], AxumBody::empty()).await;
    assert_eq!((read.status, read.body["status"].clone()), (StatusCode::OK, json!("success")));
    assert_eq!(read.body["output"], Value::Null);
    let kept = &read.body["outputNotRetained"];
    assert_eq!(kept["code"], "OUTPUT_NOT_RETAINED");
    assert_eq!(kept["bytes"], json!(output.len()));
    assert_eq!(kept["sha256"], json!(hex::encode(sha2::Sha256::digest(output.as_bytes()))));
    assert_eq!(kept["contentType"], "application/json");
    // Only the record and its input (the same JSON as the echoed output) are counted as retained.
    assert_eq!(cp.metrics().retained_bytes.get() as usize, crate::ledger::RECORD_OVERHEAD + output.len());
    // A sync replay of the same request cannot answer with an output that is gone: 410.
    let replay =
        send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON, key], json!({"input": text}).to_string()).await;
    assert_eq!((replay.status, replay.body["error"]["code"].clone()), (StatusCode::GONE, json!("OUTPUT_NOT_RETAINED")));
    assert_eq!(replay.headers["x-execution-id"], id.as_str());
    // Small outputs are kept as they are.
    let small = post_json(&app, "/v1/functions/echo:invoke", json!({"input": 1})).await;
    let id = small.body["executionId"].as_str().unwrap();
    let read = send(&app, Method::GET, &format!("/v1/executions/{id}"), &[], AxumBody::empty()).await;
    assert_eq!((read.body["output"].clone(), read.body.get("outputNotRetained")), (json!(1), None));
}

#[tokio::test]
async fn request_bodies_held_at_once_are_bounded_by_bytes() {
    let config = Config { max_inflight_body_bytes: 4096, ..Config::default() };
    let (_, app) = app_with(config).await;
    with_echo(&app, "echo").await;
    // A client that declares 3000 bytes and sends them slowly holds 3 KiB of the 4 KiB budget.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let slow = tokio::spawn({
        let app = app.clone();
        async move {
            let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
            let headers = [JSON, ("content-length", "3000")];
            send(&app, Method::POST, "/v1/functions/echo:invoke", &headers, AxumBody::from_stream(stream)).await
        }
    });
    tx.send(Ok(Bytes::from_static(b"{\"input\": \""))).await.unwrap();
    tokio::task::yield_now().await;
    let body = json!({"input": "y".repeat(1500)}).to_string();
    let len = body.len().to_string();
    let mut refused = None;
    for _ in 0..100 {
        let r = send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON, ("content-length", &len)], body.clone())
            .await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(r);
            break;
        }
        // The slow request has not reached the budget yet.
        tokio::task::yield_now().await;
    }
    let refused = refused.expect("a request over the budget is refused");
    assert_eq!(refused.body["error"]["code"], "OVERLOADED");
    assert_eq!(refused.headers["retry-after"], "1");
    // Small requests still fit, and bodiless ones are never charged.
    let small = post_json(&app, "/v1/functions/echo:invoke", json!({"input": 1})).await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(send(&app, Method::GET, "/v1/functions", &[], AxumBody::empty()).await.status, StatusCode::OK);
    // Once the slow request ends, its share is back.
    tx.send(Ok(Bytes::from(format!("{}\"}}", "z".repeat(3000 - 13))))).await.unwrap();
    drop(tx);
    let _ = slow.await.unwrap();
    let r = send(&app, Method::POST, "/v1/functions/echo:invoke", &[JSON, ("content-length", &len)], body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// What the reference nanofaas CLI sends for `fn apply` (Jackson writes every field, `null` when
/// unset) and how it reads errors (`message` beside `error`).
#[tokio::test]
async fn the_reference_clients_bodies_are_accepted() {
    let (_, app) = app().await;
    let body = r#"{"name":"hello","image":"ghcr.io/acme/hello:1","command":null,"env":null,"resources":null,
        "timeoutMs":5000,"concurrency":null,"queueSize":null,"maxRetries":null,"endpointUrl":null,
        "executionMode":"LOCAL","runtimeMode":null,"runtimeCommand":null,
        "scalingConfig":{"strategy":"INTERNAL","minReplicas":1,"maxReplicas":4,"metrics":null},
        "imagePullSecrets":null}"#;
    let r = send(&app, Method::POST, "/v1/functions", &[JSON], body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["dispatcher"], "echo");
    assert_eq!(r.body["scalingConfig"]["maxReplicas"], 4, "kept and shown");
    let warnings: Vec<_> = r.headers.get_all("warning").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("299 nanofaas \"scalingConfig is ignored"), "{warnings:?}");

    // Its default mode, with no `deployment` plugin loaded: refused, naming the alternatives.
    let body = r#"{"name":"web","image":"ghcr.io/acme/web:1","executionMode":"DEPLOYMENT","command":null}"#;
    let r = send(&app, Method::POST, "/v1/functions", &[JSON], body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"]["field"], "executionMode");
    let message = r.body["message"].as_str().expect("a top-level message for the reference client");
    assert_eq!(message, r.body["error"]["message"]);
    for alternative in ["POOL", "REMOTE", "LOCAL", "dispatcher"] {
        assert!(message.contains(alternative), "{message}");
    }
    let r = send(&app, Method::GET, "/v1/functions/web", &[], AxumBody::empty()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "nothing was registered");
}

#[tokio::test]
async fn update_replaces_a_function_against_its_version() {
    let (cp, app) = app().await;
    let r = post_json(&app, "/v1/functions", json!({"name": "f", "executionMode": "LOCAL", "timeoutMs": 1000})).await;
    assert_eq!((r.status, r.body["version"].clone()), (StatusCode::CREATED, json!(1)));
    assert_eq!(r.headers["etag"], "\"1\"");
    let before = cp.registry().get("f").unwrap();

    let put = |headers: Vec<(&'static str, &'static str)>, body: Value| {
        let app = app.clone();
        async move {
            let mut all = vec![JSON];
            all.extend(headers);
            send(&app, Method::PUT, "/v1/functions/f", &all, body.to_string()).await
        }
    };
    let r = put(vec![("if-match", "\"1\"")], json!({"name": "f", "executionMode": "LOCAL", "timeoutMs": 2000})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!((r.body["version"].clone(), r.body["timeoutMs"].clone()), (json!(2), json!(2000)));
    assert_eq!(r.headers["etag"], "\"2\"");
    assert_eq!(before.spec.timeout_ms, Some(1000), "what was registered before is untouched");
    assert_eq!(cp.registry().get("f").unwrap().spec.version, Some(2));

    // A change made against version 1 is refused and changes nothing.
    let r = put(vec![("if-match", "\"1\"")], json!({"name": "f", "executionMode": "LOCAL", "timeoutMs": 3000})).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::PRECONDITION_FAILED, json!("VERSION_MISMATCH"))
    );
    // The body's version counts when there is no If-Match (a GET edited and sent back).
    let r = put(vec![], json!({"name": "f", "version": 1, "executionMode": "LOCAL", "timeoutMs": 3000})).await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let r = send(&app, Method::GET, "/v1/functions/f", &[], AxumBody::empty()).await;
    assert_eq!((r.body["version"].clone(), r.body["timeoutMs"].clone()), (json!(2), json!(2000)));
    assert_eq!(r.headers["etag"], "\"2\"");

    // `*` and no precondition at all replace whatever is there.
    let r = put(vec![("if-match", "*")], json!({"name": "f", "executionMode": "LOCAL", "timeoutMs": 4000})).await;
    assert_eq!((r.status, r.body["version"].clone()), (StatusCode::OK, json!(3)));
    let r = put(vec![], json!({"name": "f", "executionMode": "LOCAL"})).await;
    assert_eq!((r.status, r.body["version"].clone()), (StatusCode::OK, json!(4)));

    // Refusals name the problem and change nothing.
    let r = put(vec![], json!({"name": "g", "executionMode": "LOCAL"})).await;
    assert_eq!((r.status, r.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("name")));
    let r = put(vec![("if-match", "soon")], json!({"name": "f", "executionMode": "LOCAL"})).await;
    assert_eq!((r.status, r.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("If-Match")));
    let r = put(vec![], json!({"name": "f", "executionMode": "LOCAL", "timeoutMs": 0})).await;
    assert_eq!((r.status, r.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("timeoutMs")));
    let r = send(&app, Method::PUT, "/v1/functions/nope", &[JSON], r#"{"name":"nope","executionMode":"LOCAL"}"#).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (StatusCode::NOT_FOUND, json!("FUNCTION_NOT_FOUND")));
    assert_eq!(cp.registry().get("f").unwrap().spec.version, Some(4));
    assert!(cp.registry().get("nope").is_none());
}
