//! Functions: the API's `FunctionSpec`, its defaults and validation, and the registry.
//!
//! The spec keeps the fields of nanofaas v1 (`image`, `command`, `env`, `resources`, `timeoutMs`,
//! `concurrency`, `queueSize`, `maxRetries`, `endpointUrl`, `executionMode`, `runtimeMode`,
//! `runtimeCommand`, `scalingConfig`, `imagePullSecrets`) and adds `dispatcher` (a plugin name)
//! and `dispatcherConfig` (a JSON object the plugin validates). An explicit `null` is the same as
//! an absent field, as the reference client sends every field. A registered [`Function`] is the resolved spec (every default filled
//! in), the plugin that runs it and its admission queue; it never changes: an update registers a
//! new `Function` (the next `version`), so executions keep the snapshot they were accepted with
//! even if the function is updated or deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::queue::FunctionQueue;

/// Defaults of nanofaas v1.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_CONCURRENCY: u32 = 4;
pub const DEFAULT_QUEUE_SIZE: u32 = 100;
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Upper bounds that keep one function from claiming unbounded host memory.
pub const MAX_CONCURRENCY: u32 = 10_000;
pub const MAX_QUEUE_SIZE: u32 = 100_000;
pub const MAX_RETRIES: u32 = 10;
/// Longest function name: a DNS label with room for the suffix of a Job name.
pub const MAX_NAME_LEN: usize = 48;

/// How nanofaas v1 chose a dispatcher; each mode maps to a plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ExecutionMode {
    /// nanofaas's in-process echo → the `echo` plugin.
    Local,
    /// A warm HTTP endpoint → `pool`.
    Pool,
    /// A Kubernetes Job per invocation → `k8s-job`.
    Remote,
    /// The reference's managed warm Deployment → a `deployment` plugin, when one is loaded.
    Deployment,
}

/// The dispatcher `executionMode: DEPLOYMENT` maps to.
pub const DEPLOYMENT_DISPATCHER: &str = "deployment";

impl ExecutionMode {
    pub fn dispatcher(self) -> &'static str {
        match self {
            ExecutionMode::Local => "echo",
            ExecutionMode::Pool => "pool",
            ExecutionMode::Remote => "k8s-job",
            ExecutionMode::Deployment => DEPLOYMENT_DISPATCHER,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionMode::Local => "LOCAL",
            ExecutionMode::Pool => "POOL",
            ExecutionMode::Remote => "REMOTE",
            ExecutionMode::Deployment => "DEPLOYMENT",
        }
    }

    fn of_dispatcher(plugin: &str) -> Option<Self> {
        match plugin {
            "echo" => Some(ExecutionMode::Local),
            "pool" => Some(ExecutionMode::Pool),
            "k8s-job" | "job-poll" => Some(ExecutionMode::Remote),
            DEPLOYMENT_DISPATCHER => Some(ExecutionMode::Deployment),
            _ => None,
        }
    }
}

/// How the function process inside a Job talks to `nanofaas-runtime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum RuntimeMode {
    Http,
    Stdio,
    File,
}

/// Kubernetes resource quantities for the function's pods (`cpu: "500m"`, `memory: "256Mi"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// The function spec of the API: what clients send, and (resolved) what they get back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionSpec {
    /// 1 to 48 lower-case letters, digits and `-`, starting with a letter and not ending with `-`.
    #[schema(pattern = "^[a-z]([a-z0-9-]{0,46}[a-z0-9])?$", max_length = 48)]
    pub name: String,
    /// Set by the host: 1 at registration, one more at each change. Sent back on an update, it
    /// is the version the change was made against (as `If-Match` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSpec>,
    /// Deadline of each execution, from acceptance: 1 to the host's `--max-timeout-ms`.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Executions running at once.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10_000)]
    pub concurrency: Option<u32>,
    /// Executions waiting for a slot before new ones are refused with 429.
    #[serde(default)]
    #[schema(maximum = 100_000)]
    pub queue_size: Option<u32>,
    /// Retries after a platform error.
    #[serde(default)]
    #[schema(maximum = 10)]
    pub max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_mode: Option<ExecutionMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_mode: Option<RuntimeMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_command: Option<String>,
    /// The reference's autoscaling settings: kept and shown, used by no built-in dispatcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub scaling_config: Option<serde_json::Value>,
    /// Secrets the pods of Kubernetes dispatchers pull their image with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<String>>,
    /// The dispatcher plugin; when absent, `executionMode` picks it (default `k8s-job`).
    #[serde(default)]
    pub dispatcher: Option<String>,
    /// The plugin's settings, a JSON object it validates.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub dispatcher_config: Option<serde_json::Value>,
}

