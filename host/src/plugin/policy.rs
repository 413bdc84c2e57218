//! Per-plugin limits and grants, in one place: the operator's plugin config file
//! (`--plugin-config FILE`, YAML or JSON):
//!
//! ```yaml
//! plugins:
//!   uppercase:
//!     capabilities: [http]   # dropped-in plugins only, as --grant
//!     instances: 4           # at most 4 of its calls at once: its share of the instance pool
//!     memoryMib: 16          # at most the host's --plugin-memory-mib
//!     cpuBudgetMs: 50
//!     callTimeoutMs: 2000
//!     payloadMib: 8
//!     logLines: 20
//!     allowedHosts: [api.example.com, 10.0.0.0/8]   # instead of --http-allow, for it only
//! ```
//!
//! What a section leaves out is the host's default (the `--plugin-*` flags), so a host without
//! the file behaves as before. A plugin with an `instances` share waits for its own share before
//! it takes a slot of the pool, so however many of its calls spin or sleep, the rest of the pool
//! stays free for the other plugins.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::capability::{Capability, Grants};
use crate::config::PluginLimits;

/// What the file says about one plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginPolicy {
    /// Capabilities granted, as `--grant NAME=…` (dropped-in plugins only).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Calls of this plugin running at once; further calls wait without holding a pool slot.
    pub instances: Option<u32>,
    pub memory_mib: Option<u32>,
    pub cpu_budget_ms: Option<u32>,
    pub call_timeout_ms: Option<u64>,
    pub payload_mib: Option<u64>,
    pub log_lines: Option<u32>,
    /// Where its `http` requests may go (host names, addresses, CIDR ranges, as
    /// `--http-allow`): for this plugin, instead of the host's list.
    pub allowed_hosts: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    plugins: BTreeMap<String, PluginPolicy>,
}

/// Parses a plugin config file's text; errors name the field.
pub fn parse(text: &str) -> Result<BTreeMap<String, PluginPolicy>, String> {
    let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    for (name, policy) in &file.plugins {
        policy.grants().map_err(|e| format!("plugins.{name}.capabilities: {e}"))?;
        if let Some(hosts) = &policy.allowed_hosts {
            crate::capability::http::AllowList::parse(hosts)
                .map_err(|e| format!("plugins.{name}.allowedHosts: {e}"))?;
        }
    }
    Ok(file.plugins)
}

impl PluginPolicy {
    /// The capabilities it grants.
    pub fn grants(&self) -> Result<Grants, String> {
        let caps = self.capabilities.iter().map(|c| c.parse()).collect::<Result<Vec<Capability>, _>>()?;
        Ok(Grants::of(&caps))
    }

    /// Refuses values the host cannot honour: zeros, a share larger than the pool, more
    /// memory than a pool slot has.
    pub fn check(&self, host: &PluginLimits) -> Result<(), String> {
        let positive = [
            ("instances", self.instances.map(u64::from)),
            ("memoryMib", self.memory_mib.map(u64::from)),
            ("cpuBudgetMs", self.cpu_budget_ms.map(u64::from)),
            ("callTimeoutMs", self.call_timeout_ms),
            ("payloadMib", self.payload_mib),
            ("logLines", self.log_lines.map(u64::from)),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == Some(0)) {
            return Err(format!("{field} must be at least 1"));
        }
        if let Some(n) = self.instances.filter(|n| *n > host.instances) {
            return Err(format!("instances {n} is more than the pool has (--plugin-instances {})", host.instances));
        }
        let host_mib = host.memory_bytes / (1024 * 1024);
        if let Some(m) = self.memory_mib.filter(|m| *m as usize > host_mib) {
            return Err(format!("memoryMib {m} is more than an instance slot has (--plugin-memory-mib {host_mib})"));
        }
        Ok(())
    }

    /// The limits of this plugin's calls: the host's, with what the policy sets (memory never
    /// above `slot_bytes`, the pool's memory per instance).
    pub fn limits(&self, host: &PluginLimits, slot_bytes: usize) -> PluginLimits {
        PluginLimits {
            instances: self.instances.map_or(host.instances, |n| n.min(host.instances)),
            memory_bytes: self.memory_mib.map_or(slot_bytes, |m| (m as usize * 1024 * 1024).min(slot_bytes)),
            cpu_budget_ticks: self.cpu_budget_ms.unwrap_or(host.cpu_budget_ticks),
            call_timeout: self.call_timeout_ms.map_or(host.call_timeout, Duration::from_millis),
            log_budget: self.log_lines.unwrap_or(host.log_budget),
            payload_bytes: self.payload_mib.map_or(host.payload_bytes, |m| m * 1024 * 1024),
            ..host.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_what_it_names_and_leaves_the_rest_to_the_host() {
        let text = "plugins:\n  up:\n    capabilities: [http, process]\n    instances: 2\n    memoryMib: 8\n    logLines: 3\n  quiet: {}\n";
        let policies = parse(text).unwrap();
        let up = &policies["up"];
        assert_eq!(up.grants().unwrap(), Grants::of(&[Capability::Http, Capability::Process]));
        let host = PluginLimits::default();
        up.check(&host).unwrap();
        let limits = up.limits(&host, host.memory_bytes);
        assert_eq!((limits.instances, limits.memory_bytes, limits.log_budget), (2, 8 << 20, 3));
        assert_eq!((limits.cpu_budget_ticks, limits.call_timeout), (host.cpu_budget_ticks, host.call_timeout));
        let quiet = policies["quiet"].limits(&host, host.memory_bytes);
        assert_eq!(
            (quiet.instances, quiet.payload_bytes, quiet.log_budget),
            (host.instances, host.payload_bytes, host.log_budget)
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_files_and_values_are_refused_by_name() {
        let e = parse("plugins:\n  up:\n    instance: 2\n").unwrap_err();
        assert!(e.contains("unknown field `instance`"), "{e}");
        let e = parse("plugins:\n  up:\n    capabilities: [sockets]\n").unwrap_err();
        assert!(e.contains("plugins.up.capabilities") && e.contains("unknown capability `sockets`"), "{e}");
        let e = parse("plugins:\n  up:\n    allowedHosts: [api.example, 'not a host!']\n").unwrap_err();
        assert!(e.contains("plugins.up.allowedHosts") && e.contains("`not a host!`"), "{e}");
        let ok = parse("plugins:\n  up:\n    allowedHosts: [api.example, 10.0.0.0/8]\n").unwrap();
        assert_eq!(ok["up"].allowed_hosts.as_deref(), Some(&["api.example".to_string(), "10.0.0.0/8".into()][..]));
        let host = PluginLimits { instances: 4, memory_bytes: 32 << 20, ..PluginLimits::default() };
        let check = |p: PluginPolicy| p.check(&host).unwrap_err();
        assert!(check(PluginPolicy { instances: Some(5), ..Default::default() }).contains("more than the pool has"));
        assert!(check(PluginPolicy { memory_mib: Some(64), ..Default::default() }).contains("--plugin-memory-mib 32"));
        assert!(
            check(PluginPolicy { log_lines: Some(0), ..Default::default() }).contains("logLines must be at least 1")
        );
    }
}
