//! The durable store: what it costs and how fast replicas recover.
//!
//! Every host is the real `nanofaas` binary (built next to this one) and the load comes from
//! `wrk`, another process: nothing of the load generator shares the host's runtime. Variants
//! alternate round by round, so drift on a noisy machine affects them alike.
//!
//! - `:enqueue` acceptance (every 202 is durable first) on `memory:`, SQLite and PostgreSQL;
//! - sync `echo` invoke throughput with the SQLite default vs `memory:`;
//! - takeover: a replica on PostgreSQL is killed; the time until another replica has taken its
//!   executions over, and until they have all finished.

use std::path::Path;
use std::time::{Duration, Instant};

use nanofaas_test_support::postgres::Postgres;
use nanofaas_test_support::{Host, artifacts, plugin_dir};
use serde_json::json;

use crate::load::{host_binary, median, verdict, wrk};

pub(crate) async fn echo_host(binary: &Path, store: &str) -> anyhow::Result<Host> {
    let host = Host::start(binary, &["--store", store, "--no-kubernetes"], &[]).await?;
    let (status, body) = host
        .post(
            "/v1/functions",
            json!({"name": "echo", "executionMode": "LOCAL", "concurrency": 64, "queueSize": 100000}),
        )
        .await?;
    anyhow::ensure!(status == 201, "register: {body}");
    Ok(host)
}

pub async fn run(rounds: usize, secs: u64, connections: usize) -> anyhow::Result<()> {
    let binary = host_binary()?;
    let state = tempfile::tempdir()?;
    let sqlite = format!("sqlite:{}", state.path().join("bench.db").display());
    // A real PostgreSQL (fsync on), when its binaries are installed (scripts/postgres.sh).
    let pg = Postgres::start(true).ok();
    let pg_url = match &pg {
        Some(pg) => Some(pg.database("bench")?),
        None => None,
    };
    let mut hosts =
        vec![("memory:", echo_host(&binary, "memory:").await?), ("sqlite", echo_host(&binary, &sqlite).await?)];
    if let Some(url) = &pg_url {
        hosts.push(("postgres", echo_host(&binary, url).await?));
    }

    println!("store benchmark: {rounds} alternating rounds of {secs} s per variant, wrk -t2 -c{connections}");
    let mut enqueue: Vec<Vec<f64>> = vec![Vec::new(); hosts.len()];
    let mut invoke: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut invoke_median: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for _ in 0..rounds {
        for (i, (name, host)) in hosts.iter().enumerate() {
            let load = wrk(&host.url("/v1/functions/echo:enqueue"), r#"{"input":1}"#, connections, secs)?;
            anyhow::ensure!(load.non_2xx == 0, "{name}: {} enqueues were not accepted", load.non_2xx);
            enqueue[i].push(load.per_sec);
        }
        for (i, (name, host)) in hosts.iter().take(2).enumerate() {
            let load = wrk(&host.url("/v1/functions/echo:invoke"), r#"{"input":1}"#, connections, secs)?;
            anyhow::ensure!(load.non_2xx == 0, "{name}: {} invokes failed", load.non_2xx);
            invoke[i].push(load.per_sec);
            invoke_median[i].push(load.median_ms);
        }
    }
    println!("  durable :enqueue acceptance (each 202 is in the store first):");
    for (i, (name, _)) in hosts.iter().enumerate() {
        let rounds: Vec<String> = enqueue[i].iter().map(|r| format!("{r:.0}")).collect();
        println!("    {name:<9} rounds: {}", rounds.join(", "));
    }
    let base = median(enqueue[0].clone());
    for (i, (name, _)) in hosts.iter().enumerate() {
        let rate = median(enqueue[i].clone());
        let target = if *name == "sqlite" {
            format!("   (target >= 5000/s -> {})", verdict(rate >= 5000.0))
        } else {
            String::new()
        };
        println!("    {name:<9} {rate:9.0} accepted/s   ratio to memory: {:.2}{target}", rate / base);
    }
    let (mem, lite) = (median(invoke[0].clone()), median(invoke[1].clone()));
    println!("  sync echo invoke:");
    println!("    memory:   {mem:9.0} req/s   median {:.2} ms", median(invoke_median[0].clone()));
    println!("    sqlite    {lite:9.0} req/s   median {:.2} ms", median(invoke_median[1].clone()));
    println!("    ratio sqlite/memory {:.2}   (target >= 0.9 -> {})", lite / mem, verdict(lite / mem >= 0.9));
    for (_, host) in hosts {
        host.stop().await?;
    }

    if let Some(url) = &pg_url {
        takeover(&binary, url).await?;
    } else {
        println!("  takeover: skipped (no PostgreSQL binaries; run scripts/postgres.sh)");
    }
    drop(pg);
    Ok(())
}

/// Two replicas with the default lease settings; the one driving the executions is killed.
async fn takeover(binary: &Path, url: &str) -> anyhow::Result<()> {
    let plugins = plugin_dir(&[("testkit.wasm", Path::new(artifacts::TESTKIT))])?;
    let args = ["--store", url, "--no-kubernetes", "--plugin-dir", plugins.path().to_str().unwrap()];
    let a = Host::start(binary, &args, &[]).await?;
    let b = Host::start(binary, &args, &[]).await?;
    let spec = json!({"name": "remote", "dispatcher": "testkit", "timeoutMs": 120000, "concurrency": 1000,
        "queueSize": 1000, "dispatcherConfig": {"behavior": "pending", "pollAfterMs": 100, "completeAfterPolls": 40}});
    let (status, body) = a.post("/v1/functions", spec).await?;
    anyhow::ensure!(status == 201, "register: {body}");
    let mut ids = Vec::new();
    for i in 0..200 {
        let (status, body) = a.post("/v1/functions/remote:enqueue", json!({"input": i})).await?;
        anyhow::ensure!(status == 202, "enqueue: {body}");
        ids.push(body["executionId"].as_str().unwrap_or_default().to_string());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    a.kill().await?;
    let mut taken = None;
    loop {
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(120), "the executions were not taken over");
        if taken.is_none() {
            let m = b.client.get(format!("{}/metrics", b.admin)).send().await?.text().await?;
            if m.lines().any(|l| l.starts_with("nanofaas_replica_takeovers_total{reason=\"expired\"}")) {
                taken = Some(killed.elapsed());
            }
        }
        if taken.is_some() {
            let mut unfinished = 0;
            for id in &ids {
                let (_, body) = b.get(&format!("/v1/executions/{id}")).await?;
                if body["status"] != "success" {
                    unfinished += 1;
                }
            }
            if unfinished == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = killed.elapsed();
    let taken = taken.unwrap_or(done);
    println!("  takeover on PostgreSQL (default lease: 10 s TTL, 2 s scan), 200 pending executions:");
    println!(
        "    replica killed -> taken over  {:6.2} s   (target <= 15 s -> {})",
        taken.as_secs_f64(),
        verdict(taken <= Duration::from_secs(15))
    );
    println!("    replica killed -> all done    {:6.2} s", done.as_secs_f64());
    b.stop().await?;
    Ok(())
}
