//! The `process` capability: local processes that belong to executions.
//!
//! A process is started directly (argv, never a shell) in a process group of its own, with a
//! clean environment (only `PATH` from the host, plus what the plugin passes), the input on
//! stdin, stdout captured up to a bound and the tail of stderr kept. Every process belongs to the
//! execution that started it: the host kills its whole process group when the execution ends,
//! however it ends, and reaps what it killed. The execution is woken when its process exits, so
//! completion is noticed at once rather than at the next poll.
//!
//! Orphans: the host makes itself a child subreaper, so grandchildren of a killed function are
//! re-parented to it and reaped here (by process group), never left as zombies. A process that
//! leaves its process group on purpose (`setsid`) escapes the group kill; that is documented.
//!
//! Crashes: with a durable store, every process group is recorded in a [`Journal`] before its
//! handle is given to the plugin (and forgotten once reaped), so a host that starts on this
//! machine after a crash kills what the dead one left running ([`kill_leftover`]) before it
//! runs those executions again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::Wake;
use super::owned::Owned;
use crate::store::{ProcessRecord, Store, Write};

/// Where process groups are recorded so a later host process can find them.
pub struct Journal {
    pub store: Arc<dyn Store>,
    /// The host process (replica) that starts them.
    pub replica: String,
    /// This machine ([`machine_id`]).
    pub machine: String,
}

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Bytes,
    /// Stdout went past the bound; the process was killed and `stdout` holds the first bytes.
    pub stdout_truncated: bool,
    pub stderr_tail: String,
}

/// Bytes of stderr kept (the end of it).
const STDERR_TAIL: usize = 4096;

/// Executions whose stderr tails are kept after they end (the most recent ones), for
/// [`ProcessCapability::logs`].
const ENDED_LOGS: usize = 256;

struct Proc {
    /// Order of start, for logs.
    seq: u64,
    pgid: Pid,
    exit: Arc<Mutex<Option<ExitInfo>>>,
    /// The end of its stderr so far.
    stderr: Arc<Mutex<Vec<u8>>>,
}

pub struct ProcessCapability {
    max_output: usize,
    procs: Owned<Proc>,
    /// The stderr tails of the last [`ENDED_LOGS`] executions released, oldest first.
    ended: Mutex<VecDeque<(String, String)>>,
    next: AtomicU64,
    wake: Wake,
    path: String,
    journal: Option<Arc<Journal>>,
}

