//! The `kubernetes` capability: Jobs in the host's namespace, followed by one shared watch.
//!
//! `create-job` takes the plugin's manifest, forces the namespace and adds the host's labels
//! (manager, function, execution id, attempt — on the Job and on its pod template), then creates
//! it. `job-status` is served from a reflector cache fed by one label-selected watch over the
//! host's Jobs and one over their pods, never from a GET per poll: at steady state the API server
//! sees a create and a delete per execution and nothing else. When a watched Job or pod changes,
//! the execution that owns it is woken (completion at watch latency, not poll interval).
//! `delete-job` deletes with background propagation, so the garbage collector removes the pods.
//!
//! API errors come back classified: 429, 5xx, timeouts and connection failures are retryable;
//! other 4xx (403 forbidden, 422 invalid) are final, with the API server's message.
//!
//! The API server may go away at any time; what the host says about a Job stays true:
//! - a Job is *gone* only when the cache lacked it after having had it — after a delete event, or
//!   after a completed relist that did not list it. A Job listed during a relist is not "seen"
//!   until the relist is done (the reflector swaps its store only then), and one the cache has
//!   not had yet reads as an empty status: "unknown, ask again", up to the execution's deadline;
//! - a finished Job whose pods the pod cache does not show terminated yet reads as still running
//!   for up to [`POD_GRACE`], so a result read from the pod is not declared missing because one
//!   cache lags the other (and a callback that arrives meanwhile wins);
//! - deletes that fail are retried with backoff until they succeed or the Job is gone;
//! - watches reconnect at most [`WATCH_BACKOFF_MAX`] apart, and a watch failing for longer than
//!   [`WATCH_GRACE`] makes the host unready.
//!
//! On servers whose Job API has them ([`JobFeatures`], from the server's version, read once),
//! Jobs get `podReplacementPolicy: Failed` (a replacement pod starts only once the one it
//! replaces is gone, so two never run the same attempt) and a `podFailurePolicy` that ignores
//! disruptions (eviction, preemption, a drained node): such a pod is replaced by the Job
//! controller instead of failing the attempt as if the function had failed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::api::{Api, DeleteParams, LogParams, PostParams, PropagationPolicy};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use super::Wake;
use super::owned::Owned;
use super::pod_policy::PodPolicy;
use crate::metrics::Metrics;

/// Labels the host puts on every Job (and its pods).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "nanofaas";
pub const FUNCTION_LABEL: &str = "nanofaas.io/function";
pub const EXECUTION_LABEL: &str = "nanofaas.io/execution-id";
pub const ATTEMPT_LABEL: &str = "nanofaas.io/attempt";

/// How long a finished Job waits for the pod cache to show its pod terminated before its status
/// is reported without it.
pub const POD_GRACE: Duration = Duration::from_secs(5);
/// Longest wait between two tries of a failing watch.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(3);
/// A failing watch reports an error at least this often (its tries are at most
/// [`WATCH_BACKOFF_MAX`] apart, each bounded by the client's timeouts): one whose last error is
/// older flows again, even when nothing changed since.
const WATCH_QUIET: Duration = Duration::from_secs(7);
/// How long a watch may fail before the host reports itself unready.
pub const WATCH_GRACE: Duration = Duration::from_secs(10);
/// Longest wait between two tries of a failing delete, and how long they go on.
const DELETE_BACKOFF_MAX: Duration = Duration::from_secs(10);
const DELETE_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// What the API server's Job API offers beyond the oldest supported one (1.20).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobFeatures {
    /// `podFailurePolicy` (on by default since 1.26, GA in 1.31).
    pub pod_failure_policy: bool,
    /// `podReplacementPolicy` (on by default since 1.29, GA in 1.34).
    pub pod_replacement_policy: bool,
}

impl JobFeatures {
    /// From the server's `/version` (`minor` may carry a `+`, as on managed clusters).
    pub fn of(major: &str, minor: &str) -> Self {
        let minor: u32 = minor.trim_end_matches('+').parse().unwrap_or(0);
        let v1 = major == "1";
        Self { pod_failure_policy: v1 && minor >= 26, pod_replacement_policy: v1 && minor >= 29 }
    }

    /// Sets the fields the server has and the manifest leaves unset.
    fn apply(self, job: &mut Job) {
        use k8s_openapi::api::batch::v1::{
            PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
        };
        let Some(spec) = job.spec.as_mut() else { return };
        if self.pod_replacement_policy && spec.pod_replacement_policy.is_none() {
            spec.pod_replacement_policy = Some("Failed".into());
        }
        // The API server accepts a pod failure policy only with `restartPolicy: Never`.
        let never = spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Never");
        if self.pod_failure_policy && never && spec.pod_failure_policy.is_none() {
            spec.pod_failure_policy = Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "Ignore".into(),
                    on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                        type_: "DisruptionTarget".into(),
                        status: "True".into(),
                    }]),
                    on_exit_codes: None,
                }],
            });
        }
    }
}

/// A cluster to run Jobs in.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
    /// Counts the client's requests into `nanofaas_kube_api_requests_total` once the host's
    /// metrics exist (the client is built before them).
    requests: Arc<std::sync::OnceLock<prometheus::IntCounterVec>>,
    /// What the host refuses in the Jobs plugins build.
    pub policy: PodPolicy,
}

impl Cluster {
    /// From `KUBECONFIG` / `~/.kube/config` or the in-cluster service account; `None` (logged)
    /// when there is no cluster to talk to.
    pub async fn infer(namespace: Option<String>) -> Option<Self> {
        match kube::Config::infer().await {
            Ok(config) => match Self::from_config(config, namespace) {
                Ok(cluster) => Some(cluster),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build a Kubernetes client; Kubernetes dispatchers are off");
                    None
                }
            },
            Err(e) => {
                tracing::info!(reason = %e, "no Kubernetes cluster configured; Kubernetes dispatchers are off");
                None
            }
        }
    }

    /// A cluster from a client configuration; `namespace` overrides the configuration's.
    pub fn from_config(config: kube::Config, namespace: Option<String>) -> Result<Self, kube::Error> {
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        let requests: Arc<std::sync::OnceLock<prometheus::IntCounterVec>> = Arc::default();
        let client = kube::client::ClientBuilder::try_from(config)?
            .with_layer(&tower::layer::layer_fn({
                let requests = requests.clone();
                move |inner| CountRequests { inner, requests: requests.clone() }
            }))
            .build();
        Ok(Self { client, namespace, requests, policy: PodPolicy::default() })
    }

    /// A cluster from an existing client (tests); its requests are not counted.
    pub fn from_client(client: kube::Client, namespace: &str) -> Self {
        Self { client, namespace: namespace.to_string(), requests: Arc::default(), policy: PodPolicy::default() }
    }
}

