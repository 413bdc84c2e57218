//! The runtime as a process: the three run modes, the termination message and the callback
//! (with failures and retries), against a callback server on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Default)]
struct Callbacks {
    /// Fail this many callbacks with 503 first.
    fail_first: usize,
    seen: Vec<(String, Value)>,
}

async fn callback_server(fail_first: usize) -> (SocketAddr, Arc<Mutex<Callbacks>>) {
    let state = Arc::new(Mutex::new(Callbacks { fail_first, ..Default::default() }));
    let app = axum::Router::new()
        .route(
            "/cb",
            post(|State(s): State<Arc<Mutex<Callbacks>>>, headers: HeaderMap, body: String| async move {
                let mut s = s.lock().unwrap();
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                s.seen.push((auth, serde_json::from_str(&body).unwrap_or(Value::Null)));
                if s.seen.len() <= s.fail_first {
                    (StatusCode::SERVICE_UNAVAILABLE, "{}".to_string())
                } else {
                    (StatusCode::OK, r#"{"outcome":"accepted"}"#.to_string())
                }
            }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}

struct Run {
    code: Option<i32>,
    termination: Value,
    stderr: String,
}

async fn run(dir: &Path, env: &[(&str, String)], command: &[&str]) -> Run {
    let termination = dir.join("termination-log");
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(20);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_nanofaas-runtime"));
    cmd.arg("run").arg("--").args(command);
    cmd.env("EXECUTION_ID", "exec-1")
        .env("ATTEMPT", "2")
        .env("TRACE_ID", "trace-1")
        .env("FUNCTION_NAME", "f")
        .env("DEADLINE_UNIX_MS", deadline.as_millis().to_string())
        .env("CALLBACK_TOKEN", "tok")
        .env("TERMINATION_MESSAGE_PATH", &termination);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let text = std::fs::read_to_string(&termination).unwrap_or_default();
    Run {
        code: out.status.code(),
        termination: serde_json::from_str(&text).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[tokio::test]
async fn stdio_success_reports_by_message_and_callback() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, cb) = callback_server(0).await;
    let env = [
        ("INVOCATION_PAYLOAD", r#"{"n": 2}"#.to_string()),
        ("FUNCTION_METADATA", r#"{"k":"v"}"#.to_string()),
        ("CALLBACK_URL", format!("http://{addr}/cb")),
    ];
    let r = run(dir.path(), &env, &["cat"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let expected = json!({"input": {"n": 2}, "metadata": {"k": "v"}});
    assert_eq!(r.termination, json!({"v": 1, "success": true, "output": expected}));
    let seen = cb.lock().unwrap().seen.clone();
    assert_eq!(seen, [("Bearer tok".to_string(), json!({"success": true, "output": expected}))]);
    assert!(
        r.stderr.contains(r#""message":"callback delivered""#) && r.stderr.contains(r#""executionId":"exec-1""#),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn a_failing_function_exits_non_zero_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, cb) = callback_server(0).await;
    let env = [("INVOCATION_PAYLOAD", "1".to_string()), ("CALLBACK_URL", format!("http://{addr}/cb"))];
    let r = run(dir.path(), &env, &["sh", "-c", "echo broken >&2; exit 7"]).await;
    assert_eq!(r.code, Some(1));
    assert_eq!(r.termination["success"], false);
    assert_eq!(r.termination["exitCode"], 7);
    assert_eq!(r.termination["error"]["code"], "FUNCTION_ERROR");
    assert_eq!(r.termination["error"]["message"], "exited with code 7: broken");
    assert_eq!(cb.lock().unwrap().seen[0].1["success"], false);
}

#[tokio::test]
async fn callbacks_are_retried_until_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, cb) = callback_server(2).await;
    let env = [("INVOCATION_PAYLOAD", "1".to_string()), ("CALLBACK_URL", format!("http://{addr}/cb"))];
    let r = run(dir.path(), &env, &["cat"]).await;
    assert_eq!(r.code, Some(0));
    assert_eq!(cb.lock().unwrap().seen.len(), 3, "two failures, then delivered");
}

#[tokio::test]
async fn an_unreachable_host_still_leaves_the_result_in_the_termination_message() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_millis(1500);
    let env = [
        ("INVOCATION_PAYLOAD", r#""x""#.to_string()),
        ("CALLBACK_URL", format!("http://127.0.0.1:{port}/cb")),
        ("DEADLINE_UNIX_MS", deadline.as_millis().to_string()),
    ];
    let r = run(dir.path(), &env, &["cat"]).await;
    assert_eq!(r.code, Some(0), "the function succeeded; only the callback failed");
    assert_eq!(r.termination["output"], json!({"input": "x", "metadata": {}}));
    assert!(r.stderr.contains("callback abandoned at the deadline"), "{}", r.stderr);
}

#[tokio::test]
async fn file_mode_uses_input_and_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("INVOCATION_PAYLOAD", r#"{"a":1}"#.to_string()), ("RUNTIME_MODE", "FILE".to_string())];
    let r = run(dir.path(), &env, &["sh", "-c", r#"cp "$INPUT_FILE" "$OUTPUT_FILE""#]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.termination["output"], json!({"input": {"a": 1}, "metadata": {}}));
}

#[tokio::test]
async fn http_mode_posts_to_the_function_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = r#"
import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        out = json.dumps({"doubled": body["input"] * 2, "path": self.path}).encode()
        self.send_response(200); self.send_header("content-length", str(len(out))); self.end_headers(); self.wfile.write(out)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;
    let env =
        [("INVOCATION_PAYLOAD", "21".to_string()), ("RUNTIME_MODE", "HTTP".to_string()), ("PORT", port.to_string())];
    let r = run(dir.path(), &env, &["python3", "-c", server]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.termination["output"], json!({"doubled": 42, "path": "/invoke"}));
}

#[tokio::test]
async fn large_input_is_fetched_from_the_host_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = axum::Router::new().route(
        "/input",
        axum::routing::get(|headers: HeaderMap| async move {
            match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                Some("Bearer tok") => (StatusCode::OK, r#"{"big":true}"#),
                _ => (StatusCode::UNAUTHORIZED, "{}"),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = run(dir.path(), &[("INPUT_URL", format!("http://{addr}/input"))], &["cat"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.termination["output"]["input"], json!({"big": true}));
}

#[tokio::test]
async fn the_deadline_stops_the_function() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_millis(500);
    let env = [("INVOCATION_PAYLOAD", "1".to_string()), ("DEADLINE_UNIX_MS", deadline.as_millis().to_string())];
    let r = run(dir.path(), &env, &["sleep", "30"]).await;
    assert_eq!(r.code, Some(1));
    assert_eq!(r.termination["error"]["code"], "TIMEOUT");
}

#[test]
fn install_copies_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("bin");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanofaas-runtime"))
        .args(["install", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(target.join("nanofaas-runtime").is_file());
}
