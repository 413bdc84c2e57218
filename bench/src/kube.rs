//! Kubernetes Job dispatch against the test API server (etcd + kube-apiserver +
//! kube-controller-manager on loopback, this process as the kubelet; see
//! tests/support/src/kube.rs): invoke-to-Job-created latency, callback-to-response latency, and
//! API requests per execution read from the API server's own request counters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use nanofaas::config::Config;
use nanofaas_test_support::kube::{ImageMap, shared};
use nanofaas_test_support::repo_root;
use serde_json::json;

use crate::stats::{summarize, us};

const SECRET: &str = "bench-secret";

pub async fn run(n: usize) -> anyhow::Result<()> {
    let bin = std::env::current_exe()?.parent().expect("a directory").to_path_buf();
    let runtime: PathBuf = bin.join("nanofaas-runtime");
    anyhow::ensure!(runtime.is_file(), "build the runtime first: cargo build --release -p nanofaas-runtime");
    let images = ImageMap {
        programs: [("nanofaas-runtime".to_string(), runtime)].into(),
        prefixes: vec![("/functions".to_string(), repo_root().join("examples/functions"))],
    };
    let cluster = shared(images)?;
    let ns = format!("bench-{}", std::process::id());
    let kubeconfig = cluster.host_namespace(&ns, true).await?;

    // The host, in this process, as the namespace's service account.
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        admin_listen: "127.0.0.1:0".parse()?,
        callback_secret: Some(SECRET.into()),
        kube_namespace: Some(ns.clone()),
        ..Config::default()
    };
    let listeners = nanofaas::Listeners::bind(&config).await?;
    let api = format!("http://{}", listeners.api.local_addr()?);
    let admin_url = format!("http://{}/metrics", listeners.admin.local_addr()?);
    let kube_config =
        kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig)?, &Default::default())
            .await?;
    let cluster_handle = nanofaas::capability::kubernetes::Cluster::from_config(kube_config, Some(ns.clone()))?;
    tokio::spawn(nanofaas::run_with_cluster(config, listeners, Some(cluster_handle), std::future::pending()));
    let client = reqwest::Client::new();
    let register = |name: &str, command: serde_json::Value| {
        json!({"name": name, "dispatcher": "k8s-job", "image": "nanofaas/examples:bench", "command": command,
               "timeoutMs": 60000, "concurrency": 4, "maxRetries": 0})
    };
    for (name, command) in
        [("wc", json!(["python3", "/functions/python/wordcount.py"])), ("idle", json!(["sleep", "120"]))]
    {
        let r = wait_for(|| client.post(format!("{api}/v1/functions")).json(&register(name, command.clone())).send())
            .await?;
        anyhow::ensure!(r.status() == 201, "registration failed: {}", r.text().await?);
    }

    // Jobs as the API server shows them, by execution id, with the time the watch saw them.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let admin = cluster.admin().await?;
    tokio::spawn({
        let seen = seen.clone();
        let jobs: Api<Job> = Api::namespaced(admin, &ns);
        async move {
            let stream = watcher(jobs, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(job)) = stream.next().await {
                if let Some(id) = job.metadata.labels.as_ref().and_then(|l| l.get("nanofaas.io/execution-id")) {
                    seen.lock().unwrap().entry(id.clone()).or_insert_with(Instant::now);
                }
            }
        }
    });

    // 1 + 3: complete executions (pods run, callbacks answer), counting API requests.
    let before = counts(&client, &admin_url).await?;
    let mut created = Vec::new();
    for _ in 0..n {
        let sent = Instant::now();
        let r = client.post(format!("{api}/v1/functions/wc:invoke")).json(&json!({"input": "a b a"})).send().await?;
        anyhow::ensure!(r.status() == 200, "invoke failed: {}", r.text().await?);
        let id = r.headers()["x-execution-id"].to_str()?.to_string();
        let at =
            seen.lock().unwrap().get(&id).copied().ok_or_else(|| anyhow::anyhow!("the watch never saw the Job"))?;
        created.push(at.duration_since(sent));
    }
    // Deletes happen right after each response; let them land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = counts(&client, &admin_url).await?;

    // 2: callback-to-response. The pod idles; this process posts the callback itself.
    let key = nanofaas::token::TokenKey::new(SECRET.as_bytes());
    let mut responses = Vec::new();
    for _ in 0..n {
        let known: std::collections::HashSet<String> = seen.lock().unwrap().keys().cloned().collect();
        let invoke = tokio::spawn({
            let (client, api) = (client.clone(), api.clone());
            async move {
                let r =
                    client.post(format!("{api}/v1/functions/idle:invoke")).json(&json!({"input": 1})).send().await?;
                let arrived = Instant::now();
                anyhow::ensure!(r.status() == 200, "idle invoke: {}", r.text().await?);
                Ok::<_, anyhow::Error>(arrived)
            }
        });
        // The new execution is the one whose Job just appeared.
        let id = loop {
            let new = seen.lock().unwrap().keys().find(|k| !known.contains(*k)).cloned();
            if let Some(id) = new {
                break id;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let sent = Instant::now();
        let r = client
            .post(format!("{api}/v1/internal/executions/{id}:complete"))
            .bearer_auth(key.token(&id, 1))
            .json(&json!({"success": true, "output": {"from": "bench"}}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200);
        responses.push(invoke.await??.duration_since(sent));
    }

    let c = summarize(created);
    let r = summarize(responses);
    println!(
        "kubernetes benchmark: {n} executions each, against kube-apiserver 1.20 on loopback (this process as kubelet)"
    );
    println!(
        "  invoke -> Job created (seen by a watch)  median {:8.1} ms   p99 {:8.1} ms",
        us(c.median) / 1000.0,
        us(c.p99) / 1000.0
    );
    println!(
        "  callback -> sync response                median {:8.2} ms   p99 {:8.2} ms",
        us(r.median) / 1000.0,
        us(r.p99) / 1000.0
    );
    println!("  API requests per execution (the host's nanofaas_kube_api_requests_total, {n} executions):");
    let mut keys: Vec<_> = before.keys().collect();
    keys.sort();
    for key in keys {
        let b = &before[key];
        let d = after.get(key).copied().unwrap_or(0) - b;
        println!("    {:<22} {:6.2}", key, d as f64 / n as f64);
    }
    let writes = ["create jobs", "delete jobs"].iter().map(|k| after[*k] - before[*k]).sum::<u64>() as f64 / n as f64;
    let reads = ["get jobs", "list jobs", "get pods", "list pods"].iter().map(|k| after[*k] - before[*k]).sum::<u64>()
        as f64
        / n as f64;
    println!("  writes per execution {writes:.2} (target 2), reads per execution {reads:.2} (target 0)");
    Ok(())
}

/// The host's own count of its API requests (`nanofaas_kube_api_requests_total`), so the
/// controller manager's and the kubelet's traffic is not mixed in.
async fn counts(client: &reqwest::Client, metrics_url: &str) -> anyhow::Result<HashMap<String, u64>> {
    let text = client.get(metrics_url).send().await?.text().await?;
    let mut m: HashMap<String, u64> =
        ["create jobs", "delete jobs", "get jobs", "list jobs", "watch jobs", "get pods", "list pods", "watch pods"]
            .iter()
            .map(|k| (k.to_string(), 0))
            .collect();
    for line in text.lines().filter(|l| l.starts_with("nanofaas_kube_api_requests_total{")) {
        let label = |name: &str| {
            line.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_string()
        };
        let value: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
        *m.entry(format!("{} {}", label("verb"), label("resource"))).or_insert(0) += value;
    }
    Ok(m)
}

async fn wait_for<F, Fut>(f: F) -> anyhow::Result<reqwest::Response>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    for _ in 0..600 {
        if let Ok(r) = f().await {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the host did not come up")
}
