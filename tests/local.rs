//! The `local` dispatcher and the `process` capability, with real processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nanofaas::config::Config;
use nanofaas::control_plane::{RegisterError, SubmitOptions};
use nanofaas::execution::{Input, Status};
use serde_json::{Value, json};

fn output_json(exec: &nanofaas::execution::Execution) -> Value {
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Success, "{:?}", s.error);
    serde_json::from_slice(&s.output.unwrap().body).unwrap()
}

async fn run(
    cp: &nanofaas::control_plane::ControlPlane,
    function: &str,
    json: &str,
) -> std::sync::Arc<nanofaas::execution::Execution> {
    let exec = submit(cp, function, json).await;
    exec.wait_done().await;
    exec
}

/// Whether a process is alive (a zombie counts as gone: it no longer runs, and here it is also
/// reaped, which `pid_exists` checks).
fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pids(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

async fn wait_gone(pids: &[u32]) {
    for _ in 0..500 {
        if pids.iter().all(|p| !pid_exists(*p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let alive: Vec<_> = pids.iter().filter(|p| pid_exists(**p)).collect();
    panic!("processes survived their execution: {alive:?}");
}

#[tokio::test]
async fn json_mode_gets_the_envelope_and_returns_stdout() {
    let cp = control_plane(Config::default()).await;
    register(&cp, "cat", "local", &["cat"], json!({}), |_| {}).await.unwrap();
    let opts = SubmitOptions::default();
    let input = Input { metadata: vec![("k".into(), "v".into())], ..input(r#"{"x": [1, 2]}"#) };
    let exec = cp.submit("cat", input, opts).await.unwrap().execution().clone();
    exec.wait_done().await;
    assert_eq!(output_json(&exec), json!({"input": {"x": [1, 2]}, "metadata": {"k": "v"}}));
}

#[tokio::test]
async fn the_process_sees_execution_context_and_nothing_of_the_host() {
    let cp = control_plane(Config::default()).await;
    let script = r#"printf '{"id":"%s","attempt":"%s","fn":"%s","deadline":"%s","trace":"%s","custom":"%s","home":"%s"}' \
        "$EXECUTION_ID" "$ATTEMPT" "$FUNCTION_NAME" "$DEADLINE_UNIX_MS" "$TRACE_ID" "$CUSTOM" "$HOME""#;
    register(&cp, "env", "local", &["sh", "-c", script], json!({}), |s| {
        s.env = Some([("CUSTOM".to_string(), "yes".to_string())].into());
    })
    .await
    .unwrap();
    let exec = cp
        .submit("env", input("1"), SubmitOptions { trace_id: Some("trace-9".into()), ..Default::default() })
        .await
        .unwrap()
        .execution()
        .clone();
    exec.wait_done().await;
    let out = output_json(&exec);
    assert_eq!(out["id"], exec.id.as_str());
    assert_eq!(
        (out["attempt"].as_str(), out["fn"].as_str(), out["trace"].as_str()),
        (Some("1"), Some("env"), Some("trace-9"))
    );
    assert_eq!(out["deadline"], exec.deadline_unix_ms.to_string());
    assert_eq!(out["custom"], "yes");
    assert_eq!(out["home"], "", "the host's environment does not leak into functions");
}

#[tokio::test]
async fn a_non_zero_exit_is_a_function_error_with_stderr() {
    let cp = control_plane(Config::default()).await;
    register(&cp, "fail", "local", &["sh", "-c", "echo 'bad input' >&2; exit 3"], json!({}), |_| {}).await.unwrap();
    let exec = run(&cp, "fail", "1").await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Error, 1), "never retried");
    let e = s.error.unwrap();
    assert_eq!(e.code, "FUNCTION_ERROR");
    assert_eq!(e.message, "exited with code 3: bad input");
    assert_eq!(s.error_kind, Some(nanofaas::execution::ErrorKind::Function));
}

#[tokio::test]
async fn raw_mode_passes_bytes_through() {
    let cp = control_plane(Config::default()).await;
    let config = json!({"mode": "raw", "outputContentType": "text/plain"});
    register(&cp, "upper", "local", &["tr", "a-z", "A-Z"], config, |_| {}).await.unwrap();
    let input = Input { content_type: "application/octet-stream".into(), body: "hello\n".into(), metadata: vec![] };
    let exec = cp.submit("upper", input, SubmitOptions::default()).await.unwrap().execution().clone();
    exec.wait_done().await;
    let out = exec.snapshot().output.unwrap();
    assert_eq!((out.content_type.as_str(), out.body.as_ref()), ("text/plain", b"HELLO\n".as_ref()));
}

#[tokio::test]
async fn output_over_the_bound_is_an_error_not_a_truncated_result() {
    let cp = control_plane(Config { max_output_bytes: 1000, ..Config::default() }).await;
    register(&cp, "chatty", "local", &["yes"], json!({"mode": "raw"}), |_| {}).await.unwrap();
    let exec = run(&cp, "chatty", "1").await;
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Error);
    assert!(s.output.is_none());
    let e = s.error.unwrap();
    assert_eq!(e.code, "OUTPUT_TOO_LARGE");
    assert!(e.message.contains("1000 bytes"), "{}", e.message);
}

#[tokio::test]
async fn a_timed_out_process_group_is_killed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("echo $$ >> {0}; sleep 30 & echo $! >> {0}; wait", pids.display());
    let cp = control_plane(Config::default()).await;
    register(&cp, "stuck", "local", &["sh", "-c", &script], json!({}), |s| s.timeout_ms = Some(60_000)).await.unwrap();
    let exec = submit(&cp, "stuck", "1").await;
    // Real time until the function and its child run; then the host clock is paused, so the
    // deadline is reached exactly, with nothing else happening in between.
    while read_pids(&pids).len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = read_pids(&pids);
    assert!(started.iter().all(|p| pid_exists(*p)));
    tokio::time::pause();
    exec.wait_done().await;
    // Exactly at the deadline, up to the timer wheel's 1 ms resolution (the deadline was set on
    // the real clock, so it is not aligned to a whole millisecond).
    let late = tokio::time::Instant::now() - exec.deadline;
    assert!(late < Duration::from_millis(2), "ended {late:?} after its deadline");
    assert_eq!(exec.status(), Status::Timeout);
    tokio::time::resume();
    wait_gone(&started).await;
    assert_eq!(cp.plugins().capabilities().process.as_ref().unwrap().tracked(), 0, "the table forgot them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_survives_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("echo $$ >> {0}; sleep 30 & echo $! >> {0}; sleep 30", pids.display());
    let cp = control_plane(Config::default()).await;
    register(&cp, "stuck", "local", &["sh", "-c", &script], json!({}), |s| {
        s.timeout_ms = Some(1500);
        s.concurrency = Some(20);
    })
    .await
    .unwrap();
    let mut execs = Vec::new();
    for i in 0..20 {
        execs.push(submit(&cp, "stuck", &i.to_string()).await);
    }
    for e in &execs {
        e.wait_done().await;
        assert_eq!(e.status(), Status::Timeout);
    }
    let all = read_pids(&pids);
    assert_eq!(all.len(), 40, "every function and its child had started");
    wait_gone(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_holds_with_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!("echo start >> {0}; sleep 0.3; echo end >> {0}", log.display());
    let cp = control_plane(Config::default()).await;
    register(&cp, "limited", "local", &["sh", "-c", &script], json!({}), |s| s.concurrency = Some(2)).await.unwrap();
    let mut execs = Vec::new();
    for i in 0..6 {
        execs.push(submit(&cp, "limited", &i.to_string()).await);
    }
    for e in &execs {
        e.wait_done().await;
        assert_eq!(e.status(), Status::Success);
    }
    // Replay the log: how many were running at once, at most.
    let (mut running, mut peak) = (0i32, 0i32);
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        running += if line == "start" { 1 } else { -1 };
        peak = peak.max(running);
    }
    assert_eq!(peak, 2, "never more than `concurrency` processes, and the limit was used");
}

#[tokio::test]
async fn registration_checks_what_the_host_can_run() {
    let cp = control_plane(Config::default()).await;
    let refused = |r: Result<(), RegisterError>| match r {
        Err(RegisterError::Refused { reason, .. }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let r = refused(register(&cp, "a", "local", &[], json!({}), |_| {}).await);
    assert!(r.contains("needs a `command`"), "{r}");
    let r = refused(register(&cp, "b", "local", &["no-such-program-here"], json!({}), |_| {}).await);
    assert!(r.contains("not found"), "{r}");
    let r = refused(register(&cp, "c", "local", &["sh"], json!({"workingDir": "/no/such/dir"}), |_| {}).await);
    assert!(r.contains("does not exist"), "{r}");
    let r = refused(register(&cp, "d", "local", &["sh"], json!({"mode": "fancy"}), |_| {}).await);
    assert!(r.contains("invalid dispatcherConfig"), "{r}");
    register(&cp, "e", "local", &["sh"], json!({"workingDir": "/tmp", "mode": "raw"}), |_| {}).await.unwrap();
}

#[tokio::test]
async fn local_execution_can_be_switched_off() {
    let cp = control_plane(Config { local_exec: false, ..Config::default() }).await;
    match register(&cp, "a", "local", &["sh"], json!({}), |_| {}).await {
        Err(RegisterError::Refused { reason, .. }) => assert!(reason.contains("--no-local-exec"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(cp.plugins().capabilities().process.is_none());
}
