//! Support for nanofaas's integration tests: guest plugins built from source, and a handle on
//! a real `nanofaas` process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod kube;
pub mod otlp;
pub mod postgres;

/// Paths of the guest components built for the tests.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// A `nanofaas serve` process on free loopback ports, killed when dropped.
pub struct Host {
    child: Child,
    pub api: String,
    pub admin: String,
    /// Everything the process wrote to stderr so far (its logs), shared with a reader task.
    logs: std::sync::Arc<std::sync::Mutex<String>>,
    pub client: reqwest::Client,
    /// The directory of the host's own embedded store, when the caller did not choose a store.
    _state: Option<tempfile::TempDir>,
}

impl Host {
    /// Starts `binary serve` with `args` (plus loopback port-0 listeners) and `env`, and waits
    /// until it prints its ready line. Unless `args` or `env` choose a store, the host gets an
    /// embedded one of its own in a temporary directory.
    pub async fn start(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Host> {
        let chosen = args.contains(&"--store") || env.iter().any(|(k, _)| *k == "NANOFAAS_STORE");
        let state = if chosen { None } else { Some(tempfile::tempdir()?) };
        let mut cmd = Command::new(binary);
        if let Some(dir) = &state {
            cmd.env("NANOFAAS_STORE", format!("sqlite:{}", dir.path().join("nanofaas.db").display()));
        }
        cmd.arg("serve")
            .args(args)
            .current_dir(repo_root())
            .env("NANOFAAS_LISTEN", "127.0.0.1:0")
            .env("NANOFAAS_ADMIN_LISTEN", "127.0.0.1:0")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped");
        tokio::spawn({
            let logs = logs.clone();
            async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut l = logs.lock().expect("log lock");
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = stdout.next_line().await? {
                if let Some(rest) = line.strip_prefix("nanofaas ready: ") {
                    return Ok::<_, anyhow::Error>(rest.to_string());
                }
            }
            anyhow::bail!("nanofaas exited before it was ready")
        })
        .await;
        let line = match ready {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => anyhow::bail!("{e}; logs:\n{}", logs.lock().expect("log lock")),
            Err(_) => anyhow::bail!("nanofaas was not ready within 120 s; logs:\n{}", logs.lock().expect("log lock")),
        };
        // "api http://A admin http://B plugins …"
        let words: Vec<&str> = line.split_whitespace().collect();
        let api = words.get(1).ok_or_else(|| anyhow::anyhow!("bad ready line {line}"))?.to_string();
        let admin = words.get(3).ok_or_else(|| anyhow::anyhow!("bad ready line {line}"))?.to_string();
        Ok(Host { child, api, admin, logs, client: reqwest::Client::new(), _state: state })
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("log lock").clone()
    }

    /// The logs once `done` holds for them, or as they are after 10 s: the host writes its log
    /// from a thread of its own, so a line can arrive a moment after the event it tells of.
    pub async fn logs_when(&self, done: impl Fn(&str) -> bool) -> String {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if done(&logs) || tokio::time::Instant::now() >= until {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// POSTs JSON and returns (status, body as JSON or `null`).
    pub async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<(u16, serde_json::Value)> {
        let r = self.client.post(self.url(path)).json(&body).send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let r = self.client.get(self.url(path)).send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)))
    }

    /// Kills the process at once (SIGKILL): a crash.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
        }
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }
}

/// Processes whose command line contains `marker`, as (pid, start time in ticks).
pub fn processes_with(marker: &str) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            if !String::from_utf8_lossy(&cmdline).contains(marker) {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ticks = stat[stat.rfind(')')? + 2..].split(' ').nth(19)?.parse().ok()?;
            Some((pid, ticks))
        })
        .collect()
}

/// A fresh plugin directory holding copies of `files` as `(name in the directory, source)`.
pub fn plugin_dir(files: &[(&str, &Path)]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (name, source) in files {
        std::fs::copy(source, dir.path().join(name))?;
    }
    Ok(dir)
}

/// The repository root (for example files).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository exists")
}

/// `examples/functions.yaml` with the Rust example's path pointed at the build of this test run
/// (`target/<profile>/examples/primes`, next to `binary`'s directory).
pub fn example_functions(binary: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let text = std::fs::read_to_string(repo_root().join("examples/functions.yaml"))?;
    let primes = binary.parent().expect("a directory").join("examples/primes");
    anyhow::ensure!(primes.is_file(), "{} was not built", primes.display());
    let text = text.replace("target/release/examples/primes", primes.to_str().expect("UTF-8 path"));
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), text)?;
    Ok(file)
}
