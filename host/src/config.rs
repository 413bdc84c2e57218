//! Every setting of the host and its default, in one place.
//!
//! [`Config`] is a plain value passed down to every part that needs it; tests build it directly
//! (`Config { max_body_bytes: 16, ..Config::default() }`). The command line ([`ServeArgs`]) is
//! one way to build it: each flag can also be set by a `NANOFAAS_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use crate::store::Location;

/// The defaults, one table. Flags and `Config::default()` both read from here.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:8081";
    /// Largest request body accepted (6 MiB, like common FaaS platforms).
    pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;
    /// Largest `timeoutMs` of a function and largest `X-Timeout-Ms` (15 minutes).
    pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
    /// How long finished executions stay queryable.
    pub const EXECUTION_RETENTION_SECS: u64 = 3600;
    /// How many finished executions are kept at most; the oldest go first.
    pub const MAX_RETAINED_EXECUTIONS: usize = 100_000;
    /// Input and output bytes of finished executions held in memory at most (the oldest go
    /// first; with a durable store they stay readable from it).
    pub const MAX_RETAINED_BYTES: usize = 128 * 1024 * 1024;
    /// Largest output kept with a finished execution (in memory and in the store); a larger
    /// one goes to the callers waiting for it and is then kept as its size and digest.
    pub const MAX_RETAINED_OUTPUT_BYTES: usize = 1024 * 1024;
    /// How long an `Idempotency-Key` re-attaches to its execution.
    pub const IDEMPOTENCY_TTL_SECS: u64 = 15 * 60;
    /// First retry delay; doubles per attempt up to `RETRY_MAX_MS`, with jitter.
    pub const RETRY_BASE_MS: u64 = 100;
    pub const RETRY_MAX_MS: u64 = 5_000;
    /// Plugin instances that may exist at once (the pooling allocator's size).
    pub const PLUGIN_INSTANCES: u32 = 256;
    /// Linear memory limit of one plugin instance.
    pub const PLUGIN_MEMORY_MIB: u32 = 32;
    /// CPU budget of one plugin call, in 1 ms epoch ticks.
    pub const PLUGIN_CPU_BUDGET_MS: u32 = 200;
    /// Wall-clock limit of one plugin call, including time spent in host capabilities.
    pub const PLUGIN_CALL_TIMEOUT_MS: u64 = 10_000;
    /// Log lines one plugin call may emit.
    pub const PLUGIN_LOG_BUDGET: u32 = 100;
    /// Bytes of a plugin's stderr kept to explain a fault.
    pub const PLUGIN_STDERR_BYTES: usize = 8 * 1024;
    /// Bytes of payloads one plugin call may create (host memory a guest can claim).
    pub const PLUGIN_PAYLOAD_MIB: u64 = 64;
    /// Largest stdout of a local process and largest response body of an outgoing request.
    pub const MAX_OUTPUT_BYTES: usize = 6 * 1024 * 1024;
    /// Interval at which a pending execution without its own poll interval is polled anyway.
    pub const SAFETY_POLL_MS: u64 = 30_000;
    /// How long a replica's lease lasts without renewal (renewed every third of it).
    pub const LEASE_TTL_MS: u64 = 10_000;
    /// How often a replica looks for expired leases of others. A dead replica's executions are
    /// taken over within `LEASE_TTL_MS + LEASE_SCAN_MS`.
    pub const LEASE_SCAN_MS: u64 = 2_000;
    /// Time to receive a request's headers (and to wait for the next one on an idle connection).
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    /// API connections open at once.
    pub const MAX_CONNECTIONS: usize = 1024;
    /// How often the host looks for Jobs of its own that no execution follows any more.
    pub const KUBE_SWEEP_INTERVAL_SECS: u64 = 60;
    /// Bytes of request bodies held by the API at once (a request holds its body's share until
    /// it is answered); a request that would go over is refused with 503.
    pub const MAX_INFLIGHT_BODY_BYTES: usize = 256 * 1024 * 1024;
    /// How long a stop lets requests in flight finish before it hands over what is left.
    pub const SHUTDOWN_GRACE_MS: u64 = 20_000;
}

