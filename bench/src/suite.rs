//! `all`: every target of the hot path measured against its baseline in one run, printed as one
//! table with whether each is met.
//!
//! The hosts are real `nanofaas` processes of the same build, one per store (`memory:` and the
//! SQLite default), and the load comes from `wrk`, another process. The baselines are a bare
//! axum server in this process (idle while a host is measured): `POST /echo` answers the JSON
//! shape of a sync invoke, and `POST /invoke` is the warm endpoint that the `pool` function
//! calls, so "direct" and "through nanofaas" reach the same handler. Variants alternate round by
//! round so that drift on a noisy machine affects them alike; each figure is the median of its
//! rounds. The pending-executions figures use fresh hosts and the `testkit` plugin's `pending`
//! behaviour: each execution waits for a completion callback that never comes, so it ends at
//! its deadline, as a Job whose callback is lost would.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::routing::post;
use nanofaas_test_support::{Host, artifacts, plugin_dir};
use serde_json::{Value, json};

use crate::load::{host_binary, median, rss_kib, verdict, wrk};
use crate::stats::us;

/// How long and how hard `all` measures.
pub struct Settings {
    pub rounds: usize,
    pub secs: u64,
    pub connections: usize,
    pub pending: usize,
    pub pending_timeout_ms: u64,
}

/// One line of the table.
struct Row {
    what: String,
    baseline: String,
    nanofaas: String,
    figure: String,
    target: String,
    met: bool,
}

const ECHO_BODY: &str = r#"{"input":{"message":"hello"}}"#;
const POOL_BODY: &str = r#"{"input":{"n":1}}"#;
/// What the host's `pool` plugin sends to the endpoint for [`POOL_BODY`].
const POOL_DIRECT_BODY: &str = r#"{"input":{"n":1},"metadata":{}}"#;

pub async fn run(s: Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let binary = host_binary()?;
    let mut rows = Vec::new();

    let d = crate::dispatch::measure(20_000).await?;
    rows.push(Row {
        what: "plugin dispatch (fresh instance, call, host import), median".into(),
        baseline: format!("{:.2} us native", us(d.native.median)),
        nanofaas: format!("{:.2} us", us(d.wasm.median)),
        figure: format!("{:.2} us", us(d.wasm.median)),
        target: format!("<= {} us", crate::dispatch::TARGET_US),
        met: us(d.wasm.median) <= crate::dispatch::TARGET_US,
    });

    let bare = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = bare.local_addr()?;
    tokio::spawn(async move { axum::serve(bare, baseline()).await });
    let bare_echo = format!("http://{bare_addr}/echo");
    let endpoint = format!("http://{bare_addr}/invoke");

    let plugins = plugin_dir(&[("testkit.wasm", Path::new(artifacts::TESTKIT))])?;
    let state = tempfile::tempdir()?;
    let sqlite = format!("sqlite:{}", state.path().join("bench.db").display());
    let stores = [("memory:", "memory:".to_string()), ("sqlite", sqlite)];
    let mut hosts = Vec::new();
    for (name, store) in &stores {
        let host = Host::start(&binary, &["--store", store, "--no-kubernetes"], &[]).await?;
        register(&host, json!({"name": "echo", "executionMode": "LOCAL", "concurrency": 64, "queueSize": 100000}))
            .await?;
        register(
            &host,
            json!({"name": "warm", "dispatcher": "pool", "endpointUrl": endpoint, "concurrency": 64,
                   "queueSize": 100000}),
        )
        .await?;
        hosts.push((*name, host));
    }

    // Throughput at `connections`, then the median at one connection.
    for (connections, key) in [(s.connections, Key::Throughput), (1, Key::Median)] {
        let mut echo: Vec<Vec<f64>> = vec![Vec::new(); 1 + hosts.len()];
        let mut pool: Vec<Vec<f64>> = vec![Vec::new(); 1 + hosts.len()];
        for _ in 0..s.rounds {
            echo[0].push(key.of(&wrk(&bare_echo, ECHO_BODY, connections, s.secs)?)?);
            for (i, (_, host)) in hosts.iter().enumerate() {
                echo[1 + i].push(key.of(&wrk(
                    &host.url("/v1/functions/echo:invoke"),
                    ECHO_BODY,
                    connections,
                    s.secs,
                )?)?);
            }
            pool[0].push(key.of(&wrk(&endpoint, POOL_DIRECT_BODY, connections, s.secs)?)?);
            for (i, (_, host)) in hosts.iter().enumerate() {
                pool[1 + i].push(key.of(&wrk(
                    &host.url("/v1/functions/warm:invoke"),
                    POOL_BODY,
                    connections,
                    s.secs,
                )?)?);
            }
        }
        for (i, (store, _)) in hosts.iter().enumerate() {
            let (be, he) = (median(echo[0].clone()), median(echo[1 + i].clone()));
            let (bp, hp) = (median(pool[0].clone()), median(pool[1 + i].clone()));
            match key {
                Key::Throughput => {
                    rows.push(ratio_row(format!("sync echo vs bare axum, {connections} conns, {store}"), be, he, 0.5));
                    rows.push(ratio_row(format!("pool vs direct POST, {connections} conns, {store}"), bp, hp, 0.5));
                }
                Key::Median => {
                    let added = (he - be) * 1000.0;
                    rows.push(Row {
                        what: format!("sync echo added median, 1 conn, {store}"),
                        baseline: format!("{:.0} us", be * 1000.0),
                        nanofaas: format!("{:.0} us", he * 1000.0),
                        figure: format!("+{added:.0} us"),
                        target: "<= +50 us".into(),
                        met: added <= 50.0,
                    });
                    let r = hp / bp;
                    rows.push(Row {
                        what: format!("pool median vs direct POST, 1 conn, {store}"),
                        baseline: format!("{:.0} us", bp * 1000.0),
                        nanofaas: format!("{:.0} us", hp * 1000.0),
                        figure: format!("{r:.2}x"),
                        target: "<= 1.30x".into(),
                        met: r <= 1.3,
                    });
                }
            }
        }
    }
    for (_, host) in hosts {
        host.stop().await?;
    }

    for (store, location) in &stores {
        let p = pending(&binary, location, plugins.path(), s.pending, s.pending_timeout_ms).await?;
        rows.push(Row {
            what: format!("{} pending on callbacks: RSS over idle, {store}", s.pending),
            baseline: format!("{:.1} MB idle", p.idle_mb),
            nanofaas: format!("{:.1} MB", p.idle_mb + p.added_mb),
            figure: format!("+{:.1} MB", p.added_mb),
            target: "< 100 MB".into(),
            met: p.added_mb < 100.0,
        });
        rows.push(Row {
            what: format!("{} pending: timed out after the deadline, {store}", s.pending),
            baseline: format!("{} of {} timeout", p.timed_out, s.pending),
            nanofaas: format!("p99 {} ms", p.late_p99_ms),
            figure: format!("max {} ms", p.late_max_ms),
            target: "every one <= 50 ms".into(),
            met: p.timed_out == s.pending && p.late_max_ms <= 50 && p.late_min_ms >= -1,
        });
    }

    print_table(&rows);
    println!(
        "{} of {} targets met; measured in {:.0} s ({} rounds of {} s per variant, wrk -c{} and -c1)",
        rows.iter().filter(|r| r.met).count(),
        rows.len(),
        started.elapsed().as_secs_f64(),
        s.rounds,
        s.secs,
        s.connections
    );
    Ok(())
}

