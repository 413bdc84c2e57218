//! (b) Sync invoke through the full host (HTTP API, admission, execution record, driver task,
//! plugin dispatch, response rendering) vs a bare axum handler returning the same JSON shape.
//! Both servers run in this process on the same runtime and are driven by the same client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::routing::post;
use nanofaas::config::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::stats::{Summary, summarize, us};

struct Run {
    latency: Summary,
    throughput: f64,
}

/// `requests` POSTs over `connections` keep-alive connections; every response must be 200.
async fn drive(client: &reqwest::Client, url: &str, requests: usize, connections: usize) -> anyhow::Result<Run> {
    let body = Arc::new(json!({"input": {"message": "hello"}}).to_string());
    let started = Instant::now();
    let per = requests / connections;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, body) = (client.clone(), url.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200, "status {}", r.status());
                r.bytes().await?;
                samples.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    for t in tasks {
        samples.extend(t.await??);
    }
    let elapsed = started.elapsed();
    let throughput = samples.len() as f64 / elapsed.as_secs_f64();
    Ok(Run { latency: summarize(samples), throughput })
}

pub(crate) async fn bare_echo(Json(body): Json<Value>) -> Json<Value> {
    Json(json!({"executionId": "x", "status": "success", "output": body["input"], "error": null}))
}

pub async fn run(requests: usize, concurrency: usize, moderate: usize) -> anyhow::Result<()> {
    // The bare baseline.
    let bare = TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("http://{}/echo", bare.local_addr()?);
    tokio::spawn(async move { axum::serve(bare, axum::Router::new().route("/echo", post(bare_echo))).await });

    // The host, with an echo function and its queue large enough for the load.
    let file = std::env::temp_dir().join(format!("nanofaas-bench-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        format!("- name: echo\n  executionMode: LOCAL\n  concurrency: {}\n  queueSize: 10000\n", concurrency * 2),
    )?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        admin_listen: "127.0.0.1:0".parse()?,
        functions_file: Some(file.clone()),
        max_retained_executions: 10_000,
        ..Config::default()
    };
    let listeners = nanofaas::Listeners::bind(&config).await?;
    let host_url = format!("http://{}/v1/functions/echo:invoke", listeners.api.local_addr()?);
    tokio::spawn(nanofaas::run(config, listeners, std::future::pending()));
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    // Wait for the host to register the function.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.post(&host_url).json(&json!({"input": 1})).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        anyhow::ensure!(Instant::now() < deadline, "host did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&file);

    // Warm both, then alternate measured runs so drift affects both alike.
    drive(&client, &bare_url, requests / 10, concurrency).await?;
    drive(&client, &host_url, requests / 10, concurrency).await?;
    let bare_tp = drive(&client, &bare_url, requests, concurrency).await?;
    let host_tp = drive(&client, &host_url, requests, concurrency).await?;
    let bare_lat = drive(&client, &bare_url, requests / 2, moderate).await?;
    let host_lat = drive(&client, &host_url, requests / 2, moderate).await?;

    println!("http benchmark: sync invoke of `echo` vs bare axum echo, {requests} requests per throughput run");
    println!("  throughput ({concurrency} connections):");
    println!("    bare axum  {:10.0} req/s", bare_tp.throughput);
    println!("    nanofaas   {:10.0} req/s", host_tp.throughput);
    let ratio = host_tp.throughput / bare_tp.throughput;
    println!("    ratio      {ratio:10.2}   (target >= 0.5 -> {})", if ratio >= 0.5 { "MET" } else { "NOT MET" });
    println!("  latency at moderate load ({moderate} connections, {} requests):", requests / 2);
    for (name, r) in [("bare axum", &bare_lat), ("nanofaas", &host_lat)] {
        println!("    {name:<10} median {:8.1} us   p99 {:8.1} us", us(r.latency.median), us(r.latency.p99));
    }
    let added = us(host_lat.latency.p99) - us(bare_lat.latency.p99);
    println!(
        "    added p99  {added:8.1} us   (target < 1000 us -> {})",
        if added < 1000.0 { "MET" } else { "NOT MET" }
    );
    Ok(())
}
