//! The API contract: schemathesis (from PyPI; `scripts/schemathesis.sh` installs it) fuzzes a
//! real host with the OpenAPI document it serves, and fails on any response the document does
//! not describe (status, content type, headers, body schema), any input the document forbids
//! that the host accepts, an operation that ignores authentication, and any 5xx that is not an
//! execution's own failure (`tests/contract/checks.py`).

use std::path::{Path, PathBuf};
use std::process::Output;

use nanofaas_test_support::{Host, repo_root};
use sha2::{Digest, Sha256};

const TOKEN: &str = "contract-test-token";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

/// schemathesis's `st`: `NANOFAAS_SCHEMATHESIS`, else where the setup script installs it.
fn schemathesis() -> PathBuf {
    if let Some(st) = std::env::var_os("NANOFAAS_SCHEMATHESIS") {
        return st.into();
    }
    let out = std::process::Command::new(repo_root().join("scripts/schemathesis.sh"))
        .output()
        .expect("run scripts/schemathesis.sh");
    assert!(out.status.success(), "scripts/schemathesis.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).expect("a path").trim())
}

/// A host with authentication on, the `echo` example function, and no process or Kubernetes
/// capability (the fuzzer registers functions of its own).
async fn host(dir: &Path) -> Host {
    let tokens = dir.join("tokens.yaml");
    let digest = hex::encode(Sha256::digest(TOKEN.as_bytes()));
    std::fs::write(&tokens, format!("tokens:\n  - {{name: contract, sha256: {digest}, scopes: [admin]}}\n")).unwrap();
    let functions = dir.join("functions.yaml");
    std::fs::write(&functions, "- {name: echo, dispatcher: echo, timeoutMs: 5000}\n").unwrap();
    let args = [
        "--auth-tokens",
        tokens.to_str().unwrap(),
        "--functions",
        functions.to_str().unwrap(),
        "--no-local-exec",
        "--no-kubernetes",
    ];
    Host::start(binary(), &args, &[]).await.unwrap()
}

/// `st run` of `schema` against `host`, with the extra `args`.
async fn run(host: &Host, schema: &str, args: &[&str]) -> Output {
    let contract = repo_root().join("tests/contract");
    let reports = tempfile::tempdir().unwrap();
    tokio::process::Command::new(schemathesis())
        .arg("--config-file")
        .arg(contract.join("schemathesis.toml"))
        .args(["--no-color", "run", schema])
        .args(["--url", &host.api])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--report-dir", reports.path().to_str().unwrap()])
        .args(args)
        .env("SCHEMATHESIS_HOOKS", contract.join("checks.py"))
        .current_dir(reports.path())
        .output()
        .await
        .expect("run schemathesis")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path()).await;
    let schema = host.url("/openapi.json");
    // Every phase and check, as tests/contract/schemathesis.toml sets them.
    let out = run(&host, &schema, &[]).await;
    let report = text(&out);
    assert!(out.status.success(), "schemathesis found what the document does not describe:\n{report}");
    assert!(report.contains("Stateful"), "the stateful phase did not run:\n{report}");
}

/// The harness can fail: a document that lies about one response is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_lies_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path()).await;
    let mut doc: serde_json::Value = serde_json::from_str(&nanofaas::api::document_json()).unwrap();
    // GET /v1/functions answers a list; say it answers an integer.
    doc["paths"]["/v1/functions"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] =
        serde_json::json!({"type": "integer"});
    let file = dir.path().join("lying.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = run(
        &host,
        file.to_str().unwrap(),
        &["--include-path", "/v1/functions", "--include-method", "GET", "--max-examples", "5"],
    )
    .await;
    let report = text(&out);
    assert!(!out.status.success(), "schemathesis passed a document that lies:\n{report}");
    assert!(report.contains("Response violates schema"), "not caught as a schema violation:\n{report}");
}
