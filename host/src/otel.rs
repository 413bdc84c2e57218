//! OpenTelemetry traces of executions, exported over OTLP/HTTP (protobuf).
//!
//! An execution outlives the request that accepted it, may wait hours for a callback, and may
//! be finished by another replica or by the process that took it up after a crash. So spans
//! here are not kept open in anybody's memory: each span is *emitted when it ends*, with its
//! start time, and the spans that others hang from have ids derived from what every replica
//! knows — the execution span's id from the execution id, an attempt span's from the execution
//! id and the attempt number. The driver, a callback on another replica and a host that took the
//! execution up all name the same parents without sharing any state.
//!
//! The tree of one execution: `execution` (the root of the execution, a child of the caller's
//! `traceparent` when one came; ended at the recorded terminal state, its status and
//! `error.type` say whether an error was the function's or the platform's) → `accept`, `queue`,
//! `attempt` (one per attempt) → `plugin dispatch|poll|release` → what the call used: an
//! outgoing `HTTP` request (which carries a `traceparent` header), `process spawn`,
//! `kubernetes job create|delete` (the Job's pods get a `TRACEPARENT` variable); and a
//! `callback` span under the attempt it reports for.
//!
//! Nothing is exported unless [`install`] ran (`--otlp-endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`); then a span costs its ids and a few attributes, and is
//! queued for the SDK's batch processor, which exports from a thread of its own and drops spans
//! rather than blocking when its queue is full. Without an exporter a [`Span`] is nothing and
//! passes its parent through, so a caller's `traceparent` still reaches the function.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor};
use sha2::{Digest, Sha256};

/// The environment variable that gives a Job's pod or a local process its parent span, as a
/// W3C `traceparent` (the convention of OpenTelemetry's environment carriers).
pub use nanofaas_contract::env::TRACEPARENT;

/// The exporter of this process, once installed.
static EXPORTER: OnceLock<Exporter> = OnceLock::new();

struct Exporter {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

/// Exports spans to `endpoint` (a base URL: spans are POSTed to `{endpoint}/v1/traces`) until
/// [`Installed::shutdown`]. Must run inside the tokio runtime, which carries the requests.
pub fn install(endpoint: &str) -> anyhow::Result<Installed> {
    let base = url::Url::parse(endpoint).map_err(|e| anyhow::anyhow!("--otlp-endpoint `{endpoint}`: {e}"))?;
    if !matches!(base.scheme(), "http" | "https") {
        anyhow::bail!("--otlp-endpoint `{endpoint}` is not an http:// or https:// URL");
    }
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let client = Client { http: reqwest::Client::new(), runtime: tokio::runtime::Handle::current() };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    let resource = match std::env::var_os("OTEL_SERVICE_NAME") {
        Some(_) => Resource::builder(),
        None => Resource::builder().with_service_name("nanofaas"),
    };
    processor.set_resource(&resource.build());
    let scope = InstrumentationScope::builder("nanofaas").with_version(env!("CARGO_PKG_VERSION")).build();
    if EXPORTER.set(Exporter { processor, scope }).is_err() {
        anyhow::bail!("an OTLP exporter is installed already");
    }
    tracing::info!(endpoint = %url, "exporting traces over OTLP/HTTP");
    Ok(Installed(()))
}

/// The installed exporter; [`Installed::shutdown`] exports what is queued.
pub struct Installed(());

impl Installed {
    /// Exports the spans still queued (bounded by the exporter's timeout) and stops exporting.
    pub async fn shutdown(self) {
        let done = tokio::task::spawn_blocking(|| EXPORTER.get().map(|e| e.processor.shutdown())).await;
        if let Ok(Some(Err(e))) = done {
            tracing::warn!(error = %e, "traces still queued may be lost");
        }
    }
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Sends the exporter's requests with the host's HTTP client, on the host's runtime (the SDK's
/// batch thread has none of its own).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let request = self.http.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body);
        let (status, headers, body) = self
            .runtime
            .spawn(async move {
                let response = request.send().await?;
                let (status, headers) = (response.status(), response.headers().clone());
                Ok::<_, reqwest::Error>((status, headers, response.bytes().await?))
            })
            .await??;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// Where a span hangs: a trace, and the span in it (none for a trace's first span).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace: TraceId,
    pub span: SpanId,
    pub sampled: bool,
}

impl Default for Parent {
    fn default() -> Self {
        Self { trace: TraceId::INVALID, span: SpanId::INVALID, sampled: true }
    }
}

impl Parent {
    /// The start of the trace named `trace_id`: its own id when it is a W3C trace id (32 hex
    /// digits, as generated ones are), else one derived from it — an `X-Trace-Id` of any shape
    /// names one trace.
    pub fn root(trace_id: &str) -> Self {
        let parsed = (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| TraceId::from_hex(trace_id).ok())
            .flatten()
            .filter(|t| *t != TraceId::INVALID);
        let trace = parsed.unwrap_or_else(|| {
            let digest = Sha256::digest(trace_id.as_bytes());
            TraceId::from_bytes(digest[..16].try_into().expect("16 bytes"))
        });
        Self { trace, ..Self::default() }
    }

