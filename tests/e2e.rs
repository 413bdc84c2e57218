//! End to end: the real `nanofaas` binary on loopback, driven over HTTP.

use std::path::Path;

use nanofaas_test_support::{Host, artifacts, plugin_dir};
use serde_json::json;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_register_invoke_enqueue_and_stop() {
    // Listen addresses come from NANOFAAS_* environment variables (set by Host::start).
    let host = Host::start(binary(), &[], &[("NANOFAAS_MAX_BODY_BYTES", "4096")]).await.unwrap();

    let (status, body) = host.post("/v1/functions", json!({"name": "echo", "executionMode": "LOCAL"})).await.unwrap();
    assert_eq!(status, 201, "{body}");

    let (status, body) = host.post("/v1/functions/echo:invoke", json!({"input": {"message": "hi"}})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], json!({"message": "hi"}));

    let (status, body) = host.post("/v1/functions/echo:enqueue", json!({"input": 7})).await.unwrap();
    assert_eq!((status, body["status"].clone()), (202, json!("queued")));
    let id = body["executionId"].as_str().unwrap().to_string();
    let mut last = json!(null);
    for _ in 0..100 {
        let (status, body) = host.get(&format!("/v1/executions/{id}")).await.unwrap();
        assert_eq!(status, 200);
        if body["status"] == "success" {
            last = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(last["output"], json!(7), "{last}");

    // The body limit came from the environment too.
    let (status, body) = host.post("/v1/functions/echo:invoke", json!({"input": "x".repeat(5000)})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (413, json!("PAYLOAD_TOO_LARGE")));

    let metrics = host.client.get(format!("{}/metrics", host.admin)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"nanofaas_invocations_total{dispatcher="echo",function="echo",outcome="success"} 2"#),
        "{metrics}"
    );
    let ready = host.client.get(format!("{}/health/ready", host.admin)).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let exit = host.stop().await.unwrap();
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_file_is_registered_at_start() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "- name: greet\n  executionMode: LOCAL\n  timeoutMs: 2000\n").unwrap();
    let path = file.path().to_str().unwrap();
    let host = Host::start(binary(), &["--functions", path], &[]).await.unwrap();
    let (status, body) = host.get("/v1/functions/greet").await.unwrap();
    assert_eq!((status, body["timeoutMs"].clone()), (200, json!(2000)));
    host.stop().await.unwrap();
}

/// Follows docs/plugins.md: a plugin built outside the host (`examples/plugins/uppercase`),
/// dropped into a plugin directory, serving a function. Bad files beside it are refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_in_plugin_serves_a_function() {
    let dir = plugin_dir(&[
        ("uppercase.wasm", Path::new(artifacts::UPPERCASE)),
        ("echo.wasm", Path::new(artifacts::UPPERCASE)),
    ])
    .unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"definitely not wasm").unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let host = Host::start(binary(), &["--plugin-dir", dir_arg], &[]).await.unwrap();

    let logs = host.logs();
    assert!(logs.contains("plugin refused") && logs.contains("broken.wasm"), "{logs}");
    assert!(logs.contains("already taken by a built-in plugin"), "{logs}");

    let spec = json!({"name": "shout", "dispatcher": "uppercase", "dispatcherConfig": {"prefix": "> "}});
    let (status, body) = host.post("/v1/functions", spec).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = host.post("/v1/functions/shout:invoke", json!({"input": "hello"})).await.unwrap();
    assert_eq!((status, body["output"].clone()), (200, json!("> HELLO")));
    let (status, body) = host.post("/v1/functions/shout:invoke", json!({"input": 5})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (500, json!("FUNCTION_ERROR")));

    let bad = json!({"name": "bad", "dispatcher": "uppercase", "dispatcherConfig": {"prefx": 1}});
    let (status, body) = host.post("/v1/functions", bad).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (400, json!("DISPATCHER_REFUSED")));
    assert!(body["error"]["message"].as_str().unwrap().contains("prefx"), "{body}");

    let (status, body) = host.post("/v1/functions", json!({"name": "x", "dispatcher": "nope"})).await.unwrap();
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("uppercase") && message.contains("echo"), "{message}");
    host.stop().await.unwrap();

    // `nanofaas plugins` shows the same picture without serving.
    let out = std::process::Command::new(binary()).args(["plugins", "--plugin-dir", dir_arg]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("uppercase") && text.contains("refused"), "{text}");
}