/// The whole configuration of a host.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Directory of operator-supplied plugins (`NAME.wasm`), loaded at start and read again
    /// when it changes or on SIGHUP.
    pub plugin_dir: Option<PathBuf>,
    /// How often the plugin directory is looked at for changes; zero: only on SIGHUP.
    pub plugin_scan_interval: Duration,
    /// Extra capabilities granted to dropped-in plugins, as `NAME=cap,cap`.
    pub grants: Vec<String>,
    /// Dropped-in plugins pinned to a content digest, as `NAME=SHA256`: another file is refused.
    pub pins: Vec<String>,
    /// The operator's plugin config file (per-plugin limits and grants), read at start into
    /// `plugin_policies`.
    pub plugin_config: Option<PathBuf>,
    /// Per-plugin limits and grants by plugin name (from `plugin_config`, or set in code).
    pub plugin_policies: std::collections::BTreeMap<String, crate::plugin::PluginPolicy>,
    /// What becomes of a plugin whose imports name a capability it is not granted.
    pub plugin_imports: PluginImports,
    /// Functions to register at start (YAML or JSON list of function specs).
    pub functions_file: Option<PathBuf>,
    /// Base URL that remote runners use to reach this host; callbacks go to
    /// `{callback_url}/v1/internal/executions/{id}:complete`. Default: `http://{listen}`.
    pub callback_url: Option<String>,
    /// Secret from which per-execution callback tokens are derived. When unset, the store's
    /// (generated once and kept; random per process with `memory:`).
    pub callback_secret: Option<String>,
    pub max_body_bytes: usize,
    pub max_timeout: Duration,
    pub execution_retention: Duration,
    pub max_retained_executions: usize,
    pub max_retained_bytes: usize,
    pub max_retained_output_bytes: usize,
    pub idempotency_ttl: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub plugin: PluginLimits,
    pub log_format: LogFormat,
    /// Whether each finished execution gets an access line in the log.
    pub access_log: bool,
    /// Base URL of an OTLP/HTTP collector: spans are POSTed to `{url}/v1/traces`. None exports
    /// nothing.
    pub otlp_endpoint: Option<String>,
    /// Whether plugins granted `process` may start local processes.
    pub local_exec: bool,
    /// Bound on a process's stdout and an outgoing response's body.
    pub max_output_bytes: usize,
    /// Destinations outgoing HTTP may reach (host names, addresses, CIDR ranges); empty means
    /// the default, loopback only.
    pub http_allow: Vec<String>,
    /// Whether to look for a cluster (kubeconfig, `KUBECONFIG`, or in-cluster).
    pub kubernetes: bool,
    /// Namespace of the Jobs; default: the kubeconfig context's, else `default`.
    pub kube_namespace: Option<String>,
    /// Service accounts Job pods may run as (empty: `default` only).
    pub kube_allowed_service_accounts: Vec<String>,
    /// Where functions and executions are kept. `nanofaas serve` defaults to an embedded SQLite
    /// file ([`Location::default_sqlite`]); a `Config` built in code defaults to `memory:`.
    pub store: Location,
    pub lease_ttl: Duration,
    pub lease_scan: Duration,
    /// File of API tokens (digests, scopes, function patterns); `None`: authentication off,
    /// which [`Config::check_exposure`] allows on loopback only.
    pub auth_tokens: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address (behind an authenticating proxy).
    pub insecure_no_auth: bool,
    /// Host names the API answers to, besides IP addresses, `localhost` and the callback URL's
    /// host (`*`: any).
    pub allowed_hosts: Vec<String>,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_inflight_body_bytes: usize,
    pub kube_sweep_interval: Duration,
    pub shutdown_grace: Duration,
}

/// Bounds applied to every plugin call.
#[derive(Clone, Debug)]
pub struct PluginLimits {
    pub instances: u32,
    pub memory_bytes: usize,
    pub cpu_budget_ticks: u32,
    pub call_timeout: Duration,
    pub log_budget: u32,
    pub stderr_bytes: usize,
    pub payload_bytes: u64,
    pub safety_poll: Duration,
}

