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

use nanofaas_plugin_sdk::contract::env;
use nanofaas_plugin_sdk::prelude::*;
use nanofaas_plugin_sdk::process::{self, Command};
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

fn command(spec: &FunctionSpec, config: &Config, env: Vec<(String, String)>) -> Command {
    Command { argv: spec.command.clone(), env, cwd: config.working_dir.clone() }
}

struct Local;

impl Dispatcher for Local {
    type Config = Config;
    const CAPABILITIES: &'static [&'static str] = &["process"];

    fn validate(spec: &FunctionSpec, config: &Config) -> Result<(), String> {
        if spec.command.is_empty() {
            return Err("the local dispatcher needs a `command` (program and arguments)".into());
        }
        if config.mode == Mode::Json && config.output_content_type.is_some() {
            return Err("outputContentType applies to raw mode only".into());
        }
        process::check(&command(spec, config, Vec::new()))
    }

    fn dispatch(call: &Call<Config>, input: &Payload) -> Result<Outcome, Failure> {
        let mut env = call.function().env.clone();
        env.extend([
            (env::FUNCTION_NAME.to_string(), call.function().name.clone()),
            (env::EXECUTION_ID.to_string(), call.execution_id.clone()),
            (env::ATTEMPT.to_string(), call.attempt.to_string()),
            (env::TRACE_ID.to_string(), call.trace_id.clone()),
            (env::DEADLINE_UNIX_MS.to_string(), call.deadline_unix_ms.to_string()),
        ]);
        let stdin = match call.config.mode {
            Mode::Raw => input.share(),
            Mode::Json => nanofaas_plugin_sdk::envelope(call, input),
        };
        let handle = process::spawn(&command(call.function(), &call.config, env), &stdin)
            .map_err(|e| Failure::new("PROCESS_START_FAILED", e))?;
        Ok(Outcome::wait(handle))
    }

    fn poll(call: &Call<Config>, handle: String) -> Result<Outcome, Failure> {
        let Some(exit) = process::status(&handle).map_err(|e| Failure::new("PROCESS_LOST", e))? else {
            return Ok(Outcome::wait(handle));
        };
        if exit.stdout_truncated {
            return Ok(Outcome::function_error(
                "OUTPUT_TOO_LARGE",
                format!("the function wrote more than {} bytes to stdout and was stopped", exit.stdout.size()),
            ));
        }
        if exit.code != Some(0) {
            let how = match (exit.code, exit.signal) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => "ended abnormally".to_string(),
            };
            let message = if exit.stderr_tail.is_empty() { how } else { format!("{how}: {}", exit.stderr_tail) };
            return Ok(Outcome::function_error("FUNCTION_ERROR", message));
        }
        Ok(match call.config.mode {
            Mode::Json if exit.stdout.size() == 0 => Outcome::output("application/json", Payload::from_bytes(*b"null")),
            Mode::Json => Outcome::output("application/json", exit.stdout),
            Mode::Raw => {
                let content_type = call.config.output_content_type.as_deref().unwrap_or("application/octet-stream");
                Outcome::output(content_type, exit.stdout)
            }
        })
    }

    fn release(_inv: &Invocation, handle: String, _reason: ReleaseReason) {
        process::kill(&handle);
    }
}

nanofaas_plugin_sdk::export_dispatcher!(Local);