/// Counts every request the client sends, by verb and resource.
#[derive(Clone)]
struct CountRequests<S> {
    inner: S,
    requests: Arc<std::sync::OnceLock<prometheus::IntCounterVec>>,
}

impl<S, B> tower::Service<http::Request<B>> for CountRequests<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(counter) = self.requests.get() {
            let (verb, resource) = verb_and_resource(req.method(), req.uri());
            counter.with_label_values(&[verb, &resource]).inc();
        }
        self.inner.call(req)
    }
}

/// `create`, `delete`, `get`, `list`, `watch`… and the resource, from a request line.
fn verb_and_resource(method: &http::Method, uri: &http::Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    // …/namespaces/{ns}/{resource}[/{name}[/{subresource}]]
    let (resource, named) = match segments.iter().position(|s| *s == "namespaces") {
        Some(i) if segments.len() > i + 2 => (segments[i + 2].to_string(), segments.len() > i + 3),
        _ => (segments.last().copied().unwrap_or("").to_string(), false),
    };
    let watch = uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        http::Method::POST => "create",
        http::Method::DELETE => "delete",
        http::Method::PATCH => "patch",
        http::Method::PUT => "update",
        _ if watch => "watch",
        _ if named => "get",
        _ => "list",
    };
    (verb, resource)
}

/// An API error, classified (the WIT `api-error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: u16,
    pub reason: String,
    pub message: String,
    pub retryable: bool,
}

impl ApiFailure {
    fn invalid(message: String) -> Self {
        Self { status: 0, reason: "Invalid".into(), message, retryable: false }
    }

    /// The Job is not one this execution created.
    fn not_owned(name: &str) -> Self {
        Self {
            status: 404,
            reason: "NotFound".into(),
            message: format!("no Job `{name}` for this execution"),
            retryable: false,
        }
    }
}

fn classify(e: kube::Error) -> ApiFailure {
    match e {
        kube::Error::Api(status) => {
            let code = status.code;
            ApiFailure {
                status: code,
                reason: status.reason.clone(),
                message: status.message.clone(),
                retryable: code == 429 || code >= 500,
            }
        }
        other => ApiFailure { status: 0, reason: "Unavailable".into(), message: other.to_string(), retryable: true },
    }
}

/// A Job condition (the WIT `job-condition`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub kind: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// A pod of a Job (the WIT `pod-state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub phase: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub termination_message: Option<String>,
}

/// Lines of a pod's log read for the logs of an execution (its end).
pub const POD_LOG_LINES: i64 = 1000;
/// Bytes of a pod's log read at most.
pub const POD_LOG_BYTES: i64 = 64 * 1024;

/// One pod's log, or why the API server did not give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLog {
    pub pod: String,
    pub text: Result<String, String>,
}

/// A Job's status as seen by the watch (the WIT `job-state`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobState {
    pub active: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub conditions: Vec<Condition>,
    pub pods: Vec<PodState>,
}

/// What the host follows of one Job it created (its owner is the execution's id).
struct Tracked {
    function: String,
    created: Instant,
    /// The watch cache has had the Job (so a later absence means it is gone).
    seen: bool,
    started: bool,
    /// When the watch first showed the Job `Complete` or `Failed`.
    finished: Option<Instant>,
    /// A wake-up is due at the end of the Job's [`POD_GRACE`].
    grace_wake: bool,
    deleted: bool,
}

/// Whether a watch is flowing, as its events show.
#[derive(Default)]
struct WatchHealth(Mutex<Failing>);

#[derive(Default)]
struct Failing {
    /// The first error of the current run of errors.
    since: Option<Instant>,
    last: Option<Instant>,
}

impl WatchHealth {
    fn failed(&self) {
        let now = Instant::now();
        let mut f = self.0.lock().expect("watch health lock");
        f.since.get_or_insert(now);
        f.last = Some(now);
    }

    /// An event arrived (or the errors stopped): the outage, if there was one, is over.
    /// Returns how long it lasted.
    fn flowing(&self) -> Option<Duration> {
        let mut f = self.0.lock().expect("watch health lock");
        f.last = None;
        f.since.take().map(|since| since.elapsed())
    }

    /// Failing for longer than `grace`. Errors that stopped [`WATCH_QUIET`] ago end the outage.
    fn failing_for(&self, grace: Duration) -> Option<Duration> {
        let mut f = self.0.lock().expect("watch health lock");
        let (since, last) = (f.since?, f.last?);
        if last.elapsed() > WATCH_QUIET {
            *f = Failing::default();
            return None;
        }
        Some(since.elapsed()).filter(|d| *d > grace)
    }
}

struct Inner {
    client: kube::Client,
    /// Found at the first create (not cached when the server could not say).
    features: tokio::sync::OnceCell<JobFeatures>,
    jobs: Api<Job>,
    policy: PodPolicy,
    job_cache: Store<Job>,
    pod_cache: Store<Pod>,
    namespace: String,
    owned: Owned<Tracked>,
    metrics: Metrics,
    wake: Wake,
    job_watch: WatchHealth,
    pod_watch: WatchHealth,
    /// The Job watch has completed a list: the cache holds what exists.
    listed: std::sync::atomic::AtomicBool,
    /// Jobs the last sweep found untracked (deleted if the next one finds them so too).
    suspects: Mutex<std::collections::HashSet<String>>,
}

pub struct KubernetesCapability(Arc<Inner>);

