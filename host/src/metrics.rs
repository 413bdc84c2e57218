//! The metric families and their names: `nanofaas_` prefix, base units (seconds, bytes).
//!
//! One [`Metrics`] value per host, registered in its own registry (never the global one, so tests
//! and several hosts in one process do not collide). Labels are bounded: function names come from
//! the registry, routes are matched route templates, never raw URIs or execution ids.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 100 µs to 5 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Finished executions by function, dispatcher and outcome (`success`, `error`, `timeout`, `cancelled`).
    pub invocations: IntCounterVec,
    /// Accept-to-finish time of executions.
    pub invocation_duration: HistogramVec,
    /// Executions waiting for a concurrency slot.
    pub queue_depth: IntGaugeVec,
    /// Executions holding a concurrency slot.
    pub in_flight: IntGaugeVec,
    /// Executions that reached their deadline.
    pub timeouts: IntCounterVec,
    /// Attempts after the first.
    pub retries: IntCounterVec,
    /// Requests refused by admission (429), by function and reason.
    pub rejected: IntCounterVec,
    /// Duration of plugin calls by plugin and call (`validate`, `dispatch`, `poll`, `release`).
    pub plugin_call_duration: HistogramVec,
    /// Plugin calls that failed with `PLUGIN_FAULT`, by plugin, call and kind.
    pub plugin_faults: IntCounterVec,
    /// Plugin instances created, by plugin (an attempt's calls may share one).
    pub plugin_instances: IntCounterVec,
    /// 1 for each plugin loaded, by plugin, content digest (SHA-256) and source.
    pub plugin_info: IntGaugeVec,
    /// Completion callbacks by outcome (`accepted`, `duplicate`, `late`, `rejected`).
    pub callbacks: IntCounterVec,
    /// Finished executions evicted after their retention.
    pub evicted: IntCounterVec,
    /// Kubernetes Jobs created, by function.
    pub job_created: IntCounterVec,
    /// Time from creating a Job to seeing its pod running.
    pub job_start_latency: HistogramVec,
    /// Time from creating a Job to its `Complete`/`Failed` condition.
    pub job_run_duration: HistogramVec,
    /// Requests the host sent to the Kubernetes API server, by verb and resource.
    pub kube_requests: IntCounterVec,
    /// How long a watch failed: from its first failed request to the event (or the end of the
    /// errors) that shows it flows again, by watch (`Job`, `pod`).
    pub kube_watch_outage: HistogramVec,
    /// Host-owned Jobs deleted by the sweep, by why (`terminal`, `unknown` execution).
    pub kube_jobs_swept: IntCounterVec,
    /// HTTP requests by matched route, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request duration by matched route and method.
    pub http_duration: HistogramVec,
    /// Awaited store writes (group-committed) by what they write: `insert`, `settle`.
    pub store_write_duration: HistogramVec,
    /// Store operations that failed, by operation.
    pub store_errors: IntCounterVec,
    /// Unfinished executions taken up from the store (after a restart, or from a replica that
    /// died), by what was done: `resumed`, `restarted`, `requeued`, `timed_out`.
    pub recovered: IntCounterVec,
    /// Replicas whose executions this one took over.
    pub takeovers: IntCounterVec,
    /// API requests refused by authentication or authorization (`unauthenticated`, `forbidden`).
    pub auth_rejections: IntCounterVec,
    /// Input and output bytes of the finished executions held in memory.
    pub retained_bytes: IntGauge,
}

