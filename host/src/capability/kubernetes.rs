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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::time::Instant;

use super::Wake;
use super::pod_policy::PodPolicy;
use crate::metrics::Metrics;

/// Labels the host puts on every Job (and its pods).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "nanofaas";
pub const FUNCTION_LABEL: &str = "nanofaas.io/function";
pub const EXECUTION_LABEL: &str = "nanofaas.io/execution-id";
pub const ATTEMPT_LABEL: &str = "nanofaas.io/attempt";

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

/// A Job's status as seen by the watch (the WIT `job-state`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobState {
    pub active: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub conditions: Vec<Condition>,
    pub pods: Vec<PodState>,
}

struct Owned {
    owner: String,
    function: String,
    created: Instant,
    /// The watch has shown the Job at least once (so a later absence means it is gone).
    seen: bool,
    started: bool,
    finished: bool,
    deleted: bool,
}

struct Inner {
    jobs: Api<Job>,
    policy: PodPolicy,
    job_cache: Store<Job>,
    pod_cache: Store<Pod>,
    namespace: String,
    owned: Mutex<HashMap<String, Owned>>,
    metrics: Metrics,
    wake: Wake,
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
        let job_events = reflector::reflector(job_writer, watcher(jobs, config.clone()).default_backoff());
        tokio::spawn(follow(job_events, weak.clone(), Inner::job_changed, "Job"));
        let pod_events = reflector::reflector(pod_writer, watcher(pods, config).default_backoff());
        tokio::spawn(follow(pod_events, weak, Inner::pod_changed, "pod"));
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
        }
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
            let inner = self.0.clone();
            let name = name.clone();
            tokio::spawn(async move {
                if let Err(e) = inner.delete(&name).await {
                    tracing::warn!(job = %name, error = %e.message, "cannot delete an abandoned attempt's Job");
                }
            });
        }
        found.len()
    }

    /// Forgets execution `owner`'s Jobs without deleting them (another host process takes them).
    pub fn forget_owner(&self, owner: &str) {
        self.0.owned.lock().expect("owned lock").retain(|_, o| o.owner != owner);
    }

    /// The Job's status from the watch cache; `None` when it existed and is gone. A Job just
    /// created that the watch has not delivered yet reads as an empty status, not as gone.
    pub fn job_status(&self, owner: &str, name: &str) -> Result<Option<JobState>, ApiFailure> {
        let seen = match self.0.owned.lock().expect("owned lock").get(name) {
            Some(o) if o.owner == owner => o.seen,
            _ => {
                return Err(ApiFailure::not_owned(name));
            }
        };
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
        let pods = self
            .0
            .pod_cache
            .state()
            .into_iter()
            .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get("job-name")).is_some_and(|j| j == name))
            .map(|p| pod_state(&p))
            .collect();
        Ok(Some(JobState {
            active: status.active.unwrap_or(0).max(0) as u32,
            succeeded: status.succeeded.unwrap_or(0).max(0) as u32,
            failed: status.failed.unwrap_or(0).max(0) as u32,
            conditions,
            pods,
        }))
    }

    /// Deletes a Job of `owner` and its pods. A Job already gone is not an error.
    pub async fn delete_job(&self, owner: &str, name: &str) -> Result<(), ApiFailure> {
        {
            let mut owned = self.0.owned.lock().expect("owned lock");
            match owned.get_mut(name) {
                Some(o) if o.owner == owner => o.deleted = true,
                _ => {
                    return Err(ApiFailure::not_owned(name));
                }
            }
        }
        self.0.delete(name).await
    }

    /// The execution ended: delete its Jobs the plugin did not delete, and forget them all.
    pub fn release_owner(&self, owner: &str) {
        let mut leftover = Vec::new();
        self.0.owned.lock().expect("owned lock").retain(|name, o| {
            if o.owner != owner {
                return true;
            }
            if !o.deleted {
                leftover.push(name.clone());
            }
            false
        });
        for name in leftover {
            let inner = self.0.clone();
            tokio::spawn(async move {
                if let Err(e) = inner.delete(&name).await {
                    tracing::warn!(job = %name, error = %e.message, "cannot delete a finished execution's Job");
                }
            });
        }
    }

    /// Jobs the host tracks (created and not yet released).
    pub fn tracked(&self) -> usize {
        self.0.owned.lock().expect("owned lock").len()
    }
}