impl KubernetesCapability {
    /// Starts the watches; Job status is served from them from now on.
    pub fn start(cluster: Cluster, metrics: Metrics, wake: Wake) -> Self {
        let _ = cluster.requests.set(metrics.kube_requests.clone());
        let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let selector = format!("{MANAGED_BY}={MANAGER}");
        let (job_cache, job_writer) = reflector::store();
        let (pod_cache, pod_writer) = reflector::store();
        let inner = Arc::new(Inner::new(&cluster, job_cache, pod_cache, metrics, wake));
        let config = watcher::Config::default().labels(&selector);
        let weak = Arc::downgrade(&inner);
        let job_events = reflector::reflector(job_writer, watcher(jobs, config.clone()).backoff(watch_backoff()));
        tokio::spawn(follow(job_events, weak.clone(), &JOB_WATCH));
        let pod_events = reflector::reflector(pod_writer, watcher(pods, config).backoff(watch_backoff()));
        tokio::spawn(follow(pod_events, weak, &POD_WATCH));
        tracing::info!(namespace = %cluster.namespace, "Kubernetes Jobs enabled");
        Self(inner)
    }

    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// Creates a Job from a `batch/v1` manifest for execution `owner` of `function`.
    pub async fn create_job(
        &self,
        owner: &str,
        function: &str,
        attempt: u32,
        manifest: &str,
        traceparent: Option<&str>,
    ) -> Result<String, ApiFailure> {
        let mut job: Job = serde_json::from_str(manifest)
            .map_err(|e| ApiFailure::invalid(format!("the manifest is not a Job: {e}")))?;
        self.0.policy.check(&job).map_err(|m| ApiFailure {
            status: 0,
            reason: "Forbidden".into(),
            message: format!("refused by the host's pod policy: {m}"),
            retryable: false,
        })?;
        let labels = [
            (MANAGED_BY, MANAGER.to_string()),
            (FUNCTION_LABEL, function.to_string()),
            (EXECUTION_LABEL, owner.to_string()),
            (ATTEMPT_LABEL, attempt.to_string()),
        ];
        job.metadata.namespace = Some(self.0.namespace.clone());
        let add = |map: &mut Option<BTreeMap<String, String>>| {
            let map = map.get_or_insert_with(BTreeMap::new);
            for (k, v) in &labels {
                map.insert((*k).to_string(), v.clone());
            }
        };
        add(&mut job.metadata.labels);
        if let Some(spec) = job.spec.as_mut() {
            add(&mut spec.template.metadata.get_or_insert_with(Default::default).labels);
            if let (Some(traceparent), Some(pod)) = (traceparent, spec.template.spec.as_mut()) {
                // The function may continue the trace (unless the plugin set the variable).
                for container in &mut pod.containers {
                    let env = container.env.get_or_insert_with(Vec::new);
                    if !env.iter().any(|e| e.name == crate::otel::TRACEPARENT) {
                        env.push(EnvVar {
                            name: crate::otel::TRACEPARENT.into(),
                            value: Some(traceparent.into()),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        self.0.features().await.apply(&mut job);
        let name = match self.0.jobs.create(&PostParams::default(), &job).await {
            Ok(created) => created.metadata.name.unwrap_or_default(),
            // Job names are deterministic per attempt: this attempt's Job exists already (it was
            // created by a host process that died before it could record so). Adopt it.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let name = job.metadata.name.clone().unwrap_or_default();
                let existing = self.0.jobs.get(&name).await.map_err(classify)?;
                let labels = existing.metadata.labels.unwrap_or_default();
                let same = labels.get(EXECUTION_LABEL).is_some_and(|e| e == owner)
                    && labels.get(ATTEMPT_LABEL).is_some_and(|a| *a == attempt.to_string());
                if !same {
                    return Err(ApiFailure {
                        status: 409,
                        reason: "AlreadyExists".into(),
                        message: format!("a Job named `{name}` exists and belongs to another execution"),
                        retryable: false,
                    });
                }
                tracing::info!(execution_id = owner, function, job = %name, attempt, "job adopted");
                let seen = self.0.job_cache.get(&ObjectRef::new(&name).within(&self.0.namespace)).is_some();
                self.0.track(owner, function, &name, seen);
                return Ok(name);
            }
            Err(e) => return Err(classify(e)),
        };
        self.0.track(owner, function, &name, false);
        self.0.metrics.job_created.with_label_values(&[function]).inc();
        tracing::info!(execution_id = owner, function, job = %name, attempt, "job created");
        Ok(name)
    }

    /// Waits (up to `limit`) until both watches have listed what exists, so that the caches can
    /// be asked about Jobs created before this host started. Returns whether they did.
    pub async fn synced(&self, limit: std::time::Duration) -> bool {
        let ready = async {
            let _ = self.0.job_cache.wait_until_ready().await;
            let _ = self.0.pod_cache.wait_until_ready().await;
        };
        tokio::time::timeout(limit, ready).await.is_ok()
    }

    /// Jobs in the watch cache that execution `owner` created (any attempt), by name.
    fn found(&self, owner: &str) -> Vec<(String, String)> {
        self.0
            .job_cache
            .state()
            .iter()
            .filter(|j| j.metadata.labels.as_ref().and_then(|l| l.get(EXECUTION_LABEL)).is_some_and(|e| e == owner))
            .map(|j| {
                let labels = j.metadata.labels.clone().unwrap_or_default();
                (j.metadata.name.clone().unwrap_or_default(), labels.get(FUNCTION_LABEL).cloned().unwrap_or_default())
            })
            .collect()
    }

    /// Takes up the Jobs that execution `owner` created in an earlier host process (found in the
    /// watch cache by their labels), so its plugin can follow them. Returns how many.
    pub fn adopt(&self, owner: &str) -> usize {
        let found = self.found(owner);
        for (name, function) in &found {
            self.0.track(owner, function, name, true);
        }
        found.len()
    }

    /// Deletes the Jobs execution `owner` created in an earlier host process (found in the watch
    /// cache by their labels). Returns how many.
    pub fn release_found(&self, owner: &str) -> usize {
        let found = self.found(owner);
        for (name, _) in &found {
            tokio::spawn(self.0.clone().delete_until_gone(name.clone(), "an abandoned attempt's"));
        }
        found.len()
    }

    /// Forgets execution `owner`'s Jobs without deleting them (another host process takes them).
    pub fn forget_owner(&self, owner: &str) {
        self.0.owned.release(owner);
    }

    /// The Job's status from the watch cache; `None` when it existed and is gone. A Job just
    /// created that the watch has not delivered yet reads as an empty status, not as gone.
    pub fn job_status(&self, owner: &str, name: &str) -> Result<Option<JobState>, ApiFailure> {
        let seen = self.0.owned.with(owner, name, |o| o.seen).ok_or_else(|| ApiFailure::not_owned(name))?;
        let Some(job) = self.0.job_cache.get(&ObjectRef::new(name).within(&self.0.namespace)) else {
            return Ok((!seen).then(JobState::default));
        };
        let status = job.status.clone().unwrap_or_default();
        let conditions = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| Condition { kind: c.type_, status: c.status, reason: c.reason, message: c.message })
            .collect();
        let pods: Vec<PodState> = self
            .0
            .pod_cache
            .state()
            .into_iter()
            .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get("job-name")).is_some_and(|j| j == name))
            .map(|p| pod_state(&p))
            .collect();
        let mut state = JobState {
            active: status.active.unwrap_or(0).max(0) as u32,
            succeeded: status.succeeded.unwrap_or(0).max(0) as u32,
            failed: status.failed.unwrap_or(0).max(0) as u32,
            conditions,
            pods,
        };
        if self.0.awaits_pod(owner, name, &state) {
            // Finished, but the pod cache has not caught up: still running, for now.
            state.conditions.retain(|c| !(is_final(&c.kind) && c.status == "True"));
            state.active = state.active.max(1);
            state.succeeded = 0;
            state.failed = 0;
        }
        Ok(Some(state))
    }

    /// The logs of `owner`'s pods (the ones the pod cache holds, oldest first), each cut to its
    /// last [`POD_LOG_LINES`] lines and [`POD_LOG_BYTES`] bytes. Empty when it has no pod: none
    /// was started, or they went with their Job (deleted when the execution ended).
    pub async fn pod_logs(&self, owner: &str) -> Vec<PodLog> {
        let mut pods: Vec<Arc<Pod>> = self
            .0
            .pod_cache
            .state()
            .into_iter()
            .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get(EXECUTION_LABEL)).is_some_and(|e| e == owner))
            .collect();
        pods.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref().map(|t| t.0), &a.metadata.name)
                .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), &b.metadata.name))
        });
        let api: Api<Pod> = Api::namespaced(self.0.client.clone(), &self.0.namespace);
        let params =
            LogParams { tail_lines: Some(POD_LOG_LINES), limit_bytes: Some(POD_LOG_BYTES), ..LogParams::default() };
        let mut logs = Vec::with_capacity(pods.len());
        for pod in pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let text = api.logs(&name, &params).await.map_err(|e| classify(e).message);
            logs.push(PodLog { pod: name, text });
        }
        logs
    }

    /// Deletes a Job of `owner` and its pods. A Job already gone is not an error. When the delete
    /// fails it is not marked deleted, so releasing the execution deletes it again (with retries).
    pub async fn delete_job(&self, owner: &str, name: &str) -> Result<(), ApiFailure> {
        self.0.owned.with(owner, name, |_| ()).ok_or_else(|| ApiFailure::not_owned(name))?;
        self.0.delete(name).await?;
        self.0.owned.with(owner, name, |o| o.deleted = true);
        Ok(())
    }

    /// Whether the host should be taken out of service: a watch has failed for longer than
    /// [`WATCH_GRACE`] (one reconnect does not flap readiness).
    pub fn unhealthy(&self) -> Option<String> {
        for (what, watch) in [("Job", &self.0.job_watch), ("pod", &self.0.pod_watch)] {
            if let Some(d) = watch.failing_for(WATCH_GRACE) {
                return Some(format!("the {what} watch has failed for {} s", d.as_secs()));
            }
        }
        None
    }

    /// The execution ended: delete its Jobs the plugin did not delete, and forget them all.
    pub fn release_owner(&self, owner: &str) {
        for (name, _) in self.0.owned.release(owner).into_iter().filter(|(_, o)| !o.deleted) {
            tokio::spawn(self.0.clone().delete_until_gone(name, "a finished execution's"));
        }
    }

    /// Host-owned Jobs in the watch cache that no execution here follows, found so by this
    /// sweep and the one before (a Job just created may reach the cache before it is tracked),
    /// as (Job, execution id). Nothing while the watch has not listed what exists. The cache is
    /// the label-selected list the watch keeps current: a sweep costs the API server nothing.
    pub fn untracked(&self) -> Vec<(String, String)> {
        if !self.0.listed.load(std::sync::atomic::Ordering::Acquire) {
            return Vec::new();
        }
        let now: HashMap<String, String> = self
            .0
            .job_cache
            .state()
            .iter()
            .filter_map(|j| {
                let name = j.metadata.name.clone()?;
                let owner = Inner::owner_of(j.metadata.labels.as_ref())?;
                (!self.0.owned.contains(&name)).then_some((name, owner))
            })
            .collect();
        let mut suspects = self.0.suspects.lock().expect("suspects lock");
        let found =
            now.iter().filter(|(name, _)| suspects.contains(*name)).map(|(n, o)| (n.clone(), o.clone())).collect();
        *suspects = now.into_keys().collect();
        found
    }

    /// Deletes a Job the sweep found left behind (`reason`: its execution is `terminal` or
    /// `unknown`), retrying until it is gone; counted in `nanofaas_kube_jobs_swept_total`.
    pub fn sweep(&self, name: String, reason: &'static str) {
        self.0.metrics.kube_jobs_swept.with_label_values(&[reason]).inc();
        tracing::info!(job = %name, reason, "sweeping a Job left behind");
        self.0.suspects.lock().expect("suspects lock").remove(&name);
        tokio::spawn(self.0.clone().delete_until_gone(name, "a left-behind"));
    }

    /// Jobs the host tracks (created and not yet released).
    pub fn tracked(&self) -> usize {
        self.0.owned.len()
    }
}