impl Metrics {
    /// Drops every series of a deleted function, so register/delete cycles do not grow the
    /// scrape without bound. (An execution of it still in flight adds its series back.)
    pub fn forget_function(&self, function: &str, dispatcher: &str) {
        for outcome in ["success", "error", "timeout", "cancelled"] {
            let _ = self.invocations.remove_label_values(&[function, dispatcher, outcome]);
            let _ = self.invocation_duration.remove_label_values(&[function, dispatcher, outcome]);
        }
        for gauge in [&self.queue_depth, &self.in_flight] {
            let _ = gauge.remove_label_values(&[function]);
        }
        for counter in [&self.timeouts, &self.retries, &self.job_created] {
            let _ = counter.remove_label_values(&[function]);
        }
        let _ = self.rejected.remove_label_values(&[function, "queue_full"]);
        let _ = self.job_start_latency.remove_label_values(&[function]);
        for outcome in ["complete", "failed"] {
            let _ = self.job_run_duration.remove_label_values(&[function, outcome]);
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let retained_bytes =
            IntGauge::new("nanofaas_retained_bytes", "Input and output bytes of finished executions held in memory.")
                .expect("valid metric");
        registry.register(Box::new(retained_bytes.clone())).expect("unique metric");
        Self {
            retained_bytes,
            auth_rejections: counter(
                "nanofaas_auth_rejections_total",
                "API requests refused for their token, by reason.",
                &["reason"],
            ),
            invocations: counter(
                "nanofaas_invocations_total",
                "Finished executions by function, dispatcher and outcome.",
                &["function", "dispatcher", "outcome"],
            ),
            invocation_duration: histogram(
                "nanofaas_invocation_duration_seconds",
                "Time from accept to terminal state.",
                &["function", "dispatcher", "outcome"],
            ),
            plugin_info: gauge(
                "nanofaas_plugin_info",
                "1 for each loaded plugin, by name, content digest (SHA-256) and source.",
                &["plugin", "digest", "source"],
            ),
            queue_depth: gauge("nanofaas_queue_depth", "Executions waiting for a concurrency slot.", &["function"]),
            in_flight: gauge("nanofaas_in_flight", "Executions holding a concurrency slot.", &["function"]),
            timeouts: counter("nanofaas_timeouts_total", "Executions that reached their deadline.", &["function"]),
            retries: counter("nanofaas_retries_total", "Attempts started after a retryable failure.", &["function"]),
            rejected: counter(
                "nanofaas_rejected_total",
                "Invocations refused by admission control.",
                &["function", "reason"],
            ),
            plugin_call_duration: histogram(
                "nanofaas_plugin_call_duration_seconds",
                "Duration of one plugin call (instantiation included when the call needs a fresh instance).",
                &["plugin", "call"],
            ),
            plugin_faults: counter(
                "nanofaas_plugin_faults_total",
                "Plugin calls that failed with PLUGIN_FAULT.",
                &["plugin", "call", "kind"],
            ),
            plugin_instances: counter(
                "nanofaas_plugin_instances_total",
                "Plugin instances created (an attempt's dispatch, poll and release may share one).",
                &["plugin"],
            ),
            callbacks: counter("nanofaas_callbacks_total", "Completion callbacks by outcome.", &["outcome"]),
            evicted: counter(
                "nanofaas_executions_evicted_total",
                "Finished executions removed from the store.",
                &["reason"],
            ),
            job_created: counter("nanofaas_job_created_total", "Kubernetes Jobs created.", &["function"]),
            job_start_latency: histogram(
                "nanofaas_job_start_latency_seconds",
                "Time from creating a Job to its pod running.",
                &["function"],
            ),
            job_run_duration: histogram(
                "nanofaas_job_run_duration_seconds",
                "Time from creating a Job to its Complete or Failed condition.",
                &["function", "outcome"],
            ),
            kube_requests: counter(
                "nanofaas_kube_api_requests_total",
                "Requests sent to the Kubernetes API server, by verb and resource.",
                &["verb", "resource"],
            ),
            kube_watch_outage: histogram(
                "nanofaas_kube_watch_outage_seconds",
                "Time a Kubernetes watch failed, until it flowed again.",
                &["watch"],
            ),
            kube_jobs_swept: counter(
                "nanofaas_kube_jobs_swept_total",
                "Host-owned Jobs left behind and deleted by the sweep, by why.",
                &["reason"],
            ),
            http_requests: counter(
                "nanofaas_http_requests_total",
                "HTTP requests by matched route, method and status.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                "nanofaas_http_request_duration_seconds",
                "HTTP request duration by matched route and method.",
                &["route", "method"],
            ),
            store_write_duration: histogram(
                "nanofaas_store_write_duration_seconds",
                "Time until an awaited store write is committed.",
                &["write"],
            ),
            store_errors: counter("nanofaas_store_errors_total", "Store operations that failed.", &["operation"]),
            recovered: counter(
                "nanofaas_executions_recovered_total",
                "Unfinished executions taken up from the store, by what was done with them.",
                &["action"],
            ),
            takeovers: counter(
                "nanofaas_replica_takeovers_total",
                "Replicas whose unfinished executions this host took over.",
                &["reason"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