/// The baseline server: `POST /echo` answers the shape of a sync invoke of `echo`, `POST /invoke`
/// is a warm endpoint returning its envelope's `input`.
pub fn baseline() -> axum::Router {
    axum::Router::new()
        .route("/echo", post(crate::http::bare_echo))
        .route("/invoke", post(|Json(v): Json<Value>| async move { Json(v["input"].clone()) }))
}

#[derive(Clone, Copy)]
enum Key {
    Throughput,
    Median,
}

impl Key {
    fn of(self, load: &crate::load::Load) -> anyhow::Result<f64> {
        anyhow::ensure!(load.non_2xx == 0, "{} requests failed", load.non_2xx);
        Ok(match self {
            Key::Throughput => load.per_sec,
            Key::Median => load.median_ms,
        })
    }
}

fn ratio_row(what: String, base: f64, host: f64, target: f64) -> Row {
    let r = host / base;
    Row {
        what,
        baseline: format!("{base:.0} req/s"),
        nanofaas: format!("{host:.0} req/s"),
        figure: format!("{r:.2}"),
        target: format!(">= {target:.2}"),
        met: r >= target,
    }
}

fn print_table(rows: &[Row]) {
    let headers = ["benchmark", "baseline", "nanofaas", "figure", "target", ""];
    let cells: Vec<[&str; 6]> =
        rows.iter().map(|r| [&*r.what, &*r.baseline, &*r.nanofaas, &*r.figure, &*r.target, verdict(r.met)]).collect();
    let widths: Vec<usize> =
        (0..6).map(|c| cells.iter().map(|r| r[c].len()).chain([headers[c].len()]).max().unwrap_or(0)).collect();
    let line = |r: [&str; 6]| {
        let parts: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("| {} |", parts.join(" | "));
    };
    line(headers);
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for r in cells {
        line(r);
    }
}

async fn register(host: &Host, spec: Value) -> anyhow::Result<()> {
    let (status, body) = host.post("/v1/functions", spec).await?;
    anyhow::ensure!(status == 201, "register: {body}");
    Ok(())
}

