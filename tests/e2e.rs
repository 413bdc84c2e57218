//! End to end: the real `nanofaas` binary on loopback, driven over HTTP.

use std::path::Path;

use nanofaas_test_support::{Host, artifacts, example_functions, plugin_dir, repo_root};
use serde_json::json;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_register_invoke_enqueue_and_stop() {
    // Listen addresses come from NANOFAAS_* environment variables (set by Host::start).
    let host = Host::start(
        binary(),
        &[],
        &[("NANOFAAS_MAX_BODY_BYTES", "4096"), ("NANOFAAS_LOG_FORMAT", "json"), ("NANOFAAS_ACCESS_LOG", "true")],
    )
    .await
    .unwrap();

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

    // Structured logs: one JSON object per line, the access lines of executions carrying their ids.
    let logs = host.logs_when(|l| l.matches("execution finished").count() >= 2).await;
    let finished: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v| v["message"] == "execution finished")
        .collect();
    assert_eq!(finished.len(), 2, "{logs}");
    for v in &finished {
        assert_eq!(v["function"], "echo");
        assert_eq!(v["attempt"], 1);
        assert_eq!(v["trace_id"].as_str().map(str::len), Some(32), "{v}");
        assert_eq!(v["execution_id"].as_str().map(str::len), Some(36), "{v}");
    }
    assert!(finished.iter().any(|v| v["execution_id"] == id.as_str()));

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
    // A functions file naming the refused plugin does not stop the start.
    let functions = tempfile::NamedTempFile::new().unwrap();
    let file = "- {name: fragile, dispatcher: broken}\n- {name: scaled, executionMode: LOCAL, scalingConfig: {minReplicas: 2}}\n";
    std::fs::write(functions.path(), file).unwrap();
    let functions_arg = functions.path().to_str().unwrap();
    let host = Host::start(binary(), &["--plugin-dir", dir_arg, "--functions", functions_arg], &[]).await.unwrap();

    let logs = host
        .logs_when(|l| l.contains("broken.wasm") && l.contains("already taken") && l.contains("spec warning"))
        .await;
    // What the file says that is not acted on is logged, as the API answers it in headers.
    assert!(logs.contains("function spec warning") && logs.contains("scalingConfig is ignored"), "{logs}");
    assert!(logs.contains("plugin refused") && logs.contains("broken.wasm"), "{logs}");
    assert!(logs.contains("already taken by a built-in plugin"), "{logs}");
    // Its function is there, unavailable: its invocations say why, nothing is accepted.
    let (status, body) = host.post("/v1/functions/fragile:invoke", json!({"input": 1})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (503, json!("PLUGIN_UNAVAILABLE")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("`broken`") && message.contains("its file was refused"), "{message}");

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

    // `nanofaas plugins check` shows the same picture without serving, and fails for the refusals.
    let out =
        std::process::Command::new(binary()).args(["plugins", "check", "--plugin-dir", dir_arg]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("uppercase") && text.contains("refused"), "{text}");
    assert!(!out.status.success(), "a refused file fails the check");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 plugin file(s) refused"));
    std::fs::remove_file(dir.path().join("broken.wasm")).unwrap();
    std::fs::remove_file(dir.path().join("echo.wasm")).unwrap();
    let out =
        std::process::Command::new(binary()).args(["plugins", "check", "--plugin-dir", dir_arg]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // A grant for a plugin that has no file is a mistake, not a no-op.
    let out = std::process::Command::new(binary())
        .args(["plugins", "check", "--plugin-dir", dir_arg, "--grant", "uppercse=http"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no uppercse.wasm") && err.contains("uppercase"), "{err}");

    // Per-plugin limits and grants from the plugin config file, checked as `serve` would.
    let check = |config: &str| {
        let file = dir.path().join("plugins.yaml");
        std::fs::write(&file, config).unwrap();
        std::process::Command::new(binary())
            .args(["plugins", "check", "--plugin-dir", dir_arg, "--plugin-config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out =
        check("plugins:\n  uppercase: {capabilities: [http], instances: 2, logLines: 5}\n  echo: {cpuBudgetMs: 20}\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text.lines().find(|l| l.starts_with("uppercase")).unwrap();
    assert!(line.contains("http"), "the file's capabilities are granted: {line}");
    for (config, needle) in [
        ("plugins:\n  uppercse: {instances: 1}\n", "`uppercse`: there is no plugin of that name"),
        ("plugins:\n  echo: {capabilities: [http]}\n", "a built-in plugin's capabilities are fixed"),
        ("plugins:\n  uppercase: {memoryMib: 4096}\n", "more than an instance slot has"),
        ("plugins:\n  uppercase: {instances: 0}\n", "instances must be at least 1"),
        ("plugins:\n  uppercase: {logLine: 5}\n", "unknown field `logLine`"),
    ] {
        let out = check(config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{config}: {err}");
    }

    // A plugin importing a capability it is not granted: a warning line, or with
    // `--plugin-imports refuse` a refusal. (The testkit imports `http`.)
    std::fs::copy(artifacts::TESTKIT, dir.path().join("relay.wasm")).unwrap();
    let imports = |policy: &str| {
        std::process::Command::new(binary())
            .args(["plugins", "check", "--plugin-dir", dir_arg, "--plugin-imports", policy])
            .output()
            .unwrap()
    };
    let out = imports("warn");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("warning      relay: needs http and is not granted it"), "{text}");
    let out = imports("refuse");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("refused") && text.contains("--grant relay=http"), "{text}");
}

/// The README's walkthrough: the example functions, served as the run command serves them,
/// answer what the README shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_functions_answer_as_documented() {
    // The warm endpoint of the `reverse` pool function.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut endpoint = tokio::process::Command::new("python3")
        .arg(repo_root().join("examples/functions/python/pool_server.py"))
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(endpoint.stdout.take().unwrap()));
    ready.next_line().await.unwrap().expect("the endpoint starts");

    let functions = example_functions(binary()).unwrap();
    let text =
        std::fs::read_to_string(functions.path()).unwrap().replace("127.0.0.1:9090", &format!("127.0.0.1:{port}"));
    std::fs::write(functions.path(), text).unwrap();
    let host = Host::start(binary(), &["--functions", functions.path().to_str().unwrap()], &[]).await.unwrap();

    let (status, body) = host
        .post("/v1/functions/wordcount:invoke", json!({"input": {"text": "the cat and the hat and the bat"}}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["output"].clone()),
        (200, json!({"words": 8, "top": [["the", 3], ["and", 2], ["cat", 1]]})),
        "{body}"
    );

    let r = host
        .client
        .post(host.url("/v1/functions/greet:invoke"))
        .header("content-type", "application/octet-stream")
        .body("Ada")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["output"], "Hello, Ada! (function greet, attempt 1)\n", "{body}");
    assert_eq!(body["outputContentType"], "text/plain");

    let (status, body) = host.post("/v1/functions/primes:invoke", json!({"input": {"limit": 1000000}})).await.unwrap();
    assert_eq!(
        (status, body["output"].clone()),
        (200, json!({"limit": 1000000, "count": 78498, "largest": 999983})),
        "{body}"
    );

    let (status, body) = host.post("/v1/functions/primes:invoke", json!({"input": {"limit": "lots"}})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (500, json!("FUNCTION_ERROR")), "{body}");

    let (status, body) =
        host.post("/v1/functions/reverse:invoke", json!({"input": {"text": "nanofaas"}})).await.unwrap();
    assert_eq!((status, body["output"]["reversed"].clone()), (200, json!("saafonan")), "{body}");
    assert_eq!(body["output"]["executionId"], body["executionId"]);

    let (status, body) =
        host.post("/v1/functions/wordcount:enqueue", json!({"input": "to be or not to be"})).await.unwrap();
    assert_eq!(status, 202);
    let id = body["executionId"].as_str().unwrap().to_string();
    let mut last = json!(null);
    for _ in 0..200 {
        let (_, body) = host.get(&format!("/v1/executions/{id}")).await.unwrap();
        if body["status"] == "success" {
            last = body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(last["output"], json!({"words": 6, "top": [["to", 2], ["be", 2], ["or", 1]]}), "{last}");

    let started = std::time::Instant::now();
    let (status, body) = host.post("/v1/functions/slow:invoke", json!({"input": 5})).await.unwrap();
    assert_eq!((status, body["status"].clone()), (504, json!("timeout")), "{body}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(2000));
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_running_execution_and_kills_its_process() {
    let host = Host::start(binary(), &[], &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    let spec = json!({"name": "stuck", "dispatcher": "local", "command": ["sh", "-c", script], "timeoutMs": 60000});
    let (status, body) = host.post("/v1/functions", spec).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = host.post("/v1/functions/stuck:enqueue", json!({"input": 1})).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["executionId"].as_str().unwrap().to_string();
    let mut pid = None;
    for _ in 0..500 {
        pid = std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse::<u32>().ok());
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pid = pid.expect("the function started");
    let alive = || Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive());

    let (status, body) = host.post(&format!("/v1/executions/{id}:cancel"), json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["error"]["code"], "CANCELLED");
    for _ in 0..500 {
        if !alive() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!alive(), "the process was killed with its execution");

    // A second cancel: 409 with the state it had ended in.
    let (status, body) = host.post(&format!("/v1/executions/{id}:cancel"), json!({})).await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].clone(), body["status"].clone()),
        (409, json!("EXECUTION_ENDED"), json!("cancelled"))
    );
    let (status, body) = host.get(&format!("/v1/executions/{id}")).await.unwrap();
    assert_eq!((status, body["status"].clone()), (200, json!("cancelled")));
    let (status, body) = host.post("/v1/executions/nope:cancel", json!({})).await.unwrap();
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("EXECUTION_NOT_FOUND")));
    let (status, _) = host.post(&format!("/v1/executions/{id}:pause"), json!({})).await.unwrap();
    assert_eq!(status, 404);
    assert!(host.stop().await.unwrap().success());
}

/// The digest `GET /v1/plugins` shows for `name`, if it is loaded.
async fn digest_of(host: &Host, name: &str) -> Option<String> {
    let (_, list) = host.get("/v1/plugins").await.unwrap();
    list.as_array()?.iter().find(|p| p["name"] == name).map(|p| p["digest"].as_str().unwrap().to_string())
}

/// Polls until `digest_of(name)` is not `was` (10 s at most).
async fn digest_change(host: &Host, name: &str, was: Option<&str>) -> Option<String> {
    for _ in 0..500 {
        let now = digest_of(host, name).await;
        if now.as_deref() != was {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the digest of `{name}` stayed {was:?}; logs:\n{}", host.logs())
}

/// Puts `bytes` into the plugin directory as `name` the way an operator should: written
/// beside it, then renamed over it.
fn drop_in(dir: &Path, name: &str, bytes: &[u8]) {
    let staged = dir.join(format!(".{name}.partial"));
    std::fs::write(&staged, bytes).unwrap();
    std::fs::rename(&staged, dir.join(name)).unwrap();
}

/// A plugin file changed while the host runs is loaded by its digest; a bad one leaves the
/// loaded version serving; a removed one stays while functions use it; SIGHUP reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_reloaded_by_digest_while_the_host_runs() {
    let dir = plugin_dir(&[("up.wasm", Path::new(artifacts::UPPERCASE))]).unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let args = ["--plugin-dir", dir_arg, "--plugin-scan-interval-ms", "50"];
    let host = Host::start(binary(), &args, &[]).await.unwrap();
    let spec = json!({"name": "f", "dispatcher": "up", "dispatcherConfig": {"prefix": "> "}});
    assert_eq!(host.post("/v1/functions", spec).await.unwrap().0, 201);
    let invoke =
        || async { host.post("/v1/functions/f:invoke", json!({"input": "hello"})).await.unwrap().1["output"].clone() };
    assert_eq!(invoke().await, json!("> HELLO"));
    let first = digest_of(&host, "up").await.unwrap();
    assert!(first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");

    // Changed: the new component serves (testkit echoes), under a new digest, in the metrics too.
    drop_in(dir.path(), "up.wasm", &std::fs::read(artifacts::TESTKIT).unwrap());
    let second = digest_change(&host, "up", Some(&first)).await.unwrap();
    assert_eq!(invoke().await, json!("hello"));
    let metrics = host.client.get(format!("{}/metrics", host.admin)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!(r#"nanofaas_plugin_info{{digest="{second}",plugin="up",source="up.wasm"}} 1"#)),
        "{metrics}"
    );
    assert!(!metrics.contains(&first), "the old version is gone from the metrics");

    // A file that does not load: the loaded version keeps serving, and the log says why.
    drop_in(dir.path(), "up.wasm", b"not a component");
    let logs = host.logs_when(|l| l.contains("the loaded version keeps serving")).await;
    assert!(logs.contains("not a valid WebAssembly component"), "{logs}");
    assert_eq!(digest_of(&host, "up").await.as_deref(), Some(second.as_str()));
    assert_eq!(invoke().await, json!("hello"));

    // Removed while a function uses it: kept. Once the function is gone, SIGHUP unloads it.
    std::fs::remove_file(dir.path().join("up.wasm")).unwrap();
    host.logs_when(|l| l.contains("functions use it")).await;
    assert_eq!(digest_of(&host, "up").await.as_deref(), Some(second.as_str()));
    let deleted = host.client.delete(host.url("/v1/functions/f")).send().await.unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(host.pid().unwrap() as i32), nix::sys::signal::Signal::SIGHUP)
        .unwrap();
    assert_eq!(digest_change(&host, "up", Some(&second)).await, None, "unloaded");
    // (The log line was written before the reload; the log thread may deliver it a moment later.)
    let logs = host.logs_when(|l| l.contains("SIGHUP: reading the plugin directory again")).await;
    assert!(logs.contains("SIGHUP: reading the plugin directory again"), "{logs}");

    // A new file is picked up; the host survived the signal.
    drop_in(dir.path(), "late.wasm", &std::fs::read(artifacts::UPPERCASE).unwrap());
    assert_eq!(digest_change(&host, "late", None).await, Some(first));
    host.stop().await.unwrap();
}

/// A plugin pinned to a digest loads only from a file with that digest, at start and later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_plugin_loads_only_the_file_it_is_pinned_to() {
    use sha2::Digest as _;
    let wanted = std::fs::read(artifacts::UPPERCASE).unwrap();
    let pin = format!("up=sha256:{}", hex::encode(sha2::Sha256::digest(&wanted)));
    let dir = plugin_dir(&[("up.wasm", Path::new(artifacts::TESTKIT))]).unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let args = ["--plugin-dir", dir_arg, "--plugin-scan-interval-ms", "50", "--pin", pin.as_str()];
    let host = Host::start(binary(), &args, &[]).await.unwrap();
    let logs = host.logs_when(|l| l.contains("is pinned to sha256")).await;
    assert!(logs.contains("plugin refused") && logs.contains("is pinned to sha256"), "{logs}");
    assert_eq!(digest_of(&host, "up").await, None, "the other file was refused");
    drop_in(dir.path(), "up.wasm", &wanted);
    let loaded = digest_change(&host, "up", None).await.unwrap();
    assert_eq!(format!("up=sha256:{loaded}"), pin);
    host.stop().await.unwrap();

    // A pin for a plugin of no directory is a mistake, said at start.
    let out = std::process::Command::new(binary())
        .args(["serve", "--pin", pin.as_str()])
        .env("NANOFAAS_LISTEN", "127.0.0.1:0")
        .env("NANOFAAS_ADMIN_LISTEN", "127.0.0.1:0")
        .env("NANOFAAS_STORE", "memory:")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pins are for plugins of --plugin-dir"));
}

/// An execution that started on one version of a plugin is polled and released by that version
/// to its end, even when a new one is swapped in meanwhile; executions started later get the new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_in_flight_finishes_on_the_plugin_version_it_started_with() {
    let dir = plugin_dir(&[("kit.wasm", Path::new(artifacts::TESTKIT))]).unwrap();
    let args = ["--plugin-dir", dir.path().to_str().unwrap(), "--plugin-scan-interval-ms", "50"];
    let host = Host::start(binary(), &args, &[]).await.unwrap();
    // Pending, polled every 100 ms, done at the 8th poll: it outlives the swap below.
    let config = json!({"behavior": "pending", "pollAfterMs": 100, "completeAfterPolls": 8});
    let spec = json!({"name": "long", "dispatcher": "kit", "dispatcherConfig": config});
    assert_eq!(host.post("/v1/functions", spec).await.unwrap().0, 201);
    let (status, body) = host.post("/v1/functions/long:enqueue", json!({"input": 1})).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["executionId"].as_str().unwrap().to_string();
    let first = digest_of(&host, "kit").await.unwrap();

    drop_in(dir.path(), "kit.wasm", &std::fs::read(artifacts::UPPERCASE).unwrap());
    digest_change(&host, "kit", Some(&first)).await.unwrap();
    let mut exec = serde_json::Value::Null;
    for _ in 0..500 {
        exec = host.get(&format!("/v1/executions/{id}")).await.unwrap().1;
        if exec["status"] != "queued" && exec["status"] != "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Only the old version (testkit) answers a poll with its count; uppercase has no such state.
    assert_eq!((exec["status"].clone(), exec["output"].clone()), (json!("success"), json!({"polls": 8})), "{exec}");
    let logs = host.logs_when(|l| l.contains("released h")).await;
    assert!(logs.contains("released h"), "the old version released its own handle: {logs}");
    // A new execution of the function runs on the new version, which refuses testkit's config.
    let (_, body) = host.post("/v1/functions/long:invoke", json!({"input": "x"})).await.unwrap();
    assert_ne!(body["output"], json!({"polls": 8}), "{body}");
    host.stop().await.unwrap();
}