/// Whether a dispatcher runs the function in Kubernetes pods (and so uses `imagePullSecrets`).
fn runs_pods(dispatcher: &str) -> bool {
    matches!(ExecutionMode::of_dispatcher(dispatcher), Some(ExecutionMode::Remote | ExecutionMode::Deployment))
}

/// Whether `name` is a Kubernetes object name (a DNS subdomain).
fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A spec that cannot be registered: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Whether `name` is usable as a function name (and inside Kubernetes object names).
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

impl FunctionSpec {
    /// Parses a spec from JSON, naming the offending field on error.
    pub fn from_json(body: &[u8]) -> Result<Self, SpecError> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde reports a missing field at its parent; name the field itself.
            let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
            let field = match (path.as_str(), missing) {
                (".", Some(name)) => name.to_string(),
                (".", None) => "body".to_string(),
                (_, Some(name)) => format!("{path}.{name}"),
                _ => path,
            };
            SpecError::new(field, message)
        })
    }

    /// Fills in every default and checks every field the host owns. The plugin checks the rest
    /// (`dispatcherConfig`, and whatever its strategy needs) in `validate`.
    pub fn resolve(mut self, max_timeout: Duration) -> Result<Self, SpecError> {
        if !valid_name(&self.name) {
            return Err(SpecError::new(
                "name",
                format!(
                    "`{}` is not a valid function name: 1 to {MAX_NAME_LEN} lower-case letters, digits and `-`, \
                     starting with a letter and not ending with `-`",
                    self.name
                ),
            ));
        }
        let timeout = *self.timeout_ms.get_or_insert(DEFAULT_TIMEOUT_MS);
        let max_ms = max_timeout.as_millis() as u64;
        if timeout == 0 || timeout > max_ms {
            return Err(SpecError::new("timeoutMs", format!("must be between 1 and {max_ms}, got {timeout}")));
        }
        let concurrency = *self.concurrency.get_or_insert(DEFAULT_CONCURRENCY);
        if concurrency == 0 || concurrency > MAX_CONCURRENCY {
            return Err(SpecError::new(
                "concurrency",
                format!("must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"),
            ));
        }
        let queue = *self.queue_size.get_or_insert(DEFAULT_QUEUE_SIZE);
        if queue > MAX_QUEUE_SIZE {
            return Err(SpecError::new("queueSize", format!("must be at most {MAX_QUEUE_SIZE}, got {queue}")));
        }
        let retries = *self.max_retries.get_or_insert(DEFAULT_MAX_RETRIES);
        if retries > MAX_RETRIES {
            return Err(SpecError::new("maxRetries", format!("must be at most {MAX_RETRIES}, got {retries}")));
        }
        let command = self.command.get_or_insert_with(Vec::new);
        if let Some(i) = command.iter().position(|a| a.contains('\0')) {
            return Err(SpecError::new(format!("command[{i}]"), "must not contain NUL"));
        }
        for (key, value) in self.env.get_or_insert_with(BTreeMap::new).iter() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SpecError::new(format!("env.{key}"), "is not a valid environment variable name"));
            }
            if value.contains('\0') {
                return Err(SpecError::new(format!("env.{key}"), "must not contain NUL"));
            }
        }
        if let Some(image) = &self.image {
            if image.trim().is_empty() {
                return Err(SpecError::new("image", "must not be blank"));
            }
            if image.contains('\0') || image.chars().any(char::is_whitespace) {
                return Err(SpecError::new("image", "must not contain NUL or whitespace"));
            }
        }
        if let Some(command) = &self.runtime_command
            && command.contains('\0')
        {
            return Err(SpecError::new("runtimeCommand", "must not contain NUL"));
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(SpecError::new("endpointUrl", format!("`{url}` is not an http:// or https:// URL")));
        }
        // `dispatcher` wins; otherwise `executionMode` picks it (nanofaas v1 defaults to REMOTE).
        let dispatcher = match (&self.dispatcher, self.execution_mode) {
            (Some(d), _) => d.clone(),
            (None, mode) => mode.unwrap_or(ExecutionMode::Remote).dispatcher().to_string(),
        };
        if let (Some(mode), Some(implied)) = (self.execution_mode, ExecutionMode::of_dispatcher(&dispatcher))
            && mode != implied
        {
            return Err(SpecError::new(
                "executionMode",
                format!("{} does not match dispatcher `{dispatcher}`", mode.as_str()),
            ));
        }
        self.execution_mode = self.execution_mode.or(ExecutionMode::of_dispatcher(&dispatcher));
        self.dispatcher = Some(dispatcher);
        if let Some(scaling) = &self.scaling_config
            && !scaling.is_object()
        {
            return Err(SpecError::new("scalingConfig", "must be a JSON object"));
        }
        for (i, secret) in self.image_pull_secrets.iter().flatten().enumerate() {
            if !valid_object_name(secret) {
                return Err(SpecError::new(
                    format!("imagePullSecrets[{i}]"),
                    format!("`{secret}` is not a Kubernetes Secret name"),
                ));
            }
        }
        match self.dispatcher_config.get_or_insert_with(|| serde_json::json!({})) {
            serde_json::Value::Object(_) => {}
            _ => return Err(SpecError::new("dispatcherConfig", "must be a JSON object")),
        }
        Ok(self)
    }

    /// Whether two specs define the same function, whatever their versions.
    pub fn same_definition(&self, other: &FunctionSpec) -> bool {
        FunctionSpec { version: None, ..self.clone() } == FunctionSpec { version: None, ..other.clone() }
    }

    /// What a resolved spec asks for that its dispatcher will not do: accepted, and said so.
    pub fn warnings(&self) -> Vec<String> {
        let dispatcher = self.dispatcher.as_deref().unwrap_or_default();
        let mut warnings = Vec::new();
        if self.scaling_config.is_some() && dispatcher != DEPLOYMENT_DISPATCHER {
            warnings.push(format!(
                "scalingConfig is ignored: dispatcher `{dispatcher}` starts work per invocation and does not scale replicas"
            ));
        }
        if self.image_pull_secrets.as_ref().is_some_and(|s| !s.is_empty()) && !runs_pods(dispatcher) {
            warnings.push(format!("imagePullSecrets is ignored: dispatcher `{dispatcher}` runs no pods"));
        }
        warnings
    }

    /// The plugin's `config`: `dispatcherConfig`, with `imagePullSecrets` for the dispatchers
    /// that run pods (unless the config names its own).
    fn plugin_config(&self) -> String {
        let mut config = self.dispatcher_config.clone().unwrap_or_else(|| serde_json::json!({}));
        let secrets = self.image_pull_secrets.as_ref().filter(|s| !s.is_empty());
        if let (Some(secrets), serde_json::Value::Object(map)) = (secrets, &mut config)
            && runs_pods(self.dispatcher.as_deref().unwrap_or_default())
        {
            map.entry("imagePullSecrets").or_insert_with(|| serde_json::json!(secrets));
        }
        config.to_string()
    }

    /// The plugin's view of a resolved spec.
    pub fn view(&self) -> FunctionView {
        FunctionView {
            name: self.name.clone(),
            image: self.image.clone(),
            command: self.command.clone().unwrap_or_default(),
            env: self.env.clone().unwrap_or_default().into_iter().collect(),
            cpu: self.resources.as_ref().and_then(|r| r.cpu.clone()),
            memory: self.resources.as_ref().and_then(|r| r.memory.clone()),
            timeout_ms: self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            endpoint_url: self.endpoint_url.clone(),
            config: self.plugin_config(),
        }
    }
}

