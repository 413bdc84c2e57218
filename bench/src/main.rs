//! `nanofaas-bench`: performance targets checked by measurement, never by timed test assertions.
//! Every benchmark measures nanofaas and a baseline in the same run and prints both and their
//! ratio, because absolute numbers on a shared machine mean little.
//!
//! - `all`: the hot-path targets below, each against its baseline, in one table.
//! - `dispatch`: one `echo` dispatch through the plugin runtime (fresh instance, call, one host
//!   import) vs the same logic as a native Rust trait object.
//! - `http`: sync invoke of an `echo` function through the full host vs a bare axum handler that
//!   echoes, same client, same machine.
//! - `local`: a `local` function running `cat` vs spawning `cat` directly.
//! - `pool`: a `pool` function vs POSTing to the same endpoint directly with `reqwest`.
//! - `kube`: Kubernetes Jobs against the test API server: invoke-to-Job-created and
//!   callback-to-response latency, API requests per execution.
//! - `store`: durable `:enqueue` acceptance on each store, sync invoke with SQLite vs
//!   `memory:`, and the takeover time of a killed replica (real host processes, `wrk` as the
//!   load generator).

mod capability;
mod dispatch;
mod http;
mod kube;
mod load;
mod memory;
mod stats;
mod store;
mod suite;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "nanofaas-bench", about)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Every hot-path target against its baseline, in one table (a few minutes).
    All {
        /// Alternating rounds per variant.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Connections for the throughput runs.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Executions held pending on callbacks.
        #[arg(long, default_value_t = 10_000)]
        pending: usize,
        /// Their timeout.
        #[arg(long, default_value_t = 10_000)]
        pending_timeout_ms: u64,
    },
    /// Serve the baselines of `all` on `listen` until killed (to measure by hand).
    Baseline {
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: std::net::SocketAddr,
    },
    /// Plugin dispatch overhead: Wasm `echo` vs native.
    Dispatch {
        /// Measured dispatches per variant.
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
    },
    /// Sync invoke through the host vs a bare axum echo.
    Http {
        /// Requests per measured run.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Concurrent connections for the throughput run.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Concurrent connections for the latency ("moderate load") run.
        #[arg(long, default_value_t = 4)]
        moderate: usize,
    },
    /// `local` invoke of a trivial command vs spawning it directly.
    Local {
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Kubernetes Jobs against the test API server: latencies and API requests per execution.
    Kube {
        #[arg(long, default_value_t = 20)]
        executions: usize,
    },
    /// The durable store: enqueue acceptance, invoke cost, replica takeover.
    Store {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measured run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Host RSS across sync calls with outputs of several MiB, with and without the
    /// retained-output cap.
    Memory {
        #[arg(long, default_value_t = 30)]
        calls: usize,
        #[arg(long, default_value_t = 5)]
        mib: usize,
    },
    /// `pool` invoke vs calling the same endpoint directly.
    Pool {
        #[arg(long, default_value_t = 10_000)]
        calls: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.bench {
            Bench::All { rounds, seconds, connections, pending, pending_timeout_ms } => {
                suite::run(suite::Settings { rounds, secs: seconds, connections, pending, pending_timeout_ms }).await
            }
            Bench::Baseline { listen } => {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                Ok(axum::serve(listener, suite::baseline()).await?)
            }
            Bench::Dispatch { iterations } => dispatch::run(iterations).await,
            Bench::Http { requests, concurrency, moderate } => http::run(requests, concurrency, moderate).await,
            Bench::Local { calls, concurrency } => capability::local(calls, concurrency).await,
            Bench::Pool { calls, concurrency } => capability::pool(calls, concurrency).await,
            Bench::Kube { executions } => kube::run(executions).await,
            Bench::Memory { calls, mib } => memory::run(calls, mib).await,
            Bench::Store { rounds, seconds, connections } => store::run(rounds, seconds, connections).await,
        }
    })
}
