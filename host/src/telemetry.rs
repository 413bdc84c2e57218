//! Logging setup: `tracing` to stderr, text or JSON, filtered by `RUST_LOG` (default `info`).
//!
//! Lines are formatted on the thread that logs and written by a thread of their own
//! (`tracing-appender`'s non-blocking writer, buffered, flushed whenever its queue is empty), so
//! a slow terminal or pipe never stalls the request path. It is not lossy: when the queue is full
//! the logging thread waits rather than dropping lines. The returned guard flushes what is queued
//! when dropped; keep it for the life of the process.
//!
//! The access line of each finished execution (target [`ACCESS`]) is off unless asked for with
//! `--access-log` or named in `RUST_LOG`: at a production default nobody pays for a line per
//! request (it halved the throughput of a trivial function, see BENCHMARKS.md).

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The target of the per-execution access line.
pub const ACCESS: &str = "nanofaas::access";

/// Lines that may wait for the writer thread before loggers wait too.
const QUEUED_LINES: usize = 16_384;

/// Installs the subscriber; `None` when one is installed already (tests).
pub fn init(format: LogFormat, access_log: bool) -> Option<WorkerGuard> {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("nanofaas-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(std::env::var("RUST_LOG").ok().as_deref(), access_log))
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(writer);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.ok().map(|()| guard)
}

/// `RUST_LOG` (or `info`), with the access line off unless it is asked for.
fn filter(rust_log: Option<&str>, access_log: bool) -> EnvFilter {
    let base = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let directives = if access_log {
        format!("{base},{ACCESS}=info")
    } else if base.contains(ACCESS) {
        base.to_string()
    } else {
        format!("{base},{ACCESS}=off")
    };
    EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("nanofaas: RUST_LOG is invalid ({e}); logging at info");
        EnvFilter::new(format!("info,{ACCESS}={}", if access_log { "info" } else { "off" }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `filter` lets an info event of `target` through (through a real
    /// subscriber: `EnvFilter` answers per callsite).
    fn passes(filter: EnvFilter, target: &'static str) -> bool {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tracing_subscriber::layer::SubscriberExt;
        static SEEN: AtomicBool = AtomicBool::new(false);
        struct Probe;
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Probe {
            fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                SEEN.store(true, Ordering::SeqCst);
            }
        }
        SEEN.store(false, Ordering::SeqCst);
        let subscriber = tracing_subscriber::registry().with(filter).with(Probe);
        tracing::subscriber::with_default(subscriber, || match target {
            ACCESS => tracing::info!(target: "nanofaas::access", "x"),
            _ => tracing::info!(target: "nanofaas::ledger", "x"),
        });
        SEEN.load(Ordering::SeqCst)
    }

    #[test]
    fn the_access_line_is_off_unless_asked_for() {
        assert!(!passes(filter(None, false), ACCESS));
        assert!(passes(filter(None, false), "nanofaas::ledger"));
        assert!(passes(filter(None, true), ACCESS));
        assert!(passes(filter(Some("warn"), true), ACCESS));
        assert!(!passes(filter(Some("warn"), false), "nanofaas::ledger"));
        assert!(passes(filter(Some("info,nanofaas::access=info"), false), ACCESS));
        assert!(!passes(filter(Some("debug"), false), ACCESS));
        // An invalid RUST_LOG falls back to info rather than logging nothing.
        assert!(passes(filter(Some("nanofaas=bogus"), false), "nanofaas::ledger"));
    }
}
