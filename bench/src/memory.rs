//! Memory under large outputs: the host's resident set across sync calls whose outputs are
//! megabytes, with the retained-output cap (the default) and with outputs kept whole.
//!
//! Every host is the real `nanofaas` binary; the function is a real `local` process writing
//! `mib` MiB to stdout. RSS is read from `/proc/PID/status` after one small warm-up call, after
//! the calls, and after the host has been idle for a while.

use std::time::Duration;

use nanofaas_test_support::Host;
use serde_json::json;

use crate::load::{host_binary, rss_kib};

/// RSS growth (MiB) after `calls` sync calls and after idling, and the retained bytes reported.
async fn variant(cap: Option<usize>, calls: usize, mib: usize) -> anyhow::Result<(f64, f64, f64)> {
    let binary = host_binary()?;
    let cap_arg = cap.map(|c| c.to_string());
    let mut args = vec!["--store", "memory:", "--no-kubernetes"];
    if let Some(c) = &cap_arg {
        args.extend(["--max-retained-output-bytes", c.as_str()]);
    }
    let host = Host::start(&binary, &args, &[]).await?;
    let bytes = mib * 1024 * 1024;
    let script = format!("head -c {bytes} /dev/zero | tr '\\0' x");
    let spec = json!({"name": "big", "dispatcher": "local", "command": ["sh", "-c", script],
                      "dispatcherConfig": {"mode": "raw", "outputContentType": "text/plain"}});
    let (status, body) = host.post("/v1/functions", spec).await?;
    anyhow::ensure!(status == 201, "register: {body}");
    let pid = host.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let call = || async {
        let r = host
            .client
            .post(host.url("/v1/functions/big:invoke"))
            .header("content-type", "application/octet-stream")
            .header("accept", "application/octet-stream")
            .body("x")
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "invoke: {}", r.status());
        Ok::<usize, anyhow::Error>(r.bytes().await?.len())
    };
    call().await?;
    let before = rss_kib(pid)?;
    for _ in 0..calls {
        anyhow::ensure!(call().await? == bytes, "a whole output comes back");
    }
    let after = rss_kib(pid)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = rss_kib(pid)?;
    let metrics = host.client.get(format!("{}/metrics", host.admin)).send().await?.text().await?;
    let retained = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nanofaas_retained_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let mib_of = |kib: u64| kib.saturating_sub(before) as f64 / 1024.0;
    Ok((mib_of(after), mib_of(idle), retained / (1024.0 * 1024.0)))
}

pub async fn run(calls: usize, mib: usize) -> anyhow::Result<()> {
    println!("memory benchmark: {calls} sync calls of a local function writing {mib} MiB each");
    let whole = variant(Some(64 * 1024 * 1024), calls, mib).await?;
    let capped = variant(None, calls, mib).await?;
    for (name, (after, idle, retained)) in [("outputs kept whole", whole), ("default cap (1 MiB)", capped)] {
        println!(
            "  {name:<20} RSS +{after:6.1} MiB after the calls, +{idle:6.1} MiB after 5 s idle; retained {retained:6.1} MiB"
        );
    }
    Ok(())
}