impl ProcessCapability {
    pub fn new(max_output: usize, wake: Wake, journal: Option<Journal>) -> Self {
        // Orphaned grandchildren of killed functions come back to this process to be reaped.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphans of killed functions go to init");
        }
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        Self {
            max_output,
            procs: Owned::default(),
            ended: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
            wake,
            path,
            journal: journal.map(Arc::new),
        }
    }

    /// Whether `cmd` could be started: a program that resolves to an executable file, and a
    /// working directory that exists.
    pub fn check(&self, cmd: &CommandSpec) -> Result<(), String> {
        self.program(cmd).map(|_| ())
    }

    /// The absolute path of the command's program. Starting it by path (not by name with a
    /// changed `PATH`) also lets std use `posix_spawn` instead of `fork`, which matters in a
    /// process whose address space holds a large Wasm instance pool.
    fn program(&self, cmd: &CommandSpec) -> Result<PathBuf, String> {
        let cwd = match &cmd.cwd {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if !dir.is_dir() {
                    return Err(format!("working directory `{}` does not exist", dir.display()));
                }
                dir
            }
            None => std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?,
        };
        let program = cmd.argv.first().ok_or("the command is empty")?;
        if program.is_empty() {
            return Err("the command's program is empty".into());
        }
        self.resolve(program, &cwd).ok_or_else(|| format!("program `{program}` was not found or is not executable"))
    }

    fn resolve(&self, program: &str, cwd: &Path) -> Option<PathBuf> {
        let executable = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if program.contains('/') {
            let p = cwd.join(program);
            return executable(&p).then_some(p);
        }
        std::env::split_paths(&self.path).map(|dir| dir.join(program)).find(|p| executable(p))
    }

    /// Starts `cmd` for execution `owner` with `stdin`; returns the handle once the process
    /// group is recorded (with a durable store).
    pub async fn spawn(&self, owner: &str, cmd: CommandSpec, stdin: Bytes) -> Result<String, String> {
        let program = self.program(&cmd)?;
        let mut command = tokio::process::Command::new(&program);
        command.arg0(&cmd.argv[0]);
        command
            .args(&cmd.argv[1..])
            .env_clear()
            .env("PATH", &self.path)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &cmd.cwd {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|e| format!("cannot start `{}`: {e}", cmd.argv[0]))?;
        let pid = child.id().ok_or("the process exited before it could be tracked")?;
        let pgid = Pid::from_raw(pid as i32);
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let handle = format!("p{seq}");
        let exit = Arc::new(Mutex::new(None));
        let tail = Arc::new(Mutex::new(Vec::new()));
        self.procs.insert(handle.clone(), owner, Proc { seq, pgid, exit: exit.clone(), stderr: tail.clone() });
        tracing::debug!(execution_id = owner, pid, program = %cmd.argv[0], "process started");
        let journal = self.journal.clone();
        if let Some(j) = &journal {
            let record = ProcessRecord {
                replica: j.replica.clone(),
                machine: j.machine.clone(),
                pgid: pgid.as_raw(),
                start_ticks: start_ticks(pgid.as_raw()).unwrap_or(0),
                execution_id: owner.to_string(),
            };
            if let Err(e) = j.store.write(Write::Process(record)).await {
                tracing::warn!(execution_id = owner, error = %e, "cannot record a process group");
            }
        }

        let (max_output, wake, owner) = (self.max_output, self.wake.clone(), owner.to_string());
        let mut stdin_pipe = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        tokio::spawn(async move {
            let feed = async move {
                // A function that does not read its input closes the pipe early; that is fine.
                let _ = stdin_pipe.write_all(&stdin).await;
                drop(stdin_pipe);
            };
            let read_out = read_bounded(stdout, max_output, pgid);
            let read_err = read_tail(stderr, STDERR_TAIL, tail);
            let wait = async {
                let status = child.wait().await;
                // The leader is gone; kill what it left behind in its group (the group id cannot
                // be reused while members remain), which also ends the pipes they hold.
                let _ = killpg(pgid, Signal::SIGKILL);
                status
            };
            let ((), (stdout, truncated), stderr_tail, status) = tokio::join!(feed, read_out, read_err, wait);
            let (code, signal) = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    (s.code(), s.signal())
                }
                Err(_) => (None, None),
            };
            *exit.lock().expect("exit lock") =
                Some(ExitInfo { code, signal, stdout, stdout_truncated: truncated, stderr_tail });
            tracing::debug!(execution_id = %owner, pid, ?code, ?signal, "process exited");
            wake(&owner);
            reap_group(pgid).await;
            if let Some(j) = journal {
                j.store.write_behind(Write::ForgetProcess { replica: j.replica.clone(), pgid: pgid.as_raw() });
            }
        });
        Ok(handle)
    }

    /// The exit of `handle` (none while it runs). Only its owner may ask.
    pub fn status(&self, owner: &str, handle: &str) -> Result<Option<ExitInfo>, String> {
        self.procs
            .with(owner, handle, |p| p.exit.lock().expect("exit lock").clone())
            .ok_or_else(|| format!("no process `{handle}` for this execution"))
    }

    /// Kills the process group of `handle` (no-op when gone or not the caller's).
    pub fn kill(&self, owner: &str, handle: &str) {
        self.procs.with(owner, handle, |p| kill_if_running(p));
    }

    /// The execution ended: kill all its processes and forget them, keeping their stderr tails
    /// for [`logs`](Self::logs).
    pub fn release_owner(&self, owner: &str) {
        let released: Vec<_> = self
            .procs
            .release(owner)
            .into_iter()
            .map(|(_, p)| {
                kill_if_running(&p);
                (p.seq, p.stderr)
            })
            .collect();
        if released.is_empty() {
            return;
        }
        let text = joined(released);
        let mut ended = self.ended.lock().expect("ended lock");
        ended.retain(|(o, _)| o != owner);
        if ended.len() == ENDED_LOGS {
            ended.pop_front();
        }
        ended.push_back((owner.to_string(), text));
    }

    /// The end of the stderr of `owner`'s processes, oldest first: as it is so far while they
    /// run, as it was for the last [`ENDED_LOGS`] executions that ended. `None` when this host
    /// process has none of it.
    pub fn logs(&self, owner: &str) -> Option<String> {
        let live = self.procs.owned_by(owner, |p| (p.seq, p.stderr.clone()));
        if !live.is_empty() {
            return Some(joined(live));
        }
        let ended = self.ended.lock().expect("ended lock");
        ended.iter().rev().find(|(o, _)| o == owner).map(|(_, text)| text.clone())
    }

    /// Whether `owner` has processes here (work that dies with this host process).
    pub fn owns_any(&self, owner: &str) -> bool {
        self.procs.owns_any(owner)
    }

    /// Processes the table holds (running or exited but not yet released).
    pub fn tracked(&self) -> usize {
        self.procs.len()
    }
}