/// What the loader does with a plugin whose imports name a capability it is not granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PluginImports {
    /// Load it and log a warning: its calls of that capability fail (the grant is enforced per call).
    #[default]
    Warn,
    /// Refuse the file, naming the capability and how to grant it.
    Refuse,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            instances: defaults::PLUGIN_INSTANCES,
            memory_bytes: defaults::PLUGIN_MEMORY_MIB as usize * 1024 * 1024,
            cpu_budget_ticks: defaults::PLUGIN_CPU_BUDGET_MS,
            call_timeout: Duration::from_millis(defaults::PLUGIN_CALL_TIMEOUT_MS),
            log_budget: defaults::PLUGIN_LOG_BUDGET,
            stderr_bytes: defaults::PLUGIN_STDERR_BYTES,
            payload_bytes: defaults::PLUGIN_PAYLOAD_MIB * 1024 * 1024,
            safety_poll: Duration::from_millis(defaults::SAFETY_POLL_MS),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: defaults::LISTEN.parse().expect("valid default address"),
            admin_listen: defaults::ADMIN_LISTEN.parse().expect("valid default address"),
            plugin_dir: None,
            plugin_scan_interval: Duration::from_secs(1),
            grants: Vec::new(),
            plugin_config: None,
            plugin_policies: Default::default(),
            plugin_imports: PluginImports::Warn,
            pins: Vec::new(),
            functions_file: None,
            callback_url: None,
            callback_secret: None,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            max_timeout: Duration::from_millis(defaults::MAX_TIMEOUT_MS),
            execution_retention: Duration::from_secs(defaults::EXECUTION_RETENTION_SECS),
            max_retained_executions: defaults::MAX_RETAINED_EXECUTIONS,
            max_retained_bytes: defaults::MAX_RETAINED_BYTES,
            max_retained_output_bytes: defaults::MAX_RETAINED_OUTPUT_BYTES,
            idempotency_ttl: Duration::from_secs(defaults::IDEMPOTENCY_TTL_SECS),
            retry_base: Duration::from_millis(defaults::RETRY_BASE_MS),
            retry_max: Duration::from_millis(defaults::RETRY_MAX_MS),
            plugin: PluginLimits::default(),
            log_format: LogFormat::Text,
            access_log: false,
            otlp_endpoint: None,
            local_exec: true,
            max_output_bytes: defaults::MAX_OUTPUT_BYTES,
            http_allow: Vec::new(),
            kubernetes: true,
            kube_namespace: None,
            kube_allowed_service_accounts: Vec::new(),
            store: Location::Memory,
            lease_ttl: Duration::from_millis(defaults::LEASE_TTL_MS),
            lease_scan: Duration::from_millis(defaults::LEASE_SCAN_MS),
            auth_tokens: None,
            insecure_no_auth: false,
            allowed_hosts: Vec::new(),
            header_read_timeout: Duration::from_millis(defaults::HEADER_READ_TIMEOUT_MS),
            max_connections: defaults::MAX_CONNECTIONS,
            max_inflight_body_bytes: defaults::MAX_INFLIGHT_BODY_BYTES,
            kube_sweep_interval: Duration::from_secs(defaults::KUBE_SWEEP_INTERVAL_SECS),
            shutdown_grace: Duration::from_millis(defaults::SHUTDOWN_GRACE_MS),
        }
    }
}

impl Config {
    /// The callback base URL, defaulting to this host's API address.
    pub fn callback_base(&self, bound: SocketAddr) -> String {
        match &self.callback_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{bound}"),
        }
    }

    /// Secure by default: without API tokens, only loopback addresses may be served, unless the
    /// operator says the host sits behind something that authenticates.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.auth_tokens.is_some() || self.insecure_no_auth || self.listen.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "refusing to serve the API on {} without authentication: give --auth-tokens FILE \
             (see docs/security.md), listen on a loopback address, or pass --insecure-no-auth",
            self.listen
        ))
    }
}

