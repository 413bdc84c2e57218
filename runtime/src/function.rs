//! Running the function program in one of the three modes, bounded by the deadline.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Invocation, Mode};
use crate::report::Failure;

/// Output JSON text of a successful function.
pub type Output = String;

/// The envelope the function receives (docs/runtime-contract.md).
fn envelope(inv: &Invocation, input: Vec<u8>) -> Vec<u8> {
    if nanofaas_contract::is_json(&inv.content_type) {
        let (prefix, suffix) = nanofaas_contract::json_envelope_parts(&inv.metadata);
        [prefix, &input, &suffix].concat()
    } else {
        nanofaas_contract::bytes_envelope(input, &inv.metadata)
    }
}

/// Output bytes as JSON text: kept when they are JSON, a JSON string otherwise.
fn as_json(bytes: &[u8]) -> Output {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return "null".into();
    }
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(_) => trimmed.to_string(),
        Err(_) => serde_json::Value::String(text.into_owned()).to_string(),
    }
}

pub async fn run(inv: &Invocation, command: &[String], input: Vec<u8>) -> Result<Output, Failure> {
    if command.is_empty() {
        return Err(Failure::platform("NO_COMMAND", "no function command was given".into()));
    }
    let envelope = envelope(inv, input);
    let work = async {
        match inv.mode {
            Mode::Stdio => stdio(command, envelope).await,
            Mode::File => file(command, envelope).await,
            Mode::Http => http(inv, command, envelope).await,
        }
    };
    match tokio::time::timeout(inv.remaining(), work).await {
        Ok(result) => result,
        Err(_) => Err(Failure::platform("TIMEOUT", "the function did not finish before the deadline".into())),
    }
}

fn spawn(command: &[String]) -> Result<tokio::process::Child, Failure> {
    tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::platform("FUNCTION_START_FAILED", format!("cannot start `{}`: {e}", command[0])))
}

/// Waits for the process and turns a failed exit into the function's error with stderr's tail.
async fn finish(mut child: tokio::process::Child) -> Result<Vec<u8>, Failure> {
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    // A pipe error only loses output; the exit status below still decides.
    let (_, _, status) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err), child.wait());
    let status = status.map_err(|e| Failure::platform("FUNCTION_LOST", e.to_string()))?;
    if status.success() {
        return Ok(out);
    }
    let tail = String::from_utf8_lossy(&err[err.len().saturating_sub(2048)..]).trim().to_string();
    let how = match status.code() {
        Some(code) => format!("exited with code {code}"),
        None => "was killed by a signal".to_string(),
    };
    Err(Failure::function(if tail.is_empty() { how } else { format!("{how}: {tail}") }, status.code()))
}

async fn stdio(command: &[String], envelope: Vec<u8>) -> Result<Output, Failure> {
    let mut child = spawn(command)?;
    let mut stdin = child.stdin.take().expect("piped");
    let feed = async move {
        let _ = stdin.write_all(&envelope).await;
    };
    let (_, out) = tokio::join!(feed, finish(child));
    Ok(as_json(&out?))
}

async fn file(command: &[String], envelope: Vec<u8>) -> Result<Output, Failure> {
    let dir = std::env::temp_dir().join(format!("nanofaas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Failure::platform("FILE_MODE", e.to_string()))?;
    let (input, output) = (dir.join("input.json"), dir.join("output.json"));
    std::fs::write(&input, envelope).map_err(|e| Failure::platform("FILE_MODE", e.to_string()))?;
    let child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("INPUT_FILE", &input)
        .env("OUTPUT_FILE", &output)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::platform("FUNCTION_START_FAILED", format!("cannot start `{}`: {e}", command[0])))?;
    finish(child).await?;
    let bytes = std::fs::read(&output)
        .map_err(|e| Failure::function(format!("the function wrote no OUTPUT_FILE: {e}"), None))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(as_json(&bytes))
}

async fn http(inv: &Invocation, command: &[String], envelope: Vec<u8>) -> Result<Output, Failure> {
    let mut server = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("PORT", inv.http_port.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::platform("FUNCTION_START_FAILED", format!("cannot start `{}`: {e}", command[0])))?;
    // Healthy when it accepts connections.
    let addr = ("127.0.0.1", inv.http_port);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = server.try_wait() {
            return Err(Failure::function(
                format!("the function server exited before it listened ({status})"),
                status.code(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://127.0.0.1:{}{}", inv.http_port, inv.http_path);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-execution-id", &inv.execution_id)
        .header("x-trace-id", &inv.trace_id)
        .body(envelope)
        .send()
        .await
        .map_err(|e| Failure::platform("FUNCTION_HTTP_FAILED", e.to_string()))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| Failure::platform("FUNCTION_HTTP_FAILED", e.to_string()))?;
    let _ = server.kill().await;
    if status.is_success() {
        Ok(as_json(&body))
    } else {
        let text = String::from_utf8_lossy(&body[..body.len().min(512)]).to_string();
        Err(Failure::function(format!("the function answered {status}: {text}"), None))
    }
}
