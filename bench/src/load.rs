//! Measuring real host processes from outside: the `nanofaas` binary built next to this one,
//! `wrk` as the load generator (another process, so nothing of the load shares the host's
//! runtime), and the resident set read from `/proc`.

use std::path::PathBuf;
use std::process::Command;

/// The `nanofaas` binary of the same build.
pub fn host_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.parent().expect("a directory").join("nanofaas");
    anyhow::ensure!(path.is_file(), "{} is missing: cargo build --release --bin nanofaas", path.display());
    Ok(path)
}

/// What `wrk` measured.
pub struct Load {
    pub per_sec: f64,
    pub median_ms: f64,
    pub non_2xx: u64,
}

/// `wrk` POSTing the JSON `body` to `url` for `secs` seconds over `connections` connections
/// (at most two threads: the machines this runs on have two cores).
pub fn wrk(url: &str, body: &str, connections: usize, secs: u64) -> anyhow::Result<Load> {
    anyhow::ensure!(!body.contains('\''), "the body is quoted with ' in the wrk script");
    let script = std::env::temp_dir().join(format!("nanofaas-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        format!("wrk.method = \"POST\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"),
    )?;
    let threads = connections.clamp(1, 2);
    let out = Command::new("wrk")
        .args([format!("-t{threads}"), format!("-c{connections}"), format!("-d{secs}s")])
        .args(["--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk (apt-get install wrk): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()));
    let per_sec = field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let non_2xx = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let median_ms = field("50%").map(|v| millis(&v)).unwrap_or(f64::NAN);
    Ok(Load { per_sec, median_ms, non_2xx })
}

/// `1.23ms`, `456.00us`, `1.01s` → milliseconds.
fn millis(v: &str) -> f64 {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

/// The median of a few rounds.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

/// The resident set of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_durations() {
        assert_eq!(millis("456.00us"), 0.456);
        assert_eq!(millis("1.50ms"), 1.5);
        assert_eq!(millis("2.00s"), 2000.0);
        assert!(millis("soon").is_nan());
    }

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
