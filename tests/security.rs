//! The real `nanofaas` binary against hostile and careless setups: no authentication off
//! loopback, tokens rotated in a running host, clients that hold connections open, a stop while
//! a client holds a request open.

use std::path::Path;
use std::time::Duration;

use nanofaas_test_support::Host;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nanofaas"))
}

fn address(host: &Host) -> String {
    host.api.trim_start_matches("http://").to_string()
}

fn tokens_file(path: &Path, tokens: &[(&str, &str)]) {
    let mut text = String::from("tokens:\n");
    for (name, token) in tokens {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        text.push_str(&format!("  - {{name: {name}, sha256: {digest}, scopes: [admin]}}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Reads until the server closes the connection; the bytes read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn without_tokens_only_loopback_is_served() {
    let e = Host::start(binary(), &["--listen", "0.0.0.0:0"], &[]).await.err().expect("refused");
    let e = e.to_string();
    assert!(e.contains("refusing to serve the API on 0.0.0.0:0 without authentication"), "{e}");
    // Off loopback with tokens, or with the explicit opt-out, it starts.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    tokens_file(&file, &[("ops", "t0k")]);
    let host =
        Host::start(binary(), &["--listen", "0.0.0.0:0", "--auth-tokens", file.to_str().unwrap()], &[]).await.unwrap();
    host.stop().await.unwrap();
    let host = Host::start(binary(), &["--listen", "0.0.0.0:0", "--insecure-no-auth"], &[]).await.unwrap();
    host.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_are_rotated_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    tokens_file(&file, &[("old", "first-token")]);
    let host = Host::start(binary(), &["--auth-tokens", file.to_str().unwrap()], &[]).await.unwrap();
    let get = |token: &'static str| {
        let request = host.client.get(host.url("/v1/functions")).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(host.client.get(host.url("/v1/functions")).send().await.unwrap().status(), 401);
    assert_eq!(get("first-token").await, 200);
    tokens_file(&file, &[("new", "second-token")]);
    let mut rotated = false;
    for _ in 0..100 {
        if get("second-token").await == 200 {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the new token works without a restart; logs:\n{}", host.logs());
    assert_eq!(get("first-token").await, 401, "the old one is gone");
    // A broken file keeps the tokens in force.
    std::fs::write(&file, "tokens: [oops").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get("second-token").await, 200);
    let logs = host.logs_when(|l| l.contains("the token file is invalid")).await;
    assert!(logs.contains("the token file is invalid"), "{logs}");
    host.stop().await.unwrap();
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let host = Host::start(binary(), &["--header-read-timeout-ms", "500"], &[]).await.unwrap();
    // Headers a byte every 100 ms: 60 bytes would take 6 s; the host closes the connection first.
    let mut slow = TcpStream::connect(address(&host)).await.unwrap();
    let request =
        format!("GET /v1/functions HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n", address(&host), "a".repeat(40));
    let mut cut = false;
    for byte in request.as_bytes() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a client sending headers a byte at a time is cut off before it finishes");

    // A kept-alive connection that goes idle after its request is closed too.
    let mut idle = TcpStream::connect(address(&host)).await.unwrap();
    let request = format!("GET /v1/functions HTTP/1.1\r\nHost: {}\r\n\r\n", address(&host));
    idle.write_all(request.as_bytes()).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut idle)).await;
    let bytes = answered.expect("the idle connection is closed by the host");
    assert!(bytes.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&bytes));
    host.stop().await.unwrap();
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_one() {
    let host =
        Host::start(binary(), &["--max-connections", "2", "--header-read-timeout-ms", "60000"], &[]).await.unwrap();
    let mut holders =
        vec![TcpStream::connect(address(&host)).await.unwrap(), TcpStream::connect(address(&host)).await.unwrap()];
    // Give the host the moment it needs to accept both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = tokio::spawn({
        let client = host.client.clone();
        let url = host.url("/v1/functions");
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection is not served while two are open");
    holders.pop();
    let status = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("served").unwrap().unwrap();
    assert_eq!(status, 200);
    drop(holders);
    host.stop().await.unwrap();
}

#[tokio::test]
async fn a_stop_is_not_held_up_by_a_client_holding_a_request_open() {
    let host = Host::start(binary(), &["--shutdown-grace-ms", "1000"], &[]).await.unwrap();
    let (status, body) = host.post("/v1/functions", json!({"name": "echo", "executionMode": "LOCAL"})).await.unwrap();
    assert_eq!(status, 201, "{body}");
    // Headers complete, body promised and never sent: the request stays in flight.
    let mut holder = TcpStream::connect(address(&host)).await.unwrap();
    let request = format!(
        "POST /v1/functions/echo:invoke HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        address(&host)
    );
    holder.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Host::stop waits 30 s at most; the host's bound is the 1 s grace plus its hand-over.
    let status = host.stop().await.expect("the host stops while the client still holds its request");
    assert!(status.success(), "{status:?}");
    drop(holder);
}
