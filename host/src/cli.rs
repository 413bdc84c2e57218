//! The command-line client in the `nanofaas` binary: functions, invocations, executions and
//! plugins of a running server, over its HTTP API.
//!
//! It reads and writes the API's own types (`FunctionSpec`, `ExecutionView`, `ErrorBody`, …),
//! so the client and the server cannot disagree on a shape. Output is a table for people (`-o
//! table`, the default) or the API's JSON or YAML for scripts. The exit status says what
//! happened: 0 done, 1 the API refused or could not be reached (its message on stderr), 3 an
//! execution that ended other than `success`.

mod render;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{Accepted, ErrorBody, ExecutionView, InvocationResponse, LogsView, PluginView};
use crate::config::{PluginImports, ServeArgs};
use crate::function::FunctionSpec;

/// `nanofaas`: a function-as-a-service control plane with WebAssembly dispatcher plugins.
#[derive(Debug, clap::Parser)]
#[command(name = "nanofaas", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (and the admin endpoints) until interrupted.
    Serve(Box<ServeArgs>),
    /// Manage the functions of a server.
    #[command(name = "fn")]
    Fn(FnArgs),
    /// Invoke a function and print its output.
    Invoke(InvokeArgs),
    /// Show or cancel executions.
    Exec(ExecArgs),
    /// The plugins a server has loaded, or those this binary would load.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Print the OpenAPI 3.1 document of the HTTP API (as served at /openapi.json).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// The plugins a running server has loaded.
    List(PluginsArgs),
    /// The plugins this binary would load (built-ins, then --plugin-dir), without a server;
    /// exits non-zero when a file is refused.
    Check {
        #[arg(long, env = "NANOFAAS_PLUGIN_DIR")]
        plugin_dir: Option<PathBuf>,
        #[arg(long = "grant", env = "NANOFAAS_GRANTS", value_delimiter = ';')]
        grants: Vec<String>,
        /// The per-plugin limits and grants file `serve` would use (checked as it would).
        #[arg(long, env = "NANOFAAS_PLUGIN_CONFIG")]
        plugin_config: Option<PathBuf>,
        /// `refuse`: a plugin importing a capability it is not granted counts as refused.
        #[arg(long, env = "NANOFAAS_PLUGIN_IMPORTS", value_enum, default_value_t = PluginImports::Warn)]
        plugin_imports: PluginImports,
    },
}

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "nanofaas", &mut std::io::stdout());
}

/// An execution as the client reads it (`output` as a JSON value).
pub type Execution = ExecutionView<serde_json::Value>;

/// Exit status of an execution that ended other than `success`.
pub const EXECUTION_FAILED: u8 = 3;

/// Where the server is and how to talk to it; every client command takes these.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// URL of the nanofaas API.
    #[arg(long, env = "NANOFAAS_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// Bearer token for a server started with --auth-tokens.
    #[arg(long, env = "NANOFAAS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct FnArgs {
    #[command(subcommand)]
    pub command: FnCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Create or update functions from a YAML or JSON file: one spec, a list of specs, or
    /// several YAML documents (`-` reads stdin). A function changed by someone else since it
    /// was read is not overwritten.
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// List the functions.
    List,
    /// Show one function.
    Get { name: String },
    /// Delete a function (its executions in flight finish).
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The function.
    pub name: String,
    /// The input: JSON text, `@FILE`, or `-` for stdin. Without it, stdin when it is not a
    /// terminal, else `null`.
    #[arg(short = 'd', long)]
    pub data: Option<String>,
    /// Enqueue and print the execution id instead of waiting for the result.
    #[arg(long = "async", conflicts_with = "wait")]
    pub asynchronous: bool,
    /// Enqueue, then follow the execution to its end (progress on a terminal).
    #[arg(long)]
    pub wait: bool,
    /// Narrow the function's timeout for this invocation, in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[arg(long)]
    pub trace_id: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(subcommand)]
    pub command: ExecCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Subcommand)]
pub enum ExecCommand {
    /// Show an execution; `--watch` follows it to its end.
    Get {
        id: String,
        #[arg(long)]
        watch: bool,
    },
    /// Cancel a queued or running execution.
    Cancel { id: String },
    /// Show an execution's logs: its local process's stderr, or its pods' logs while they exist.
    Logs { id: String },
}

