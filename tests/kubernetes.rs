//! Kubernetes Job dispatch end to end: the real `nanofaas` binary over HTTP, a real
//! kube-apiserver + Job controller + garbage collector on loopback, the real `nanofaas-runtime`
//! in each pod, and the test harness as the kubelet (tests/support/src/kube.rs).
//!
//! Every scenario runs in a namespace of its own, with the host authenticated as the service
//! account of `deploy/rbac.yaml` — so a permission missing from the shipped Role fails here.

mod kube_common;

use std::time::{Duration, Instant};

use kube_common::*;
use nanofaas_test_support::Host;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_and_its_callback_answers_the_invocation() {
    let ns = "k-callback";
    let host = host_in(ns, true, &[]).await;
    register(&host, job_function("wc", "k8s-job", &["python3", "/functions/python/wordcount.py"], 30_000, json!({})))
        .await;
    let (status, body) =
        host.post("/v1/functions/wc:invoke", json!({"input": {"text": "a rose is a rose"}})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], json!({"words": 5, "top": [["a", 2], ["rose", 2], ["is", 1]]}));
    // Released after completion: the Job (and by the GC its pod) is deleted.
    wait_no_jobs(ns).await;
    let m = metrics(&host).await;
    assert_eq!(metric(&m, "nanofaas_job_created_total", r#"function="wc""#), 1.0, "{m}");
    assert_eq!(metric(&m, "nanofaas_callbacks_total", r#"outcome="accepted""#), 1.0);
    assert_eq!(metric(&m, "nanofaas_job_start_latency_seconds_count", r#"function="wc""#), 1.0);
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_callback_the_invocation_times_out_at_its_deadline_and_the_job_is_deleted() {
    let ns = "k-nocallback";
    // The runtime cannot reach the host: the callback URL points at a closed port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = host_in(ns, true, &["--callback-url", &format!("http://127.0.0.1:{dead}")]).await;
    register(&host, job_function("lost", "k8s-job", &["python3", "-c", PY], 3_000, json!({}))).await;
    // And a pod that hangs.
    register(&host, job_function("hang", "k8s-job", &["python3", "-c", PY], 3_000, json!({}))).await;
    for (function, input) in [("lost", json!({})), ("hang", json!({"sleep": 300}))] {
        let started = Instant::now();
        let (status, body) =
            host.post(&format!("/v1/functions/{function}:invoke"), json!({"input": input})).await.unwrap();
        assert_eq!((status, body["status"].clone()), (504, json!("timeout")), "{function}: {body}");
        assert!(started.elapsed() >= Duration::from_millis(3_000));
        let (_, exec) = host.get(&format!("/v1/executions/{}", body["executionId"].as_str().unwrap())).await.unwrap();
        assert_eq!(exec["error"]["code"], "TIMEOUT");
    }
    wait_no_jobs(ns).await;
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_job_creation_fails_at_once_without_leaking_the_slot() {
    // Forbidden: the service account has no Role in this namespace.
    let ns = "k-forbidden";
    let host = host_in(ns, false, &[]).await;
    let mut spec = job_function("f", "k8s-job", &["true"], 30_000, json!({}));
    spec["concurrency"] = json!(1);
    register(&host, spec).await;
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = host.post("/v1/functions/f:invoke", json!({"input": 1})).await.unwrap();
        assert_eq!((status, body["error"]["code"].clone()), (502, json!("K8S_ERROR")), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("403"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(30), "an error, not a wait for the deadline");
    }
    host.stop().await.unwrap();

    // Invalid: the API server refuses the manifest (a resource quantity it cannot parse).
    let ns = "k-invalid";
    let host = host_in(ns, true, &[]).await;
    let mut spec = job_function("bad", "k8s-job", &["true"], 30_000, json!({}));
    spec["resources"] = json!({"cpu": "lots"});
    register(&host, spec).await;
    let (status, body) = host.post("/v1/functions/bad:invoke", json!({"input": 1})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (502, json!("K8S_ERROR")), "{body}");
    let (_, exec) = host.get(&format!("/v1/executions/{}", body["executionId"].as_str().unwrap())).await.unwrap();
    assert_eq!(exec["attempt"], 1, "a 4xx from the API is final: {exec}");
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_an_error_after_bounded_retries() {
    let cluster = cluster();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let good = cluster.write_kubeconfig("down.kubeconfig", &cluster.admin_token, "default").unwrap();
    let text = std::fs::read_to_string(&good).unwrap().replace(&cluster.server, &format!("https://127.0.0.1:{dead}"));
    let down = good.with_file_name("really-down.kubeconfig");
    std::fs::write(&down, text).unwrap();
    let host =
        Host::start(binary(), &["--retry-base-ms", "50"], &[("KUBECONFIG", down.to_str().unwrap())]).await.unwrap();
    let mut spec = job_function("f", "job-poll", &["true"], 30_000, json!({}));
    spec["maxRetries"] = json!(2);
    register(&host, spec).await;
    let started = Instant::now();
    let (status, body) = host.post("/v1/functions/f:invoke", json!({"input": 1})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (502, json!("K8S_ERROR")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let (_, exec) = host.get(&format!("/v1/executions/{}", body["executionId"].as_str().unwrap())).await.unwrap();
    assert_eq!(exec["attempt"], 3, "connection failures are retried: {exec}");
    host.stop().await.unwrap();
}

/// A proxy in front of the host's callbacks that fails the first `n` with 503.
struct FlakyProxy {
    url: String,
    /// Where to forward (the host's API), set once the host runs.
    target: std::sync::Arc<std::sync::Mutex<String>>,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn flaky_proxy(n: usize) -> FlakyProxy {
    use std::sync::atomic::Ordering;
    let seen: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let target: std::sync::Arc<std::sync::Mutex<String>> = Default::default();
    let (s, t) = (seen.clone(), target.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (seen, target) = (s.clone(), t.clone());
        async move {
            if seen.fetch_add(1, Ordering::SeqCst) < n {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new());
            }
            let url = format!("{}{}", target.lock().unwrap(), req.uri());
            let auth = req.headers().get("authorization").cloned().unwrap();
            let body = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap();
            let r = reqwest::Client::new()
                .post(url)
                .header("authorization", auth)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap(), r.text().await.unwrap())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    FlakyProxy { url, target, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_fails_at_first_is_retried_by_the_runtime() {
    let ns = "k-flaky";
    let proxy = flaky_proxy(2).await;
    let host = host_in(ns, true, &["--callback-url", &proxy.url]).await;
    *proxy.target.lock().unwrap() = host.api.clone();
    register(&host, job_function("flaky", "k8s-job", &["python3", "-c", PY], 30_000, json!({}))).await;
    let (status, body) = host.post("/v1/functions/flaky:invoke", json!({"input": {"n": 1}})).await.unwrap();
    assert_eq!((status, body["output"].clone()), (200, json!({"echo": {"n": 1}})), "{body}");
    assert_eq!(proxy.seen.load(std::sync::atomic::Ordering::SeqCst), 3, "two refused, the third delivered");
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_poll_recovers_the_output_when_no_callback_is_possible() {
    let ns = "k-poll";
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = host_in(ns, true, &["--callback-url", &format!("http://127.0.0.1:{dead}")]).await;
    register(
        &host,
        job_function(
            "wc",
            "job-poll",
            &["python3", "/functions/python/wordcount.py"],
            30_000,
            json!({"callbackBudgetMs": 500}),
        ),
    )
    .await;
    let started = Instant::now();
    let (status, body) = host.post("/v1/functions/wc:invoke", json!({"input": "to be or not to be"})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], json!({"words": 6, "top": [["to", 2], ["be", 2], ["or", 1]]}));
    assert!(started.elapsed() < Duration::from_secs(30));
    wait_no_jobs(ns).await;
    let m = metrics(&host).await;
    assert_eq!(metric(&m, "nanofaas_callbacks_total", r#"outcome="accepted""#), 0.0, "no callback came");
    host.stop().await.unwrap();
}

/// An execution's pod logs are asked of the API server, with the permissions of
/// `deploy/rbac.yaml`, while the pod exists. The test kubelet serves no logs: its pods name no
/// node, for which the API server answers an empty log — but it answers (a missing `pods/log`
/// permission would be a 403 in the entry's `error`). With a real kubelet the text comes back
/// (`kubernetes_cluster.rs`).
/// A function that answers with the `TRACEPARENT` its pod was given.
const TRACEPARENT_PY: &str =
    "import json,os,sys\njson.load(sys.stdin)\nprint(json.dumps({'traceparent': os.environ.get('TRACEPARENT','')}))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_execution_is_one_trace_and_its_pod_can_continue_it() {
    use nanofaas_test_support::otlp::{ReceivedSpan, Receiver};
    let ns = "k-traces";
    let receiver = Receiver::start().await.unwrap();
    let args = ["--otlp-endpoint", receiver.endpoint.as_str()];
    let host = host_with_env(ns, true, &args, &[("OTEL_BSP_SCHEDULE_DELAY", "50")]).await;
    register(&host, job_function("tp", "k8s-job", &["python3", "-c", TRACEPARENT_PY], 60_000, json!({}))).await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let r = host
        .client
        .post(host.url("/v1/functions/tp:invoke"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let names = |s: &[ReceivedSpan]| s.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let spans = receiver
        .trace_when(trace, Duration::from_secs(30), |s| {
            ["execution tp", "callback", "kubernetes job delete"].iter().all(|n| names(s).iter().any(|m| m == n))
        })
        .await
        .unwrap();
    let one = |name: &str| {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one `{name}`: {:?}", names(&spans));
        found[0].clone()
    };
    let root = one("execution tp");
    assert_eq!(root.parent_span_id, "00f067aa0ba902b7");
    let attempt = one("attempt");
    assert_eq!(attempt.parent_span_id, root.span_id);
    let dispatch = one("plugin dispatch");
    assert_eq!(dispatch.parent_span_id, attempt.span_id);
    let create = one("kubernetes job create");
    assert_eq!((create.parent_span_id.as_str(), create.kind), (dispatch.span_id.as_str(), 3));
    assert!(create.attr("k8s.job.name").is_some_and(|j| j.starts_with("tp-")), "{create:?}");
    // The callback is received under the attempt it reports for, even though no task of the
    // driver is in it; the Job is deleted by the release that follows.
    let callback = one("callback");
    assert_eq!((callback.parent_span_id.as_str(), callback.kind), (attempt.span_id.as_str(), 2));
    assert_eq!(callback.attr("nanofaas.callback.outcome"), Some("Accepted"));
    let release = one("plugin release");
    assert_eq!(release.parent_span_id, attempt.span_id);
    assert_eq!(one("kubernetes job delete").parent_span_id, release.span_id);
    // The pod got the Job's creation as its parent span.
    assert_eq!(body["output"]["traceparent"], format!("00-{trace}-{}-01", create.span_id), "{body}");
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_logs_are_asked_of_the_api_server_while_the_pod_exists() {
    let ns = "k-logs";
    let host = host_in(ns, true, &[]).await;
    register(&host, job_function("slow", "k8s-job", &["python3", "-c", PY], 60_000, json!({}))).await;
    let (status, body) = host.post("/v1/functions/slow:enqueue", json!({"input": {"sleep": 300}})).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["executionId"].as_str().unwrap().to_string();
    let mut logs = Value::Null;
    for _ in 0..1000 {
        let (status, body) = host.get(&format!("/v1/executions/{id}/logs")).await.unwrap();
        if status == 200 {
            logs = body;
            break;
        }
        assert_eq!(body["error"]["code"], "LOGS_NOT_AVAILABLE", "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entry = &logs["logs"][0];
    assert_eq!(entry["source"], "pod", "{logs}");
    assert!(entry["pod"].as_str().is_some_and(|p| p.starts_with("slow-")), "{logs}");
    assert_eq!((entry["text"].clone(), entry["error"].clone()), (json!(""), Value::Null), "allowed: {logs}");

    let (status, _) = host.post(&format!("/v1/executions/{id}:cancel"), json!({})).await.unwrap();
    assert_eq!(status, 200);
    wait_no_jobs(ns).await;
    // The pod went with its Job: no logs, and the answer says why.
    let mut body = Value::Null;
    for _ in 0..500 {
        let (status, b) = host.get(&format!("/v1/executions/{id}/logs")).await.unwrap();
        body = b;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(body["error"]["code"], "LOGS_NOT_AVAILABLE", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("only while the pod exists"), "{body}");
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_crashing_function_is_an_error_before_the_deadline() {
    let ns = "k-fail";
    // No callbacks: the verdict must come from the Job's status.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = host_in(ns, true, &["--callback-url", &format!("http://127.0.0.1:{dead}")]).await;
    register(
        &host,
        job_function("fails", "job-poll", &["python3", "-c", PY], 60_000, json!({"callbackBudgetMs": 200})),
    )
    .await;
    // The function takes its runtime down with it: nothing reports but the pod's exit.
    let crash = "kill -9 $PPID; sleep 30";
    register(&host, job_function("crashes", "k8s-job", &["sh", "-c", crash], 60_000, json!({"pollIntervalMs": 500})))
        .await;
    register(&host, job_function("crashes-too", "job-poll", &["sh", "-c", crash], 60_000, json!({}))).await;

    let started = Instant::now();
    let (status, body) = host.post("/v1/functions/fails:invoke", json!({"input": {"exit": 3}})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (500, json!("FUNCTION_ERROR")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("exited with code 3") && message.contains("failing on purpose"), "{message}");
    for function in ["crashes", "crashes-too"] {
        let (status, body) =
            host.post(&format!("/v1/functions/{function}:invoke"), json!({"input": {}})).await.unwrap();
        assert!(status == 500 || status == 502, "{function}: {status} {body}");
        assert_ne!(body["status"], "timeout", "{function}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("exit code 137"), "{function}: {body}");
    }
    assert!(started.elapsed() < Duration::from_secs(60), "verdicts came before the deadlines");
    wait_no_jobs(ns).await;
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_slot_leaks_and_late_or_forged_callbacks_change_nothing() {
    let ns = "k-slots";
    let host = host_in(ns, true, &[]).await;
    let mut spec = job_function("f", "k8s-job", &["python3", "-c", PY], 2_000, json!({}));
    spec["concurrency"] = json!(1);
    spec["maxRetries"] = json!(0);
    register(&host, spec).await;
    let mut timed_out = Vec::new();
    for _ in 0..3 {
        let (status, body) = host.post("/v1/functions/f:invoke", json!({"input": {"sleep": 300}})).await.unwrap();
        assert_eq!(status, 504, "{body}");
        timed_out.push(body["executionId"].as_str().unwrap().to_string());
    }
    for _ in 0..2 {
        let (status, body) = host.post("/v1/functions/f:invoke", json!({"input": {"exit": 4}})).await.unwrap();
        assert_eq!(status, 500, "{body}");
    }
    // The single slot came back every time: the function still works.
    let (status, body) = host.post("/v1/functions/f:invoke", json!({"input": {"ok": true}})).await.unwrap();
    assert_eq!((status, body["output"].clone()), (200, json!({"echo": {"ok": true}})), "{body}");

    // A late callback (valid token, after the timeout) is accepted as a request, changes nothing,
    // and is counted.
    let id = &timed_out[0];
    let token = nanofaas::token::TokenKey::new(b"test-secret").token(id, 1);
    let url = host.url(&format!("/v1/internal/executions/{id}:complete"));
    let r =
        host.client.post(&url).bearer_auth(&token).json(&json!({"success": true, "output": 1})).send().await.unwrap();
    let late: Value = r.json().await.unwrap();
    assert_eq!((late["outcome"].clone(), late["status"].clone()), (json!("late"), json!("timeout")));
    let (_, exec) = host.get(&format!("/v1/executions/{id}")).await.unwrap();
    assert_eq!((exec["status"].clone(), exec["output"].clone()), (json!("timeout"), Value::Null));
    // A forged one is refused.
    let r = host.client.post(&url).bearer_auth("forged").json(&json!({"success": true})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let m = metrics(&host).await;
    assert_eq!(metric(&m, "nanofaas_callbacks_total", r#"outcome="late""#), 1.0, "{m}");
    assert_eq!(metric(&m, "nanofaas_callbacks_total", r#"outcome="rejected""#), 1.0);
    // The answer goes out when the execution ends; its slot is freed once its Job is released,
    // a moment later.
    let mut in_flight = f64::NAN;
    for _ in 0..100 {
        in_flight = metric(&metrics(&host).await, "nanofaas_in_flight", r#"function="f""#);
        if in_flight == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(in_flight, 0.0, "every slot comes back");
    wait_no_jobs(ns).await;
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_needs_a_cluster_an_image_and_a_command() {
    // A host without any cluster configured still starts and serves the other dispatchers.
    let host = Host::start(binary(), &["--no-kubernetes"], &[]).await.unwrap();
    let (status, body) =
        host.post("/v1/functions", job_function("f", "k8s-job", &["true"], 1000, json!({}))).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no Kubernetes cluster is configured"), "{body}");
    let (status, _) = host.post("/v1/functions", json!({"name": "e", "executionMode": "LOCAL"})).await.unwrap();
    assert_eq!(status, 201);
    host.stop().await.unwrap();

    let host = host_in("k-validate", true, &[]).await;
    let (status, body) = host
        .post("/v1/functions", json!({"name": "noimage", "dispatcher": "job-poll", "command": ["x"]}))
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("image"), "{body}");
    let (status, _) =
        host.post("/v1/functions", json!({"name": "nocmd", "dispatcher": "k8s-job", "image": "i"})).await.unwrap();
    assert_eq!(status, 400);
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_a_host_crash_and_is_adopted_not_created_again() {
    let ns = "k-restart";
    let kubeconfig = cluster().host_namespace(ns, true).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", state.path().join("nanofaas.db").display());
    // The same address after the restart: the pods call back there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--kube-namespace", ns, "--store", store.as_str(), "--retry-base-ms", "50"];
    let env = [("KUBECONFIG", kubeconfig.to_str().unwrap()), ("NANOFAAS_LISTEN", listen.as_str())];
    let host = Host::start(binary(), &args, &env).await.unwrap();
    register(&host, job_function("slow", "k8s-job", &["python3", "-c", PY], 60_000, json!({}))).await;
    register(&host, job_function("polled", "job-poll", &["python3", "-c", PY], 60_000, json!({}))).await;
    let mut ids = Vec::new();
    for function in ["slow", "polled"] {
        let (status, body) = host
            .post(&format!("/v1/functions/{function}:enqueue"), json!({"input": {"sleep": 4, "f": function}}))
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
        ids.push((function, body["executionId"].as_str().unwrap().to_string()));
    }
    for _ in 0..200 {
        if jobs(ns).await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before: Vec<_> = jobs(ns).await.into_iter().map(|j| j.metadata.name.unwrap()).collect();
    assert_eq!(before.len(), 2, "{before:?}");
    host.kill().await.unwrap();
    // The functions finish while no host runs; their callbacks fail and are retried.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let host = Host::start(binary(), &args, &env).await.unwrap();
    for (function, id) in &ids {
        let mut body = Value::Null;
        for _ in 0..300 {
            body = host.get(&format!("/v1/executions/{id}")).await.unwrap().1;
            if body["status"] != "running" && body["status"] != "queued" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(body["status"], "success", "{function}: {body}");
        assert_eq!(body["output"], json!({"echo": {"sleep": 4, "f": function}}));
        assert_eq!(body["attempt"], 1, "{function}: the same attempt, taken up");
    }
    let m = metrics(&host).await;
    assert_eq!(metric(&m, "nanofaas_job_created_total", "slow"), 0.0, "no Job was created again: {m}");
    assert_eq!(metric(&m, "nanofaas_job_created_total", "polled"), 0.0);
    assert_eq!(metric(&m, "nanofaas_executions_recovered_total", r#"action="resumed""#), 2.0, "{m}");
    assert!(metric(&m, "nanofaas_callbacks_total", r#"outcome="accepted""#) >= 1.0, "a retried callback was accepted");
    wait_no_jobs(ns).await;
    host.stop().await.unwrap();
}