/// A function as plugins see it (the WIT `function-spec`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionView {
    pub name: String,
    pub image: Option<String>,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub timeout_ms: u64,
    pub endpoint_url: Option<String>,
    /// `dispatcherConfig` as JSON object text.
    pub config: String,
}

/// A function as executions see it: the resolved spec they were accepted with, and the
/// admission queue of its name. It names its dispatcher plugin but does not hold it, so
/// functions and executions do not depend on the plugin runtime.
pub struct Function {
    /// The resolved spec, as shown by the API.
    pub spec: FunctionSpec,
    /// What plugins see.
    pub view: Arc<FunctionView>,
    pub queue: Arc<FunctionQueue>,
}

impl Function {
    /// A function of a resolved spec, admitted through `queue`.
    pub fn new(spec: FunctionSpec, queue: Arc<FunctionQueue>) -> Self {
        let view = Arc::new(spec.view());
        Self { spec, view, queue }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The name of the dispatcher plugin (set by [`FunctionSpec::resolve`]).
    pub fn dispatcher(&self) -> &str {
        self.spec.dispatcher.as_deref().unwrap_or_default()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.spec.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }

    pub fn max_retries(&self) -> u32 {
        self.spec.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)
    }
}

/// The registered functions by name.
#[derive(Default)]
pub struct Registry {
    functions: RwLock<HashMap<String, Arc<Function>>>,
    /// Where the names of changed functions go (the lifecycle reconciler), once subscribed.
    changes: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Registry {
    /// The names of functions as they are inserted, replaced or removed, from now on (one
    /// subscriber per registry; a second gets `None`).
    pub fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.changes.set(tx).ok().map(|()| rx)
    }

