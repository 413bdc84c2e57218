//! What the `k8s-job` and `job-poll` plugins share: the Job manifest of an invocation, the
//! dispatcher configuration, and reading a verdict from a Job's status.
//!
//! The Job (DESIGN §6): `backoffLimit: 0` (the host owns retries), `activeDeadlineSeconds` from the
//! remaining deadline rounded *up* plus a margin (Kubernetes never fails a Job before the host
//! would time it out), `ttlSecondsAfterFinished`, `restartPolicy: Never`, the function's resources,
//! and the invocation in the environment — the input inline when it is small JSON, otherwise an
//! `INPUT_URL` the runtime fetches with the execution's token. By default an init container from
//! the runtime image copies `nanofaas-runtime` into a shared volume and the function container
//! runs it in front of the function's command, so function images need not contain it.

#[cfg(feature = "guest")]
pub mod guest;

use nanofaas_contract::env;
use serde::Deserialize;
use serde_json::{Value, json};

pub const DEFAULT_RUNTIME_IMAGE: &str = "ghcr.io/nanofaas/nanofaas-runtime:0.1.0";
const RUNTIME_DIR: &str = "/nanofaas/bin";

/// `dispatcherConfig` of both Job plugins.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Image whose init container provides `nanofaas-runtime`.
    pub runtime_image: String,
    /// The function image already has `nanofaas-runtime` on its `PATH`: no init container.
    pub runtime_in_image: bool,
    /// `STDIO` (default), `FILE` or `HTTP`.
    pub runtime_mode: Option<String>,
    pub ttl_seconds_after_finished: u32,
    /// Largest JSON input passed inline in the environment; larger ones are fetched.
    pub inline_input_max_bytes: u32,
    /// Added to the remaining deadline for `activeDeadlineSeconds`.
    pub deadline_margin_seconds: u32,
    pub service_account_name: Option<String>,
    pub image_pull_policy: Option<String>,
    /// Secrets the pod pulls its images with (the spec's `imagePullSecrets` arrive here).
    pub image_pull_secrets: Vec<String>,
    /// Milliseconds between safety polls (k8s-job) or the cap of the poll backoff (job-poll).
    pub poll_interval_ms: u32,
    /// How long the runtime keeps trying the callback before it exits (`None`: until the
    /// deadline). `job-poll` bounds it so the Job completes and its status tells the result.
    pub callback_budget_ms: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            runtime_image: DEFAULT_RUNTIME_IMAGE.into(),
            runtime_in_image: false,
            runtime_mode: None,
            ttl_seconds_after_finished: 600,
            inline_input_max_bytes: 32 * 1024,
            deadline_margin_seconds: 5,
            service_account_name: None,
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            poll_interval_ms: 5000,
            callback_budget_ms: None,
        }
    }
}

impl Config {
    /// Parses and [`check`](Self::check)s a `dispatcherConfig`.
    pub fn parse(json: &str) -> Result<Self, String> {
        let c: Self = serde_json::from_str(json).map_err(|e| format!("invalid dispatcherConfig: {e}"))?;
        c.check()?;
        Ok(c)
    }

    /// What serde's types cannot say about a parsed config.
    pub fn check(&self) -> Result<(), String> {
        if let Some(mode) = &self.runtime_mode
            && !matches!(mode.to_ascii_uppercase().as_str(), "STDIO" | "FILE" | "HTTP")
        {
            return Err(format!("runtimeMode `{mode}` is not STDIO, FILE or HTTP"));
        }
        if self.poll_interval_ms < 100 {
            return Err("pollIntervalMs must be at least 100".into());
        }
        Ok(())
    }
}

/// The function, as registered.
pub struct Function<'a> {
    pub name: &'a str,
    pub image: Option<&'a str>,
    pub command: &'a [String],
    pub env: &'a [(String, String)],
    pub cpu: Option<&'a str>,
    pub memory: Option<&'a str>,
}

/// Checks what a Job needs from a function spec.
pub fn validate(f: &Function, config: &Config) -> Result<(), String> {
    if f.image.is_none_or(|i| i.trim().is_empty()) {
        return Err("a Kubernetes function needs an `image`".into());
    }
    if f.command.is_empty() {
        return Err("a Kubernetes function needs a `command` (run by nanofaas-runtime in the container)".into());
    }
    if config.runtime_image.trim().is_empty() && !config.runtime_in_image {
        return Err("runtimeImage must not be empty".into());
    }
    Ok(())
}

