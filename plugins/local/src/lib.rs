//! The `local` dispatcher plugin: runs the function's `command` as a local process.
//!
//! The STDIO contract (docs/runtime-contract.md), shared with `nanofaas-runtime` in Job pods:
//! - JSON mode (default): stdin is `{"input": <input>, "metadata": {<caller's metadata>}}`;
//!   stdout is the output JSON; exit 0 is success.
//! - raw mode: stdin is the input bytes unchanged; stdout is the output bytes, with the content
//!   type from `outputContentType` (default `application/octet-stream`).
//! - A non-zero exit (or a signal) is the function's error, `FUNCTION_ERROR`, with the end of
//!   stderr as the message; stdout beyond the host's bound is `OUTPUT_TOO_LARGE`.
//! - `FUNCTION_NAME`, `EXECUTION_ID`, `ATTEMPT`, `TRACE_ID` and `DEADLINE_UNIX_MS` are set in the
//!   environment, with the function's own `env`.
//!
//! The process is started through the host's `process` capability and the plugin returns
//! `pending`; the host polls when the process exits and kills it when the execution ends.
//! `dispatcherConfig`: `{"mode": "json" | "raw", "workingDir": "…", "outputContentType": "…"}`.

wit_bindgen::generate!({ world: "dispatcher", path: "../../wit" });

use exports::nanofaas::dispatcher::strategy::Guest;
use nanofaas::dispatcher::process::{self, Command};
use nanofaas::dispatcher::types::{
    Failure, FunctionSpec, Invocation, Outcome, Output, Part, Payload, Pending, ReleaseReason,
};
use nanofaas_contract::env;
use serde::Deserialize;

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Json,
    Raw,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    mode: Mode,
    working_dir: Option<String>,
    output_content_type: Option<String>,
}

fn config(json: &str) -> Result<Config, String> {
    serde_json::from_str(json).map_err(|e| format!("invalid dispatcherConfig: {e}"))
}

fn command(spec: &FunctionSpec, config: &Config, env: Vec<(String, String)>) -> Command {
    Command { argv: spec.command.clone(), env, cwd: config.working_dir.clone() }
}

fn function_error(code: &str, message: String) -> Outcome {
    Outcome::Done(Err(Failure { code: code.into(), message, retryable: false }))
}

fn platform_error(code: &str, message: String) -> Failure {
    Failure { code: code.into(), message, retryable: false }
}

struct Local;

impl Guest for Local {
    fn validate(spec: FunctionSpec) -> Result<(), String> {
        let config = config(&spec.config)?;
        if spec.command.is_empty() {
            return Err("the local dispatcher needs a `command` (program and arguments)".into());
        }
        if config.mode == Mode::Json && config.output_content_type.is_some() {
            return Err("outputContentType applies to raw mode only".into());
        }
        process::check(&command(&spec, &config, Vec::new()))
    }

    fn dispatch(inv: Invocation, input: &Payload) -> Result<Outcome, Failure> {
        let config = config(&inv.function.config).map_err(|e| platform_error("BAD_CONFIG", e))?;
        let mut env = inv.function.env.clone();
        env.extend([
            (env::FUNCTION_NAME.to_string(), inv.function.name.clone()),
            (env::EXECUTION_ID.to_string(), inv.execution_id.clone()),
            (env::ATTEMPT.to_string(), inv.attempt.to_string()),
            (env::TRACE_ID.to_string(), inv.trace_id.clone()),
            (env::DEADLINE_UNIX_MS.to_string(), inv.deadline_unix_ms.to_string()),
        ]);
        let stdin = match config.mode {
            Mode::Raw => Payload::new(&[Part::Payload(input)]),
            Mode::Json => envelope(&inv, input),
        };
        let handle = process::spawn(&command(&inv.function, &config, env), &stdin)
            .map_err(|e| platform_error("PROCESS_START_FAILED", e))?;
        Ok(Outcome::Pending(Pending { handle, poll_after_ms: None }))
    }

    fn poll(inv: Invocation, handle: String) -> Result<Outcome, Failure> {
        let Some(exit) = process::status(&handle).map_err(|e| platform_error("PROCESS_LOST", e))? else {
            return Ok(Outcome::Pending(Pending { handle, poll_after_ms: None }));
        };
        if exit.stdout_truncated {
            return Ok(function_error("OUTPUT_TOO_LARGE", format!(
                "the function wrote more than {} bytes to stdout and was stopped",
                exit.stdout.size()
            )));
        }
        if exit.code != Some(0) {
            let how = match (exit.code, exit.signal) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => "ended abnormally".to_string(),
            };
            let message = if exit.stderr_tail.is_empty() { how } else { format!("{how}: {}", exit.stderr_tail) };
            return Ok(function_error("FUNCTION_ERROR", message));
        }
        let config = config(&inv.function.config).unwrap_or_default();
        let output = match config.mode {
            Mode::Json if exit.stdout.size() == 0 => {
                Output { content_type: "application/json".into(), body: Payload::new(&[Part::Bytes(b"null".to_vec())]) }
            }
            Mode::Json => Output { content_type: "application/json".into(), body: exit.stdout },
            Mode::Raw => Output {
                content_type: config.output_content_type.unwrap_or_else(|| "application/octet-stream".into()),
                body: exit.stdout,
            },
        };
        Ok(Outcome::Done(Ok(output)))
    }

    fn release(_inv: Invocation, handle: String, _reason: ReleaseReason) {
        process::kill(&handle);
    }
}

include!("../../common/envelope.rs");

export!(Local);
