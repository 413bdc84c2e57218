//! A real Kubernetes control plane on loopback — etcd, kube-apiserver and
//! kube-controller-manager (the real Job controller and garbage collector) — with the test
//! harness playing the kubelet. See KUBERNETES-TESTING notes in the README.
//!
//! The binaries are built once from Debian's source package by `scripts/kube-control-plane.sh`
//! and cached outside the repository; `NANOFAAS_KUBE_BIN` points elsewhere. There is no
//! container runtime: [`Kubelet`] watches pods, runs each container's command as a local process
//! (paths inside images mapped to local paths) and writes pod status the way a kubelet would, so
//! the real Job controller turns exits into Job verdicts.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize as _;
use serde_json::json;

/// Where the control-plane binaries are: `NANOFAAS_KUBE_BIN`, else the cache the setup script
/// fills.
pub fn binaries_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NANOFAAS_KUBE_BIN") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("nanofaas/kube-v1.20.2")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
}

/// A running control plane. Processes stop when it is dropped (apiserver before etcd).
pub struct Cluster {
    dir: tempfile::TempDir,
    processes: Mutex<Vec<std::process::Child>>,
    /// How to start the API server again (after [`Cluster::stop_apiserver`]).
    apiserver: Mutex<Option<std::process::Command>>,
    pub server: String,
    pub admin_token: String,
    ca: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut processes = self.processes.lock().expect("process lock");
        // Reverse start order: controller manager, apiserver, then etcd.
        for p in processes.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Ties a child's life to the thread that starts it: when that thread ends (with the test
/// process), the child gets SIGKILL. Only long-lived threads start control-plane processes.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe
    // system call (prctl).
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from))
    }
}

fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Cluster {
    /// Starts etcd, the API server and the controller manager on free loopback ports and waits
    /// until the API server is ready and the namespace controller has made `default` usable.
    pub fn start() -> anyhow::Result<Self> {
        let bin = binaries_dir();
        let apiserver = bin.join("kube-apiserver");
        let controller = bin.join("kube-controller-manager");
        let etcd = which("etcd").or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()));
        let (Some(etcd), true, true) = (etcd, apiserver.is_file(), controller.is_file()) else {
            bail!(
                "the Kubernetes test control plane is missing ({}, etcd); run scripts/kube-control-plane.sh once",
                bin.display()
            );
        };
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        let log =
            |name: &str| -> anyhow::Result<Stdio> { Ok(std::fs::File::create(d.join(format!("{name}.log")))?.into()) };

        // PKI: a CA, a serving certificate for 127.0.0.1, a service-account key pair.
        let openssl = |args: &[&str]| run(std::process::Command::new("openssl").args(args).current_dir(d));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=nanofaas-test-ca",
        ])?;
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ])?;
        openssl(&["genrsa", "-out", "sa.key", "2048"])?;
        openssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        let admin_token = format!("admin-{}", std::process::id());
        std::fs::write(d.join("tokens.csv"), format!("{admin_token},admin,admin-uid,system:masters\n"))?;

        let (etcd_port, peer_port, api_port, cm_port) = (free_port(), free_port(), free_port(), free_port());
        let mut processes = Vec::new();
        processes.push(
            die_with_parent(&mut std::process::Command::new(&etcd))
                .args(["--name", "default", "--data-dir"])
                .arg(d.join("etcd"))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"))
                .stdout(log("etcd")?)
                .stderr(log("etcd")?)
                .spawn()
                .context("cannot start etcd")?,
        );
        let cluster = Self {
            server: format!("https://127.0.0.1:{api_port}"),
            admin_token,
            ca: d.join("ca.crt"),
            processes: Mutex::new(processes),
            apiserver: Mutex::new(None),
            dir,
        };
        let d = cluster.dir.path();
        let path = |f: &str| d.join(f).display().to_string();
        let mut apiserver_cmd = std::process::Command::new(&apiserver);
        die_with_parent(&mut apiserver_cmd)
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--insecure-port=0"])
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--tls-cert-file={}", path("server.crt")))
            .arg(format!("--tls-private-key-file={}", path("server.key")))
            .arg(format!("--client-ca-file={}", path("ca.crt")))
            .arg(format!("--token-auth-file={}", path("tokens.csv")))
            .args(["--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc"])
            .arg(format!("--service-account-key-file={}", path("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", path("sa.key")))
            .args(["--service-cluster-ip-range=10.0.0.0/24", "--feature-gates=TTLAfterFinished=true"])
            .stdout(log("apiserver")?)
            .stderr(log("apiserver")?);
        let apiserver_child = apiserver_cmd.spawn().context("cannot start kube-apiserver")?;
        cluster.processes.lock().expect("process lock").push(apiserver_child);
        *cluster.apiserver.lock().expect("apiserver lock") = Some(apiserver_cmd);
        cluster.write_kubeconfig("admin.kubeconfig", &cluster.admin_token.clone(), "default")?;
        cluster.wait_ready()?;
        let cm_child = die_with_parent(&mut std::process::Command::new(&controller))
            .arg(format!("--kubeconfig={}", path("admin.kubeconfig")))
            .args(["--leader-elect=false", "--bind-address=127.0.0.1", "--port=0"])
            .arg(format!("--secure-port={cm_port}"))
            .arg(format!("--service-account-private-key-file={}", path("sa.key")))
            .arg(format!("--root-ca-file={}", path("ca.crt")))
            .arg("--controllers=job,garbagecollector,serviceaccount,serviceaccount-token,namespace,ttl-after-finished")
            .arg("--feature-gates=TTLAfterFinished=true")
            .stdout(log("controller-manager")?)
            .stderr(log("controller-manager")?)
            .spawn()
            .context("cannot start kube-controller-manager")?;
        cluster.processes.lock().expect("process lock").push(cm_child);
        Ok(cluster)
    }

    /// Kills the API server (SIGKILL), as an outage would; etcd and the controller manager stay.
    pub fn stop_apiserver(&self) -> anyhow::Result<()> {
        let mut processes = self.processes.lock().expect("process lock");
        let apiserver = processes.get_mut(1).context("no API server process")?;
        apiserver.kill()?;
        apiserver.wait()?;
        Ok(())
    }

    /// Starts the API server again, on the same port with the same data, and waits until it is
    /// ready (blocking: call it from a blocking task).
    pub fn start_apiserver(&self) -> anyhow::Result<()> {
        let child = {
            let mut slot = self.apiserver.lock().expect("apiserver lock");
            let mut cmd = slot.take().context("the API server was never started")?;
            let log = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("apiserver.log"))?;
            cmd.stdout(log.try_clone()?).stderr(log);
            // Started from a thread that never ends: the process dies with its starting thread
            // (`die_with_parent`), and the caller's may be a blocking-pool thread that ends
            // after 10 s idle — which killed the restarted API server in the middle of a test.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let child = cmd.spawn();
                let _ = tx.send((child, cmd));
                loop {
                    std::thread::park();
                }
            });
            let (child, cmd) = rx.recv().context("the starter thread ended")?;
            *slot = Some(cmd);
            child.context("cannot restart kube-apiserver")?
        };
        self.processes.lock().expect("process lock")[1] = child;
        self.wait_ready()
    }

    /// Polls `/readyz` from a thread of its own (the caller may be inside a runtime).
    fn wait_ready(&self) -> anyhow::Result<()> {
        let (server, token, ca) = (self.server.clone(), self.admin_token.clone(), std::fs::read(&self.ca)?);
        let ready = std::thread::spawn(move || -> anyhow::Result<bool> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let client = reqwest::Client::builder()
                    .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
                    .timeout(Duration::from_secs(2))
                    .build()?;
                for _ in 0..600 {
                    let ok = client.get(format!("{server}/readyz")).bearer_auth(&token).send().await;
                    if ok.is_ok_and(|r| r.status().is_success()) {
                        return Ok(true);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(false)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the readiness probe panicked"))??;
        if !ready {
            bail!("kube-apiserver did not become ready; see {}", self.dir.path().join("apiserver.log").display());
        }
        Ok(())
    }

    /// A kubeconfig for `token`, defaulting to `namespace`; returns its path.
    pub fn write_kubeconfig(&self, name: &str, token: &str, namespace: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        let ca = std::fs::read(&self.ca)?;
        let config = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.server,
                "certificate-authority-data": base64(&ca)}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
        });
        std::fs::write(&path, serde_yaml::to_string(&config)?)?;
        Ok(path)
    }

    /// An admin client (create it on the runtime that uses it).
    pub async fn admin(&self) -> anyhow::Result<kube::Client> {
        let path = self.dir.path().join("admin.kubeconfig");
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The API server's request counter for `verb` (`POST`, `DELETE`, `GET`, `LIST`, `WATCH`)
    /// on `resource`, summed over codes and clients (from its /metrics).
    pub async fn requests(&self, verb: &str, resource: &str) -> anyhow::Result<u64> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.ca)?)?;
        let client = reqwest::Client::builder().add_root_certificate(ca).build()?;
        let text =
            client.get(format!("{}/metrics", self.server)).bearer_auth(&self.admin_token).send().await?.text().await?;
        let mut total = 0;
        for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
            let labels = &line[..line.find('}').unwrap_or(0)];
            if labels.contains(&format!("verb=\"{verb}\"")) && labels.contains(&format!("resource=\"{resource}\"")) {
                total += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
            }
        }
        Ok(total)
    }

    /// Creates `namespace` with the host's identity from `deploy/rbac.yaml` (ServiceAccount,
    /// Role, RoleBinding, namespace rewritten) and returns a kubeconfig holding that service
    /// account's token — the host then has exactly the permissions the shipped manifests give.
    /// With `grant = false` the service account exists but has no Role: every call is forbidden.
    pub async fn host_namespace(&self, namespace: &str, grant: bool) -> anyhow::Result<PathBuf> {
        let client = self.admin().await?;
        let ns: Api<Namespace> = Api::all(client.clone());
        ns.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": namespace}}))?).await?;
        let text = std::fs::read_to_string(crate::repo_root().join("deploy/rbac.yaml"))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut value = serde_json::Value::deserialize(doc)?;
            value["metadata"]["namespace"] = namespace.into();
            match value["kind"].as_str() {
                Some("ServiceAccount") => {
                    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
                        .create(&PostParams::default(), &serde_json::from_value(value)?)
                        .await?;
                }
                Some("Role") if grant => {
                    Api::<Role>::namespaced(client.clone(), namespace)
                        .create(&PostParams::default(), &serde_json::from_value(value)?)
                        .await?;
                }
                Some("RoleBinding") if grant => {
                    for s in value["subjects"].as_array_mut().into_iter().flatten() {
                        s["namespace"] = namespace.into();
                    }
                    Api::<RoleBinding>::namespaced(client.clone(), namespace)
                        .create(&PostParams::default(), &serde_json::from_value(value)?)
                        .await?;
                }
                _ => {}
            }
        }
        // The token controller puts the service account's token in a Secret.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for _ in 0..300 {
            for s in secrets.list(&Default::default()).await? {
                let is_host = s.type_.as_deref() == Some("kubernetes.io/service-account-token")
                    && s.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("kubernetes.io/service-account.name"))
                        .is_some_and(|n| n == "nanofaas");
                if let (true, Some(token)) = (is_host, s.data.as_ref().and_then(|d| d.get("token"))) {
                    let token = String::from_utf8(token.0.clone())?;
                    return self.write_kubeconfig(&format!("{namespace}.kubeconfig"), &token, namespace);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no service-account token appeared in {namespace}")
    }

    pub fn logs_dir(&self) -> &Path {
        self.dir.path()
    }
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// Where paths inside images are found on this machine.
#[derive(Clone, Default)]
pub struct ImageMap {
    /// Program names resolved to local binaries (e.g. `nanofaas-runtime`).
    pub programs: HashMap<String, PathBuf>,
    /// Path prefixes inside images mapped to local directories (e.g. `/functions`).
    pub prefixes: Vec<(String, PathBuf)>,
}

