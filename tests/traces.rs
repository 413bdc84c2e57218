//! OpenTelemetry traces: the real host exporting over OTLP/HTTP to a receiver in this test
//! (tests/support/src/otlp.rs), a `pool` function on a loopback endpoint that reports the
//! `traceparent` it was sent. (The same for a `k8s-job` execution is in tests/kubernetes.rs.)

use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use nanofaas_test_support::Host;
use nanofaas_test_support::otlp::{ReceivedSpan, Receiver};
use serde_json::{Value, json};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

/// An endpoint whose `/echo` answers with the `traceparent` it got, and `/missing` with 404.
async fn endpoint() -> String {
    let app = axum::Router::new()
        .route(
            "/echo",
            post(|headers: HeaderMap| async move {
                let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
                Json(json!({"traceparent": traceparent}))
            }),
        )
        .route("/missing", post(|| async { (StatusCode::NOT_FOUND, "no such thing") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn register_pool(host: &Host, name: &str, url: &str) {
    let spec = json!({"name": name, "dispatcher": "pool", "endpointUrl": url, "maxRetries": 0});
    let (status, body) = host.post("/v1/functions", spec).await.unwrap();
    assert_eq!(status, 201, "{body}");
}

/// A sync invoke with a caller's `traceparent` in trace `trace`: (status, body).
async fn invoke(host: &Host, name: &str, trace: &str) -> (u16, Value) {
    let r = host
        .client
        .post(host.url(&format!("/v1/functions/{name}:invoke")))
        .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
        .json(&json!({"input": {"n": 1}}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span: {spans:#?}");
    found[0]
}

fn has(spans: &[ReceivedSpan], name: &str) -> bool {
    spans.iter().any(|s| s.name == name)
}

async fn traced_host(receiver: &Receiver) -> Host {
    let args = ["--otlp-endpoint", receiver.endpoint.as_str()];
    Host::start(binary(), &args, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_execution_is_one_trace_from_the_callers_span_to_the_endpoint() {
    let receiver = Receiver::start().await.unwrap();
    let base = endpoint().await;
    let host = traced_host(&receiver).await;
    register_pool(&host, "traced", &format!("{base}/echo")).await;

    let (status, body) = invoke(&host, "traced", TRACE).await;
    assert_eq!(status, 200, "{body}");
    let id = body["executionId"].as_str().unwrap().to_string();
    let spans = receiver.trace_when(TRACE, Duration::from_secs(30), |s| has(s, "execution traced")).await.unwrap();

    // The root of the execution hangs from the caller's span and says what it was.
    let root = named(&spans, "execution traced");
    assert_eq!(root.parent_span_id, CALLER_SPAN);
    assert_eq!(root.kind, 2, "server");
    assert_eq!(root.attr("faas.invocation_id"), Some(id.as_str()));
    assert_eq!(root.attr("nanofaas.status"), Some("success"));
    assert_eq!(root.status_code, 0, "no error");
    assert_eq!(root.service_name, "nanofaas");
    // accept, queue and the attempt under it; the plugin call under the attempt; the request
    // under the call.
    for name in ["accept", "queue", "attempt"] {
        assert_eq!(named(&spans, name).parent_span_id, root.span_id, "{name}");
    }
    let attempt = named(&spans, "attempt");
    assert_eq!(attempt.attr("nanofaas.attempt"), Some("1"));
    let dispatch = named(&spans, "plugin dispatch");
    assert_eq!(dispatch.parent_span_id, attempt.span_id);
    assert_eq!(dispatch.attr("nanofaas.plugin"), Some("pool"));
    let request = named(&spans, "POST");
    assert_eq!(request.parent_span_id, dispatch.span_id);
    assert_eq!(request.kind, 3, "client");
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert_eq!(request.attr("url.full"), Some(format!("{base}/echo").as_str()));
    // The endpoint was sent the request span as its parent: it can continue the trace.
    assert_eq!(body["output"]["traceparent"], format!("00-{TRACE}-{}-01", request.span_id));
    assert!(spans.iter().all(|s| s.start_unix_nanos <= s.end_unix_nanos));
    assert!(root.start_unix_nanos <= attempt.start_unix_nanos && attempt.end_unix_nanos <= root.end_unix_nanos);
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_marked_as_the_functions_or_the_platforms() {
    let receiver = Receiver::start().await.unwrap();
    let base = endpoint().await;
    let host = traced_host(&receiver).await;
    // A 404 is the function's own answer; a refused connection is the platform failing it.
    register_pool(&host, "missing", &format!("{base}/missing")).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    register_pool(&host, "unreachable", &format!("http://{closed}/run")).await;

    let function_trace = "11111111111111111111111111111111";
    let (status, body) = invoke(&host, "missing", function_trace).await;
    assert_eq!(status, 500, "{body}");
    let spans =
        receiver.trace_when(function_trace, Duration::from_secs(30), |s| has(s, "execution missing")).await.unwrap();
    let root = named(&spans, "execution missing");
    assert_eq!((root.status_code, root.attr("error.type")), (2, Some("function")), "{root:#?}");
    assert_eq!(named(&spans, "attempt").attr("error.type"), Some("function"));

    let platform_trace = "22222222222222222222222222222222";
    let (status, body) = invoke(&host, "unreachable", platform_trace).await;
    assert_eq!(status, 502, "{body}");
    let spans = receiver
        .trace_when(platform_trace, Duration::from_secs(30), |s| has(s, "execution unreachable"))
        .await
        .unwrap();
    let root = named(&spans, "execution unreachable");
    assert_eq!((root.status_code, root.attr("error.type")), (2, Some("platform")), "{root:#?}");
    assert_eq!(root.attr("nanofaas.error.code"), body["error"]["code"].as_str());
    let request = named(&spans, "POST");
    assert_eq!((request.status_code, request.attr("nanofaas.error.code")), (2, Some("CONNECT")));
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_callers_traceparent_reaches_the_endpoint_unchanged() {
    let base = endpoint().await;
    let host = Host::start(binary(), &[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).await.unwrap();
    register_pool(&host, "plain", &format!("{base}/echo")).await;
    let (status, body) = invoke(&host, "plain", TRACE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["traceparent"], format!("00-{TRACE}-{CALLER_SPAN}-01"));
    // The execution is in the caller's trace.
    let (_, exec) = host.get(&format!("/v1/executions/{}", body["executionId"].as_str().unwrap())).await.unwrap();
    assert_eq!(exec["traceId"], TRACE);
    // One that is not a trace context is ignored, not refused: nothing is passed on.
    let (status, body) = invoke(&host, "plain", "not-hex").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["traceparent"], "");
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_process_is_given_its_spawns_span_as_traceparent() {
    let receiver = Receiver::start().await.unwrap();
    let host = traced_host(&receiver).await;
    let script = r#"cat > /dev/null; printf '{"traceparent": "%s"}' "$TRACEPARENT""#;
    let spec = json!({"name": "env", "dispatcher": "local", "command": ["sh", "-c", script]});
    let (status, body) = host.post("/v1/functions", spec).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let trace = "33333333333333333333333333333333";
    let (status, body) = invoke(&host, "env", trace).await;
    assert_eq!(status, 200, "{body}");
    let spans = receiver.trace_when(trace, Duration::from_secs(30), |s| has(s, "execution env")).await.unwrap();
    let spawn = named(&spans, "process spawn");
    assert_eq!(spawn.parent_span_id, named(&spans, "plugin dispatch").span_id);
    assert_eq!(spawn.attr("process.executable.name"), Some("sh"));
    assert_eq!(body["output"]["traceparent"], format!("00-{trace}-{}-01", spawn.span_id));
    host.stop().await.unwrap();
}
