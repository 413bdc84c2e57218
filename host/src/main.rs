//! The `nanofaas` binary: parse the command line, set up logging, bind, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use nanofaas::config::{Cli, Command, Config};
use nanofaas::{Listeners, bootstrap, run, telemetry};

/// mimalloc: per-thread free lists and pages it reuses rather than glibc's per-thread arenas
/// that grow and shrink with every request (see BENCHMARKS.md for what it gave).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(Config::from(*args)).await,
        Command::Plugins { plugin_dir, grants } => list_plugins(Config { plugin_dir, grants, ..Config::default() }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nanofaas: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _logging = telemetry::init(config.log_format, config.access_log);
    let listeners = Listeners::bind(&config).await?;
    run(config, listeners, shutdown_signal()).await
}

fn list_plugins(config: Config) -> anyhow::Result<()> {
    let _logging = telemetry::init(config.log_format, false);
    let (catalog, refused) = bootstrap::catalog(&config)?;
    for plugin in catalog.plugins() {
        let source = match &plugin.source {
            nanofaas::plugin::Source::Builtin => "built-in".to_string(),
            nanofaas::plugin::Source::File(p) => p.display().to_string(),
        };
        println!("{:<12} {:<28} {}", plugin.name, plugin.grants, source);
    }
    for e in &refused {
        println!("refused      {}: {}", e.what, e.reason);
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