/// One attempt of an execution.
pub struct Attempt<'a> {
    pub execution_id: &'a str,
    pub attempt: u32,
    pub trace_id: &'a str,
    pub deadline_unix_ms: u64,
    pub remaining_ms: u64,
    pub callback_url: Option<&'a str>,
    pub callback_token: &'a str,
    pub content_type: &'a str,
    pub metadata: &'a [(String, String)],
}

/// How the input reaches the pod.
pub enum Input {
    Inline(String),
    Fetch,
}

/// The Job's name: `{function}-{execution id}-{attempt}`, a valid DNS label (≤ 63 characters).
/// The whole execution id (its 32 hex digits) is in it, so names never collide, and so does the
/// attempt, so a restarted host finds an attempt's Job by name instead of creating it again;
/// only the function's part is shortened to fit.
pub fn job_name(function: &str, execution_id: &str, attempt: u32) -> String {
    let exec: String = execution_id.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase();
    let suffix = format!("-{exec}-{attempt}");
    let room = 63usize.saturating_sub(suffix.len());
    let prefix = function.get(..function.len().min(room)).unwrap_or(function).trim_end_matches('-');
    format!("{prefix}{suffix}")
}

/// The callback URL's input sibling: `…/executions/{id}:complete` → `…/executions/{id}/input`.
pub fn input_url(callback_url: &str) -> Option<String> {
    callback_url.strip_suffix(":complete").map(|base| format!("{base}/input"))
}

/// The Job manifest of an attempt.
pub fn manifest(f: &Function, a: &Attempt, input: Input, config: &Config) -> Value {
    let mut env: Vec<Value> = f.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    let metadata: serde_json::Map<String, Value> =
        a.metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let mut put = |k: &str, v: String| env.push(json!({"name": k, "value": v}));
    put(env::FUNCTION_NAME, f.name.into());
    put(env::EXECUTION_ID, a.execution_id.into());
    put(env::ATTEMPT, a.attempt.to_string());
    put(env::TRACE_ID, a.trace_id.into());
    put(env::DEADLINE_UNIX_MS, a.deadline_unix_ms.to_string());
    put(env::CONTENT_TYPE, a.content_type.into());
    put(env::FUNCTION_METADATA, Value::Object(metadata).to_string());
    put(env::CALLBACK_TOKEN, a.callback_token.into());
    if let Some(url) = a.callback_url {
        put(env::CALLBACK_URL, url.into());
    }
    match input {
        Input::Inline(text) => put(env::INVOCATION_PAYLOAD, text),
        Input::Fetch => {
            if let Some(url) = a.callback_url.and_then(input_url) {
                put(env::INPUT_URL, url);
            }
        }
    }
    if let Some(mode) = &config.runtime_mode {
        put(env::RUNTIME_MODE, mode.to_ascii_uppercase());
    }
    if let Some(budget) = config.callback_budget_ms {
        put(env::CALLBACK_BUDGET_MS, budget.to_string());
    }

    let runtime = if config.runtime_in_image {
        "nanofaas-runtime".to_string()
    } else {
        format!("{RUNTIME_DIR}/nanofaas-runtime")
    };
    let mut command = vec![runtime, "run".into(), "--".into()];
    command.extend(f.command.iter().cloned());
    let mut resources = serde_json::Map::new();
    for (key, value) in [("cpu", f.cpu), ("memory", f.memory)] {
        if let Some(v) = value {
            resources.insert(key.into(), Value::String(v.into()));
        }
    }
    let mut container = json!({
        "name": "function",
        "image": f.image.unwrap_or_default(),
        "command": command,
        "env": env,
        "terminationMessagePolicy": "File",
    });
    if !resources.is_empty() {
        container["resources"] = json!({"requests": resources.clone(), "limits": resources});
    }
    if let Some(policy) = &config.image_pull_policy {
        container["imagePullPolicy"] = policy.clone().into();
    }
    let mut pod = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "containers": [container],
    });
    if !config.runtime_in_image {
        let mount = json!([{"name": "nanofaas-runtime", "mountPath": RUNTIME_DIR}]);
        pod["containers"][0]["volumeMounts"] = mount.clone();
        pod["initContainers"] = json!([{
            "name": "nanofaas-runtime",
            "image": config.runtime_image,
            "command": ["nanofaas-runtime", "install", RUNTIME_DIR],
            "volumeMounts": mount,
        }]);
        pod["volumes"] = json!([{"name": "nanofaas-runtime", "emptyDir": {}}]);
    }
    if let Some(sa) = &config.service_account_name {
        pod["serviceAccountName"] = sa.clone().into();
    }
    if !config.image_pull_secrets.is_empty() {
        pod["imagePullSecrets"] = config.image_pull_secrets.iter().map(|name| json!({"name": name})).collect();
    }
    // Rounded up, plus a margin: the host's deadline is the one that decides.
    let active_deadline = a.remaining_ms.div_ceil(1000).max(1) + u64::from(config.deadline_margin_seconds);
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(f.name, a.execution_id, a.attempt)},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": active_deadline,
            "ttlSecondsAfterFinished": config.ttl_seconds_after_finished,
            "template": {"spec": pod},
        },
    })
}