#[derive(Debug, Args)]
pub struct PluginsArgs {
    #[command(flatten)]
    pub target: Target,
}

/// The server's API, as one client.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// What the API answered.
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    /// The body as `T` when the status is a success, else the API's error as the error.
    fn json<T: DeserializeOwned>(self) -> anyhow::Result<T> {
        if !self.status.is_success() {
            bail!("{}", api_error(self.status, &self.body));
        }
        serde_json::from_slice(&self.body)
            .with_context(|| format!("the server answered {} with a body this client does not read", self.status))
    }
}

/// `HTTP 404 FUNCTION_NOT_FOUND: function `x` not found`, or the raw body when it is not the
/// API's error shape (a proxy's page, say).
fn api_error(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => format!("HTTP {} {}: {}", status.as_u16(), e.error.code, e.error.message),
        Err(_) => format!("HTTP {}: {}", status.as_u16(), String::from_utf8_lossy(body).trim()),
    }
}

impl Client {
    fn new(target: &Target) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Self { http, base: target.server.trim_end_matches('/').to_string(), token: target.token.clone() })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.with_context(|| format!("cannot reach the nanofaas API at {url}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.context("the connection to the API broke")?;
        Ok(Reply { status, headers, body })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(Method::GET, path, None, &[]).await?.json()
    }
}

