//! The `http` capability: outgoing requests to allow-listed destinations only.
//!
//! The control plane must not be usable to reach arbitrary addresses, so every destination is
//! checked against the operator's allow list — host names and CIDR ranges, loopback by default —
//! at registration (`check-url`, called by plugins from `validate`) and again at call time. Names
//! are checked where it matters, when they are resolved: the client's resolver keeps only
//! addresses inside allowed ranges (unless the name itself is allowed), and redirects are not
//! followed, so neither DNS nor a `Location` header can lead elsewhere.
//!
//! Requests run in the background and belong to the execution that started them: the execution
//! is woken when the response is complete, and an execution that ends aborts its requests.
//! Connections are pooled and reused across executions.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::Wake;
use super::owned::Owned;
use crate::otel::{Parent, Span, SpanKind};

/// One allowed destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A host name, matched exactly (any address it resolves to is allowed).
    Host(String),
    /// A range of addresses.
    Net(IpNet),
}

/// The operator's allow list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList(Vec<Rule>);

/// The default: loopback only (the embedded setup, where pool endpoints run on the same machine).
pub const DEFAULT_ALLOW: &[&str] = &["127.0.0.0/8", "::1/128", "localhost"];

impl AllowList {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let e = e.trim();
                if let Ok(net) = e.parse::<IpNet>() {
                    Ok(Rule::Net(net))
                } else if let Ok(ip) = e.parse::<IpAddr>() {
                    Ok(Rule::Net(IpNet::from(ip)))
                } else if e.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
                    Ok(Rule::Host(e.to_ascii_lowercase()))
                } else {
                    Err(format!("`{e}` is neither a host name, an address nor a CIDR range"))
                }
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn default_list() -> Self {
        Self::parse(&DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("valid defaults")
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| matches!(r, Rule::Net(n) if n.contains(&ip)))
    }

    fn allows_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|r| matches!(r, Rule::Host(h) if *h == name))
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(|r| match r {
                Rule::Host(h) => h.clone(),
                Rule::Net(n) => n.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A finished response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Why a request produced no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpFailure {
    NotAllowed(String),
    Connect(String),
    Timeout,
    TooLarge(u64),
    Other(String),
}

/// A request as a plugin describes it.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Option<Duration>,
}

impl HttpFailure {
    /// A short name of the failure (a span's error code).
    pub fn code(&self) -> &'static str {
        match self {
            HttpFailure::NotAllowed(_) => "NOT_ALLOWED",
            HttpFailure::Connect(_) => "CONNECT",
            HttpFailure::Timeout => "TIMEOUT",
            HttpFailure::TooLarge(_) => "TOO_LARGE",
            HttpFailure::Other(_) => "OTHER",
        }
    }
}

type Outcome = Result<HttpResponse, HttpFailure>;

struct InFlight {
    result: Arc<Mutex<Option<Outcome>>>,
    task: tokio::task::AbortHandle,
}

/// Where requests may go, and the client that holds them to it when names resolve.
struct Scope {
    client: reqwest::Client,
    allow: Arc<AllowList>,
}

impl Scope {
    fn new(allow: AllowList) -> Self {
        let allow = Arc::new(allow);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(FilteringResolver(allow.clone())))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("the HTTP client configuration is valid");
        Self { client, allow }
    }
}

pub struct HttpCapability {
    /// The operator's `--http-allow`.
    default: Scope,
    /// Plugins with an allow list of their own (the plugin config's `allowedHosts`), which
    /// replaces the default for them.
    plugins: BTreeMap<String, Scope>,
    max_body: usize,
    requests: Owned<InFlight>,
    next: AtomicU64,
    wake: Wake,
}

