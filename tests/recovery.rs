//! Crashes: the real `nanofaas` binary on an embedded SQLite store, killed with SIGKILL in the
//! middle of a load, then started again on the same store. Every execution that was answered
//! 202 reaches a terminal state, none that a client saw terminal changes, registered functions
//! survive, and the local processes the dead host left running are killed before their
//! executions run again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nanofaas_test_support::{Host, artifacts, plugin_dir, processes_with};
use serde_json::{Value, json};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

const MARKER: &str = "nanofaas-crash-test-sleeper";

async fn register(host: &Host, spec: Value) {
    let (status, body) = host.post("/v1/functions", spec).await.unwrap();
    assert_eq!(status, 201, "{body}");
}

/// Enqueues `function` up to `n` times, until the host stops answering; the ids answered 202.
fn enqueuer(
    host_url: String,
    function: &'static str,
    n: usize,
    pace_ms: u64,
    accepted: Arc<Mutex<Vec<(String, &'static str)>>>,
) {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..n {
            let r = client
                .post(format!("{host_url}/v1/functions/{function}:enqueue"))
                .json(&json!({"input": {"i": i}}))
                .send()
                .await;
            let Ok(r) = r else { break };
            if r.status() == 202 {
                let body: Value = r.json().await.unwrap();
                accepted.lock().unwrap().push((body["executionId"].as_str().unwrap().to_string(), function));
            }
            tokio::time::sleep(Duration::from_millis(pace_ms)).await;
        }
    });
}