    /// A W3C `traceparent` header: `00-{trace-id}-{parent-id}-{flags}`; `None` when it is not
    /// one (for a version above 00, what follows the first four fields is ignored, as the
    /// specification asks).
    pub fn from_traceparent(header: &str) -> Option<Self> {
        let header = header.trim();
        let mut fields = header.splitn(5, '-');
        let (version, trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let rest = fields.next();
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        if version == "00" && rest.is_some() {
            return None;
        }
        let trace = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
        let span = SpanId::from_hex(span).ok().filter(|s| *s != SpanId::INVALID)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self { trace, span, sampled: flags & 1 == 1 })
    }

    /// This parent as a `traceparent` header, if it names a span.
    pub fn traceparent(&self) -> Option<String> {
        (self.trace != TraceId::INVALID && self.span != SpanId::INVALID)
            .then(|| format!("00-{}-{}-{:02x}", self.trace, self.span, u8::from(self.sampled)))
    }

    /// The trace id as 32 hex digits.
    pub fn trace_hex(&self) -> String {
        self.trace.to_string()
    }

    /// A span of this trace with an id derived from `parts`.
    fn derived(&self, parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
        let digest = h.finalize();
        let mut id: [u8; 8] = digest[..8].try_into().expect("8 bytes");
        if id == [0; 8] {
            id[7] = 1;
        }
        Self { span: SpanId::from_bytes(id), ..*self }
    }

    /// Whether spans under this parent are exported.
    fn recording(&self) -> bool {
        self.sampled && enabled()
    }
}

/// The span of execution `id` as a parent, `caller` being the context it was accepted with.
/// Without an exporter it is `caller` (nothing in between is exported).
pub fn execution(id: &str, caller: Parent) -> Parent {
    if caller.recording() { caller.derived(&[id.as_bytes(), b"execution"]) } else { caller }
}

/// The span of attempt `attempt` of execution `id` as a parent.
pub fn attempt(id: &str, caller: Parent, attempt: u32) -> Parent {
    if caller.recording() { caller.derived(&[id.as_bytes(), b"attempt", &attempt.to_be_bytes()]) } else { caller }
}

/// The `error.type` of a platform error (a function's own is `function`, as its error kind).
pub const PLATFORM: &str = "platform";

/// One span, exported when it is dropped (or [`Span::end`]ed). Without an exporter, or under a
/// parent that is not sampled, it is nothing and its [`Span::context`] is its parent.
#[must_use = "a span is exported when it is dropped"]
pub struct Span {
    open: Option<Box<Open>>,
    context: Parent,
}

struct Open {
    name: Cow<'static, str>,
    kind: SpanKind,
    parent: Parent,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

impl Span {
    /// A span starting now under `parent`, with an id of its own.
    pub fn start(name: impl Into<Cow<'static, str>>, kind: SpanKind, parent: Parent) -> Self {
        if !parent.recording() {
            return Self { open: None, context: parent };
        }
        let own = Parent { span: SpanId::from_bytes(fastrand::u64(1..).to_be_bytes()), ..parent };
        Self::open(name.into(), kind, parent, own)
    }

    /// A span whose own context is `own` (an id derived with [`execution`] or [`attempt`]).
    pub fn derived(name: impl Into<Cow<'static, str>>, kind: SpanKind, parent: Parent, own: Parent) -> Self {
        if !parent.recording() || own.span == parent.span {
            return Self { open: None, context: parent };
        }
        Self::open(name.into(), kind, parent, own)
    }

    fn open(name: Cow<'static, str>, kind: SpanKind, parent: Parent, own: Parent) -> Self {
        let open = Open { name, kind, parent, start: SystemTime::now(), attributes: Vec::new(), status: Status::Unset };
        Self { open: Some(Box::new(open)), context: own }
    }

    /// Moves the start back to `start` (for spans that began before anyone could open them).
    pub fn since(mut self, start: SystemTime) -> Self {
        if let Some(open) = self.open.as_mut() {
            open.start = start;
        }
        self
    }