/// `fn …`.
pub async fn functions(args: FnArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.target)?;
    let format = args.target.format;
    match args.command {
        FnCommand::Apply { file } => apply(&client, &file, format).await,
        FnCommand::List => {
            let specs: Vec<FunctionSpec> = client.get("/v1/functions").await?;
            render::print(format, &specs, || render::functions(&specs))?;
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Get { name } => {
            let spec: FunctionSpec = client.get(&format!("/v1/functions/{}", segment(&name))).await?;
            render::print(format, &spec, || render::function(&spec))?;
            Ok(ExitCode::SUCCESS)
        }
        FnCommand::Delete { name } => {
            let reply = client.send(Method::DELETE, &format!("/v1/functions/{}", segment(&name)), None, &[]).await?;
            if !reply.status.is_success() {
                bail!("{}", api_error(reply.status, &reply.body));
            }
            render::emit(&format!("function/{name} deleted\n"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `fn apply` did to one function.
#[derive(Serialize)]
struct Applied {
    name: String,
    result: &'static str,
    version: Option<u64>,
}

/// Creates what is missing and updates what exists, each update made against the version just
/// read (so a concurrent change is refused, not overwritten). Stops at the first refusal.
async fn apply(client: &Client, file: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let specs = read_specs(file)?;
    let mut applied = Vec::new();
    for spec in specs {
        let path = format!("/v1/functions/{}", segment(&spec.name));
        let body = serde_json::to_vec(&FunctionSpec { version: None, ..spec.clone() })?;
        let current = client.send(Method::GET, &path, None, &[]).await?;
        let (result, reply) = match current.status {
            StatusCode::NOT_FOUND => ("created", client.send(Method::POST, "/v1/functions", Some(body), &[]).await?),
            status if status.is_success() => {
                let existing: FunctionSpec = current.json()?;
                let version = existing.version.map(|v| format!("\"{v}\"")).unwrap_or_else(|| "*".into());
                let reply = client.send(Method::PUT, &path, Some(body), &[("if-match", version)]).await?;
                let after: Option<u64> =
                    reply.headers.get("etag").and_then(|t| t.to_str().ok()?.trim_matches('"').parse().ok());
                (if after == existing.version { "unchanged" } else { "updated" }, reply)
            }
            status => bail!("{}", api_error(status, &current.body)),
        };
        for warning in reply.headers.get_all("warning") {
            eprintln!("warning: function/{}: {}", spec.name, warning.to_str().unwrap_or_default());
        }
        let resolved: FunctionSpec = reply.json().with_context(|| format!("function/{} was not applied", spec.name))?;
        if format == Format::Table {
            let version = resolved.version.unwrap_or_default();
            render::emit(&format!("function/{} {result} (version {version})\n", resolved.name));
        }
        applied.push(Applied { name: resolved.name, result, version: resolved.version });
    }
    if format != Format::Table {
        render::print(format, &applied, String::new)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The specs of a file (or stdin for `-`): JSON (one spec or a list) or YAML (one, a list, or
/// several documents).
fn read_specs(file: &Path) -> anyhow::Result<Vec<FunctionSpec>> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let mut specs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("{} is not YAML or JSON", file.display()))?;
        let value: serde_json::Value = serde_json::to_value(value)?;
        let items = match value {
            serde_json::Value::Array(items) => items,
            serde_json::Value::Null => continue,
            one => vec![one],
        };
        for item in items {
            let spec = FunctionSpec::from_json(item.to_string().as_bytes()).map_err(|e| {
                anyhow::anyhow!("{}: spec {}: {}: {}", file.display(), specs.len() + 1, e.field, e.message)
            })?;
            specs.push(spec);
        }
    }
    if specs.is_empty() {
        bail!("{} holds no function spec", file.display());
    }
    Ok(specs)
}

/// `invoke NAME`.
pub async fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.target)?;
    let format = args.target.format;
    let input = read_input(args.data.as_deref())?;
    let body = serde_json::to_vec(&serde_json::json!({ "input": input }))?;
    let mut headers = Vec::new();
    if let Some(ms) = args.timeout_ms {
        headers.push(("x-timeout-ms", ms.to_string()));
    }
    if let Some(key) = &args.idempotency_key {
        headers.push(("idempotency-key", key.clone()));
    }
    if let Some(trace) = &args.trace_id {
        headers.push(("x-trace-id", trace.clone()));
    }
    let name = segment(&args.name);
    if args.asynchronous || args.wait {
        let reply = client.send(Method::POST, &format!("/v1/functions/{name}:enqueue"), Some(body), &headers).await?;
        let accepted: Accepted = reply.json()?;
        if args.asynchronous {
            render::print(format, &accepted, || format!("{}\n", accepted.execution_id))?;
            return Ok(ExitCode::SUCCESS);
        }
        let exec = follow(&client, &accepted.execution_id).await?;
        return finished(format, &exec);
    }
    let reply = client.send(Method::POST, &format!("/v1/functions/{name}:invoke"), Some(body), &headers).await?;
    // A finished execution answers 200, 500, 502 or 504 with the same body; anything else is
    // the API refusing.
    let status = reply.status;
    let response: InvocationResponse<serde_json::Value> = match serde_json::from_slice(&reply.body) {
        Ok(response) if !status.is_client_error() => response,
        _ => bail!("{}", api_error(status, &reply.body)),
    };
    render::print(format, &response, || render::output(response.result.output.as_ref()))?;
    if response.status != "success" {
        eprintln!(
            "nanofaas: execution {} {}",
            response.execution_id,
            render::failure(&response.status, &response.result)
        );
        return Ok(ExitCode::from(EXECUTION_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// The invocation's input from `-d`, or stdin.
fn read_input(data: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let text = match data {
        Some("-") => read_stdin()?,
        Some(at) if at.starts_with('@') => {
            std::fs::read_to_string(&at[1..]).with_context(|| format!("cannot read {}", &at[1..]))?
        }
        Some(text) => text.to_string(),
        None if !std::io::stdin().is_terminal() => read_stdin()?,
        None => return Ok(serde_json::Value::Null),
    };
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).context("the input is not JSON (use -d '\"text\"' for a string)")
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
    Ok(text)
}

/// `exec …`.
pub async fn executions(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.target)?;
    let format = args.target.format;
    match args.command {
        ExecCommand::Get { id, watch: false } => {
            let exec: Execution = client.get(&format!("/v1/executions/{}", segment(&id))).await?;
            finished(format, &exec)
        }
        ExecCommand::Get { id, watch: true } => {
            let exec = follow(&client, &id).await?;
            finished(format, &exec)
        }
        ExecCommand::Cancel { id } => {
            let path = format!("/v1/executions/{}:cancel", segment(&id));
            let exec: Execution = client.send(Method::POST, &path, Some(b"{}".to_vec()), &[]).await?.json()?;
            render::print(format, &exec, || render::execution(&exec))?;
            Ok(ExitCode::SUCCESS)
        }
        ExecCommand::Logs { id } => {
            let logs: LogsView = client.get(&format!("/v1/executions/{}/logs", segment(&id))).await?;
            render::print(format, &logs, || render::logs(&logs))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints an execution; the exit status is its outcome (a queued or running one is not a failure).
fn finished(format: Format, exec: &Execution) -> anyhow::Result<ExitCode> {
    render::print(format, exec, || render::execution(exec))?;
    match exec.status.as_ref() {
        "success" | "queued" | "running" => Ok(ExitCode::SUCCESS),
        status => {
            eprintln!("nanofaas: execution {} {}", exec.execution_id, render::failure(status, &exec.result));
            Ok(ExitCode::from(EXECUTION_FAILED))
        }
    }
}

/// Polls an execution until it ends, showing its progress on stderr when that is a terminal.
async fn follow(client: &Client, id: &str) -> anyhow::Result<Execution> {
    let path = format!("/v1/executions/{}", segment(id));
    let progress = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    for tick in 0usize.. {
        let exec: Execution = client.get(&path).await?;
        if !matches!(exec.status.as_ref(), "queued" | "running") {
            if progress {
                eprint!("\r\x1b[2K");
            }
            return Ok(exec);
        }
        if progress {
            let frame = frames[tick % frames.len()];
            eprint!(
                "\r\x1b[2K{frame} {} {} (attempt {}) {:.1}s",
                exec.function,
                exec.status,
                exec.attempt,
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
    unreachable!("the loop returns")
}

/// `plugins list`.
pub async fn plugins(args: PluginsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.target)?;
    let plugins: Vec<PluginView> = client.get("/v1/plugins").await?;
    render::print(args.target.format, &plugins, || render::plugins(&plugins))?;
    Ok(ExitCode::SUCCESS)
}

/// A path segment: names and ids are plain, but a typo must not turn into another route.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_read_from_json_yaml_lists_and_documents() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let one = write("one.json", r#"{"name":"a","executionMode":"LOCAL"}"#);
        assert_eq!(read_specs(&one).unwrap()[0].name, "a");
        let list = write("list.yaml", "- name: a\n  executionMode: LOCAL\n- name: b\n  timeoutMs: 5\n");
        let names: Vec<_> = read_specs(&list).unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["a", "b"]);
        let docs = write("docs.yaml", "name: a\n---\nname: b\n---\n");
        assert_eq!(read_specs(&docs).unwrap().len(), 2);
        let bad = write("bad.yaml", "- name: a\n- name: b\n  timeoutMS: 5\n");
        let e = read_specs(&bad).unwrap_err().to_string();
        assert!(e.contains("spec 2") && e.contains("timeoutMS"), "{e}");
        let empty = write("empty.yaml", "");
        assert!(read_specs(&empty).unwrap_err().to_string().contains("no function spec"));
    }

    #[test]
    fn inputs_come_from_text_files_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.json");
        std::fs::write(&file, r#"{"x": 1}"#).unwrap();
        assert_eq!(read_input(Some(r#"[1,2]"#)).unwrap(), serde_json::json!([1, 2]));
        assert_eq!(read_input(Some(&format!("@{}", file.display()))).unwrap(), serde_json::json!({"x": 1}));
        assert!(read_input(Some("not json")).unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn api_errors_read_as_one_line() {
        let body = br#"{"error":{"code":"FUNCTION_NOT_FOUND","message":"function `x` not found"},"message":"m"}"#;
        assert_eq!(api_error(StatusCode::NOT_FOUND, body), "HTTP 404 FUNCTION_NOT_FOUND: function `x` not found");
        assert_eq!(
            api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>"),
            "HTTP 502: <html>bad gateway</html>"
        );
    }

    #[test]
    fn path_segments_stay_one_segment() {
        assert_eq!(segment("hello-1"), "hello-1");
        assert_eq!(segment("a/b:c d"), "a%2Fb%3Ac%20d");
    }
}