async fn statuses(host: &Host, ids: &[(String, &'static str)]) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for (id, _) in ids {
        let (status, body) = host.get(&format!("/v1/executions/{id}")).await.unwrap();
        assert_eq!(status, 200, "execution {id} is known: {body}");
        out.insert(id.clone(), body);
    }
    out
}

fn alive(pid: i32, ticks: u64) -> bool {
    processes_with(MARKER).contains(&(pid, ticks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_nothing_that_was_accepted() {
    let state = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", state.path().join("nanofaas.db").display());
    let plugins = plugin_dir(&[("testkit.wasm", Path::new(artifacts::TESTKIT))]).unwrap();
    let args = ["--store", store.as_str(), "--plugin-dir", plugins.path().to_str().unwrap(), "--retry-base-ms", "50"];
    let host = Host::start(binary(), &args, &[]).await.unwrap();
    register(&host, json!({"name": "quick", "executionMode": "LOCAL"})).await;
    register(
        &host,
        json!({"name": "sleepy", "dispatcher": "local", "command": ["sh", "-c", "sleep 2; cat", MARKER],
               "concurrency": 6, "queueSize": 10000, "timeoutMs": 120000}),
    )
    .await;
    register(
        &host,
        json!({"name": "remote", "dispatcher": "testkit", "concurrency": 100, "queueSize": 10000, "timeoutMs": 120000,
               "dispatcherConfig": {"behavior": "pending", "pollAfterMs": 100, "completeAfterPolls": 20}}),
    )
    .await;
    register(
        &host,
        json!({"name": "doomed", "dispatcher": "testkit", "timeoutMs": 1500, "queueSize": 10000,
               "dispatcherConfig": {"behavior": "pending"}}),
    )
    .await;

    let accepted = Arc::new(Mutex::new(Vec::new()));
    // The slow functions get a bounded backlog (a sleeper holds one of 6 slots for 2 s), the
    // quick one as much as the host takes until it dies; `doomed` ones (1.5 s deadline) keep
    // coming until the end, so some are unfinished when the host dies.
    for (function, n, pace) in [("quick", 100_000, 5), ("sleepy", 30, 5), ("remote", 150, 5), ("doomed", 100, 50)] {
        enqueuer(host.api.clone(), function, n, pace, accepted.clone());
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // What clients have seen so far: some executions are already terminal.
    let seen_ids: Vec<_> = accepted.lock().unwrap().clone();
    let seen = statuses(&host, &seen_ids).await;
    let sleepers = processes_with(MARKER);
    assert!(!sleepers.is_empty(), "local functions are running when the host is killed");
    host.kill().await.unwrap();
    let accepted: Vec<_> = accepted.lock().unwrap().clone();
    assert!(accepted.len() > 100, "a real load was accepted: {}", accepted.len());
    assert!(sleepers.iter().any(|(pid, ticks)| alive(*pid, *ticks)), "the dead host left its processes running");
    // Long enough for the `doomed` executions' deadlines to pass while no host runs.
    tokio::time::sleep(Duration::from_millis(1600)).await;

    let host = Host::start(binary(), &args, &[]).await.unwrap();
    for (pid, ticks) in &sleepers {
        assert!(!alive(*pid, *ticks), "process {pid} of the dead host was killed before anything ran again");
    }
    let (_, functions) = host.get("/v1/functions").await.unwrap();
    let names: Vec<_> = functions.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["doomed", "quick", "remote", "sleepy"], "registrations survive");

    // Every accepted execution ends.
    let mut last = HashMap::new();
    for _ in 0..600 {
        last = statuses(&host, &accepted).await;
        if last.values().all(|b| !matches!(b["status"].as_str(), Some("queued" | "running"))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (id, function) in &accepted {
        let body = &last[id];
        let expected = if *function == "doomed" { "timeout" } else { "success" };
        assert_eq!(body["status"], expected, "{function} {id}: {body}");
    }
    // Nothing a client saw terminal changed.
    for (id, before) in &seen {
        if matches!(before["status"].as_str(), Some("queued" | "running")) {
            continue;
        }
        let after = &last[id];
        assert_eq!(
            (&after["status"], &after["output"], &after["finishedAt"]),
            (&before["status"], &before["output"], &before["finishedAt"]),
            "{id}"
        );
    }
    let metrics = host.client.get(format!("{}/metrics", host.admin)).send().await.unwrap().text().await.unwrap();
    for action in ["resumed", "restarted", "timed_out"] {
        let line = format!("nanofaas_executions_recovered_total{{action=\"{action}\"}}");
        assert!(metrics.contains(&line), "recovery {action}: {metrics}");
    }
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_hands_executions_over() {
    let state = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", state.path().join("nanofaas.db").display());
    let plugins = plugin_dir(&[("testkit.wasm", Path::new(artifacts::TESTKIT))]).unwrap();
    let args = ["--store", store.as_str(), "--plugin-dir", plugins.path().to_str().unwrap()];
    let host = Host::start(binary(), &args, &[]).await.unwrap();
    register(
        &host,
        json!({"name": "remote", "dispatcher": "testkit", "timeoutMs": 60000,
               "dispatcherConfig": {"behavior": "pending", "pollAfterMs": 100, "completeAfterPolls": 30}}),
    )
    .await;
    let (status, body) = host.post("/v1/functions/remote:enqueue", json!({"input": 1})).await.unwrap();
    assert_eq!(status, 202);
    let id = body["executionId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGTERM: the execution is handed over, not cancelled…
    assert!(host.stop().await.unwrap().success());
    let host = Host::start(binary(), &args, &[]).await.unwrap();
    // …and the next host process finishes it, from where it was.
    let mut body = Value::Null;
    for _ in 0..100 {
        body = host.get(&format!("/v1/executions/{id}")).await.unwrap().1;
        if body["status"] == "success" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["output"], json!({"polls": 30}), "polling went on from the handed-over handle");
    assert_eq!(body["attempt"], 1, "the same attempt, resumed");
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_does_not_strand_its_execution() {
    let state = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", state.path().join("nanofaas.db").display());
    let args = ["--store", store.as_str()];
    let host = Host::start(binary(), &args, &[]).await.unwrap();
    register(&host, json!({"name": "quick", "executionMode": "LOCAL", "queueSize": 10000})).await;
    // Clients that give up at once: many requests are dropped while their execution is
    // being recorded.
    let impatient = reqwest::Client::builder().timeout(Duration::from_micros(300)).build().unwrap();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let (client, url) = (impatient.clone(), host.url("/v1/functions/quick:enqueue"));
        tasks.push(tokio::spawn(async move { client.post(url).json(&json!({"input": i})).send().await.is_ok() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Everything the store has was driven to its end: a new host process finds nothing to take up.
    assert!(host.stop().await.unwrap().success());
    let host = Host::start(binary(), &args, &[]).await.unwrap();
    let metrics = host.client.get(format!("{}/metrics", host.admin)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("nanofaas_executions_recovered_total"), "executions were left unfinished: {metrics}");
    host.stop().await.unwrap();
}
