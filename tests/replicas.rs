//! Several host replicas on one PostgreSQL store: the real `nanofaas` binaries against a real
//! PostgreSQL server on loopback (tests/support/src/postgres.rs).
//!
//! Any replica answers any request; a function's concurrency and queue hold across replicas;
//! a replica that dies has its executions taken over by another within the lease bound; a
//! replica that was paused past its lease cannot settle what it lost.

use std::path::Path;
use std::time::{Duration, Instant};

use nanofaas_test_support::postgres::Postgres;
use nanofaas_test_support::{Host, artifacts, plugin_dir};
use serde_json::{Value, json};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

struct Replicas {
    _pg: Postgres,
    _plugins: tempfile::TempDir,
    a: Host,
    b: Host,
}

async fn replicas(extra: &[&str]) -> Replicas {
    let pg = Postgres::start(false).unwrap();
    let url = pg.database("nanofaas").unwrap();
    let plugins = plugin_dir(&[("testkit.wasm", Path::new(artifacts::TESTKIT))]).unwrap();
    let mut args =
        vec!["--store", url.as_str(), "--plugin-dir", plugins.path().to_str().unwrap(), "--retry-base-ms", "50"];
    args.extend_from_slice(extra);
    let a = Host::start(binary(), &args, &[]).await.unwrap();
    let b = Host::start(binary(), &args, &[]).await.unwrap();
    Replicas { _pg: pg, _plugins: plugins, a, b }
}

async fn register(host: &Host, spec: Value) {
    let (status, body) = host.post("/v1/functions", spec).await.unwrap();
    assert_eq!(status, 201, "{body}");
}

