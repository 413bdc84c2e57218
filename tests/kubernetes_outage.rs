//! The Kubernetes API server goes away mid-flight: the real `nanofaas` binary, the real
//! kube-apiserver on loopback killed (SIGKILL) for 10 s and started again on the same etcd.
//! A test process of its own, so the outage disturbs no other test's cluster.
//!
//! Executions whose Jobs run across the outage all succeed (their results come by callback, or
//! from the pod once the API server and the Job controller are back); deletes that failed
//! during the outage are retried; a Job nobody follows is swept; new invocations work again
//! shortly after the API server's `/readyz` (the time is printed and kept in BENCHMARKS.md).

mod kube_common;

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use kube_common::*;
use nanofaas_test_support::Host;
use serde_json::{Value, json};

async fn status_of(host: &Host, id: &str) -> Value {
    host.get(&format!("/v1/executions/{id}")).await.unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_spanning_an_api_server_outage_succeed_and_nothing_is_left() {
    let ns = "k-outage";
    let host = host_in(ns, true, &["--kube-sweep-interval-secs", "1"]).await;
    for (name, dispatcher) in [("called", "k8s-job"), ("polled", "job-poll")] {
        let mut spec = job_function(name, dispatcher, &["python3", "-c", PY], 90_000, json!({}));
        spec["maxRetries"] = json!(0);
        register(&host, spec).await;
    }
    // Six executions whose functions run for 6 s: their pods are running when the API server dies.
    let mut ids = Vec::new();
    for i in 0..6 {
        let function = if i % 2 == 0 { "called" } else { "polled" };
        let (status, body) =
            host.post(&format!("/v1/functions/{function}:enqueue"), json!({"input": {"sleep": 6}})).await.unwrap();
        assert_eq!(status, 202, "{body}");
        ids.push(body["executionId"].as_str().unwrap().to_string());
    }
    let mut running = 0.0;
    for _ in 0..200 {
        let m = metrics(&host).await;
        running = ["called", "polled"]
            .iter()
            .map(|f| metric(&m, "nanofaas_job_start_latency_seconds_count", &format!("function=\"{f}\"")))
            .sum::<f64>();
        if running >= 6.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running, 6.0, "every pod runs before the outage");

    let c = cluster();
    tokio::task::spawn_blocking(|| c.stop_apiserver()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    tokio::task::spawn_blocking(|| c.start_apiserver()).await.unwrap().unwrap();
    let ready = Instant::now();

    // New invocations work again.
    let mut recovered = None;
    while ready.elapsed() < Duration::from_secs(60) {
        let (status, _) = host.post("/v1/functions/called:invoke", json!({"input": {"ok": 1}})).await.unwrap();
        if status == 200 {
            recovered = Some(ready.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = recovered.expect("invocations succeed again after the outage");
    eprintln!("first successful invocation {} ms after the API server's /readyz", recovered.as_millis());

    // Every execution that spanned the outage succeeded.
    for id in &ids {
        let mut s = status_of(&host, id).await;
        for _ in 0..600 {
            if !matches!(s["status"].as_str(), Some("queued" | "running")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            s = status_of(&host, id).await;
        }
        assert_eq!(s["status"], "success", "{s}");
        assert_eq!(s["output"], json!({"echo": {"sleep": 6}}), "{s}");
    }

    // A Job with the host's labels that no execution follows is swept.
    let jobs_api: Api<Job> = Api::namespaced(c.admin().await.unwrap(), ns);
    let stray: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "stray", "labels": {
            "app.kubernetes.io/managed-by": "nanofaas", "nanofaas.io/execution-id": "no-such-execution"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "function", "image": "nanofaas/examples:test", "command": ["sleep", "600"]}]}}},
    }))
    .unwrap();
    jobs_api.create(&PostParams::default(), &stray).await.unwrap();
    // Nothing is left behind: Jobs deleted during the outage were deleted again, the stray swept.
    wait_no_jobs(ns).await;
    let m = metrics(&host).await;
    assert_eq!(metric(&m, "nanofaas_kube_jobs_swept_total", r#"reason="unknown""#), 1.0, "{m}");
    assert!(metric(&m, "nanofaas_kube_watch_outage_seconds_count", r#"watch="Job""#) >= 1.0, "{m}");
    host.stop().await.unwrap();
}