/// A pod of the Job, as far as a verdict needs it.
pub struct Pod {
    pub phase: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub termination_message: Option<String>,
}

/// A Job's status, as far as a verdict needs it.
pub struct State {
    /// `(type, status, reason, message)` of each condition.
    pub conditions: Vec<(String, String, Option<String>, Option<String>)>,
    pub pods: Vec<Pod>,
}

/// What a Job's status says.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Running,
    /// Complete; the result envelope from the pod's termination message, if any.
    Succeeded(Option<Envelope>),
    /// Failed: a code and a message for the user, and whether it is the function's own error.
    Failed {
        code: String,
        message: String,
        function_error: bool,
    },
}

/// The runtime's result envelope, as the contract defines it.
pub use nanofaas_contract::termination::Envelope;

pub fn verdict(state: &State) -> Verdict {
    let condition = |kind: &str| state.conditions.iter().find(|c| c.0 == kind && c.1 == "True");
    let pod_failed = state.pods.iter().find(|p| p.phase == "Failed");
    if let Some(c) = condition("Failed") {
        return failed(pod_failed, c.2.as_deref(), c.3.as_deref());
    }
    if let Some(p) = pod_failed {
        return failed(Some(p), None, None);
    }
    if condition("Complete").is_some() {
        let envelope = state.pods.iter().find_map(|p| p.termination_message.as_deref().and_then(Envelope::parse));
        return Verdict::Succeeded(envelope);
    }
    Verdict::Running
}

