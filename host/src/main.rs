//! The `nanofaas` binary: parse the command line, set up logging, bind, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use nanofaas::cli::{self, Cli, Command, PluginsCommand};
use nanofaas::config::Config;
use nanofaas::{Listeners, bootstrap, otel, run, telemetry};

/// mimalloc: per-thread free lists and pages it reuses rather than glibc's per-thread arenas
/// that grow and shrink with every request (see BENCHMARKS.md for what it gave).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Serve(args) => done(serve(Config::from(*args)).await),
        Command::Fn(args) => cli::functions(args).await,
        Command::Invoke(args) => cli::invoke(args).await,
        Command::Exec(args) => cli::executions(args).await,
        Command::Plugins(PluginsCommand::List(args)) => cli::plugins(args).await,
        Command::Plugins(PluginsCommand::Check { plugin_dir, grants, plugin_config, plugin_imports }) => {
            check_plugins(Config { plugin_dir, grants, plugin_config, plugin_imports, ..Config::default() })
        }
        Command::Completions { shell } => {
            cli::completions(shell);
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            print!("{}", nanofaas::api::document_json());
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("nanofaas: {e:#}");
        ExitCode::FAILURE
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _logging = telemetry::init(config.log_format, config.access_log);
    let traces = config.otlp_endpoint.as_deref().map(otel::install).transpose()?;
    let listeners = Listeners::bind(&config).await?;
    let result = run(config, listeners, shutdown_signal()).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    result
}

/// Lists what this binary would load; fails when any file is refused.
fn check_plugins(mut config: Config) -> anyhow::Result<ExitCode> {
    let _logging = telemetry::init(config.log_format, false);
    bootstrap::load_plugin_config(&mut config)?;
    let (catalog, refused) = bootstrap::catalog(&config)?;
    for plugin in catalog.plugins() {
        let source = match &plugin.source {
            nanofaas::plugin::Source::Builtin => "built-in".to_string(),
            nanofaas::plugin::Source::File(p) => p.display().to_string(),
        };
        let version = plugin.metadata.as_ref().map_or("-", |m| m.version.as_str());
        let (name, grants, digest, contract) =
            (&plugin.name, plugin.grants.to_string(), &plugin.digest[..12], &plugin.contract);
        println!("{name:<12} {version:<8} {contract:<7} {grants:<28} {digest} {source}");
        let missing = plugin.needs.without(&plugin.grants).names();
        if !missing.is_empty() {
            println!("warning      {}: needs {missing} and is not granted it", plugin.name);
        }
    }
    for e in &refused {
        println!("refused      {}: {}", e.what, e.reason);
    }
    if !refused.is_empty() {
        anyhow::bail!("{} plugin file(s) refused", refused.len());
    }
    Ok(ExitCode::SUCCESS)
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
