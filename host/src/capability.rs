//! What plugins may call besides `log`: local processes, outgoing HTTP, Kubernetes Jobs.
//!
//! Capabilities are granted per plugin by the operator and enforced here, by the host: a plugin
//! that was not granted `process` cannot start one, whatever its code says. A capability the
//! host was not configured for (no cluster, local execution switched off) is refused with a
//! message that says so, which `validate` passes on to the user at registration.

pub mod http;
pub mod kubernetes;
pub mod owned;
pub mod pod_policy;
pub mod process;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;

/// One capability a plugin can be granted. `log` is always granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    Process,
    Http,
    Kubernetes,
}

impl Capability {
    pub const ALL: [Capability; 3] = [Capability::Process, Capability::Http, Capability::Kubernetes];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Process => "process",
            Capability::Http => "http",
            Capability::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim())
            .ok_or_else(|| format!("unknown capability `{s}` (known: process, http, kubernetes)"))
    }
}

/// The capabilities granted to one plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(BTreeSet<Capability>);

impl Grants {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn of(caps: &[Capability]) -> Self {
        Self(caps.iter().copied().collect())
    }

    /// These and `other`'s.
    pub fn with(&self, other: &Grants) -> Grants {
        Grants(self.0.union(&other.0).copied().collect())
    }

    /// These but not `other`'s.
    pub fn without(&self, other: &Grants) -> Grants {
        Grants(self.0.difference(&other.0).copied().collect())
    }

    /// The names, comma-separated (without the implied `log`).
    pub fn names(&self) -> String {
        self.iter().map(Capability::as_str).collect::<Vec<_>>().join(",")
    }

    pub fn allows(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }

    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("log")?;
        for cap in &self.0 {
            write!(f, ",{cap}")?;
        }
        Ok(())
    }
}

/// The capabilities the built-in plugins need.
pub fn builtin_grants(plugin: &str) -> Grants {
    match plugin {
        "local" => Grants::of(&[Capability::Process]),
        "pool" => Grants::of(&[Capability::Http]),
        "k8s-job" | "job-poll" => Grants::of(&[Capability::Kubernetes]),
        _ => Grants::none(),
    }
}

/// Parses operator grants (`NAME=cap,cap`) into (plugin name, grants).
pub fn parse_grant(text: &str) -> Result<(String, Grants), String> {
    let (name, caps) = text.split_once('=').ok_or_else(|| format!("grant `{text}` is not of the form NAME=cap,cap"))?;
    let caps =
        caps.split(',').filter(|c| !c.trim().is_empty()).map(Capability::from_str).collect::<Result<Vec<_>, _>>()?;
    Ok((name.trim().to_string(), Grants::of(&caps)))
}

/// The logs of an execution ([`Capabilities::logs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Logs {
    /// The end of the stderr of its local processes.
    Process(String),
    /// The logs of its pods, while they exist.
    Pods(Vec<kubernetes::PodLog>),
    /// Nothing: it ran nothing with logs here, its processes ended too long ago, or its pods are
    /// gone.
    None,
}

/// Wakes an execution (by id) so its driver polls now.
pub type Wake = Arc<dyn Fn(&str) + Send + Sync>;

/// The host side of every capability, shared by all plugin calls.
pub struct Capabilities {
    /// Local processes; `None` when local execution is switched off (`--no-local-exec`).
    pub process: Option<process::ProcessCapability>,
    pub http: http::HttpCapability,
    /// Jobs; `None` when no cluster is configured.
    pub kubernetes: Option<kubernetes::KubernetesCapability>,
}