/// Flags of `nanofaas serve`; each also reads a `NANOFAAS_*` environment variable.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "NANOFAAS_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,
    /// Address of /metrics, /health/live and /health/ready.
    #[arg(long, env = "NANOFAAS_ADMIN_LISTEN", default_value = defaults::ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Directory of dropped-in plugins (`NAME.wasm`), loaded at start; new, changed and removed
    /// files are taken into account while the host runs (and on SIGHUP).
    #[arg(long, env = "NANOFAAS_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// How often the plugin directory is looked at for changes (a directory listing and a stat
    /// per file), in milliseconds; 0: only on SIGHUP.
    #[arg(long, env = "NANOFAAS_PLUGIN_SCAN_INTERVAL_MS", default_value_t = 1000)]
    pub plugin_scan_interval_ms: u64,
    /// Capabilities for a dropped-in plugin, `NAME=process,http,kubernetes` (repeatable; `;`-separated in the env var).
    #[arg(long = "grant", env = "NANOFAAS_GRANTS", value_delimiter = ';')]
    pub grants: Vec<String>,
    /// Pins a dropped-in plugin to a content digest, `NAME=SHA256` (hex, as `plugins list` shows
    /// it): a file with another digest is refused (repeatable; `;`-separated in the env var).
    #[arg(long = "pin", env = "NANOFAAS_PLUGIN_PINS", value_delimiter = ';')]
    pub pins: Vec<String>,
    /// Per-plugin limits and grants: a YAML or JSON file, `plugins: {NAME: {capabilities,
    /// instances, memoryMib, cpuBudgetMs, callTimeoutMs, payloadMib, logLines}}` (read at start).
    #[arg(long, env = "NANOFAAS_PLUGIN_CONFIG")]
    pub plugin_config: Option<PathBuf>,
    /// A plugin whose imports name a capability it is not granted: `warn` (load it; its calls of
    /// that capability fail) or `refuse` the file.
    #[arg(long, env = "NANOFAAS_PLUGIN_IMPORTS", value_enum, default_value_t = PluginImports::Warn)]
    pub plugin_imports: PluginImports,
    /// Functions to register at start: a YAML or JSON list of function specs.
    #[arg(long, env = "NANOFAAS_FUNCTIONS")]
    pub functions: Option<PathBuf>,
    /// Base URL remote runners use to reach this host (default: http://LISTEN).
    #[arg(long, env = "NANOFAAS_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// Secret for callback tokens (default: one generated once and kept in the store).
    #[arg(long, env = "NANOFAAS_CALLBACK_SECRET", hide_env_values = true)]
    pub callback_secret: Option<String>,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, env = "NANOFAAS_MAX_BODY_BYTES", default_value_t = defaults::MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Largest function timeout and X-Timeout-Ms, in milliseconds.
    #[arg(long, env = "NANOFAAS_MAX_TIMEOUT_MS", default_value_t = defaults::MAX_TIMEOUT_MS)]
    pub max_timeout_ms: u64,
    /// Seconds a finished execution stays queryable.
    #[arg(long, env = "NANOFAAS_EXECUTION_RETENTION_SECS", default_value_t = defaults::EXECUTION_RETENTION_SECS)]
    pub execution_retention_secs: u64,
    /// Finished executions kept at most (oldest evicted first).
    #[arg(long, env = "NANOFAAS_MAX_RETAINED_EXECUTIONS", default_value_t = defaults::MAX_RETAINED_EXECUTIONS)]
    pub max_retained_executions: usize,
    /// Input and output bytes of finished executions held in memory at most (oldest evicted first).
    #[arg(long, env = "NANOFAAS_MAX_RETAINED_BYTES", default_value_t = defaults::MAX_RETAINED_BYTES)]
    pub max_retained_bytes: usize,
    /// Largest output kept with a finished execution; a larger one is delivered to the callers
    /// waiting for it, then kept as its size and SHA-256 digest.
    #[arg(long, env = "NANOFAAS_MAX_RETAINED_OUTPUT_BYTES", default_value_t = defaults::MAX_RETAINED_OUTPUT_BYTES)]
    pub max_retained_output_bytes: usize,
    /// Seconds an Idempotency-Key re-attaches to its execution.
    #[arg(long, env = "NANOFAAS_IDEMPOTENCY_TTL_SECS", default_value_t = defaults::IDEMPOTENCY_TTL_SECS)]
    pub idempotency_ttl_secs: u64,
    /// First retry delay in milliseconds (doubles per attempt, with jitter).
    #[arg(long, env = "NANOFAAS_RETRY_BASE_MS", default_value_t = defaults::RETRY_BASE_MS)]
    pub retry_base_ms: u64,
    /// Largest retry delay in milliseconds.
    #[arg(long, env = "NANOFAAS_RETRY_MAX_MS", default_value_t = defaults::RETRY_MAX_MS)]
    pub retry_max_ms: u64,
    /// Plugin instances that may exist at once.
    #[arg(long, env = "NANOFAAS_PLUGIN_INSTANCES", default_value_t = defaults::PLUGIN_INSTANCES)]
    pub plugin_instances: u32,
    /// Memory limit of one plugin instance, in MiB.
    #[arg(long, env = "NANOFAAS_PLUGIN_MEMORY_MIB", default_value_t = defaults::PLUGIN_MEMORY_MIB)]
    pub plugin_memory_mib: u32,
    /// CPU budget of one plugin call, in milliseconds.
    #[arg(long, env = "NANOFAAS_PLUGIN_CPU_BUDGET_MS", default_value_t = defaults::PLUGIN_CPU_BUDGET_MS)]
    pub plugin_cpu_budget_ms: u32,
    /// Wall-clock limit of one plugin call, in milliseconds.
    #[arg(long, env = "NANOFAAS_PLUGIN_CALL_TIMEOUT_MS", default_value_t = defaults::PLUGIN_CALL_TIMEOUT_MS)]
    pub plugin_call_timeout_ms: u64,
    /// Log lines one plugin call may emit.
    #[arg(long, env = "NANOFAAS_PLUGIN_LOG_BUDGET", default_value_t = defaults::PLUGIN_LOG_BUDGET)]
    pub plugin_log_budget: u32,
    /// Log format.
    #[arg(long, env = "NANOFAAS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log one line per finished execution (target `nanofaas::access`: id, function, trace id,
    /// attempt, status, error code). Off by default: a line per request is a cost the hot path
    /// does not pay unless asked.
    #[arg(long, env = "NANOFAAS_ACCESS_LOG")]
    pub access_log: bool,
    /// Export traces over OTLP/HTTP (protobuf) to this collector: spans are POSTed to
    /// `URL/v1/traces`. Unset: nothing is exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Switch local execution off: plugins cannot start processes.
    #[arg(long, env = "NANOFAAS_NO_LOCAL_EXEC")]
    pub no_local_exec: bool,
    /// Largest stdout of a local process / response body of an outgoing request, in bytes.
    #[arg(long, env = "NANOFAAS_MAX_OUTPUT_BYTES", default_value_t = defaults::MAX_OUTPUT_BYTES)]
    pub max_output_bytes: usize,
    /// Allowed HTTP destination: host name, address or CIDR (repeatable; `,`-separated in the env
    /// var). Default: 127.0.0.0/8, ::1/128, localhost.
    #[arg(long = "http-allow", env = "NANOFAAS_HTTP_ALLOW", value_delimiter = ',')]
    pub http_allow: Vec<String>,
    /// Do not look for a Kubernetes cluster (Kubernetes dispatchers are then refused).
    #[arg(long, env = "NANOFAAS_NO_KUBERNETES")]
    pub no_kubernetes: bool,
    /// Namespace of the Jobs (default: the kubeconfig context's, else `default`).
    #[arg(long, env = "NANOFAAS_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// Service accounts Job pods may run as (empty: `default` only).
    pub kube_allowed_service_accounts: Vec<String>,
    /// Where functions and executions are kept: sqlite:PATH (embedded, one host process),
    /// postgres://USER@HOST/DB (several replicas), or memory: (nothing survives a restart).
    /// Default: sqlite:$XDG_STATE_HOME/nanofaas/nanofaas.db (else ~/.local/state/…).
    #[arg(long, env = "NANOFAAS_STORE")]
    pub store: Option<Location>,
    /// How long a replica's lease lasts without renewal, in milliseconds.
    #[arg(long, env = "NANOFAAS_LEASE_TTL_MS", default_value_t = defaults::LEASE_TTL_MS)]
    pub lease_ttl_ms: u64,
    /// How often a replica looks for expired leases of others, in milliseconds.
    #[arg(long, env = "NANOFAAS_LEASE_SCAN_MS", default_value_t = defaults::LEASE_SCAN_MS)]
    pub lease_scan_ms: u64,
    /// File of API tokens: `tokens: [{name, sha256, scopes: [admin|deploy|invoke], functions: [glob…]}]`
    /// (YAML or JSON; re-read when it changes and on SIGHUP). Without it the API has no
    /// authentication and serves on loopback only.
    #[arg(long, env = "NANOFAAS_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// Serve a non-loopback address without authentication (behind an authenticating proxy).
    #[arg(long, env = "NANOFAAS_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Host name the API answers to besides IP addresses, localhost and the callback URL's host
    /// (repeatable; `,`-separated in the env var; `*` allows any).
    #[arg(long = "allowed-host", env = "NANOFAAS_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Time to receive a request's headers, and to keep an idle connection, in milliseconds.
    #[arg(long, env = "NANOFAAS_HEADER_READ_TIMEOUT_MS", default_value_t = defaults::HEADER_READ_TIMEOUT_MS)]
    pub header_read_timeout_ms: u64,
    /// API connections open at once (past it, accepting pauses).
    #[arg(long, env = "NANOFAAS_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Bytes of request bodies the API holds at once (until each request is answered); a request
    /// that would go over is refused with 503 OVERLOADED.
    #[arg(long, env = "NANOFAAS_MAX_INFLIGHT_BODY_BYTES", default_value_t = defaults::MAX_INFLIGHT_BODY_BYTES)]
    pub max_inflight_body_bytes: usize,
    /// Seconds between sweeps for host-owned Jobs that no execution follows any more (a Job is
    /// deleted when two sweeps in a row find it so).
    #[arg(long, env = "NANOFAAS_KUBE_SWEEP_INTERVAL_SECS", default_value_t = defaults::KUBE_SWEEP_INTERVAL_SECS)]
    pub kube_sweep_interval_secs: u64,
    /// How long a stop lets requests in flight finish, in milliseconds.
    #[arg(long, env = "NANOFAAS_SHUTDOWN_GRACE_MS", default_value_t = defaults::SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,
}