/// What `n` executions waiting for callbacks cost, and how punctually they timed out.
struct Pending {
    idle_mb: f64,
    added_mb: f64,
    timed_out: usize,
    late_min_ms: i64,
    late_p99_ms: i64,
    late_max_ms: i64,
}

async fn pending(binary: &Path, store: &str, plugins: &Path, n: usize, timeout_ms: u64) -> anyhow::Result<Pending> {
    let dir = plugins.to_str().expect("a UTF-8 path");
    let host = Host::start(binary, &["--store", store, "--no-kubernetes", "--plugin-dir", dir], &[]).await?;
    let pid = host.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let spec = |name: &str, timeout: u64| {
        json!({"name": name, "dispatcher": "testkit", "timeoutMs": timeout, "concurrency": n, "queueSize": n,
               "dispatcherConfig": {"behavior": "pending"}})
    };
    register(&host, spec("wait", timeout_ms)).await?;
    // Warm the path (plugin, store statements, buffers) with a few that end at once.
    register(&host, spec("prelude", 200)).await?;
    let host = Arc::new(host);
    enqueue(&host, "prelude", 200).await?;
    wait_in_flight(&host, "prelude", 0, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid)?;

    let ids = enqueue(&host, "wait", n).await?;
    wait_in_flight(&host, "wait", n, Duration::from_millis(timeout_ms)).await?;
    let held = rss_kib(pid)?;
    wait_in_flight(&host, "wait", 0, Duration::from_millis(timeout_ms) + Duration::from_secs(30)).await?;

    let views = fetch(&host, &ids).await?;
    let mut late = Vec::with_capacity(n);
    let mut timed_out = 0;
    for v in &views {
        if v["status"] == "timeout" {
            timed_out += 1;
        }
        let at = |field: &str| -> anyhow::Result<SystemTime> {
            Ok(humantime::parse_rfc3339(v[field].as_str().ok_or_else(|| anyhow::anyhow!("no {field}: {v}"))?)?)
        };
        let deadline = at("acceptedAt")? + Duration::from_millis(timeout_ms);
        let finished = at("finishedAt")?;
        late.push(match finished.duration_since(deadline) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        });
    }
    late.sort();
    let host = Arc::into_inner(host).expect("no other owner");
    host.stop().await?;
    let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
    Ok(Pending {
        idle_mb: mb(idle),
        added_mb: mb(held.saturating_sub(idle)),
        timed_out,
        late_min_ms: late[0],
        late_p99_ms: late[(late.len() - 1) * 99 / 100],
        late_max_ms: late[late.len() - 1],
    })
}

/// Enqueues `n` executions of `function` over 32 connections; their ids.
async fn enqueue(host: &Arc<Host>, function: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let tasks = 32.min(n);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (host, path) = (host.clone(), format!("/v1/functions/{function}:enqueue"));
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (t..n).step_by(tasks) {
                let (status, body) = host.post(&path, json!({"input": i})).await?;
                anyhow::ensure!(status == 202, "enqueue: {status} {body}");
                ids.push(body["executionId"].as_str().unwrap_or_default().to_string());
            }
            Ok(ids)
        }));
    }
    let mut ids = Vec::with_capacity(n);
    for h in handles {
        ids.extend(h.await??);
    }
    Ok(ids)
}

/// Every execution's record, fetched over 32 connections.
async fn fetch(host: &Arc<Host>, ids: &[String]) -> anyhow::Result<Vec<Value>> {
    let ids = Arc::new(ids.to_vec());
    let tasks = 32.min(ids.len());
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (host, ids) = (host.clone(), ids.clone());
        handles.push(tokio::spawn(async move {
            let mut views = Vec::new();
            for id in ids.iter().skip(t).step_by(tasks) {
                let (status, body) = host.get(&format!("/v1/executions/{id}")).await?;
                anyhow::ensure!(status == 200, "execution {id}: {status} {body}");
                views.push(body);
            }
            Ok::<_, anyhow::Error>(views)
        }));
    }
    let mut views = Vec::with_capacity(ids.len());
    for h in handles {
        views.extend(h.await??);
    }
    Ok(views)
}

/// Waits until `function` holds `slots` concurrency slots, as the host's metrics say.
async fn wait_in_flight(host: &Host, function: &str, slots: usize, within: Duration) -> anyhow::Result<()> {
    let series = format!("nanofaas_in_flight{{function=\"{function}\"}} ");
    let until = Instant::now() + within;
    loop {
        let m = host.client.get(format!("{}/metrics", host.admin)).send().await?.text().await?;
        let now = m.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse::<f64>().ok());
        if now == Some(slots as f64) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "{function}: {now:?} slots in flight, expected {slots}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