fn failed(pod: Option<&Pod>, reason: Option<&str>, message: Option<&str>) -> Verdict {
    let exit = pod.and_then(|p| p.exit_code);
    // The runtime's own account of the failure comes first.
    if let Some(Envelope::Error { code, message, .. }) =
        pod.and_then(|p| p.termination_message.as_deref()).and_then(Envelope::parse)
    {
        let message = match exit {
            Some(e) => format!("{message} (exit code {e})"),
            None => message,
        };
        return Verdict::Failed { code, message, function_error: true };
    }
    let mut text =
        format!("the Job failed: {}", reason.or(pod.and_then(|p| p.reason.as_deref())).unwrap_or("unknown reason"));
    if let Some(m) = message {
        text.push_str(&format!(" ({m})"));
    }
    if let Some(e) = exit {
        text.push_str(&format!(", exit code {e}"));
    }
    // A container that exited non-zero is the function's failure; anything else (deadline,
    // eviction, image pull) is the platform's.
    let function_error = exit.is_some_and(|e| e != 0);
    Verdict::Failed {
        code: if function_error { "FUNCTION_ERROR" } else { "JOB_FAILED" }.into(),
        message: text,
        function_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function() -> (Vec<String>, Vec<(String, String)>) {
        (vec!["python3".into(), "/fn/main.py".into()], vec![("GREETING".into(), "hi".into())])
    }

    #[test]
    fn manifest_has_what_design_asks() {
        let (command, env) = function();
        let f = Function {
            name: "hello",
            image: Some("img:1"),
            command: &command,
            env: &env,
            cpu: Some("250m"),
            memory: None,
        };
        let a = Attempt {
            execution_id: "0f1e2d3c-aaaa-bbbb",
            attempt: 2,
            trace_id: "t",
            deadline_unix_ms: 1_000_000,
            remaining_ms: 29_001,
            callback_url: Some("http://h/v1/internal/executions/x:complete"),
            callback_token: "tok",
            content_type: "application/json",
            metadata: &[],
        };
        let m = manifest(&f, &a, Input::Inline("{\"a\":1}".into()), &Config::default());
        assert_eq!(m["metadata"]["name"], "hello-0f1e2d3caaaabbbb-2");
        assert_eq!(m["spec"]["backoffLimit"], 0);
        assert_eq!(m["spec"]["activeDeadlineSeconds"], 30 + 5, "rounded up, plus the margin");
        assert_eq!(m["spec"]["ttlSecondsAfterFinished"], 600);
        let pod = &m["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        let c = &pod["containers"][0];
        assert_eq!(c["command"], json!(["/nanofaas/bin/nanofaas-runtime", "run", "--", "python3", "/fn/main.py"]));
        assert_eq!(c["resources"]["limits"]["cpu"], "250m");
        let env: std::collections::HashMap<String, String> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().into(), e["value"].as_str().unwrap().into()))
            .collect();
        for k in [
            "FUNCTION_NAME",
            "EXECUTION_ID",
            "ATTEMPT",
            "TRACE_ID",
            "DEADLINE_UNIX_MS",
            "CALLBACK_URL",
            "CALLBACK_TOKEN",
            "GREETING",
        ] {
            assert!(env.contains_key(k), "{k}");
        }
        assert_eq!(env["INVOCATION_PAYLOAD"], "{\"a\":1}");
        assert_eq!(pod["initContainers"][0]["command"], json!(["nanofaas-runtime", "install", "/nanofaas/bin"]));

        let m = manifest(&f, &a, Input::Fetch, &Config { runtime_in_image: true, ..Config::default() });
        let pod = &m["spec"]["template"]["spec"];
        assert!(pod.get("initContainers").is_none());
        assert_eq!(pod["containers"][0]["command"][0], "nanofaas-runtime");
        let has_url = pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "INPUT_URL" && e["value"] == "http://h/v1/internal/executions/x/input");
        assert!(has_url);
        assert!(pod.get("imagePullSecrets").is_none());

        let config = Config::parse(r#"{"imagePullSecrets":["regcred","mirror"]}"#).unwrap();
        let m = manifest(&f, &a, Input::Fetch, &config);
        assert_eq!(m["spec"]["template"]["spec"]["imagePullSecrets"], json!([{"name": "regcred"}, {"name": "mirror"}]));
    }

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(job_name("f", "ABCDEF12-3456", 1), "f-abcdef123456-1");
        let id = "0c8a5c52-1d2e-4f3a-9b8c-7d6e5f4a3b2c";
        let long = job_name(&"a".repeat(48), id, 11);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-0c8a5c521d2e4f3a9b8c7d6e5f4a3b2c-11"), "the whole id and the attempt: {long}");
        // Ids that share a prefix (8 hex digits collided at 10k executions) get different names.
        let other = "0c8a5c52-1d2e-4f3a-9b8c-7d6e5f4a3b2d";
        assert_ne!(job_name("f", id, 1), job_name("f", other, 1));
        assert_ne!(job_name("f", id, 1), job_name("f", id, 2));
        let cut = job_name("ab-", id, 1);
        assert!(!cut.contains("--"), "{cut}");
    }

    fn pod(phase: &str, exit: Option<i32>, message: Option<&str>) -> Pod {
        Pod { phase: phase.into(), exit_code: exit, reason: None, termination_message: message.map(str::to_string) }
    }

    #[test]
    fn verdicts() {
        let running = State { conditions: vec![], pods: vec![pod("Running", None, None)] };
        assert_eq!(verdict(&running), Verdict::Running);
        let done = State {
            conditions: vec![("Complete".into(), "True".into(), None, None)],
            pods: vec![pod("Succeeded", Some(0), Some(r#"{"v":1,"success":true,"output":{"x":1}}"#))],
        };
        assert_eq!(verdict(&done), Verdict::Succeeded(Some(Envelope::Output(r#"{"x":1}"#.into()))));
        let crashed = State {
            conditions: vec![],
            pods: vec![pod(
                "Failed",
                Some(7),
                Some(r#"{"v":1,"success":false,"exitCode":7,"error":{"code":"FUNCTION_ERROR","message":"boom"}}"#),
            )],
        };
        assert_eq!(
            verdict(&crashed),
            Verdict::Failed {
                code: "FUNCTION_ERROR".into(),
                message: "boom (exit code 7)".into(),
                function_error: true
            }
        );
        let killed = State {
            conditions: vec![(
                "Failed".into(),
                "True".into(),
                Some("DeadlineExceeded".into()),
                Some("Job was active longer".into()),
            )],
            pods: vec![],
        };
        match verdict(&killed) {
            Verdict::Failed { code, message, function_error } => {
                assert_eq!((code.as_str(), function_error), ("JOB_FAILED", false));
                assert!(message.contains("DeadlineExceeded"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let segv = State { conditions: vec![], pods: vec![pod("Failed", Some(139), None)] };
        assert!(matches!(verdict(&segv), Verdict::Failed { function_error: true, .. }));
    }
}