/// This machine, as process records name it: host name and boot id (a process id means
/// something only on the machine, and the boot, that gave it out).
pub fn machine_id() -> String {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{host}/{}", boot.trim())
}

/// The start time of process `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Kills the process group a dead host process left behind, if it is still that group:
/// its leader is the recorded process (same start time), or the leader is gone but members of
/// the group remain (a process group id is not handed out again while the group exists).
/// Returns whether it was killed.
pub fn kill_leftover(record: &ProcessRecord) -> bool {
    let ours = match start_ticks(record.pgid) {
        Some(ticks) => ticks == record.start_ticks,
        None => group_has_members(record.pgid),
    };
    if ours {
        let _ = killpg(Pid::from_raw(record.pgid), Signal::SIGKILL);
    }
    ours
}

fn group_has_members(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.filter_map(Result::ok).any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        // Field 5 (pgrp), counted after the parenthesised command name.
        stat.rfind(')')
            .and_then(|i| stat.get(i + 2..))
            .and_then(|rest| rest.split(' ').nth(2))
            .and_then(|g| g.parse::<i32>().ok())
            == Some(pgid)
    })
}

/// Stderr tails in the order their processes started, one after the other.
fn joined(mut tails: Vec<(u64, Arc<Mutex<Vec<u8>>>)>) -> String {
    tails.sort_by_key(|(seq, _)| *seq);
    let texts: Vec<String> =
        tails.iter().map(|(_, t)| String::from_utf8_lossy(&t.lock().expect("tail lock")).into_owned()).collect();
    texts.join("\n")
}

fn kill_if_running(p: &Proc) {
    if p.exit.lock().expect("exit lock").is_none() {
        let _ = killpg(p.pgid, Signal::SIGKILL);
    }
}

/// Reads up to `max` bytes; past that, kills the group and reports truncation.
async fn read_bounded(mut r: impl AsyncRead + Unpin, max: usize, pgid: Pid) -> (Bytes, bool) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return (buf.into(), false),
            Ok(n) if buf.len() + n > max => {
                buf.extend_from_slice(&chunk[..max - buf.len()]);
                let _ = killpg(pgid, Signal::SIGKILL);
                // Drain until the killed group closes the pipe.
                while matches!(r.read(&mut chunk).await, Ok(n) if n > 0) {}
                return (buf.into(), true);
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads everything, keeping the last `keep` bytes in `tail` as they come; returns them lossily
/// decoded.
async fn read_tail(mut r: impl AsyncRead + Unpin, keep: usize, tail: Arc<Mutex<Vec<u8>>>) -> String {
    let mut chunk = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let mut tail = tail.lock().expect("tail lock");
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > keep {
            let cut = tail.len() - keep;
            tail.drain(..cut);
        }
    }
    String::from_utf8_lossy(&tail.lock().expect("tail lock")).trim_end().to_string()
}

/// Reaps members of a killed group that were re-parented to this (subreaper) process. They
/// arrive when their own parents die, a moment after the group kill, so the group is watched
/// until it has had no children here for a while.
async fn reap_group(pgid: Pid) {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    const QUIET: std::time::Duration = std::time::Duration::from_millis(50);
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
    let started = tokio::time::Instant::now();
    let mut quiet_since = started;
    while started.elapsed() < LIMIT {
        match waitid(Id::PGid(pgid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
            // Reaped one; look again at once.
            Ok(status) if status != WaitStatus::StillAlive => {
                quiet_since = tokio::time::Instant::now();
                continue;
            }
            // A member is alive (dying) or none is here (yet).
            Ok(_) => quiet_since = tokio::time::Instant::now(),
            Err(_) if quiet_since.elapsed() >= QUIET => return,
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
