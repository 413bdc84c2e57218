//! The Kubernetes scenarios on a real cluster (kind, k3d, …), ignored by default: they need
//! images in a registry the cluster can pull from and a host address pods can reach. See the
//! README ("Running against a real cluster") for the setup; run with
//! `cargo test --release -p nanofaas --test kubernetes_cluster -- --ignored`.
//!
//! Environment: `KUBECONFIG` (the cluster), `NANOFAAS_TEST_NAMESPACE` (default `nanofaas-test`,
//! with `deploy/rbac.yaml` applied to it), `NANOFAAS_TEST_CALLBACK_URL` (how pods reach this
//! machine, e.g. `http://172.18.0.1:18080` on kind), `NANOFAAS_TEST_RUNTIME_IMAGE` and
//! `NANOFAAS_TEST_FUNCTION_IMAGE` (an image with `python3` and this repository's
//! `examples/functions` at `/functions`).

use std::path::Path;

use nanofaas_test_support::Host;
use serde_json::{Value, json};

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

async fn host() -> Host {
    let namespace = var("NANOFAAS_TEST_NAMESPACE", "nanofaas-test");
    let callback = var("NANOFAAS_TEST_CALLBACK_URL", "http://172.18.0.1:18080");
    let listen = format!("0.0.0.0:{}", callback.rsplit(':').next().unwrap_or("18080"));
    let args =
        ["--kube-namespace", namespace.as_str(), "--callback-url", callback.as_str(), "--listen", listen.as_str()];
    // Host::start sets a port-0 loopback listener through the environment; the flag wins.
    Host::start(Path::new(env!("CARGO_BIN_EXE_nanofaas")), &args, &[]).await.unwrap()
}

fn spec(name: &str, dispatcher: &str, command: &[&str], timeout_ms: u64) -> Value {
    json!({
        "name": name, "dispatcher": dispatcher, "image": var("NANOFAAS_TEST_FUNCTION_IMAGE", "nanofaas/examples:test"),
        "command": command, "timeoutMs": timeout_ms,
        "dispatcherConfig": {"runtimeImage": var("NANOFAAS_TEST_RUNTIME_IMAGE", "ghcr.io/nanofaas/nanofaas-runtime:0.1.0")},
    })
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn callback_and_status_paths_on_a_real_cluster() {
    let host = host().await;
    for dispatcher in ["k8s-job", "job-poll"] {
        let name = format!("wc-{dispatcher}");
        let (status, body) = host
            .post("/v1/functions", spec(&name, dispatcher, &["python3", "/functions/python/wordcount.py"], 120_000))
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        let (status, body) =
            host.post(&format!("/v1/functions/{name}:invoke"), json!({"input": "a b a"})).await.unwrap();
        assert_eq!((status, body["output"]["words"].clone()), (200, json!(3)), "{body}");
    }
    host.stop().await.unwrap();
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn hanging_and_failing_pods_on_a_real_cluster() {
    let host = host().await;
    let (status, _) = host.post("/v1/functions", spec("hang", "k8s-job", &["sleep", "600"], 20_000)).await.unwrap();
    assert_eq!(status, 201);
    let (status, body) = host.post("/v1/functions/hang:invoke", json!({"input": 1})).await.unwrap();
    assert_eq!((status, body["status"].clone()), (504, json!("timeout")), "{body}");
    let (status, _) =
        host.post("/v1/functions", spec("fail", "job-poll", &["sh", "-c", "exit 3"], 120_000)).await.unwrap();
    assert_eq!(status, 201);
    let (status, body) = host.post("/v1/functions/fail:invoke", json!({"input": 1})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (500, json!("FUNCTION_ERROR")), "{body}");
    host.stop().await.unwrap();
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_running_pods_log_is_shown_on_a_real_cluster() {
    let host = host().await;
    let command = ["sh", "-c", "echo 'hello from the pod' >&2; sleep 600"];
    let (status, _) = host.post("/v1/functions", spec("talks", "k8s-job", &command, 120_000)).await.unwrap();
    assert_eq!(status, 201);
    let (_, body) = host.post("/v1/functions/talks:enqueue", json!({"input": 1})).await.unwrap();
    let id = body["executionId"].as_str().unwrap().to_string();
    let mut text = String::new();
    for _ in 0..600 {
        let (_, body) = host.get(&format!("/v1/executions/{id}/logs")).await.unwrap();
        text = body["logs"][0]["text"].as_str().unwrap_or_default().to_string();
        if text.contains("hello from the pod") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(text.contains("hello from the pod"), "{text}");
    let (status, _) = host.post(&format!("/v1/executions/{id}:cancel"), json!({})).await.unwrap();
    assert_eq!(status, 200);
    host.stop().await.unwrap();
}
