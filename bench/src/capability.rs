//! `local` and `pool` invocations through the control plane (admission, execution record,
//! driver, plugin dispatch and poll, capability) vs doing the same work directly:
//! spawning the same command, or POSTing to the same endpoint with a `reqwest` client.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanofaas::config::Config;
use nanofaas::control_plane::{ControlPlane, SubmitOptions};
use nanofaas::execution::{Input, Status};
use nanofaas::function::FunctionSpec;

use crate::stats::{Summary, summarize, us};

struct Measured {
    latency: Summary,
    throughput: f64,
}

/// `n` sequential calls (latency), then `n` calls over `concurrency` tasks (throughput).
async fn measure<F, Fut>(n: usize, concurrency: usize, f: F) -> anyhow::Result<Measured>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let f = Arc::new(f);
    for _ in 0..(n / 10).max(5) {
        f().await?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        samples.push(t.elapsed());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / concurrency {
                f().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let throughput = (n / concurrency * concurrency) as f64 / started.elapsed().as_secs_f64();
    Ok(Measured { latency: summarize(samples), throughput })
}

fn report(title: &str, base_name: &str, base: &Measured, host: &Measured, concurrency: usize) {
    println!("{title}");
    for (name, m) in [(base_name, base), ("nanofaas", host)] {
        println!(
            "  {name:<16} p50 {:9.1} us   p99 {:9.1} us   throughput ({concurrency} in flight) {:8.0}/s",
            us(m.latency.median),
            us(m.latency.p99),
            m.throughput
        );
    }
    println!(
        "  ratio nanofaas/direct: p50 {:.2}x   throughput {:.2}",
        host.latency.median.as_secs_f64() / base.latency.median.as_secs_f64(),
        host.throughput / base.throughput
    );
}

async fn control_plane(config: Config) -> anyhow::Result<ControlPlane> {
    let (catalog, _) = nanofaas::bootstrap::catalog(&config)?;
    let store = Arc::new(nanofaas::store::memory::MemoryStore::new());
    nanofaas::control_plane(config, Arc::new(catalog), "http://127.0.0.1:9".into(), store).await
}

async fn invoke(cp: &ControlPlane, function: &str, body: &'static str) -> anyhow::Result<()> {
    let input = Input { content_type: "application/json".into(), body: body.into(), metadata: vec![] };
    let exec = cp.submit(function, input, SubmitOptions::default()).await?.execution().clone();
    exec.wait_done().await;
    anyhow::ensure!(exec.status() == Status::Success, "{:?}", exec.snapshot().error);
    Ok(())
}

pub async fn local(n: usize, concurrency: usize) -> anyhow::Result<()> {
    let cp = control_plane(Config { max_retained_executions: 1000, ..Config::default() }).await?;
    let spec = FunctionSpec {
        name: "cat".into(),
        dispatcher: Some("local".into()),
        command: Some(vec!["cat".into()]),
        concurrency: Some(concurrency as u32),
        queue_size: Some(10_000),
        ..Default::default()
    };
    cp.register(spec).await?;
    let direct = measure(n, concurrency, || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut child = tokio::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(br#"{"input":{"n":1},"metadata":{}}"#).await?;
        drop(stdin);
        let mut out = Vec::new();
        child.stdout.take().expect("piped").read_to_end(&mut out).await?;
        anyhow::ensure!(child.wait().await?.success());
        Ok(())
    })
    .await?;
    let host = {
        let cp = cp.clone();
        measure(n, concurrency, move || {
            let cp = cp.clone();
            async move { invoke(&cp, "cat", r#"{"n":1}"#).await }
        })
        .await?
    };
    report(
        &format!("local benchmark: `cat` as a function vs spawning `cat`, {n} calls"),
        "spawn directly",
        &direct,
        &host,
        concurrency,
    );
    Ok(())
}

pub async fn pool(n: usize, concurrency: usize) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/invoke",
        axum::routing::post(
            |axum::Json(v): axum::Json<serde_json::Value>| async move { axum::Json(v["input"].clone()) },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/invoke", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cp = control_plane(Config { max_retained_executions: 1000, ..Config::default() }).await?;
    let spec = FunctionSpec {
        name: "warm".into(),
        dispatcher: Some("pool".into()),
        endpoint_url: Some(url.clone()),
        concurrency: Some(concurrency as u32),
        queue_size: Some(10_000),
        ..Default::default()
    };
    cp.register(spec).await?;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let direct = {
        let (client, url) = (client.clone(), url.clone());
        measure(n, concurrency, move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .timeout(Duration::from_secs(30))
                    .body(r#"{"input":{"n":1},"metadata":{}}"#)
                    .send()
                    .await?;
                anyhow::ensure!(r.status() == 200);
                r.bytes().await?;
                Ok(())
            }
        })
        .await?
    };
    let host = {
        let cp = cp.clone();
        measure(n, concurrency, move || {
            let cp = cp.clone();
            async move { invoke(&cp, "warm", r#"{"n":1}"#).await }
        })
        .await?
    };
    report(
        &format!("pool benchmark: a pool function vs POSTing to its endpoint directly, {n} calls"),
        "POST directly",
        &direct,
        &host,
        concurrency,
    );
    Ok(())
}