impl Inner {
    fn new(cluster: &Cluster, job_cache: Store<Job>, pod_cache: Store<Pod>, metrics: Metrics, wake: Wake) -> Self {
        Self {
            client: cluster.client.clone(),
            features: tokio::sync::OnceCell::new(),
            jobs: Api::namespaced(cluster.client.clone(), &cluster.namespace),
            policy: cluster.policy.clone(),
            job_cache,
            pod_cache,
            namespace: cluster.namespace.clone(),
            owned: Owned::default(),
            metrics,
            wake,
            job_watch: WatchHealth::default(),
            pod_watch: WatchHealth::default(),
            listed: std::sync::atomic::AtomicBool::new(false),
            suspects: Mutex::default(),
        }
    }

    /// Starts following a Job of `owner` (`seen`: the watch has shown it already).
    fn track(&self, owner: &str, function: &str, name: &str, seen: bool) {
        self.owned.insert(
            name,
            owner,
            Tracked {
                function: function.to_string(),
                created: Instant::now(),
                seen,
                started: false,
                finished: None,
                grace_wake: false,
                deleted: false,
            },
        );
    }

    /// The server's [`JobFeatures`]: read once; when the server cannot say, none (and asked
    /// again at the next create).
    async fn features(&self) -> JobFeatures {
        let read = self.features.get_or_try_init(|| async {
            let info = self.client.apiserver_version().await?;
            let features = JobFeatures::of(&info.major, &info.minor);
            tracing::info!(version = %info.git_version, ?features, "Kubernetes Job API features");
            Ok::<_, kube::Error>(features)
        });
        match read.await {
            Ok(f) => *f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API server's version; Jobs get no newer fields");
                JobFeatures::default()
            }
        }
    }

    /// Deletes until the delete succeeds or the Job is gone, backing off between tries (up to
    /// [`DELETE_PATIENCE`]); a final refusal (403) is not retried.
    async fn delete_until_gone(self: Arc<Self>, name: String, whose: &'static str) {
        use backon::Retryable;
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(DELETE_BACKOFF_MAX)
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(DELETE_PATIENCE));
        let result = (|| self.delete(&name))
            .retry(backoff)
            .when(|e: &ApiFailure| e.retryable)
            .notify(|e: &ApiFailure, after: Duration| {
                tracing::info!(job = %name, error = %e.message, retry_ms = after.as_millis() as u64, "Job delete failed; retrying");
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(job = %name, error = %e.message, "cannot delete {whose} Job");
        }
    }

    async fn delete(&self, name: &str) -> Result<(), ApiFailure> {
        let params =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
        match self.jobs.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    fn owner_of(labels: Option<&BTreeMap<String, String>>) -> Option<String> {
        labels.and_then(|l| l.get(EXECUTION_LABEL)).cloned()
    }

    /// A Job event; `stored`: the cache holds what the event says (not so for a Job listed
    /// during a relist, which the cache gets only when the relist is done).
    fn job_changed(&self, job: &Job, stored: bool) {
        let name = job.metadata.name.clone().unwrap_or_default();
        if stored {
            self.owned.with_any(&name, |_, o| o.seen = true);
        }
        let finished = job.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| {
            cs.iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .map(|c| c.type_.clone())
        });
        if let Some(outcome) = finished {
            self.owned.with_any(&name, |owner, o| {
                if o.finished.is_some() {
                    return;
                }
                o.finished = Some(Instant::now());
                let outcome = if outcome == "Complete" { "complete" } else { "failed" };
                self.metrics
                    .job_run_duration
                    .with_label_values(&[o.function.as_str(), outcome])
                    .observe(o.created.elapsed().as_secs_f64());
                tracing::info!(execution_id = %owner, job = %name, outcome, "job finished");
            });
        }
        if let Some(owner) = Self::owner_of(job.metadata.labels.as_ref()) {
            (self.wake)(&owner);
        }
    }

    fn pod_changed(&self, pod: &Pod, _stored: bool) {
        let job = pod.metadata.labels.as_ref().and_then(|l| l.get("job-name")).cloned();
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p != "Pending");
        if let (Some(job), true) = (job, running) {
            self.owned.with_any(&job, |_, o| {
                if !std::mem::replace(&mut o.started, true) {
                    self.metrics
                        .job_start_latency
                        .with_label_values(&[o.function.as_str()])
                        .observe(o.created.elapsed().as_secs_f64());
                }
            });
        }
        if let Some(owner) = Self::owner_of(pod.metadata.labels.as_ref()) {
            (self.wake)(&owner);
        }
    }

    fn job_watch(&self) -> &WatchHealth {
        &self.job_watch
    }

    fn pod_watch(&self) -> &WatchHealth {
        &self.pod_watch
    }

    /// A relist is done: the cache holds what exists. Every tracked Job it holds is seen (and
    /// one it lacks after having had it is gone); every owner is woken to look again.
    fn relisted(&self) {
        self.listed.store(true, std::sync::atomic::Ordering::Release);
        let mut owners = Vec::new();
        self.owned.for_each(|name, owner, o| {
            if self.job_cache.get(&ObjectRef::new(name).within(&self.namespace)).is_some() {
                o.seen = true;
            }
            owners.push(owner.to_string());
        });
        for owner in owners {
            (self.wake)(&owner);
        }
    }

    /// Whether `name` is finished but the pod cache does not show a pod of it terminated yet, and
    /// its [`POD_GRACE`] is not over (a wake-up is set for its end).
    fn awaits_pod(self: &Arc<Self>, owner: &str, name: &str, state: &JobState) -> bool {
        let finished = state.conditions.iter().any(|c| is_final(&c.kind) && c.status == "True");
        if !finished || state.pods.iter().any(|p| p.phase == "Succeeded" || p.phase == "Failed") {
            return false;
        }
        let Some((left, wake_due)) = self.owned.with(owner, name, |o| {
            let since = *o.finished.get_or_insert_with(Instant::now);
            (POD_GRACE.saturating_sub(since.elapsed()), std::mem::replace(&mut o.grace_wake, true))
        }) else {
            return false;
        };
        if left.is_zero() {
            return false;
        }
        if !wake_due {
            let (weak, owner) = (Arc::downgrade(self), owner.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(left).await;
                if let Some(inner) = weak.upgrade() {
                    (inner.wake)(&owner);
                }
            });
        }
        true
    }
}

