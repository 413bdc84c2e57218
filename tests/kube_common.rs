//! What the Kubernetes end-to-end tests share: the test control plane of this test process
//! (tests/support/src/kube.rs), a host serving a namespace of its own, and the test function.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use nanofaas_test_support::kube::{Cluster, ImageMap, shared};
use nanofaas_test_support::{Host, repo_root};
use serde_json::{Value, json};

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

pub fn runtime_binary() -> PathBuf {
    let path = binary().parent().expect("a directory").join("nanofaas-runtime");
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p nanofaas-runtime` (cargo test --workspace does)",
        path.display()
    );
    path
}

pub fn cluster() -> &'static Cluster {
    let images = ImageMap {
        programs: [("nanofaas-runtime".to_string(), runtime_binary())].into(),
        prefixes: vec![("/functions".to_string(), repo_root().join("examples/functions"))],
    };
    shared(images).expect("the test control plane (run scripts/kube-control-plane.sh once)")
}

/// A namespace with the host's identity, and a host serving it.
pub async fn host_in(namespace: &str, grant: bool, extra: &[&str]) -> Host {
    host_with_env(namespace, grant, extra, &[]).await
}

/// [`host_in`] with more environment variables.
pub async fn host_with_env(namespace: &str, grant: bool, extra: &[&str], env: &[(&str, &str)]) -> Host {
    let kubeconfig = cluster().host_namespace(namespace, grant).await.unwrap();
    let mut args = vec!["--kube-namespace", namespace, "--callback-secret", "test-secret", "--retry-base-ms", "50"];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("KUBECONFIG", kubeconfig.to_str().unwrap()));
    Host::start(binary(), &args, &env).await.unwrap()
}

/// A function spec for a Job plugin; the command runs under `nanofaas-runtime` in the pod.
pub fn job_function(name: &str, dispatcher: &str, command: &[&str], timeout_ms: u64, config: Value) -> Value {
    json!({
        "name": name, "dispatcher": dispatcher, "image": "nanofaas/examples:test",
        "command": command, "timeoutMs": timeout_ms, "dispatcherConfig": config,
    })
}

/// A function that sleeps `input.sleep` seconds, fails with `input.exit`, else answers.
pub const PY: &str = "import json,sys,time\nd=json.load(sys.stdin)['input']\ntime.sleep(d.get('sleep',0))\n\
if d.get('exit'):\n  print('failing on purpose',file=sys.stderr); sys.exit(d['exit'])\nprint(json.dumps({'echo':d}))";

pub async fn register(host: &Host, spec: Value) {
    let (status, body) = host.post("/v1/functions", spec).await.unwrap();
    assert_eq!(status, 201, "{body}");
}

/// The namespace's Jobs, read by the test's own client. Its connection may meet an API server
/// that has just come back from an outage (a reset connection): that is retried, for 10 s.
pub async fn jobs(namespace: &str) -> Vec<Job> {
    let mut tries = 0;
    loop {
        let client = cluster().admin().await.unwrap();
        match Api::<Job>::namespaced(client, namespace).list(&Default::default()).await {
            Ok(list) => return list.items,
            Err(e) if tries < 100 => {
                tries += 1;
                eprintln!("listing Jobs failed ({e}); again");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot list Jobs: {e}"),
        }
    }
}

/// Waits until the namespace has no Jobs left (deleted by the host; the GC takes the pods).
pub async fn wait_no_jobs(namespace: &str) {
    for _ in 0..200 {
        if jobs(namespace).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "Jobs left behind in {namespace}: {:?}",
        jobs(namespace).await.iter().map(|j| j.metadata.name.clone()).collect::<Vec<_>>()
    );
}

pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub async fn metrics(host: &Host) -> String {
    host.client.get(format!("{}/metrics", host.admin)).send().await.unwrap().text().await.unwrap()
}