/// Resolves names, keeping only allowed addresses (all of them for an allowed name).
struct FilteringResolver(Arc<AllowList>);

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let by_name = allow.allows_name(&host);
            let kept: Vec<SocketAddr> = addrs.into_iter().filter(|a| by_name || allow.allows_ip(a.ip())).collect();
            if kept.is_empty() {
                let msg = format!("`{host}` resolves to no address the operator allows");
                return Err(msg.into());
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

impl HttpCapability {
    /// Requests to `allow` (`plugins`: the plugins that have lists of their own).
    pub fn new(allow: AllowList, plugins: BTreeMap<String, AllowList>, max_body: usize, wake: Wake) -> Self {
        Self {
            default: Scope::new(allow),
            plugins: plugins.into_iter().map(|(name, list)| (name, Scope::new(list))).collect(),
            max_body,
            requests: Owned::default(),
            next: AtomicU64::new(1),
            wake,
        }
    }

    fn scope(&self, plugin: &str) -> &Scope {
        self.plugins.get(plugin).unwrap_or(&self.default)
    }

    /// Whether `plugin` may call a URL.
    pub async fn check_url(&self, plugin: &str, url: &str) -> Result<(), String> {
        let allow = &self.scope(plugin).allow;
        let parsed = Url::parse(url).map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        }
        let refuse = || format!("`{url}` is not an allowed destination (allowed: {})", allow.describe());
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) if allow.allows_ip(ip.into()) => Ok(()),
            Some(url::Host::Ipv6(ip)) if allow.allows_ip(ip.into()) => Ok(()),
            Some(url::Host::Domain(name)) => {
                if allow.allows_name(name) {
                    return Ok(());
                }
                let port = parsed.port_or_known_default().unwrap_or(80);
                let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name, port)).await {
                    Ok(a) => a.collect(),
                    Err(e) => return Err(format!("`{name}` does not resolve: {e}")),
                };
                if !addrs.is_empty() && addrs.iter().all(|a| allow.allows_ip(a.ip())) { Ok(()) } else { Err(refuse()) }
            }
            _ => Err(refuse()),
        }
    }

    /// Starts a request of `plugin` for execution `owner`, bounded by `timeout`, in a span under
    /// `trace` (whose context it sends as `traceparent`, unless the plugin set one); returns its
    /// handle.
    pub async fn start(
        &self,
        plugin: &str,
        owner: &str,
        req: HttpRequest,
        body: Bytes,
        deadline: Duration,
        trace: Parent,
    ) -> Result<String, HttpFailure> {
        self.check_url(plugin, &req.url).await.map_err(HttpFailure::NotAllowed)?;
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| HttpFailure::Other(format!("`{}` is not an HTTP method", req.method)))?;
        let mut span = Span::start(span_name(&method), SpanKind::Client, trace);
        if span.is_recording() {
            span.set("http.request.method", method.to_string());
            span.set("url.full", req.url.clone());
        }
        let timeout = req.timeout.map_or(deadline, |t| t.min(deadline));
        let mut builder = self.scope(plugin).client.request(method, &req.url).timeout(timeout).body(body);
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(traceparent) = span.context().traceparent()
            && !req.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("traceparent"))
        {
            builder = builder.header("traceparent", traceparent);
        }
        let handle = format!("r{}", self.next.fetch_add(1, Ordering::Relaxed));
        let result = Arc::new(Mutex::new(None));
        let (max_body, wake, owner_id) = (self.max_body, self.wake.clone(), owner.to_string());
        let slot = result.clone();
        let task = tokio::spawn(async move {
            let outcome = perform(builder, max_body).await;
            match &outcome {
                Ok(response) => {
                    span.set("http.response.status_code", i64::from(response.status));
                    if response.status >= 500 {
                        span.fail(
                            crate::otel::PLATFORM,
                            &response.status.to_string(),
                            "the server answered with an error",
                        );
                    }
                }
                Err(failure) => span.fail(crate::otel::PLATFORM, failure.code(), &format!("{failure:?}")),
            }
            span.end();
            *slot.lock().expect("result lock") = Some(outcome);
            wake(&owner_id);
        });
        self.requests.insert(handle.clone(), owner, InFlight { result, task: task.abort_handle() });
        Ok(handle)
    }

    /// The outcome of `handle`, handed over once; none while in flight. Only its owner may take it.
    pub fn take_response(&self, owner: &str, handle: &str) -> Option<Outcome> {
        let done = |r: &InFlight| r.result.lock().expect("result lock").is_some();
        let r = self.requests.take_if(owner, handle, done)?;
        r.result.lock().expect("result lock").take()
    }

    /// The execution ended: abort its requests and forget them.
    pub fn release_owner(&self, owner: &str) {
        for (_, r) in self.requests.release(owner) {
            r.task.abort();
        }
    }

    /// Whether `owner` has requests here (work that dies with this host process).
    pub fn owns_any(&self, owner: &str) -> bool {
        self.requests.owns_any(owner)
    }

    /// Requests the table holds.
    pub fn tracked(&self) -> usize {
        self.requests.len()
    }
}