    /// This span as the parent of others.
    pub fn context(&self) -> Parent {
        self.context
    }

    /// Whether the span is exported (set attributes only then, when they cost something).
    pub fn is_recording(&self) -> bool {
        self.open.is_some()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(open) = self.open.as_mut() {
            open.attributes.push(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed: `error_type` says whose fault (`function` or [`PLATFORM`]),
    /// `code` and `message` what.
    pub fn fail(&mut self, error_type: &'static str, code: &str, message: &str) {
        if let Some(open) = self.open.as_mut() {
            open.attributes.push(KeyValue::new("error.type", error_type));
            open.attributes.push(KeyValue::new("nanofaas.error.code", code.to_string()));
            open.status = Status::error(message.to_string());
        }
    }

    /// Ends the span now.
    pub fn end(self) {}

    /// What the exporter gets.
    fn data(open: Open, own: Parent, scope: InstrumentationScope) -> SpanData {
        let flags = TraceFlags::default().with_sampled(true);
        SpanData {
            span_context: SpanContext::new(own.trace, own.span, flags, false, TraceState::default()),
            parent_span_id: open.parent.span,
            parent_span_is_remote: false,
            span_kind: open.kind,
            name: open.name,
            start_time: open.start,
            end_time: SystemTime::now().max(open.start),
            attributes: open.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: open.status,
            instrumentation_scope: scope,
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let (Some(open), Some(exporter)) = (self.open.take(), EXPORTER.get()) {
            exporter.processor.on_end(Self::data(*open, self.context, exporter.scope.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers_are_read_as_the_specification_says() {
        let p = Parent::from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(p.trace_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(p.span, SpanId::from_hex("b7ad6b7169203331").unwrap());
        assert!(p.sampled);
        assert_eq!(p.traceparent().unwrap(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let unsampled = Parent::from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        assert!(!unsampled.sampled);
        // A later version may add fields; version 00 may not.
        assert!(Parent::from_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra").is_some());
        for bad in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            "0af7651916cd43dd8448eb211c80319c",
            "",
        ] {
            assert!(Parent::from_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_trace_id_of_any_shape_names_one_trace() {
        let w3c = Parent::root("4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(w3c.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(w3c.span, SpanId::INVALID);
        assert_eq!(w3c.traceparent(), None, "a root names no parent span");
        let custom = Parent::root("order-17");
        assert_eq!(custom, Parent::root("order-17"));
        assert_ne!(custom.trace, Parent::root("order-18").trace);
        assert_ne!(custom.trace, TraceId::INVALID);
    }

    #[test]
    fn derived_ids_are_the_same_everywhere_and_distinct() {
        let caller = Parent::root("4bf92f3577b34da6a3ce929d0e0e4736");
        let a = caller.derived(&[b"exec-1", b"attempt", &1u32.to_be_bytes()]);
        assert_eq!(a, caller.derived(&[b"exec-1", b"attempt", &1u32.to_be_bytes()]));
        assert_ne!(a.span, caller.derived(&[b"exec-1", b"attempt", &2u32.to_be_bytes()]).span);
        assert_ne!(a.span, caller.derived(&[b"exec-1", b"execution"]).span);
        assert_eq!(a.trace, caller.trace);
    }

    #[test]
    fn without_an_exporter_a_span_is_nothing_and_passes_its_parent_through() {
        let caller = Parent::from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(execution("e", caller), caller);
        assert_eq!(attempt("e", caller, 1), caller);
        let mut span = Span::start("x", SpanKind::Client, caller);
        span.set("k", "v");
        assert!(!span.is_recording());
        assert_eq!(span.context(), caller);
    }

    #[test]
    fn a_span_becomes_the_data_the_exporter_sends() {
        let caller = Parent::from_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        let own = caller.derived(&[b"e", b"execution"]);
        let start = SystemTime::now() - Duration::from_secs(2);
        let open = Open {
            name: "execution".into(),
            kind: SpanKind::Server,
            parent: caller,
            start,
            attributes: vec![KeyValue::new("faas.invocation_id", "e")],
            status: Status::error("boom"),
        };
        let data = Span::data(open, own, InstrumentationScope::builder("nanofaas").build());
        assert_eq!(data.span_context.trace_id(), caller.trace);
        assert_eq!(data.span_context.span_id(), own.span);
        assert_eq!(data.parent_span_id, caller.span);
        assert_eq!(data.start_time, start);
        assert!(data.end_time >= start + Duration::from_secs(2));
        assert_eq!(data.status, Status::error("boom"));
    }
}
