//! The `pool` dispatcher and the `http` capability, against a real HTTP server on loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use nanofaas::config::Config;
use nanofaas::control_plane::{ControlPlane, RegisterError};
use nanofaas::execution::Status;
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    flaky_calls: AtomicU32,
    attempts: std::sync::Mutex<Vec<(String, String)>>,
}

/// A warm endpoint with one route per behaviour; returns its base URL.
async fn endpoint() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route(
            "/ok",
            post(|headers: HeaderMap, Json(body): Json<Value>| async move {
                let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                Json(json!({"got": body, "executionId": h("x-execution-id"), "traceId": h("x-trace-id"),
                    "attempt": h("x-dispatch-attempt"), "key": h("idempotency-key")}))
            }),
        )
        .route("/text", post(|| async { ([("content-type", "text/plain")], "plain words") }))
        .route("/boom", post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "database exploded") }))
        .route("/missing", post(|| async { (StatusCode::NOT_FOUND, "no such thing") }))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .route(
            "/flaky",
            post(|State(seen): State<Arc<Seen>>, headers: HeaderMap| async move {
                let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                seen.attempts.lock().unwrap().push((h("x-dispatch-attempt"), h("idempotency-key")));
                if seen.flaky_calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "warming up")
                } else {
                    (StatusCode::OK, "ready")
                }
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

fn fast_retries() -> Config {
    Config { retry_base: Duration::from_millis(20), retry_max: Duration::from_millis(100), ..Config::default() }
}

async fn pool(cp: &ControlPlane, name: &str, url: &str, tweak: impl FnOnce(&mut nanofaas::function::FunctionSpec)) {
    register(cp, name, "pool", &[], json!({}), |s| {
        s.endpoint_url = Some(url.to_string());
        tweak(s);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_posts_the_envelope_with_headers() {
    let (base, _) = endpoint().await;
    let cp = control_plane(fast_retries()).await;
    pool(&cp, "ok", &format!("{base}/ok"), |_| {}).await;
    let opts = nanofaas::control_plane::SubmitOptions {
        trace_id: Some("t-1".into()),
        idempotency_key: Some("key-1".into()),
        ..Default::default()
    };
    let exec = cp.submit("ok", input(r#"{"n": 1}"#), opts).await.unwrap().execution().clone();
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Success, "{:?}", s.error);
    let out: Value = serde_json::from_slice(&s.output.unwrap().body).unwrap();
    assert_eq!(out["got"], json!({"input": {"n": 1}, "metadata": {}}));
    assert_eq!(out["executionId"], exec.id.as_str());
    assert_eq!(
        (out["traceId"].as_str(), out["attempt"].as_str(), out["key"].as_str()),
        (Some("t-1"), Some("1"), Some("key-1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_type_of_the_response_is_kept() {
    let (base, _) = endpoint().await;
    let cp = control_plane(fast_retries()).await;
    pool(&cp, "text", &format!("{base}/text"), |_| {}).await;
    let exec = submit(&cp, "text", "1").await;
    exec.wait_done().await;
    let out = exec.snapshot().output.unwrap();
    assert_eq!((out.content_type.as_str(), out.body.as_ref()), ("text/plain", b"plain words".as_ref()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_reported() {
    let (base, _) = endpoint().await;
    let cp = control_plane(fast_retries()).await;
    pool(&cp, "boom", &format!("{base}/boom"), |s| s.max_retries = Some(2)).await;
    let exec = submit(&cp, "boom", "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Error, 3));
    assert_eq!(s.error_kind, Some(nanofaas::execution::ErrorKind::Platform), "502, not 500");
    let e = s.error.unwrap();
    assert_eq!(e.code, "ENDPOINT_ERROR");
    assert!(e.message.contains("500") && e.message.contains("database exploded"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_the_functions_own() {
    let (base, _) = endpoint().await;
    let cp = control_plane(fast_retries()).await;
    pool(&cp, "missing", &format!("{base}/missing"), |_| {}).await;
    let exec = submit(&cp, "missing", "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Error, 1), "not retried");
    assert_eq!(s.error_kind, Some(nanofaas::execution::ErrorKind::Function));
    let e = s.error.unwrap();
    assert_eq!(e.code, "FUNCTION_ERROR");
    assert!(e.message.contains("404") && e.message.contains("no such thing"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_are_visible_in_attempts() {
    let (base, seen) = endpoint().await;
    let cp = control_plane(fast_retries()).await;
    pool(&cp, "flaky", &format!("{base}/flaky"), |_| {}).await;
    let exec = submit(&cp, "flaky", "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Success, 3));
    let attempts = seen.attempts.lock().unwrap().clone();
    let numbers: Vec<&str> = attempts.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(numbers, ["1", "2", "3"]);
    assert!(attempts.iter().all(|(_, key)| *key == exec.id), "one Idempotency-Key across attempts");
    assert_eq!(cp.metrics().retries.with_label_values(&["flaky"]).get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retryable_unavailability() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cp = control_plane(fast_retries()).await;
    pool(&cp, "gone", &format!("http://127.0.0.1:{port}/x"), |s| s.max_retries = Some(1)).await;
    let exec = submit(&cp, "gone", "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Error, 2));
    assert_eq!(s.error.unwrap().code, "ENDPOINT_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_times_out_at_the_deadline_and_the_request_is_dropped() {
    let (base, _) = endpoint().await;
    let cp = control_plane(fast_retries()).await;
    pool(&cp, "slow", &format!("{base}/slow"), |s| s.timeout_ms = Some(300)).await;
    let started = tokio::time::Instant::now();
    let exec = submit(&cp, "slow", "1").await;
    exec.wait_done().await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(exec.status(), Status::Timeout);
    while cp.running_drivers() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(cp.plugins().capabilities().http.tracked(), 0, "the in-flight request was aborted");
}

#[tokio::test]
async fn destinations_outside_the_allow_list_are_refused_at_registration() {
    let cp = control_plane(Config::default()).await;
    let result =
        register(&cp, "far", "pool", &[], json!({}), |s| s.endpoint_url = Some("http://10.1.2.3:80/".into())).await;
    match result {
        Err(RegisterError::Refused { reason, .. }) => {
            assert!(reason.contains("not an allowed destination"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let result = register(&cp, "none", "pool", &[], json!({}), |_| {}).await;
    assert!(matches!(result, Err(RegisterError::Refused { .. })), "an endpoint is required");
    // The operator can widen the list.
    let cp = control_plane(Config { http_allow: vec!["10.0.0.0/8".into()], ..Config::default() }).await;
    register(&cp, "far", "pool", &[], json!({}), |s| s.endpoint_url = Some("http://10.1.2.3:80/".into()))
        .await
        .unwrap();
    // Or give one plugin a list of its own (the plugin config's `allowedHosts`), which replaces
    // the host's for that plugin only.
    let policy =
        nanofaas::plugin::PluginPolicy { allowed_hosts: Some(vec!["10.0.0.0/8".into()]), ..Default::default() };
    let config = Config { plugin_policies: [("pool".to_string(), policy)].into(), ..Config::default() };
    let cp = control_plane(config).await;
    register(&cp, "far", "pool", &[], json!({}), |s| s.endpoint_url = Some("http://10.1.2.3:80/".into()))
        .await
        .unwrap();
    let near = register(&cp, "near", "pool", &[], json!({}), |s| s.endpoint_url = Some("http://127.0.0.1:9/".into()));
    match near.await {
        Err(RegisterError::Refused { reason, .. }) => assert!(reason.contains("(allowed: 10.0.0.0/8)"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The testkit's requests still go by the host's list (loopback).
    testkit(&cp, "probe", json!({"behavior": "http", "url": "http://10.1.2.3:80/"}), |_| {}).await;
    let exec = submit(&cp, "probe", "1").await;
    exec.wait_done().await;
    let error = exec.snapshot().error.unwrap();
    assert!(error.message.contains("not an allowed destination") && error.message.contains("127.0.0.0/8"), "{error:?}");
}

#[tokio::test]
async fn headers_that_could_split_a_request_and_zero_timeouts_are_refused_at_registration() {
    let cp = control_plane(Config::default()).await;
    let url = |s: &mut nanofaas::function::FunctionSpec| s.endpoint_url = Some("http://127.0.0.1:9/".into());
    for (config, needle) in [
        (json!({"headers": {"X-A": "ok\r\nX-Injected: 1"}}), "CR, LF"),
        (json!({"headers": {"Bad Name": "v"}}), "not a valid header name"),
        (json!({"headers": {"": "v"}}), "not a valid header name"),
        (json!({"timeoutMs": 0}), "timeoutMs"),
    ] {
        match register(&cp, "p", "pool", &[], config.clone(), url).await {
            Err(RegisterError::Refused { reason, .. }) => assert!(reason.contains(needle), "{config}: {reason}"),
            other => panic!("{config}: expected a refusal, got {other:?}"),
        }
    }
    register(&cp, "p", "pool", &[], json!({"headers": {"X-Api-Key": "k\tv"}, "timeoutMs": 5}), url).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_are_enforced_at_call_time_whatever_the_plugin_does() {
    // The testkit plugin asks for any URL it is configured with, without checking it first.
    let (base, _) = endpoint().await;
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "probe-far", json!({"behavior": "http", "url": "http://10.1.2.3/latest"}), |_| {}).await;
    let exec = submit(&cp, "probe-far", "1").await;
    exec.wait_done().await;
    let e = exec.snapshot().error.unwrap();
    assert_eq!(e.code, "HTTP_REFUSED");
    assert!(e.message.contains("NotAllowed") && e.message.contains("not an allowed destination"), "{}", e.message);

    // A name is checked where it resolves: only loopback is allowed here.
    let port = base.rsplit(':').next().unwrap();
    let cp = control_plane(Config { http_allow: vec!["10.0.0.0/8".into()], ..Config::default() }).await;
    testkit(&cp, "probe-name", json!({"behavior": "http", "url": format!("http://localhost:{port}/ok")}), |_| {}).await;
    let exec = submit(&cp, "probe-name", "1").await;
    exec.wait_done().await;
    assert_eq!(exec.snapshot().error.unwrap().code, "HTTP_REFUSED");

    // And a plugin that was not granted `http` gets nothing at all.
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "probe-near", json!({"behavior": "http", "url": format!("{base}/ok")}), |s| {
        s.dispatcher = Some("nogrant".into())
    })
    .await;
    let exec = submit(&cp, "probe-near", "1").await;
    exec.wait_done().await;
    let e = exec.snapshot().error.unwrap();
    assert!(e.message.contains("not granted"), "{}", e.message);
    // With the grant, the same request goes through.
    testkit(&cp, "probe-ok", json!({"behavior": "http", "url": format!("{base}/ok")}), |_| {}).await;
    let exec = submit(&cp, "probe-ok", "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Success, "{:?}", s.error);
    // The route takes POST; the plugin sent GET. What matters: the request reached the endpoint.
    assert_eq!(s.output.unwrap().body.as_ref(), br#"{"status":405}"#);
}