/// The cluster of this test process: started once, on a thread that lives as long as the
/// process (so the control plane dies with it), which then plays the kubelet: it runs every pod
/// as local processes, with `images` mapping paths inside images to local ones. Later calls
/// return the same cluster (their `images` are ignored).
pub fn shared(images: ImageMap) -> anyhow::Result<&'static Cluster> {
    static CLUSTER: std::sync::OnceLock<Result<&'static Cluster, String>> = std::sync::OnceLock::new();
    let cluster = CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("test-cluster".into())
            .spawn(move || {
                let cluster: &'static Cluster = match Cluster::start() {
                    Ok(c) => Box::leak(Box::new(c)),
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                let _ = tx.send(Ok(cluster));
                kubelet(cluster, images);
            })
            .map_err(|e| e.to_string())
            .and_then(|_| rx.recv().map_err(|e| e.to_string())?)
    });
    cluster.clone().map_err(anyhow::Error::msg)
}

struct Running {
    pgid: i32,
}

/// The kubelet loop: never returns.
fn kubelet(cluster: &'static Cluster, images: ImageMap) {
    let work = cluster.dir.path().join("pods");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        std::fs::create_dir_all(&work).expect("a pods directory");
        let client = cluster.admin().await.expect("an admin client");
        let pods: Api<Pod> = Api::all(client.clone());
        let running: Arc<Mutex<HashMap<String, Running>>> = Arc::default();
        // Reconnects within seconds after an API server outage, as a kubelet does.
        let backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times();
        let stream = watcher(pods, watcher::Config::default())
            .backoff(watcher::ExponentialBackoff::from(backoff))
            .applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(pod) = event {
                handle(&client, &pod, &running, &images, &work).await;
            }
        }
    });
}

