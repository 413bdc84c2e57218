//! Reporting the result: the termination message (≤ 4 KiB) and the callback.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::Invocation;
use crate::function::Output;
use crate::log;

use nanofaas_contract::callback;
use nanofaas_contract::termination::Envelope;
pub use nanofaas_contract::termination::LIMIT as TERMINATION_LIMIT;

/// Why there is no output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub exit_code: Option<i32>,
}

impl Failure {
    pub fn function(message: String, exit_code: Option<i32>) -> Self {
        Self { code: "FUNCTION_ERROR".into(), message, exit_code }
    }

    pub fn platform(code: &str, message: String) -> Self {
        Self { code: code.into(), message, exit_code: None }
    }
}

/// The envelope written to the termination-message path: the output when it fits, else its
/// size and SHA-256; for a failure, the error with its message shortened to fit.
pub fn envelope(result: &Result<Output, Failure>) -> String {
    match result {
        Ok(output) => {
            let full = Envelope::Output(output.to_string()).to_json();
            if full.len() <= TERMINATION_LIMIT {
                return full;
            }
            let digest = Sha256::digest(output.as_bytes());
            let sha256: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            Envelope::TooLarge { size: output.len() as u64, sha256 }.to_json()
        }
        Err(f) => {
            let mut message = f.message.clone();
            loop {
                let doc = Envelope::Error { code: f.code.clone(), message: message.clone(), exit_code: f.exit_code }
                    .to_json();
                if doc.len() <= TERMINATION_LIMIT {
                    return doc;
                }
                let keep = message.chars().count().saturating_sub(doc.len() - TERMINATION_LIMIT + 16);
                message = message.chars().take(keep).collect::<String>() + "…";
            }
        }
    }
}

pub fn termination_message(inv: &Invocation, result: &Result<Output, Failure>) {
    if let Err(e) = std::fs::write(&inv.termination_path, envelope(result)) {
        log::event(
            "cannot write the termination message",
            &[("path", inv.termination_path.clone().into()), ("error", e.to_string().into())],
        );
    }
}

/// The callback body: nanofaas's `{success, output, error}`.
pub fn callback_body(result: &Result<Output, Failure>) -> String {
    match result {
        Ok(output) => callback::success(output),
        Err(f) => callback::failure(&f.code, &f.message),
    }
}

/// POSTs the result until it is accepted, refused for good, or the deadline passes.
pub async fn callback(inv: &Invocation, result: &Result<Output, Failure>) {
    let Some(url) = &inv.callback_url else {
        log::event("no callback URL; the result is in the termination message", &[]);
        return;
    };
    let client = reqwest::Client::new();
    let body = callback_body(result);
    let mut delay = Duration::from_millis(100);
    // Until the deadline, or for the budget the dispatcher gave (a status-following dispatcher
    // reads the termination message once the pod exits, so there is no point in waiting long).
    let give_up = inv.callback_budget.map(|b| std::time::Instant::now() + b);
    for attempt in 1.. {
        let remaining = match give_up {
            Some(at) => inv.remaining().min(at.saturating_duration_since(std::time::Instant::now())),
            None => inv.remaining(),
        };
        if remaining.is_zero() {
            let why = if give_up.is_some() {
                "callback abandoned after its budget"
            } else {
                "callback abandoned at the deadline"
            };
            log::event(why, &[("attempts", (attempt - 1).into())]);
            return;
        }
        let sent = client
            .post(url)
            .bearer_auth(&inv.callback_token)
            .header("content-type", "application/json")
            .header("x-trace-id", &inv.trace_id)
            .timeout(remaining.min(Duration::from_secs(10)))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let outcome = r.json::<Value>().await.ok().and_then(|v| v["outcome"].as_str().map(str::to_string));
                log::event("callback delivered", &[("attempt", attempt.into()), ("outcome", outcome.into())]);
                return;
            }
            Ok(r) if r.status().is_client_error() => {
                log::event("callback refused", &[("attempt", attempt.into()), ("status", r.status().as_u16().into())]);
                return;
            }
            Ok(r) => {
                log::event("callback failed", &[("attempt", attempt.into()), ("status", r.status().as_u16().into())])
            }
            Err(e) => log::event("callback failed", &[("attempt", attempt.into()), ("error", e.to_string().into())]),
        }
        tokio::time::sleep(delay.min(remaining)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_outputs_travel_in_the_termination_message() {
        let e = envelope(&Ok(r#"{"a":1}"#.into()));
        assert_eq!(e, r#"{"v":1,"success":true,"output":{"a":1}}"#);
    }

    #[test]
    fn large_outputs_become_size_and_digest() {
        let big = format!("\"{}\"", "x".repeat(5000));
        let e: Value = serde_json::from_str(&envelope(&Ok(big.clone()))).unwrap();
        assert_eq!(e["outputSize"], big.len());
        assert_eq!(e["outputSha256"].as_str().unwrap().len(), 64);
        assert!(e.get("output").is_none());
    }

    #[test]
    fn failures_fit_in_4_kib() {
        let f = Failure::function("y".repeat(10_000), Some(3));
        let text = envelope(&Err(f));
        assert!(text.len() <= TERMINATION_LIMIT, "{}", text.len());
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((e["exitCode"].as_i64(), e["error"]["code"].as_str()), (Some(3), Some("FUNCTION_ERROR")));
    }

    #[test]
    fn callback_bodies() {
        assert_eq!(callback_body(&Ok("[1]".into())), r#"{"success":true,"output":[1]}"#);
        let v: Value = serde_json::from_str(&callback_body(&Err(Failure::platform("TIMEOUT", "late".into())))).unwrap();
        assert_eq!(v, serde_json::json!({"success": false, "error": {"code": "TIMEOUT", "message": "late"}}));
    }
}