/// An HTTP client span's name: its method (OpenTelemetry's convention), `HTTP` for others.
fn span_name(method: &reqwest::Method) -> &'static str {
    use reqwest::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        _ => "HTTP",
    }
}

async fn perform(builder: reqwest::RequestBuilder, max_body: usize) -> Outcome {
    let mut response = builder.send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    if let Some(len) = response.content_length()
        && len as usize > max_body
    {
        return Err(HttpFailure::TooLarge(len));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > max_body {
            return Err(HttpFailure::TooLarge((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponse { status, headers, body: body.into() })
}

fn classify(e: reqwest::Error) -> HttpFailure {
    if e.is_timeout() {
        return HttpFailure::Timeout;
    }
    // The whole chain: "error sending request … connection refused".
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_connect() || e.is_request() { HttpFailure::Connect(text) } else { HttpFailure::Other(text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(entries: &[&str]) -> HttpCapability {
        let list = AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        HttpCapability::new(list, BTreeMap::new(), 1024, Arc::new(|_: &str| {}))
    }

    #[tokio::test]
    async fn allow_list_checks() {
        let c = cap(DEFAULT_ALLOW);
        assert!(c.check_url("pool", "http://127.0.0.1:9000/run").await.is_ok());
        assert!(c.check_url("pool", "http://[::1]:9000/").await.is_ok());
        assert!(c.check_url("pool", "http://localhost:9000/").await.is_ok());
        let e = c.check_url("pool", "http://10.1.2.3/").await.unwrap_err();
        assert!(e.contains("not an allowed destination") && e.contains("127.0.0.0/8"), "{e}");
        assert!(c.check_url("pool", "http://169.254.169.254/latest/meta-data").await.is_err());
        assert!(c.check_url("pool", "ftp://127.0.0.1/").await.unwrap_err().contains("http://"));
        assert!(c.check_url("pool", "not a url").await.is_err());
        let c = cap(&["10.0.0.0/8", "pool.internal"]);
        assert!(c.check_url("pool", "http://10.9.9.9:80/").await.is_ok());
        assert!(c.check_url("pool", "http://pool.internal/").await.is_ok());
        assert!(c.check_url("pool", "http://127.0.0.1/").await.is_err(), "loopback only by default, not always");
        assert!(AllowList::parse(&["bad value!".into()]).is_err());
    }

    #[tokio::test]
    async fn a_plugins_own_list_replaces_the_default_for_it_only() {
        let own = AllowList::parse(&["10.0.0.0/8".to_string(), "api.example".to_string()]).unwrap();
        let c = HttpCapability::new(
            AllowList::default_list(),
            [("router".to_string(), own)].into(),
            1024,
            Arc::new(|_: &str| {}),
        );
        assert!(c.check_url("router", "http://10.1.2.3/").await.is_ok());
        assert!(c.check_url("router", "http://api.example/").await.is_ok());
        let e = c.check_url("router", "http://127.0.0.1:9000/").await.unwrap_err();
        assert!(e.contains("allowed: 10.0.0.0/8, api.example"), "{e}");
        assert!(c.check_url("pool", "http://127.0.0.1:9000/").await.is_ok());
        assert!(c.check_url("pool", "http://10.1.2.3/").await.is_err());
        // At call time too, before anything is sent.
        let req = HttpRequest { method: "GET".into(), url: "http://127.0.0.1:9/".into(), ..Default::default() };
        let refused = c.start("router", "e1", req, Bytes::new(), Duration::from_secs(1), Parent::default()).await;
        assert!(matches!(refused, Err(HttpFailure::NotAllowed(_))), "{refused:?}");
    }
}
