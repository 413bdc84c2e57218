//! The host's own pod policy for the Jobs plugins create, independent of the cluster's admission.
//!
//! A plugin builds its Job manifest; before it reaches the API server the host refuses pods that
//! could escape their container: privileged containers, the node's network, PID or IPC
//! namespaces, `hostPath` volumes, and service accounts outside the operator's allow-list
//! (`--kube-allowed-service-accounts`, default: the namespace's `default` only). A refusal is a
//! final error of the attempt; where a function's spec names its service account
//! (`dispatcherConfig.serviceAccountName`), registration refuses it already.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::SecurityContext;

/// The service account a pod runs as when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

#[derive(Clone, Debug)]
pub struct PodPolicy {
    service_accounts: Vec<String>,
}

impl Default for PodPolicy {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl PodPolicy {
    /// A policy allowing `service_accounts` (empty: `default` only).
    pub fn new(service_accounts: &[String]) -> Self {
        let mut service_accounts: Vec<String> =
            service_accounts.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if service_accounts.is_empty() {
            service_accounts.push(DEFAULT_SERVICE_ACCOUNT.into());
        }
        Self { service_accounts }
    }

    /// Whether a pod may run as `name` (`None`: the namespace's default).
    pub fn check_service_account(&self, name: Option<&str>) -> Result<(), String> {
        let name = name.unwrap_or(DEFAULT_SERVICE_ACCOUNT);
        if self.service_accounts.iter().any(|s| s == name) {
            return Ok(());
        }
        Err(format!(
            "service account `{name}` is not allowed (allowed: {}; see --kube-allowed-service-accounts)",
            self.service_accounts.join(", ")
        ))
    }

    /// Refuses a Job whose pod could escape its container or run as a service account that is
    /// not allowed; the message names the field.
    pub fn check(&self, job: &Job) -> Result<(), String> {
        let Some(pod) = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
            return Ok(());
        };
        for (field, on) in [("hostNetwork", pod.host_network), ("hostPID", pod.host_pid), ("hostIPC", pod.host_ipc)] {
            if on == Some(true) {
                return Err(format!(
                    "spec.template.spec.{field} is not allowed: pods do not share the node's namespaces"
                ));
            }
        }
        for volume in pod.volumes.iter().flatten() {
            if volume.host_path.is_some() {
                return Err(format!("volume `{}`: hostPath volumes are not allowed", volume.name));
            }
        }
        let privileged = |ctx: Option<&SecurityContext>| ctx.and_then(|c| c.privileged) == Some(true);
        let containers = pod.containers.iter().chain(pod.init_containers.iter().flatten());
        for c in containers {
            if privileged(c.security_context.as_ref()) {
                return Err(format!("container `{}`: privileged containers are not allowed", c.name));
            }
        }
        for c in pod.ephemeral_containers.iter().flatten() {
            if privileged(c.security_context.as_ref()) {
                return Err(format!("container `{}`: privileged containers are not allowed", c.name));
            }
        }
        let account = pod.service_account_name.as_deref().or(pod.service_account.as_deref());
        self.check_service_account(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(pod: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"template": {"spec": pod}}
        }))
        .unwrap()
    }

    fn container(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({"name": "function", "image": "i"});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c
    }

    #[test]
    fn pods_that_escape_their_container_are_refused() {
        let policy = PodPolicy::default();
        let plain = serde_json::json!({"restartPolicy": "Never", "containers": [container(serde_json::json!({}))]});
        assert_eq!(policy.check(&job(plain.clone())), Ok(()));
        let cases = [
            (serde_json::json!({"hostNetwork": true}), "hostNetwork"),
            (serde_json::json!({"hostPID": true}), "hostPID"),
            (serde_json::json!({"hostIPC": true}), "hostIPC"),
            (serde_json::json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}), "hostPath"),
            (
                serde_json::json!({"containers": [container(serde_json::json!({"securityContext": {"privileged": true}}))]}),
                "privileged",
            ),
            (
                serde_json::json!({"initContainers": [container(serde_json::json!({"name": "init", "securityContext": {"privileged": true}}))]}),
                "`init`",
            ),
            (serde_json::json!({"serviceAccountName": "cluster-admin"}), "`cluster-admin` is not allowed"),
            (serde_json::json!({"serviceAccount": "cluster-admin"}), "`cluster-admin` is not allowed"),
        ];
        for (patch, needle) in cases {
            let mut pod = plain.clone();
            pod.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
            let e = policy.check(&job(pod)).unwrap_err();
            assert!(e.contains(needle), "{patch}: {e}");
        }
        // Allowed explicitly, a service account passes; `default` then needs listing too.
        let policy = PodPolicy::new(&["functions".into()]);
        let mut pod = plain.clone();
        pod["serviceAccountName"] = "functions".into();
        assert_eq!(policy.check(&job(pod)), Ok(()));
        assert!(policy.check(&job(plain)).is_err());
    }
}