/// Kills a pod's process group. A pod whose process has not started yet has no group (0):
/// signalling group 0 would reach the caller's own group — the test and whatever runs it. The
/// signal goes by `killpg`, not the `kill` program: procps' `kill -KILL -492` reads `-4…` as an
/// option and signals `-4`, and a group id starting with 1 became `kill(-1)`, every process.
fn nix_kill(pgid: i32) -> std::io::Result<()> {
    if pgid <= 1 {
        return Err(std::io::Error::other("no process group yet"));
    }
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL)
        .map_err(std::io::Error::from)
}

async fn handle(
    client: &kube::Client,
    pod: &Pod,
    running: &Arc<Mutex<HashMap<String, Running>>>,
    images: &ImageMap,
    work: &Path,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        // No kubelet confirms deletion in this cluster: stop the process, then remove the pod.
        if let Some(r) = running.lock().expect("running lock").remove(&key) {
            let _ = nix_kill(r.pgid);
        }
        let _ = api.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await;
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if phase != "Pending" || running.lock().expect("running lock").contains_key(&key) {
        return;
    }
    running.lock().expect("running lock").insert(key.clone(), Running { pgid: 0 });
    let (pod, running, images, work) =
        (pod.clone(), running.clone(), images.clone(), work.join(format!("{ns}-{name}")));
    tokio::spawn(async move {
        let _ = run_pod(&api, &pod, &key, &running, &images, &work).await;
    });
}

/// `$(VAR)` expansion as a kubelet does it.
fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

fn map_path(arg: &str, prefixes: &[(String, PathBuf)]) -> String {
    for (prefix, local) in prefixes {
        if let Some(rest) = arg.strip_prefix(prefix.as_str()) {
            return format!("{}{rest}", local.display());
        }
    }
    arg.to_string()
}