fn is_final(condition: &str) -> bool {
    condition == "Complete" || condition == "Failed"
}

/// The backoff of the watches: from 250 ms, doubling, at most [`WATCH_BACKOFF_MAX`].
fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(WATCH_BACKOFF_MAX)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// One of the two watches, for [`follow`].
struct Watched<K> {
    what: &'static str,
    changed: fn(&Inner, &K, bool),
    health: fn(&Inner) -> &WatchHealth,
}

static JOB_WATCH: Watched<Job> = Watched { what: "Job", changed: Inner::job_changed, health: Inner::job_watch };
static POD_WATCH: Watched<Pod> = Watched { what: "pod", changed: Inner::pod_changed, health: Inner::pod_watch };

/// Feeds a reflector's events to the capability until it is dropped.
async fn follow<K: kube::Resource + Clone>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    inner: std::sync::Weak<Inner>,
    watched: &'static Watched<K>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let Some(inner) = inner.upgrade() else { break };
        let health = (watched.health)(&inner);
        if event.is_ok()
            && let Some(outage) = health.flowing()
        {
            inner.metrics.kube_watch_outage.with_label_values(&[watched.what]).observe(outage.as_secs_f64());
            tracing::info!(outage_ms = outage.as_millis() as u64, "{} watch flowing again", watched.what);
        }
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object)) => {
                (watched.changed)(&inner, &object, true)
            }
            Ok(watcher::Event::InitApply(object)) => (watched.changed)(&inner, &object, false),
            Ok(watcher::Event::Init) => {}
            Ok(watcher::Event::InitDone) => inner.relisted(),
            Err(e) => {
                health.failed();
                tracing::warn!(error = %e, "{} watch error (retrying)", watched.what);
            }
        }
    }
}

fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.clone().unwrap_or_default();
    // The function's container: `function` by convention, else the first one.
    let container = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .min_by_key(|c| if c.name == "function" { 0 } else { 1 });
    let terminated = container.and_then(|c| c.state).and_then(|s| s.terminated);
    PodState {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase: status.phase.unwrap_or_else(|| "Unknown".into()),
        exit_code: terminated.as_ref().map(|t| t.exit_code),
        reason: terminated.as_ref().and_then(|t| t.reason.clone()).or(status.reason),
        termination_message: terminated.and_then(|t| t.message),
    }
}

#[cfg(test)]
mod tests {
    //! Call-exact tests against a mocked API server: which requests the capability sends, and
    //! how it reads the answers. (Flows run against a real API server in tests/kubernetes.rs.)

    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    use super::*;