    fn changed(&self, name: &str) {
        if let Some(tx) = self.changes.get() {
            let _ = tx.send(name.to_string());
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Function>> {
        self.functions.read().expect("registry lock").get(name).cloned()
    }

    /// All functions, sorted by name.
    pub fn list(&self) -> Vec<Arc<Function>> {
        let mut all: Vec<_> = self.functions.read().expect("registry lock").values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Inserts unless the name is taken; returns whether it was inserted.
    pub fn insert(&self, function: Arc<Function>) -> bool {
        let mut map = self.functions.write().expect("registry lock");
        if map.contains_key(function.name()) {
            return false;
        }
        let name = function.name().to_string();
        map.insert(name.clone(), function);
        drop(map);
        self.changed(&name);
        true
    }

    /// Inserts or replaces (a registration seen by another replica, a functions file).
    pub fn put(&self, function: Arc<Function>) {
        let name = function.name().to_string();
        self.functions.write().expect("registry lock").insert(name.clone(), function);
        self.changed(&name);
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Function>> {
        let removed = self.functions.write().expect("registry lock").remove(name);
        if removed.is_some() {
            self.changed(name);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(900);

    fn spec(json: &str) -> Result<FunctionSpec, SpecError> {
        FunctionSpec::from_json(json.as_bytes())?.resolve(MAX)
    }

    #[test]
    fn fills_in_nanofaas_defaults() {
        let s = spec(r#"{"name":"hello","executionMode":"LOCAL"}"#).unwrap();
        assert_eq!(s.timeout_ms, Some(30_000));
        assert_eq!(s.concurrency, Some(4));
        assert_eq!(s.queue_size, Some(100));
        assert_eq!(s.max_retries, Some(3));
        assert_eq!(s.dispatcher.as_deref(), Some("echo"));
        assert_eq!(s.dispatcher_config, Some(serde_json::json!({})));
    }

    #[test]
    fn execution_modes_map_to_plugins() {
        assert_eq!(spec(r#"{"name":"a","executionMode":"POOL"}"#).unwrap().dispatcher.unwrap(), "pool");
        assert_eq!(spec(r#"{"name":"a","executionMode":"REMOTE"}"#).unwrap().dispatcher.unwrap(), "k8s-job");
        assert_eq!(spec(r#"{"name":"a"}"#).unwrap().dispatcher.unwrap(), "k8s-job");
        let s = spec(r#"{"name":"a","dispatcher":"job-poll"}"#).unwrap();
        assert_eq!(s.execution_mode, Some(ExecutionMode::Remote));
        let s = spec(r#"{"name":"a","dispatcher":"custom"}"#).unwrap();
        assert_eq!(s.execution_mode, None);
        let e = spec(r#"{"name":"a","dispatcher":"echo","executionMode":"POOL"}"#).unwrap_err();
        assert_eq!(e.field, "executionMode");
    }

    #[test]
    fn names_must_be_kubernetes_safe() {
        for bad in ["", "Hello", "1abc", "a_b", "abc-", "a.b", &"a".repeat(49)] {
            let e = FunctionSpec { name: bad.into(), ..Default::default() }.resolve(MAX).unwrap_err();
            assert_eq!(e.field, "name", "{bad}");
        }
        for good in ["a", "hello-world", "f2", &"a".repeat(48)] {
            assert!(valid_name(good), "{good}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(spec(r#"{"name":"a","timeoutMs":0}"#).unwrap_err().field, "timeoutMs");
        assert_eq!(spec(r#"{"name":"a","timeoutMs":900001}"#).unwrap_err().field, "timeoutMs");
        assert_eq!(spec(r#"{"name":"a","concurrency":0}"#).unwrap_err().field, "concurrency");
        assert_eq!(spec(r#"{"name":"a","maxRetries":11}"#).unwrap_err().field, "maxRetries");
        assert_eq!(spec(r#"{"name":"a","queueSize":100001}"#).unwrap_err().field, "queueSize");
        assert_eq!(spec(r#"{"name":"a","endpointUrl":"ftp://x"}"#).unwrap_err().field, "endpointUrl");
        assert_eq!(spec(r#"{"name":"a","dispatcherConfig":[1]}"#).unwrap_err().field, "dispatcherConfig");
        assert_eq!(spec(r#"{"name":"a","env":{"A=B":"c"}}"#).unwrap_err().field, "env.A=B");
        assert_eq!(spec(r#"{"name":"a","env":{"A":"x\u0000y"}}"#).unwrap_err().field, "env.A");
        assert_eq!(spec(r#"{"name":"a","image":"img\u0000"}"#).unwrap_err().field, "image");
        assert_eq!(spec(r#"{"name":"a","image":"img latest"}"#).unwrap_err().field, "image");
        assert_eq!(spec(r#"{"name":"a","runtimeCommand":"run\u0000"}"#).unwrap_err().field, "runtimeCommand");
        // Type errors and unknown fields come from parsing, with the path.
        let e = FunctionSpec::from_json(br#"{"name":"a","timeoutMs":"soon"}"#).unwrap_err();
        assert_eq!(e.field, "timeoutMs");
        let e = FunctionSpec::from_json(br#"{"name":"a","resources":{"gpu":"1"}}"#).unwrap_err();
        assert_eq!(e.field, "resources.gpu");
        assert!(e.message.contains("unknown field"), "{}", e.message);
        let e = FunctionSpec::from_json(br#"{"name":"a","timeoutMS":5}"#).unwrap_err();
        assert_eq!(e.field, "timeoutMS");
        let e = FunctionSpec::from_json(b"not json").unwrap_err();
        assert_eq!(e.field, "body");
    }

    #[test]
    fn view_carries_what_plugins_need() {
        let s = spec(
            r#"{"name":"a","image":"img","command":["run"],"env":{"K":"V"},"resources":{"cpu":"250m"},
                "timeoutMs":1000,"dispatcher":"echo","dispatcherConfig":{"k":1}}"#,
        )
        .unwrap();
        let v = s.view();
        assert_eq!(v.image.as_deref(), Some("img"));
        assert_eq!(v.command, ["run"]);
        assert_eq!(v.env, [("K".to_string(), "V".to_string())]);
        assert_eq!(v.cpu.as_deref(), Some("250m"));
        assert_eq!(v.timeout_ms, 1000);
        assert_eq!(v.config, r#"{"k":1}"#);
    }

    /// The body the reference client's `fn apply` sends: every field, `null` when unset.
    const REFERENCE_BODY: &str = r#"{"name":"hello","image":"ghcr.io/acme/hello:1","command":null,"env":null,
        "resources":null,"timeoutMs":null,"concurrency":null,"queueSize":null,"maxRetries":null,
        "endpointUrl":null,"executionMode":"POOL","runtimeMode":null,"runtimeCommand":null,
        "scalingConfig":null,"imagePullSecrets":null}"#;

    #[test]
    fn explicit_nulls_are_absent_fields() {
        let with_nulls = spec(REFERENCE_BODY).unwrap();
        let without = spec(r#"{"name":"hello","image":"ghcr.io/acme/hello:1","executionMode":"POOL"}"#).unwrap();
        assert_eq!(with_nulls, without);
        assert!(with_nulls.warnings().is_empty());
        let s = spec(r#"{"name":"a","executionMode":"LOCAL","dispatcherConfig":null}"#).unwrap();
        assert_eq!(s.dispatcher_config, Some(serde_json::json!({})));
    }

    #[test]
    fn scaling_config_is_kept_and_ignored_with_a_warning() {
        let body = REFERENCE_BODY.replace(
            r#""scalingConfig":null"#,
            r#""scalingConfig":{"strategy":"INTERNAL","minReplicas":1,"maxReplicas":3,"metrics":null}"#,
        );
        let s = spec(&body).unwrap();
        assert_eq!(s.scaling_config.as_ref().unwrap()["maxReplicas"], 3);
        let warnings = s.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("scalingConfig is ignored"), "{warnings:?}");
        assert!(!s.view().config.contains("scaling"), "plugins do not see it");
        let e = spec(r#"{"name":"a","executionMode":"LOCAL","scalingConfig":3}"#).unwrap_err();
        assert_eq!(e.field, "scalingConfig");
    }

    #[test]
    fn image_pull_secrets_reach_the_pod_dispatchers_only() {
        let job =
            spec(r#"{"name":"a","dispatcher":"k8s-job","imagePullSecrets":["regcred"],"dispatcherConfig":{"x":1}}"#)
                .unwrap();
        assert!(job.warnings().is_empty());
        let config: serde_json::Value = serde_json::from_str(&job.view().config).unwrap();
        assert_eq!(config, serde_json::json!({"x": 1, "imagePullSecrets": ["regcred"]}));
        // The config's own list wins.
        let own = spec(
            r#"{"name":"a","dispatcher":"job-poll","imagePullSecrets":["a"],"dispatcherConfig":{"imagePullSecrets":["b"]}}"#,
        )
        .unwrap();
        assert!(own.view().config.contains(r#"["b"]"#));
        let pool = spec(r#"{"name":"a","executionMode":"POOL","imagePullSecrets":["regcred"]}"#).unwrap();
        assert_eq!(pool.view().config, "{}");
        assert!(pool.warnings()[0].starts_with("imagePullSecrets is ignored"));
        let e = spec(r#"{"name":"a","imagePullSecrets":["ok","Not_A_Name"]}"#).unwrap_err();
        assert_eq!(e.field, "imagePullSecrets[1]");
    }

    #[test]
    fn deployment_mode_maps_to_the_deployment_dispatcher() {
        let s = spec(r#"{"name":"a","executionMode":"DEPLOYMENT"}"#).unwrap();
        assert_eq!(s.dispatcher.as_deref(), Some(DEPLOYMENT_DISPATCHER));
        let e = spec(r#"{"name":"a","executionMode":"DEPLOYMENT","dispatcher":"pool"}"#).unwrap_err();
        assert_eq!(e.field, "executionMode");
    }
}