impl From<ServeArgs> for Config {
    fn from(a: ServeArgs) -> Self {
        let base = PluginLimits::default();
        Self {
            listen: a.listen,
            admin_listen: a.admin_listen,
            plugin_dir: a.plugin_dir,
            plugin_scan_interval: Duration::from_millis(a.plugin_scan_interval_ms),
            grants: a.grants,
            pins: a.pins,
            plugin_config: a.plugin_config,
            plugin_policies: Default::default(),
            plugin_imports: a.plugin_imports,
            functions_file: a.functions,
            callback_url: a.callback_url,
            callback_secret: a.callback_secret,
            max_body_bytes: a.max_body_bytes,
            max_timeout: Duration::from_millis(a.max_timeout_ms),
            execution_retention: Duration::from_secs(a.execution_retention_secs),
            max_retained_executions: a.max_retained_executions,
            max_retained_bytes: a.max_retained_bytes,
            max_retained_output_bytes: a.max_retained_output_bytes,
            idempotency_ttl: Duration::from_secs(a.idempotency_ttl_secs),
            retry_base: Duration::from_millis(a.retry_base_ms),
            retry_max: Duration::from_millis(a.retry_max_ms),
            plugin: PluginLimits {
                instances: a.plugin_instances,
                memory_bytes: a.plugin_memory_mib as usize * 1024 * 1024,
                cpu_budget_ticks: a.plugin_cpu_budget_ms,
                call_timeout: Duration::from_millis(a.plugin_call_timeout_ms),
                log_budget: a.plugin_log_budget,
                ..base
            },
            log_format: a.log_format,
            access_log: a.access_log,
            otlp_endpoint: a.otlp_endpoint.filter(|u| !u.trim().is_empty()),
            local_exec: !a.no_local_exec,
            max_output_bytes: a.max_output_bytes,
            http_allow: a.http_allow,
            kubernetes: !a.no_kubernetes,
            kube_namespace: a.kube_namespace,
            kube_allowed_service_accounts: a.kube_allowed_service_accounts,
            store: a.store.unwrap_or_else(Location::default_sqlite),
            lease_ttl: Duration::from_millis(a.lease_ttl_ms.max(300)),
            lease_scan: Duration::from_millis(a.lease_scan_ms.max(100)),
            auth_tokens: a.auth_tokens,
            insecure_no_auth: a.insecure_no_auth,
            allowed_hosts: a.allowed_hosts,
            header_read_timeout: Duration::from_millis(a.header_read_timeout_ms.max(1)),
            max_connections: a.max_connections.max(1),
            max_inflight_body_bytes: a.max_inflight_body_bytes,
            kube_sweep_interval: Duration::from_secs(a.kube_sweep_interval_secs.max(1)),
            shutdown_grace: Duration::from_millis(a.shutdown_grace_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve`'s flags, parsed on their own.
    #[derive(Debug, clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        use clap::Parser;
        Serve::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|s| Config::from(s.args))
    }

    #[test]
    fn flags_default_to_the_table() {
        let config = parse(&[]).expect("parses");
        let default = Config::default();
        assert_eq!(config.listen, default.listen);
        assert_eq!(config.admin_listen.port(), 8081);
        assert_eq!(config.max_body_bytes, default.max_body_bytes);
        assert_eq!(config.plugin.memory_bytes, default.plugin.memory_bytes);
        assert_eq!(config.plugin.call_timeout, default.plugin.call_timeout);
        assert_eq!(config.lease_ttl, default.lease_ttl);
        // The command line keeps state by default; a config built in code does not.
        assert_eq!(config.store, Location::default_sqlite());
        assert_eq!(default.store, Location::Memory);
    }

    #[test]
    fn flags_override_defaults() {
        let config = parse(&[
            "--listen",
            "0.0.0.0:9000",
            "--max-body-bytes",
            "10",
            "--grant",
            "mine=http",
            "--grant",
            "other=process",
            "--store",
            "memory:",
        ])
        .expect("parses");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.max_body_bytes, 10);
        assert_eq!(config.grants, ["mine=http", "other=process"]);
        assert_eq!(config.store, Location::Memory);
        assert!(parse(&["--store", "mysql://x"]).is_err());
    }

    #[test]
    fn without_tokens_only_loopback_is_served() {
        let loopback = Config::default();
        assert!(loopback.check_exposure().is_ok());
        let open = Config { listen: "0.0.0.0:8080".parse().unwrap(), ..Config::default() };
        let e = open.check_exposure().unwrap_err();
        assert!(e.contains("--auth-tokens") && e.contains("--insecure-no-auth"), "{e}");
        assert!(Config { insecure_no_auth: true, ..open.clone() }.check_exposure().is_ok());
        assert!(Config { auth_tokens: Some("t.yaml".into()), ..open }.check_exposure().is_ok());
    }

    #[test]
    fn callback_base_defaults_to_the_bound_address() {
        let config = Config::default();
        assert_eq!(config.callback_base("127.0.0.1:1234".parse().unwrap()), "http://127.0.0.1:1234");
        let config = Config { callback_url: Some("http://host:80/".into()), ..Config::default() };
        assert_eq!(config.callback_base("127.0.0.1:1234".parse().unwrap()), "http://host:80");
    }
}