async fn run_pod(
    api: &Api<Pod>,
    pod: &Pod,
    key: &str,
    running: &Arc<Mutex<HashMap<String, Running>>>,
    images: &ImageMap,
    work: &Path,
) -> anyhow::Result<()> {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    std::fs::create_dir_all(work)?;
    // emptyDir volumes: a directory per volume, mounted where the containers say.
    let mut prefixes = images.prefixes.clone();
    let volumes: Vec<String> =
        spec.volumes.iter().flatten().filter(|v| v.empty_dir.is_some()).map(|v| v.name.clone()).collect();
    let all_containers = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    for c in all_containers {
        for m in c.volume_mounts.iter().flatten().filter(|m| volumes.contains(&m.name)) {
            let dir = work.join(&m.name);
            std::fs::create_dir_all(&dir)?;
            prefixes.push((m.mount_path.clone(), dir));
        }
    }
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(chrono_now());
    let patch = |status: serde_json::Value| {
        let api = api.clone();
        let name = name.clone();
        // Retried while the API server is unavailable, as a kubelet keeps reporting a status.
        async move {
            let mut tries = 0;
            loop {
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": status.clone()})))
                    .await
                {
                    Err(kube::Error::Api(e)) if e.code == 404 => return Err(kube::Error::Api(e)),
                    Err(_) if tries < 240 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    result => return result,
                }
            }
        }
    };
    let start = |c: &k8s_openapi::api::core::v1::Container| -> anyhow::Result<(tokio::process::Child, PathBuf)> {
        let env: BTreeMap<String, String> =
            c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
        let mut argv: Vec<String> =
            c.command.iter().flatten().chain(c.args.iter().flatten()).map(|a| expand(a, &env)).collect();
        anyhow::ensure!(!argv.is_empty(), "container {} has no command", c.name);
        argv = argv.iter().map(|a| map_path(a, &prefixes)).collect();
        if let Some(local) = images.programs.get(&argv[0]) {
            argv[0] = local.display().to_string();
        }
        let termination = work.join(format!("{}.termination-log", c.name));
        let mut std_cmd = std::process::Command::new(&argv[0]);
        die_with_parent(&mut std_cmd);
        let mut cmd = tokio::process::Command::from(std_cmd);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            // The container's terminationMessagePath, mapped to a file of this pod.
            .env("TERMINATION_MESSAGE_PATH", &termination)
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(work.join(format!("{}.stdout", c.name)))?)
            .stderr(std::fs::File::create(work.join(format!("{}.stderr", c.name)))?)
            .process_group(0)
            .kill_on_drop(true);
        Ok((cmd.spawn()?, termination))
    };
    for c in spec.init_containers.iter().flatten() {
        let (mut child, _) = start(c)?;
        let status = child.wait().await?;
        anyhow::ensure!(status.success(), "init container {} failed", c.name);
    }
    let Some(main) = spec.containers.first() else { return Ok(()) };
    let (mut child, termination) = start(main)?;
    let pgid = child.id().unwrap_or(0) as i32;
    match running.lock().expect("running lock").get_mut(key) {
        Some(r) => r.pgid = pgid,
        None => {
            // Deleted while it was starting: it stops at once.
            let _ = nix_kill(pgid);
            return Ok(());
        }
    }
    patch(json!({
        "phase": "Running", "startTime": now,
        "containerStatuses": [{"name": main.name, "image": main.image, "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": now}}}],
    }))
    .await?;
    let status = child.wait().await?;
    let still_ours = running.lock().expect("running lock").remove(key).is_some();
    if !still_ours {
        return Ok(()); // deleted while running
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
    let message = std::fs::read_to_string(&termination).unwrap_or_default();
    let done = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(chrono_now());
    patch(json!({
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{"name": main.name, "image": main.image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "message": message, "startedAt": now, "finishedAt": done}}}],
    }))
    .await?;
    Ok(())
}

fn chrono_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}