/// Waits until `host` knows function `name` (registered at another replica).
async fn known(host: &Host, name: &str) {
    for _ in 0..100 {
        if host.get(&format!("/v1/functions/{name}")).await.unwrap().0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("function {name} never reached {}", host.api);
}

async fn enqueue(host: &Host, function: &str, input: Value) -> (u16, Value) {
    host.post(&format!("/v1/functions/{function}:enqueue"), json!({"input": input})).await.unwrap()
}

/// The callback token the testkit plugin logged for `id` on one of `hosts`.
async fn token(hosts: &[&Host], id: &str) -> String {
    for _ in 0..100 {
        for host in hosts {
            let logs = host.logs();
            if let Some(line) = logs.lines().find(|l| l.contains(&format!("callback-token {id} "))) {
                let after = line.split(&format!("callback-token {id} ")).nth(1).unwrap();
                return after.split_whitespace().next().unwrap().trim_end_matches('"').to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no callback token was logged for {id}");
}

async fn callback(host: &Host, id: &str, token: &str, output: Value) -> (u16, Value) {
    let r = host
        .client
        .post(host.url(&format!("/v1/internal/executions/{id}:complete")))
        .bearer_auth(token)
        .json(&json!({"success": true, "output": output}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn status_of(host: &Host, id: &str) -> Value {
    let (status, body) = host.get(&format!("/v1/executions/{id}")).await.unwrap();
    assert_eq!(status, 200, "{id}: {body}");
    body
}

async fn wait_terminal(host: &Host, ids: &[String], limit: Duration) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let mut all = Vec::new();
        for id in ids {
            all.push(status_of(host, id).await);
        }
        if all.iter().all(|b| !matches!(b["status"].as_str(), Some("queued" | "running"))) {
            return all;
        }
        assert!(started.elapsed() < limit, "not all finished within {limit:?}: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(host: &Host) -> String {
    host.client.get(format!("{}/metrics", host.admin)).send().await.unwrap().text().await.unwrap()
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_any_request() {
    let r = replicas(&[]).await;
    register(
        &r.a,
        json!({"name": "remote", "dispatcher": "testkit", "timeoutMs": 30000,
               "dispatcherConfig": {"behavior": "pending", "logToken": true}}),
    )
    .await;
    known(&r.b, "remote").await;

    // Enqueued at A …
    let resp =
        r.a.client
            .post(r.a.url("/v1/functions/remote:enqueue"))
            .header("idempotency-key", "k1")
            .json(&json!({"input": {"q": 1}}))
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["executionId"].as_str().unwrap().to_string();
    // … read at B …
    assert!(matches!(status_of(&r.b, &id).await["status"].as_str(), Some("queued" | "running")));
    // … awaited at B (the same request re-attaches by its key) …
    let waiter = tokio::spawn({
        let (client, url) = (r.b.client.clone(), r.b.url("/v1/functions/remote:invoke"));
        async move {
            let resp = client
                .post(url)
                .header("idempotency-key", "k1")
                .json(&json!({"input": {"q": 1}}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    });
    // … its input fetched and its callback posted at B, with a token derived from the secret
    // the store generated (no --callback-secret was given).
    let token = token(&[&r.a, &r.b], &id).await;
    let input =
        r.b.client
            .get(r.b.url(&format!("/v1/internal/executions/{id}/input")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    assert_eq!(input.status(), 200);
    assert_eq!(input.text().await.unwrap(), r#"{"q":1}"#);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = callback(&r.b, &id, &token, json!({"answer": 42})).await;
    assert_eq!((status, body["outcome"].clone()), (200, json!("accepted")), "{body}");
    let (status, body) =
        tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("the waiter at B wakes").unwrap();
    assert_eq!((status, body["executionId"].as_str()), (200, Some(id.as_str())), "{body}");
    assert_eq!(body["output"], json!({"answer": 42}));
    // A, which drives it, sees the end and releases its work.
    assert_eq!(status_of(&r.a, &id).await["status"], "success");
    for _ in 0..100 {
        if r.a.logs().contains("released h0: ReleaseReason::Completed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(r.a.logs().contains("released h0: ReleaseReason::Completed"), "{}", r.a.logs());
    // A repeated callback is harmless wherever it lands.
    let (status, body) = callback(&r.a, &id, &token, json!(1)).await;
    assert_eq!((status, body["outcome"].clone()), (200, json!("duplicate")));
    // Deletions are seen by every replica.
    assert_eq!(r.b.client.delete(r.b.url("/v1/functions/remote")).send().await.unwrap().status(), 204);
    for _ in 0..100 {
        if r.a.get("/v1/functions/remote").await.unwrap().0 == 404 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("A still has the function B deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_and_queue_hold_across_replicas() {
    let r = replicas(&[]).await;
    register(
        &r.a,
        json!({"name": "gate", "dispatcher": "testkit", "timeoutMs": 60000, "concurrency": 2, "queueSize": 2,
               "dispatcherConfig": {"behavior": "pending", "logToken": true}}),
    )
    .await;
    known(&r.b, "gate").await;
    let mut ids = Vec::new();
    for (i, host) in [&r.a, &r.b, &r.a, &r.b].into_iter().enumerate() {
        let (status, body) = enqueue(host, "gate", json!(i)).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["executionId"].as_str().unwrap().to_string());
    }
    for host in [&r.a, &r.b] {
        let (status, body) = enqueue(host, "gate", json!(9)).await;
        assert_eq!((status, body["error"]["code"].clone()), (429, json!("QUEUE_FULL")), "{body}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |bodies: &[Value], s: &str| bodies.iter().filter(|b| b["status"] == s).count();
    let mut bodies = Vec::new();
    for id in &ids {
        bodies.push(status_of(&r.b, id).await);
    }
    assert_eq!((count(&bodies, "running"), count(&bodies, "queued")), (2, 2), "{bodies:?}");
    // Finishing a running one lets a queued one run, whichever replica holds it.
    let running =
        bodies.iter().find(|b| b["status"] == "running").unwrap()["executionId"].as_str().unwrap().to_string();
    let token = token(&[&r.a, &r.b], &running).await;
    assert_eq!(callback(&r.a, &running, &token, json!(1)).await.0, 200);
    for _ in 0..100 {
        let mut bodies = Vec::new();
        for id in &ids {
            bodies.push(status_of(&r.a, id).await);
        }
        assert!(count(&bodies, "running") <= 2, "more running than the function's concurrency: {bodies:?}");
        if (count(&bodies, "running"), count(&bodies, "queued"), count(&bodies, "success")) == (2, 1, 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut bodies = Vec::new();
    for id in &ids {
        bodies.push(status_of(&r.a, id).await);
    }
    panic!("the freed slot was not taken: {bodies:?}\nA:\n{}\nB:\n{}", r.a.logs(), r.b.logs());
}

const LEASE: &[&str] = &["--lease-ttl-ms", "2000", "--lease-scan-ms", "300"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_executions_are_taken_over() {
    let r = replicas(LEASE).await;
    register(
        &r.a,
        json!({"name": "remote", "dispatcher": "testkit", "timeoutMs": 60000, "concurrency": 100, "queueSize": 1000,
               "dispatcherConfig": {"behavior": "pending", "pollAfterMs": 100, "completeAfterPolls": 30}}),
    )
    .await;
    register(
        &r.a,
        json!({"name": "sleepy", "dispatcher": "local", "command": ["sh", "-c", "sleep 1; cat"], "timeoutMs": 60000,
               "concurrency": 10}),
    )
    .await;
    known(&r.b, "remote").await;
    known(&r.b, "sleepy").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        for host in [&r.a, &r.b] {
            let (status, body) = enqueue(host, "remote", json!(i)).await;
            assert_eq!(status, 202, "{body}");
            ids.push(body["executionId"].as_str().unwrap().to_string());
        }
    }
    for i in 0..5 {
        let (status, body) = enqueue(&r.a, "sleepy", json!(i)).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["executionId"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Replicas { _pg, _plugins, a, b } = r;
    a.kill().await.unwrap();
    // B finishes everything, A's included, well before the executions' own deadlines.
    let all = wait_terminal(&b, &ids, Duration::from_secs(40)).await;
    for body in &all {
        assert_eq!(body["status"], "success", "{body}");
    }
    let m = metrics(&b).await;
    assert!(metric_sum(&m, "nanofaas_replica_takeovers_total{reason=\"expired\"}") >= 1.0, "{m}");
    assert!(metric_sum(&m, "nanofaas_executions_recovered_total") >= 20.0, "A's executions were taken up: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_cannot_settle_what_it_lost() {
    let r = replicas(LEASE).await;
    register(
        &r.a,
        json!({"name": "remote", "dispatcher": "testkit", "timeoutMs": 60000, "concurrency": 100,
               "dispatcherConfig": {"behavior": "pending", "pollAfterMs": 200, "completeAfterPolls": 20}}),
    )
    .await;
    known(&r.b, "remote").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (status, body) = enqueue(&r.a, "remote", json!(i)).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["executionId"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A stops (as a stuck VM would) past its lease; B takes its executions over.
    let pid = nix::unistd::Pid::from_raw(r.a.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let all = wait_terminal(&r.b, &ids, Duration::from_secs(40)).await;
    assert!(all.iter().all(|b| b["status"] == "success"), "{all:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Each execution was finished once: A, resumed, could not record a finish of its own.
    let finished = metric_sum(&metrics(&r.a).await, "nanofaas_invocations_total")
        + metric_sum(&metrics(&r.b).await, "nanofaas_invocations_total");
    assert_eq!(finished, ids.len() as f64);
    let logs = r.a.logs_when(|l| l.contains("lease expired") || l.contains("lost to another replica")).await;
    assert!(logs.contains("lease expired") || logs.contains("lost to another replica"), "{logs}");
}