impl Capabilities {
    /// The capabilities a host configured by `config` offers; `wake` reaches its executions;
    /// `journal` records local process groups (with a durable store).
    pub fn new(
        config: &Config,
        wake: Wake,
        metrics: &Metrics,
        cluster: Option<kubernetes::Cluster>,
        journal: Option<process::Journal>,
    ) -> Result<Self, String> {
        let allow = if config.http_allow.is_empty() {
            http::AllowList::default_list()
        } else {
            http::AllowList::parse(&config.http_allow)?
        };
        let mut plugin_lists = std::collections::BTreeMap::new();
        for (name, policy) in &config.plugin_policies {
            if let Some(hosts) = &policy.allowed_hosts {
                let list = http::AllowList::parse(hosts).map_err(|e| format!("plugins.{name}.allowedHosts: {e}"))?;
                plugin_lists.insert(name.clone(), list);
            }
        }
        Ok(Self {
            process: config
                .local_exec
                .then(|| process::ProcessCapability::new(config.max_output_bytes, wake.clone(), journal)),
            http: http::HttpCapability::new(allow, plugin_lists, config.max_output_bytes, wake.clone()),
            kubernetes: cluster.map(|mut c| {
                c.policy = pod_policy::PodPolicy::new(&config.kube_allowed_service_accounts);
                kubernetes::KubernetesCapability::start(c, metrics.clone(), wake)
            }),
        })
    }

    /// Capabilities that wake nobody and have no cluster (benchmarks, tools).
    pub fn detached(config: &Config) -> Self {
        Self::new(config, Arc::new(|_: &str| {}), &Metrics::new(), None, None)
            .expect("a default configuration is valid")
    }

    /// Why `cap` cannot be used on this host right now, if it cannot.
    pub fn unavailable(&self, cap: Capability) -> Option<String> {
        match cap {
            Capability::Process if self.process.is_none() => {
                Some("local execution is switched off on this host (--no-local-exec)".into())
            }
            Capability::Kubernetes if self.kubernetes.is_none() => Some("no Kubernetes cluster is configured".into()),
            _ => None,
        }
    }

    /// An execution ended: stop and forget everything it started through a capability.
    pub fn release_owner(&self, execution_id: &str) {
        if let Some(p) = &self.process {
            p.release_owner(execution_id);
        }
        self.http.release_owner(execution_id);
        if let Some(k) = &self.kubernetes {
            k.release_owner(execution_id);
        }
    }

    /// An execution was handed over to another host process: stop what lives only in this one
    /// (processes, requests) and forget its Jobs without deleting them (the next driver adopts
    /// them).
    pub fn hand_over(&self, execution_id: &str) {
        if let Some(p) = &self.process {
            p.release_owner(execution_id);
        }
        self.http.release_owner(execution_id);
        if let Some(k) = &self.kubernetes {
            k.forget_owner(execution_id);
        }
    }

    /// What this host has of the logs of an execution: its local processes' stderr, else its
    /// pods' logs through the API server.
    pub async fn logs(&self, execution_id: &str) -> Logs {
        if let Some(text) = self.process.as_ref().and_then(|p| p.logs(execution_id)) {
            return Logs::Process(text);
        }
        match &self.kubernetes {
            Some(k) => match k.pod_logs(execution_id).await {
                pods if pods.is_empty() => Logs::None,
                pods => Logs::Pods(pods),
            },
            None => Logs::None,
        }
    }

    /// Why the host should be out of service, if it should (a Kubernetes watch failing for long).
    pub fn unhealthy(&self) -> Option<String> {
        self.kubernetes.as_ref().and_then(|k| k.unhealthy())
    }

    /// Whether another host process could take the execution's pending work up: it started
    /// nothing that lives only in this one (a local process, a request in flight).
    pub fn is_resumable(&self, execution_id: &str) -> bool {
        !self.process.as_ref().is_some_and(|p| p.owns_any(execution_id)) && !self.http.owns_any(execution_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grants() {
        let (name, grants) = parse_grant("mine=http, process").unwrap();
        assert_eq!(name, "mine");
        assert!(grants.allows(Capability::Http) && grants.allows(Capability::Process));
        assert!(!grants.allows(Capability::Kubernetes));
        assert_eq!(grants.to_string(), "log,process,http");
        assert!(parse_grant("mine").is_err());
        assert!(parse_grant("mine=disk").unwrap_err().contains("unknown capability `disk`"));
    }

    #[test]
    fn builtins_get_only_what_they_need() {
        assert_eq!(builtin_grants("echo"), Grants::none());
        assert!(builtin_grants("local").allows(Capability::Process));
        assert!(!builtin_grants("local").allows(Capability::Http));
        assert!(builtin_grants("job-poll").allows(Capability::Kubernetes));
    }
}