impl Inner {
    fn new(cluster: &Cluster, job_cache: Store<Job>, pod_cache: Store<Pod>, metrics: Metrics, wake: Wake) -> Self {
        Self {
            jobs: Api::namespaced(cluster.client.clone(), &cluster.namespace),
            policy: cluster.policy.clone(),
            job_cache,
            pod_cache,
            namespace: cluster.namespace.clone(),
            owned: Mutex::new(HashMap::new()),
            metrics,
            wake,
        }
    }

    /// Starts following a Job of `owner` (`seen`: the watch has shown it already).
    fn track(&self, owner: &str, function: &str, name: &str, seen: bool) {
        self.owned.lock().expect("owned lock").insert(
            name.to_string(),
            Owned {
                owner: owner.to_string(),
                function: function.to_string(),
                created: Instant::now(),
                seen,
                started: false,
                finished: false,
                deleted: false,
            },
        );
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

    fn job_changed(&self, job: &Job) {
        let name = job.metadata.name.clone().unwrap_or_default();
        if let Some(o) = self.owned.lock().expect("owned lock").get_mut(&name) {
            o.seen = true;
        }
        let finished = job.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| {
            cs.iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .map(|c| c.type_.clone())
        });
        if let Some(outcome) = finished {
            let mut owned = self.owned.lock().expect("owned lock");
            if let Some(o) = owned.get_mut(&name).filter(|o| !o.finished) {
                o.finished = true;
                let outcome = if outcome == "Complete" { "complete" } else { "failed" };
                self.metrics
                    .job_run_duration
                    .with_label_values(&[o.function.as_str(), outcome])
                    .observe(o.created.elapsed().as_secs_f64());
                tracing::info!(execution_id = %o.owner, job = %name, outcome, "job finished");
            }
        }
        if let Some(owner) = Self::owner_of(job.metadata.labels.as_ref()) {
            (self.wake)(&owner);
        }
    }

    fn pod_changed(&self, pod: &Pod) {
        let job = pod.metadata.labels.as_ref().and_then(|l| l.get("job-name")).cloned();
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p != "Pending");
        if let (Some(job), true) = (job, running) {
            let mut owned = self.owned.lock().expect("owned lock");
            if let Some(o) = owned.get_mut(&job).filter(|o| !o.started) {
                o.started = true;
                self.metrics
                    .job_start_latency
                    .with_label_values(&[o.function.as_str()])
                    .observe(o.created.elapsed().as_secs_f64());
            }
        }
        if let Some(owner) = Self::owner_of(pod.metadata.labels.as_ref()) {
            (self.wake)(&owner);
        }
    }
}

/// Feeds a reflector's events to `changed` until the capability is dropped.
async fn follow<K: kube::Resource + Clone>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    inner: std::sync::Weak<Inner>,
    changed: fn(&Inner, &K),
    what: &'static str,
) {
    let mut events = std::pin::pin!(events.touched_objects());
    while let Some(event) = events.next().await {
        let Some(inner) = inner.upgrade() else { break };
        match event {
            Ok(object) => changed(&inner, &object),
            Err(e) => tracing::warn!(error = %e, "{what} watch error (retrying)"),
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
        assert_eq!(cap.create_job("exec-1", "fn", 2, MANIFEST).await, Ok("f-1".to_string()));
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
        let e = cap.create_job("exec-1", "fn", 1, &privileged).await.unwrap_err();
        assert!(e.message.contains("privileged containers are not allowed") && !e.retryable, "{e:?}");
        let other_account = MANIFEST.replace(r#""restartPolicy""#, r#""serviceAccountName":"admin","restartPolicy""#);
        let e = cap.create_job("exec-1", "fn", 1, &other_account).await.unwrap_err();
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
            let e = cap.create_job("e", "fn", 1, MANIFEST).await.unwrap_err();
            server.await.unwrap();
            assert_eq!((e.status, e.reason.as_str(), e.retryable), (code, reason, retryable));
            assert!(e.message.contains("on purpose"));
            assert_eq!(cap.tracked(), 0, "nothing to clean up");
        }
        let (cap, _, _) = capability();
        let e = cap.create_job("e", "fn", 1, "{not json").await.unwrap_err();
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
        cap.create_job("e", "fn", 1, MANIFEST).await.unwrap();
        assert_eq!(cap.delete_job("e", "f-1").await, Ok(()), "already gone is fine");
        server.await.unwrap();
        assert!(cap.delete_job("other", "f-1").await.is_err(), "not someone else's Job");
        // Released after the plugin deleted it: no second DELETE is sent (the mock would see it).
        cap.release_owner("e");
        assert_eq!(cap.tracked(), 0);
    }
}
