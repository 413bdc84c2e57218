//! `nanofaas-runtime`: the entrypoint of a function container in a Kubernetes Job pod.
//!
//! `nanofaas-runtime run -- <command…>` reads the invocation from its environment, runs the
//! function (STDIO, FILE or HTTP mode), writes a result envelope of at most 4 KiB to the
//! termination-message path *first* (so a status-following dispatcher can read the result even
//! when no callback is possible), then POSTs the result to the host's callback with retries until
//! the deadline, and exits non-zero on a function error so the Job's own status tells the truth.
//!
//! `nanofaas-runtime install DIR` copies the binary into DIR: an init container from the runtime
//! image runs it to share the runtime with a function image that does not contain it.

mod config;
mod function;
mod report;

use std::process::ExitCode;

use config::Invocation;

/// Exit codes: what the Job's pod status reports.
const EXIT_FUNCTION_ERROR: u8 = 1;
const EXIT_RUNTIME_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("install") if args.len() == 2 => install(&args[1]),
        Some("run") => {
            let command: Vec<String> = args[1..].iter().skip_while(|a| *a == "--").cloned().collect();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(run(command))
        }
        _ => {
            eprintln!("usage: nanofaas-runtime run -- <command> [args…] | nanofaas-runtime install <dir>");
            ExitCode::from(EXIT_RUNTIME_ERROR)
        }
    }
}

fn install(dir: &str) -> ExitCode {
    let result = (|| -> anyhow::Result<()> {
        let me = std::env::current_exe()?;
        std::fs::create_dir_all(dir)?;
        let target = std::path::Path::new(dir).join("nanofaas-runtime");
        std::fs::copy(&me, &target)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            log::event("installed", &[("dir", dir.into())]);
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::event("install failed", &[("error", e.to_string().into())]);
            ExitCode::from(EXIT_RUNTIME_ERROR)
        }
    }
}

async fn run(command: Vec<String>) -> ExitCode {
    let inv = match Invocation::from_env() {
        Ok(inv) => inv,
        Err(e) => {
            log::event("bad environment", &[("error", format!("{e:#}").into())]);
            return ExitCode::from(EXIT_RUNTIME_ERROR);
        }
    };
    log::set_context(&inv.function, &inv.execution_id, &inv.trace_id, inv.attempt);
    let started = std::time::Instant::now();
    let result = match inv.input().await {
        Ok(input) => function::run(&inv, &command, input).await,
        Err(e) => Err(report::Failure::platform("INPUT_UNAVAILABLE", format!("cannot fetch the input: {e:#}"))),
    };
    let run_ms = started.elapsed().as_millis() as u64;
    let exit = match &result {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FUNCTION_ERROR),
    };
    log::event("function finished", &[("success", result.is_ok().into()), ("durationMs", run_ms.into())]);
    report::termination_message(&inv, &result);
    // At the deadline the host has already ended the execution itself: a callback could only
    // race its timeout, so none is sent.
    if !matches!(&result, Err(f) if f.code == "TIMEOUT") {
        report::callback(&inv, &result).await;
    }
    exit
}

/// Structured logs: one JSON object per line on stderr.
mod log {
    use std::sync::OnceLock;

    use serde_json::{Map, Value};

    static CONTEXT: OnceLock<Map<String, Value>> = OnceLock::new();

    pub fn set_context(function: &str, execution_id: &str, trace_id: &str, attempt: u32) {
        let mut m = Map::new();
        m.insert("function".into(), function.into());
        m.insert("executionId".into(), execution_id.into());
        m.insert("traceId".into(), trace_id.into());
        m.insert("attempt".into(), attempt.into());
        let _ = CONTEXT.set(m);
    }

    pub fn event(message: &str, fields: &[(&str, Value)]) {
        let mut line = CONTEXT.get().cloned().unwrap_or_default();
        line.insert("component".into(), "nanofaas-runtime".into());
        line.insert("message".into(), message.into());
        for (k, v) in fields {
            line.insert((*k).into(), v.clone());
        }
        eprintln!("{}", Value::Object(line));
    }
}