    /// A capability on a mocked client, without watches (they would add their own requests).
    fn capability() -> (KubernetesCapability, mock::Handle<Request<Body>, Response<Body>>, Metrics) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let cluster = Cluster::from_client(kube::Client::new(service, "ns"), "ns");
        let metrics = Metrics::new();
        let (job_cache, _) = reflector::store();
        let (pod_cache, _) = reflector::store();
        let inner = Inner::new(&cluster, job_cache, pod_cache, metrics.clone(), Arc::new(|_: &str| {}));
        inner.features.set(JobFeatures::default()).unwrap();
        (KubernetesCapability(Arc::new(inner)), handle, metrics)
    }

    async fn body(req: Request<Body>) -> Value {
        let bytes = req.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn respond(status: StatusCode, body: Value) -> Response<Body> {
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
    }

    fn api_status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{reason} on purpose"), "reason": reason, "code": code})
    }

    const MANIFEST: &str = r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"f-1","namespace":"elsewhere","labels":{"mine":"x"}},
        "spec":{"template":{"spec":{"restartPolicy":"Never","containers":[{"name":"function","image":"i"}]}}}}"#;

    #[tokio::test]
    async fn create_forces_the_namespace_and_adds_the_hosts_labels() {
        let (cap, mut api, metrics) = capability();
        let server = tokio::spawn(async move {
            let (req, send) = api.next_request().await.expect("one request");
            assert_eq!(req.method(), Method::POST);
            assert_eq!(req.uri().path(), "/apis/batch/v1/namespaces/ns/jobs");
            let job = body(req).await;
            assert_eq!(job["metadata"]["namespace"], "ns");
            let labels = &job["metadata"]["labels"];
            assert_eq!(labels[MANAGED_BY], MANAGER);
            assert_eq!(labels[EXECUTION_LABEL], "exec-1");
            assert_eq!(labels[FUNCTION_LABEL], "fn");
            assert_eq!(labels[ATTEMPT_LABEL], "2");
            assert_eq!(labels["mine"], "x", "the plugin's labels stay");
            assert_eq!(job["spec"]["template"]["metadata"]["labels"][EXECUTION_LABEL], "exec-1", "pods carry it too");
            send.send_response(respond(StatusCode::CREATED, job));
        });
        assert_eq!(cap.create_job("exec-1", "fn", 2, MANIFEST, None).await, Ok("f-1".to_string()));
        server.await.unwrap();
        assert_eq!(metrics.job_created.with_label_values(&["fn"]).get(), 1);
        assert_eq!(cap.tracked(), 1);
        // Not yet seen by the watch: an empty status, not "gone".
        assert_eq!(cap.job_status("exec-1", "f-1"), Ok(Some(JobState::default())));
        assert!(cap.job_status("someone-else", "f-1").is_err(), "only the owner sees its Job");
    }

    #[tokio::test]
    async fn jobs_the_pod_policy_refuses_never_reach_the_api_server() {
        let (cap, mut api, metrics) = capability();
        let privileged = MANIFEST.replace(r#""image":"i""#, r#""image":"i","securityContext":{"privileged":true}"#);
        let e = cap.create_job("exec-1", "fn", 1, &privileged, None).await.unwrap_err();
        assert!(e.message.contains("privileged containers are not allowed") && !e.retryable, "{e:?}");
        let other_account = MANIFEST.replace(r#""restartPolicy""#, r#""serviceAccountName":"admin","restartPolicy""#);
        let e = cap.create_job("exec-1", "fn", 1, &other_account, None).await.unwrap_err();
        assert!(e.message.contains("`admin` is not allowed"), "{e:?}");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), api.next_request()).await.is_err(),
            "no request was sent"
        );
        assert_eq!(metrics.job_created.with_label_values(&["fn"]).get(), 0);
        assert_eq!(cap.tracked(), 0);
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        let v = |m: http::Method, u: &str| {
            let (verb, resource) = verb_and_resource(&m, &u.parse().unwrap());
            format!("{verb} {resource}")
        };
        assert_eq!(v(http::Method::POST, "/apis/batch/v1/namespaces/ns/jobs?"), "create jobs");
        assert_eq!(v(http::Method::DELETE, "/apis/batch/v1/namespaces/ns/jobs/j1"), "delete jobs");
        assert_eq!(v(http::Method::GET, "/apis/batch/v1/namespaces/ns/jobs/j1"), "get jobs");
        assert_eq!(v(http::Method::GET, "/api/v1/namespaces/ns/pods?labelSelector=x"), "list pods");
        assert_eq!(v(http::Method::GET, "/api/v1/namespaces/ns/pods?watch=true&resourceVersion=5"), "watch pods");
    }

    #[tokio::test]
    async fn api_errors_are_classified() {
        for (code, reason, retryable) in [
            (403, "Forbidden", false),
            (422, "Invalid", false),
            (429, "TooManyRequests", true),
            (503, "ServiceUnavailable", true),
        ] {
            let (cap, mut api, _) = capability();
            let server = tokio::spawn(async move {
                let (_, send) = api.next_request().await.expect("one request");
                send.send_response(respond(StatusCode::from_u16(code).unwrap(), api_status(code, reason)));
            });
            let e = cap.create_job("e", "fn", 1, MANIFEST, None).await.unwrap_err();
            server.await.unwrap();
            assert_eq!((e.status, e.reason.as_str(), e.retryable), (code, reason, retryable));
            assert!(e.message.contains("on purpose"));
            assert_eq!(cap.tracked(), 0, "nothing to clean up");
        }
        let (cap, _, _) = capability();
        let e = cap.create_job("e", "fn", 1, "{not json", None).await.unwrap_err();
        assert!(!e.retryable && e.message.contains("not a Job"));
    }

    #[tokio::test]
    async fn delete_uses_background_propagation_and_tolerates_absence() {
        let (cap, mut api, _) = capability();
        let server = tokio::spawn(async move {
            let (req, send) = api.next_request().await.expect("create");
            let job = body(req).await;
            send.send_response(respond(StatusCode::CREATED, job));
            let (req, send) = api.next_request().await.expect("delete");
            assert_eq!(req.method(), Method::DELETE);
            assert_eq!(req.uri().path(), "/apis/batch/v1/namespaces/ns/jobs/f-1");
            assert_eq!(body(req).await["propagationPolicy"], "Background");
            send.send_response(respond(StatusCode::NOT_FOUND, api_status(404, "NotFound")));
        });
        cap.create_job("e", "fn", 1, MANIFEST, None).await.unwrap();
        assert_eq!(cap.delete_job("e", "f-1").await, Ok(()), "already gone is fine");
        server.await.unwrap();
        assert!(cap.delete_job("other", "f-1").await.is_err(), "not someone else's Job");
        // Released after the plugin deleted it: no second DELETE is sent (the mock would see it).
        cap.release_owner("e");
        assert_eq!(cap.tracked(), 0);
    }

    /// A capability on a mocked client whose Job watch is fed by the test (through the same
    /// `follow` as the real one), with writers for its caches and the wake-ups it sends.
    struct Fed {
        cap: KubernetesCapability,
        api: mock::Handle<Request<Body>, Response<Body>>,
        jobs: futures::channel::mpsc::UnboundedSender<Result<watcher::Event<Job>, watcher::Error>>,
        pods: reflector::store::Writer<Pod>,
        woken: tokio::sync::mpsc::UnboundedReceiver<String>,
    }

    fn fed() -> Fed {
        let (service, api) = mock::pair::<Request<Body>, Response<Body>>();
        let cluster = Cluster::from_client(kube::Client::new(service, "ns"), "ns");
        let (job_cache, job_writer) = reflector::store();
        let (pod_cache, pods) = reflector::store();
        let (wake_tx, woken) = tokio::sync::mpsc::unbounded_channel();
        let wake: Wake = Arc::new(move |owner: &str| {
            let _ = wake_tx.send(owner.to_string());
        });
        let inner = Arc::new(Inner::new(&cluster, job_cache, pod_cache, Metrics::new(), wake));
        inner.features.set(JobFeatures::default()).unwrap();
        let (jobs, events) = futures::channel::mpsc::unbounded();
        tokio::spawn(follow(reflector::reflector(job_writer, events), Arc::downgrade(&inner), &JOB_WATCH));
        Fed { cap: KubernetesCapability(inner), api, jobs, pods, woken }
    }

    impl Fed {
        /// Creates Job `name` for execution `owner` (the mocked API server answers 201).
        async fn create(&mut self, owner: &str, name: &str) {
            let manifest = MANIFEST.replace(r#""name":"f-1""#, &format!(r#""name":"{name}""#));
            let create = self.cap.create_job(owner, "fn", 1, &manifest, None);
            let serve = async {
                let (req, send) = self.api.next_request().await.expect("create");
                send.send_response(respond(StatusCode::CREATED, body(req).await));
            };
            let (created, ()) = tokio::join!(create, serve);
            assert_eq!(created, Ok(name.to_string()));
        }

        /// Sends a watch event and waits until it was handled (its owner woken).
        async fn event(&mut self, event: watcher::Event<Job>, owner: &str) {
            self.jobs.unbounded_send(Ok(event)).unwrap();
            loop {
                let woken = tokio::time::timeout(std::time::Duration::from_secs(5), self.woken.recv()).await;
                if woken.expect("the event wakes its owner").as_deref() == Some(owner) {
                    return;
                }
            }
        }
    }

    #[tokio::test]
    async fn pod_logs_are_read_bounded_from_the_api_server_for_the_executions_pods_only() {
        let mut f = fed();
        assert_eq!(f.cap.pod_logs("e1").await, vec![], "no pod: nothing is asked");
        let pod = |name: &str, owner: &str, created: &str| -> Pod {
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created,
                             "labels": {"job-name": "j1", EXECUTION_LABEL: owner}},
                "status": {"phase": "Running"}}))
            .unwrap()
        };
        // Two attempts' pods, listed newest first, and another execution's.
        f.pods.apply_watcher_event(&watcher::Event::Apply(pod("j1-b", "e1", "2026-01-01T00:00:02Z")));
        f.pods.apply_watcher_event(&watcher::Event::Apply(pod("j1-a", "e1", "2026-01-01T00:00:01Z")));
        f.pods.apply_watcher_event(&watcher::Event::Apply(pod("j9-a", "e9", "2026-01-01T00:00:00Z")));
        let server = async {
            let (req, send) = f.api.next_request().await.expect("first log");
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ns/pods/j1-a/log", "oldest first");
            let query = req.uri().query().unwrap_or_default().to_string();
            assert!(query.contains("tailLines=1000") && query.contains("limitBytes=65536"), "{query}");
            send.send_response(Response::builder().body(Body::from(b"attempt one\n".to_vec())).unwrap());
            let (req, send) = f.api.next_request().await.expect("second log");
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ns/pods/j1-b/log");
            send.send_response(respond(StatusCode::BAD_REQUEST, api_status(400, "BadRequest")));
        };
        let (logs, ()) = tokio::join!(f.cap.pod_logs("e1"), server);
        assert_eq!(
            logs,
            vec![
                PodLog { pod: "j1-a".into(), text: Ok("attempt one\n".into()) },
                PodLog { pod: "j1-b".into(), text: Err("BadRequest on purpose".into()) },
            ]
        );
    }

    fn job(owner: &str, name: &str, status: Value) -> Job {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "ns", "labels": {EXECUTION_LABEL: owner, MANAGED_BY: MANAGER}},
            "status": status,
        }))
        .unwrap()
    }

    fn complete() -> Value {
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    }

    #[tokio::test]
    async fn a_job_listed_during_a_relist_is_not_gone_before_the_relist_is_done() {
        let mut f = fed();
        f.create("e1", "j1").await;
        f.event(watcher::Event::Apply(job("e1", "j1", json!({"active": 1}))), "e1").await;
        assert_eq!(f.cap.job_status("e1", "j1").unwrap().map(|s| s.active), Some(1));
        // The watch restarts (the API server came back); j2 was created meanwhile and is listed
        // before the relist is done: the cache does not have it yet, it is not gone.
        f.create("e2", "j2").await;
        f.jobs.unbounded_send(Ok(watcher::Event::Init)).unwrap();
        f.event(watcher::Event::InitApply(job("e2", "j2", json!({"active": 1}))), "e2").await;
        assert_eq!(f.cap.job_status("e2", "j2"), Ok(Some(JobState::default())), "unknown, ask again");
        assert!(f.cap.job_status("e1", "j1").unwrap().is_some(), "j1 is not gone either");
        // The relist is done and did not list j1: j1 is gone, j2 is there.
        f.jobs.unbounded_send(Ok(watcher::Event::InitDone)).unwrap();
        for _ in 0..2 {
            tokio::time::timeout(std::time::Duration::from_secs(5), f.woken.recv()).await.unwrap();
        }
        assert_eq!(f.cap.job_status("e1", "j1"), Ok(None), "gone after a completed relist without it");
        assert_eq!(f.cap.job_status("e2", "j2").unwrap().map(|s| s.active), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_job_waits_briefly_for_its_pod_to_show_terminated() {
        let mut f = fed();
        f.create("e1", "j1").await;
        f.event(watcher::Event::Apply(job("e1", "j1", complete())), "e1").await;
        // The pod cache has no terminated pod of j1 yet: still running, for POD_GRACE.
        let s = f.cap.job_status("e1", "j1").unwrap().unwrap();
        assert_eq!((s.active, s.succeeded, s.conditions.len()), (1, 0, 0), "{s:?}");
        let asked = Instant::now();
        assert_eq!(f.woken.recv().await.as_deref(), Some("e1"), "woken when the grace ends");
        assert_eq!(asked.elapsed(), POD_GRACE);
        let s = f.cap.job_status("e1", "j1").unwrap().unwrap();
        assert_eq!((s.succeeded, s.conditions[0].kind.as_str()), (1, "Complete"), "then reported as it is");
        // A Job whose pod the cache shows terminated is reported finished at once.
        f.create("e2", "j2").await;
        let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "j2-x", "namespace": "ns", "labels": {"job-name": "j2", EXECUTION_LABEL: "e2"}},
            "status": {"phase": "Succeeded"}}))
        .unwrap();
        f.pods.apply_watcher_event(&watcher::Event::Apply(pod));
        f.event(watcher::Event::Apply(job("e2", "j2", complete())), "e2").await;
        let s = f.cap.job_status("e2", "j2").unwrap().unwrap();
        assert_eq!((s.succeeded, s.pods.len()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_deletes_are_retried_until_the_job_is_gone() {
        let (cap, mut api, _) = capability();
        let server = tokio::spawn(async move {
            let (req, send) = api.next_request().await.expect("create");
            let created = body(req).await;
            send.send_response(respond(StatusCode::CREATED, created.clone()));
            // The plugin's delete fails: the API server is unavailable …
            let (req, send) = api.next_request().await.expect("the plugin's delete");
            assert_eq!(req.method(), Method::DELETE);
            send.send_response(respond(StatusCode::SERVICE_UNAVAILABLE, api_status(503, "ServiceUnavailable")));
            // … so releasing the execution deletes it again, and again, until it works.
            for _ in 0..2 {
                let (req, send) = api.next_request().await.expect("a retried delete");
                assert_eq!(req.uri().path(), "/apis/batch/v1/namespaces/ns/jobs/f-1");
                send.send_response(respond(StatusCode::SERVICE_UNAVAILABLE, api_status(503, "ServiceUnavailable")));
            }
            let (req, send) = api.next_request().await.expect("the delete that works");
            assert_eq!(req.method(), Method::DELETE);
            send.send_response(respond(StatusCode::OK, created));
            // Nothing after that.
            assert!(tokio::time::timeout(std::time::Duration::from_secs(3600), api.next_request()).await.is_err());
        });
        cap.create_job("e", "fn", 1, MANIFEST, None).await.unwrap();
        let e = cap.delete_job("e", "f-1").await.unwrap_err();
        assert!(e.retryable, "{e:?}");
        cap.release_owner("e");
        assert_eq!(cap.tracked(), 0);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_sweep_takes_jobs_no_execution_follows_when_two_sweeps_find_them() {
        let mut f = fed();
        f.create("mine", "j1").await;
        // Nothing before the watch has listed what exists.
        f.jobs.unbounded_send(Ok(watcher::Event::Init)).unwrap();
        f.jobs.unbounded_send(Ok(watcher::Event::InitApply(job("mine", "j1", json!({}))))).unwrap();
        f.jobs.unbounded_send(Ok(watcher::Event::InitApply(job("gone", "left", json!({}))))).unwrap();
        assert!(f.cap.untracked().is_empty());
        f.jobs.unbounded_send(Ok(watcher::Event::InitDone)).unwrap();
        assert_eq!(f.woken.recv().await.as_deref(), Some("mine"));
        // `left` is nobody's here: suspected by the first sweep, taken by the second. `j1` is
        // followed and never taken.
        assert!(f.cap.untracked().is_empty(), "first sweep: suspects only");
        assert_eq!(f.cap.untracked(), vec![("left".to_string(), "gone".to_string())]);
        f.cap.sweep("left".into(), "unknown");
        let (req, send) = f.api.next_request().await.expect("the sweep's delete");
        assert_eq!((req.method(), req.uri().path()), (&Method::DELETE, "/apis/batch/v1/namespaces/ns/jobs/left"));
        send.send_response(respond(StatusCode::NOT_FOUND, api_status(404, "NotFound")));
        assert_eq!(f.cap.0.metrics.kube_jobs_swept.with_label_values(&["unknown"]).get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_failing_past_its_grace_is_unhealthy_and_one_reconnect_is_not() {
        let h = WatchHealth::default();
        let step = |secs| tokio::time::advance(std::time::Duration::from_secs(secs));
        h.failed();
        step(3).await;
        h.failed();
        assert_eq!(h.failing_for(WATCH_GRACE), None, "3 s of errors is within the grace");
        assert!(h.flowing().is_some(), "an event ends the outage");
        h.failed();
        for _ in 0..4 {
            step(3).await;
            h.failed();
        }
        assert_eq!(h.failing_for(WATCH_GRACE), Some(std::time::Duration::from_secs(12)));
        // The errors stop (the watch reconnected, and nothing changed since): healthy again.
        step(8).await;
        assert_eq!(h.failing_for(WATCH_GRACE), None);
    }

    #[tokio::test]
    async fn newer_servers_get_the_job_safety_fields_and_older_ones_do_not() {
        for (minor, newer) in [("33", true), ("20", false)] {
            let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
            let cluster = Cluster::from_client(kube::Client::new(service, "ns"), "ns");
            let (job_cache, _) = reflector::store();
            let (pod_cache, _) = reflector::store();
            let inner = Inner::new(&cluster, job_cache, pod_cache, Metrics::new(), Arc::new(|_: &str| {}));
            let cap = KubernetesCapability(Arc::new(inner));
            let server = tokio::spawn(async move {
                let (req, send) = api.next_request().await.expect("the version, once");
                assert_eq!(req.uri().path(), "/version");
                send.send_response(respond(
                    StatusCode::OK,
                    json!({"major": "1", "minor": minor,
                    "gitVersion": format!("v1.{minor}.0"), "gitCommit": "", "gitTreeState": "", "buildDate": "",
                    "goVersion": "", "compiler": "", "platform": ""}),
                ));
                let mut specs = Vec::new();
                for _ in 0..2 {
                    let (req, send) = api.next_request().await.expect("a create");
                    assert_eq!(req.method(), Method::POST);
                    let job = body(req).await;
                    specs.push(job["spec"].clone());
                    send.send_response(respond(StatusCode::CREATED, job));
                }
                specs
            });
            cap.create_job("e", "fn", 1, MANIFEST, None).await.unwrap();
            cap.create_job("e", "fn", 2, &MANIFEST.replace("f-1", "f-2"), None).await.unwrap();
            for spec in server.await.unwrap() {
                if newer {
                    assert_eq!(spec["podReplacementPolicy"], "Failed", "{spec}");
                    let rule = &spec["podFailurePolicy"]["rules"][0];
                    assert_eq!(rule["action"], "Ignore");
                    assert_eq!(rule["onPodConditions"][0], json!({"type": "DisruptionTarget", "status": "True"}));
                } else {
                    assert!(spec.get("podReplacementPolicy").is_none() && spec.get("podFailurePolicy").is_none());
                }
            }
        }
        assert_eq!(JobFeatures::of("1", "29+"), JobFeatures { pod_failure_policy: true, pod_replacement_policy: true });
        assert_eq!(JobFeatures::of("1", "27"), JobFeatures { pod_failure_policy: true, pod_replacement_policy: false });
    }
}
