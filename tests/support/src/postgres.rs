//! A throwaway PostgreSQL server on loopback, from the machine's PostgreSQL binaries (Debian's
//! `postgresql` package; `scripts/postgres.sh` installs it).
//!
//! PostgreSQL refuses to run as root: when the tests run as root, the server runs as the
//! `postgres` user the package creates (`setpriv`, which execs without forking). Each
//! [`Postgres`] is its own cluster in a temporary directory, stopped and deleted when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The directory of `initdb`, `postgres` and `createdb`: `NANOFAAS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn binaries_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NANOFAAS_PG_BIN") {
        return Ok(dir.into());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run scripts/postgres.sh)")?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// A running server; stopped (and its data deleted) when dropped.
pub struct Postgres {
    _dir: tempfile::TempDir,
    server: Child,
    pub port: u16,
    bin: PathBuf,
    user: Option<String>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown (no checkpoint); the data is thrown away anyway.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.id() as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let _ = self.server.wait();
    }
}

fn as_user(program: &Path, user: Option<&str>) -> Command {
    match user {
        Some(user) => {
            let mut cmd = Command::new("setpriv");
            cmd.args([&format!("--reuid={user}"), &format!("--regid={user}"), "--clear-groups", "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

impl Postgres {
    /// Starts a fresh cluster. `durable`: keep PostgreSQL's fsync on (benchmarks); tests turn it
    /// off, which does not weaken what they check (the host, not the database, is killed).
    pub fn start(durable: bool) -> anyhow::Result<Self> {
        let bin = binaries_dir()?;
        let dir = tempfile::tempdir()?;
        let user = nix::unistd::getuid().is_root().then(|| "postgres".to_string());
        if let Some(user) = &user {
            let u =
                nix::unistd::User::from_name(user)?.context("PostgreSQL runs as `postgres`, which does not exist")?;
            nix::unistd::chown(dir.path(), Some(u.uid), Some(u.gid))?;
        }
        let data = dir.path().join("data");
        let out = as_user(&bin.join("initdb"), user.as_deref())
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "nanofaas", "-E", "UTF8", "--no-sync"])
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = as_user(&bin.join("postgres"), user.as_deref());
        cmd.arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(dir.path())
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !durable {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        let server = cmd.spawn().context("cannot start postgres")?;
        let pg = Postgres { _dir: dir, server, port, bin, user };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && pg.createdb("probe").is_ok() {
                return Ok(pg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("postgres did not start on port {port}")
    }

    fn createdb(&self, name: &str) -> anyhow::Result<()> {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "nanofaas", name])
            .output()?;
        let _ = &self.user;
        if !out.status.success() {
            bail!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> anyhow::Result<String> {
        self.createdb(name)?;
        Ok(self.url(name))
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://nanofaas@127.0.0.1:{}/{name}", self.port)
    }
}
