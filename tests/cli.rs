//! The `nanofaas` command-line client against a real host over HTTP.

use std::path::Path;
use std::process::Output;

use nanofaas_test_support::Host;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

/// Runs `nanofaas ARGS` against `host` (through `NANOFAAS_URL`), with `stdin`.
async fn cli(host: &Host, args: &[&str], stdin: &str) -> Output {
    let mut child = tokio::process::Command::new(binary())
        .args(args)
        .env("NANOFAAS_URL", &host.api)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    child.wait_with_output().await.unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_applied_listed_shown_and_deleted() {
    let host = Host::start(binary(), &[], &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("functions.yaml");
    let specs = "name: greet\nexecutionMode: LOCAL\ntimeoutMs: 5000\n---\n\
                 - name: shout\n  dispatcher: local\n  command: [tr, a-z, A-Z]\n  dispatcherConfig: {mode: raw}\n";
    std::fs::write(&file, specs).unwrap();
    let file_arg = file.to_str().unwrap();

    let out = cli(&host, &["fn", "apply", "-f", file_arg], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "function/greet created (version 1)\nfunction/shout created (version 1)\n");
    let out = cli(&host, &["fn", "apply", "-f", file_arg], "").await;
    assert_eq!(stdout(&out), "function/greet unchanged (version 1)\nfunction/shout unchanged (version 1)\n");
    std::fs::write(&file, specs.replace("timeoutMs: 5000", "timeoutMs: 6000")).unwrap();
    let out = cli(&host, &["fn", "apply", "-f", file_arg, "-o", "json"], "").await;
    let applied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(applied[0], json!({"name": "greet", "result": "updated", "version": 2}));
    assert_eq!(applied[1]["result"], "unchanged");
    // From stdin, as JSON.
    let out = cli(&host, &["fn", "apply", "-f", "-"], r#"{"name": "third", "executionMode": "LOCAL"}"#).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let out = cli(&host, &["fn", "list"], "").await;
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("DISPATCHER"), "{table}");
    assert!(lines[1].starts_with("greet") && lines[1].contains("echo") && lines[1].contains("6000ms"), "{table}");
    assert_eq!(lines.len(), 4, "{table}");
    let out = cli(&host, &["fn", "get", "greet", "-o", "json"], "").await;
    let spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((spec["version"].clone(), spec["timeoutMs"].clone()), (json!(2), json!(6000)));
    let out = cli(&host, &["fn", "get", "greet", "-o", "yaml"], "").await;
    assert!(stdout(&out).contains("timeoutMs: 6000"), "{}", stdout(&out));

    // A refused spec: non-zero, the API's message on stderr, nothing applied.
    std::fs::write(&file, "name: Bad Name\n").unwrap();
    let out = cli(&host, &["fn", "apply", "-f", file_arg], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 400 INVALID_FUNCTION: name:"), "{}", stderr(&out));

    let out = cli(&host, &["fn", "delete", "third"], "").await;
    assert_eq!(stdout(&out), "function/third deleted\n");
    let out = cli(&host, &["fn", "get", "third"], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 404 FUNCTION_NOT_FOUND"), "{}", stderr(&out));
    assert!(host.stop().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_and_executions() {
    let host = Host::start(binary(), &[], &[]).await.unwrap();
    for spec in [
        json!({"name": "echo", "executionMode": "LOCAL"}),
        json!({"name": "fails", "dispatcher": "local", "command": ["sh", "-c", "echo broken >&2; exit 4"]}),
        json!({"name": "slow", "dispatcher": "local", "command": ["sh", "-c", "sleep 0.3; cat"], "timeoutMs": 10000}),
        json!({"name": "stuck", "dispatcher": "local", "command": ["sleep", "30"], "timeoutMs": 60000}),
    ] {
        let (status, body) = host.post("/v1/functions", spec).await.unwrap();
        assert_eq!(status, 201, "{body}");
    }

    let out = cli(&host, &["invoke", "echo", "-d", r#"{"a": [1, 2]}"#], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"a\":[1,2]}\n");
    let out = cli(&host, &["invoke", "echo"], "\"from stdin\"").await;
    assert_eq!(stdout(&out), "from stdin\n");
    let out = cli(&host, &["invoke", "echo", "-d", "7", "-o", "json"], "").await;
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((response["status"].clone(), response["output"].clone()), (json!("success"), json!(7)));

    // A failed execution: exit status 3 and the error on stderr.
    let out = cli(&host, &["invoke", "fails", "-d", "1"], "").await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("ended error: FUNCTION_ERROR"), "{}", stderr(&out));
    // An API error: 1.
    let out = cli(&host, &["invoke", "nope", "-d", "1"], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 404 FUNCTION_NOT_FOUND"), "{}", stderr(&out));
    let out = cli(&host, &["invoke", "echo", "-d", "not json"], "").await;
    assert_eq!(out.status.code(), Some(1));

    // --async prints the id; exec get shows the result.
    let out = cli(&host, &["invoke", "echo", "--async", "-d", "5"], "").await;
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 36, "{id}");
    let out = cli(&host, &["exec", "get", &id, "--watch", "-o", "json"], "").await;
    let exec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((exec["status"].clone(), exec["output"].clone()), (json!("success"), json!(5)));
    let out = cli(&host, &["exec", "get", &id], "").await;
    assert!(stdout(&out).contains("status     success"), "{}", stdout(&out));

    // --wait follows to the end; piped, it prints only the result.
    let out = cli(&host, &["invoke", "slow", "--wait", "-d", "\"z\""], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("status     success"), "{}", stdout(&out));
    assert!(stderr(&out).is_empty(), "no progress display when piped: {}", stderr(&out));

    // Cancel a running execution; a second cancel is refused with its state.
    let out = cli(&host, &["invoke", "stuck", "--async", "-d", "1"], "").await;
    let id = stdout(&out).trim().to_string();
    for _ in 0..200 {
        let (_, body) = host.get(&format!("/v1/executions/{id}")).await.unwrap();
        if body["status"] == "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let out = cli(&host, &["exec", "cancel", &id, "-o", "json"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let exec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(exec["status"], "cancelled");
    let out = cli(&host, &["exec", "cancel", &id], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 409 EXECUTION_ENDED"), "{}", stderr(&out));
    let out = cli(&host, &["exec", "get", &id], "").await;
    assert_eq!(out.status.code(), Some(3), "a cancelled execution is not a success");

    let out = cli(&host, &["plugins", "list"], "").await;
    let table = stdout(&out);
    assert!(
        table.lines().any(|l| l.starts_with("local") && l.contains("log,process") && l.contains("built-in")),
        "{table}"
    );
    assert!(host.stop().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_a_local_process_while_it_runs_and_after() {
    let host = Host::start(binary(), &[], &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let script = r#"echo 'line one' >&2; echo started >&2; while [ ! -e "$GATE" ]; do sleep 0.01; done; echo 'last words' >&2; cat"#;
    let spec = json!({"name": "talks", "dispatcher": "local", "command": ["sh", "-c", script],
                      "env": {"GATE": gate.to_str().unwrap()}, "timeoutMs": 30000});
    let (status, body) = host.post("/v1/functions", spec).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = host.post("/v1/functions", json!({"name": "echo", "executionMode": "LOCAL"})).await.unwrap();
    assert_eq!(status, 201, "{body}");

    let out = cli(&host, &["invoke", "talks", "--async", "-d", "1"], "").await;
    let id = stdout(&out).trim().to_string();
    // While it runs (it waits for the gate), its stderr so far.
    let mut seen = Value::Null;
    for _ in 0..500 {
        let (status, body) = host.get(&format!("/v1/executions/{id}/logs")).await.unwrap();
        if status == 200 && body["logs"][0]["text"].as_str().is_some_and(|t| t.contains("started")) {
            seen = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen["logs"][0]["source"], "process", "{seen}");
    assert_eq!(seen["logs"][0]["text"], "line one\nstarted\n");
    let (_, exec) = host.get(&format!("/v1/executions/{id}")).await.unwrap();
    assert_eq!(exec["status"], "running");

    std::fs::write(&gate, "").unwrap();
    let out = cli(&host, &["exec", "get", &id, "--watch"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    // After it ended, all of it, as the CLI prints it.
    let out = cli(&host, &["exec", "logs", &id], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "line one\nstarted\nlast words\n");

    // An execution that ran nothing with logs: a 404 that says why.
    let (_, body) = host.post("/v1/functions/echo:invoke", json!({"input": 1})).await.unwrap();
    let echo = body["executionId"].as_str().unwrap().to_string();
    let out = cli(&host, &["exec", "logs", &echo], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 404 LOGS_NOT_AVAILABLE"), "{}", stderr(&out));
    assert!(stderr(&out).contains("dispatcher `echo`"), "{}", stderr(&out));
    assert!(host.stop().await.unwrap().success());
}

#[tokio::test]
async fn completions_and_an_unreachable_server() {
    let out = tokio::process::Command::new(binary()).args(["completions", "bash"]).output().await.unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("nanofaas") && script.contains("invoke"), "{script}");
    let out = tokio::process::Command::new(binary())
        .args(["fn", "list", "--server", "http://127.0.0.1:9"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the nanofaas API"));
}
