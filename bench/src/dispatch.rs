//! (a) Plugin dispatch overhead: the `echo` plugin through the plugin runtime (fresh instance from
//! the pool, the call, one host import, the result taken back) vs the same logic behind a native
//! `Box<dyn Strategy>` with a boxed future, as a host without Wasm would call it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use nanofaas::capability::Capabilities;
use nanofaas::config::PluginLimits;
use nanofaas::metrics::Metrics;
use nanofaas::plugin::{Catalog, Failure, FunctionView, Held, Invocation, Outcome, Output, Plugins};

use crate::load::verdict;
use crate::stats::{Summary, summarize, us};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The native counterpart of the WIT `strategy.dispatch`.
trait Strategy: Send + Sync {
    fn dispatch<'a>(&'a self, inv: &'a Invocation, input: Bytes) -> BoxFuture<'a, Result<Outcome, Failure>>;
}

/// `plugins/echo` in native Rust: log the size, return the input.
struct NativeEcho;

impl Strategy for NativeEcho {
    fn dispatch<'a>(&'a self, inv: &'a Invocation, input: Bytes) -> BoxFuture<'a, Result<Outcome, Failure>> {
        Box::pin(async move {
            let line = format!("echo {} bytes", input.len());
            tracing::debug!(target: "nanofaas::plugin", "{line}");
            Ok(Outcome::Done(Ok(Output { content_type: inv.content_type.clone(), body: input })))
        })
    }
}

/// What [`measure`] found.
pub struct Dispatch {
    pub wasm: Summary,
    pub native: Summary,
    pub warmup: usize,
    /// Dispatches per second with 64 in flight on the runtime's workers.
    pub capacity: f64,
}

pub async fn run(iterations: usize) -> anyhow::Result<()> {
    let Dispatch { wasm: w, native: n, warmup, capacity } = measure(iterations).await?;
    println!("dispatch benchmark: {iterations} sequential dispatches each, after {warmup} warm-up");
    println!("  wasm echo   median {:8.2} us   p99 {:8.2} us   mean {:8.2} us", us(w.median), us(w.p99), us(w.mean));
    println!("  native echo median {:8.2} us   p99 {:8.2} us   mean {:8.2} us", us(n.median), us(n.p99), us(n.mean));
    println!("  wasm - native (median): {:.2} us per dispatch", us(w.median) - us(n.median));
    println!("  wasm capacity with 64 dispatches in flight: {capacity:.0} dispatches/s");
    println!("  target: wasm median <= {TARGET_US} us -> {}", verdict(us(w.median) <= TARGET_US));
    Ok(())
}

/// The median a dispatch may take (issue 10's target).
pub const TARGET_US: f64 = 5.0;

/// `iterations` sequential dispatches of each kind, alternating, after a warm-up; then the
/// capacity with many in flight.
pub async fn measure(iterations: usize) -> anyhow::Result<Dispatch> {
    let limits = PluginLimits::default();
    let mut builder = Catalog::builder(&limits)?;
    builder.add_builtins()?;
    let catalog = Arc::new(builder.build());
    let caps = Arc::new(Capabilities::detached(&nanofaas::config::Config::default()));
    let plugins = Plugins::new(catalog, limits, &Default::default(), caps, Metrics::new());
    let echo = plugins.get("echo").expect("echo is built in").clone();
    let inv = Invocation {
        execution_id: "bench".into(),
        attempt: 1,
        function: Arc::new(FunctionView { name: "echo".into(), config: "{}".into(), ..Default::default() }),
        content_type: "application/json".into(),
        trace_id: "t".into(),
        ..Default::default()
    };
    let input = Bytes::from_static(br#"{"message":"hello"}"#);
    let native: Box<dyn Strategy> = Box::new(NativeEcho);

    let warmup = (iterations / 100).max(200);
    let mut wasm = Vec::with_capacity(iterations);
    let mut base = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let t = Instant::now();
        let out = plugins.dispatch(&echo, &inv, input.clone(), &mut Held::default()).await;
        let d = t.elapsed();
        assert!(matches!(out, Ok(Ok(Outcome::Done(Ok(_))))), "echo dispatch failed: {out:?}");
        let t = Instant::now();
        let out = native.dispatch(&inv, input.clone()).await;
        let n = t.elapsed();
        assert!(matches!(out, Ok(Outcome::Done(Ok(_)))));
        if i >= warmup {
            wasm.push(d);
            base.push(n);
        }
    }
    // Capacity: many dispatches in flight on the runtime's worker threads.
    let plugins = Arc::new(plugins);
    let tasks = 64;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (plugins, echo, inv, input) = (plugins.clone(), echo.clone(), inv.clone(), input.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..iterations / tasks {
                let out = plugins.dispatch(&echo, &inv, input.clone(), &mut Held::default()).await;
                assert!(matches!(out, Ok(Ok(Outcome::Done(Ok(_))))));
            }
        }));
    }
    for h in handles {
        h.await?;
    }
    let capacity = (iterations / tasks * tasks) as f64 / started.elapsed().as_secs_f64();

    Ok(Dispatch { wasm: summarize(wasm), native: summarize(base), warmup, capacity })
}
