//! The invocation, from the environment the Job gives the container.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use nanofaas_contract::env;

/// How the function program is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The STDIO contract: envelope on stdin, output JSON on stdout.
    Stdio,
    /// The envelope in `INPUT_FILE`, the output JSON in `OUTPUT_FILE`.
    File,
    /// The function is an HTTP server on `PORT`; the envelope is POSTed to it.
    Http,
}

pub struct Invocation {
    pub execution_id: String,
    pub attempt: u32,
    pub trace_id: String,
    pub function: String,
    pub deadline: SystemTime,
    pub callback_url: Option<String>,
    pub callback_token: String,
    /// How long to keep trying the callback (never past the deadline); `None`: until the deadline.
    pub callback_budget: Option<Duration>,
    pub content_type: String,
    pub metadata: Vec<(String, String)>,
    inline: Option<String>,
    input_url: Option<String>,
    pub mode: Mode,
    pub termination_path: String,
    pub http_port: u16,
    pub http_path: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &str) -> anyhow::Result<String> {
    var(name).with_context(|| format!("{name} is not set"))
}

impl Invocation {
    pub fn from_env() -> anyhow::Result<Self> {
        let deadline_ms: u64 = required(env::DEADLINE_UNIX_MS)?.parse().context("DEADLINE_UNIX_MS is not a number")?;
        let metadata = match var(env::FUNCTION_METADATA) {
            Some(json) => {
                let map: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&json).context("FUNCTION_METADATA is not a JSON object")?;
                map.into_iter().map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect()
            }
            None => Vec::new(),
        };
        let mode = match var(env::RUNTIME_MODE).as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("STDIO") => Mode::Stdio,
            Some("FILE") => Mode::File,
            Some("HTTP") => Mode::Http,
            Some(other) => anyhow::bail!("RUNTIME_MODE `{other}` is not STDIO, FILE or HTTP"),
        };
        let inline = var(env::INVOCATION_PAYLOAD);
        let input_url = var(env::INPUT_URL);
        anyhow::ensure!(inline.is_some() || input_url.is_some(), "neither INVOCATION_PAYLOAD nor INPUT_URL is set");
        Ok(Self {
            execution_id: required(env::EXECUTION_ID)?,
            attempt: var(env::ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(1),
            trace_id: var(env::TRACE_ID).unwrap_or_default(),
            function: var(env::FUNCTION_NAME).unwrap_or_default(),
            deadline: UNIX_EPOCH + Duration::from_millis(deadline_ms),
            callback_url: var(env::CALLBACK_URL),
            callback_token: var(env::CALLBACK_TOKEN).unwrap_or_default(),
            callback_budget: var(env::CALLBACK_BUDGET_MS).and_then(|v| v.parse().ok()).map(Duration::from_millis),
            content_type: var(env::CONTENT_TYPE).unwrap_or_else(|| "application/json".into()),
            metadata,
            inline,
            input_url,
            mode,
            termination_path: var("TERMINATION_MESSAGE_PATH").unwrap_or_else(|| "/dev/termination-log".into()),
            http_port: var("PORT").and_then(|p| p.parse().ok()).unwrap_or(8080),
            http_path: var("FUNCTION_HTTP_PATH").unwrap_or_else(|| "/invoke".into()),
        })
    }

    /// Time left until the deadline (zero when past).
    pub fn remaining(&self) -> Duration {
        self.deadline.duration_since(SystemTime::now()).unwrap_or_default()
    }

    /// The input bytes: inline, or fetched from the host with the execution's token.
    pub async fn input(&self) -> anyhow::Result<Vec<u8>> {
        if let Some(inline) = &self.inline {
            return Ok(inline.clone().into_bytes());
        }
        let url = self.input_url.as_deref().expect("checked in from_env");
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(&self.callback_token)
            .timeout(self.remaining())
            .send()
            .await?
            .error_for_status()?;
        Ok(response.bytes().await?.to_vec())
    }
}
