//! `uppercase`: an example dispatcher plugin, built outside the host (see docs/plugins.md).
//!
//! Input: a JSON string. Output: the string upper-cased, with an optional `prefix` from the
//! function's `dispatcherConfig`. Any other input is the function's own error.

use nanofaas_plugin_sdk::prelude::*;
use serde::Deserialize;

/// The function's `dispatcherConfig`. The SDK parses it before every call; at registration a
/// config that does not parse (`{"prefx": 1}`) is refused with serde's message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    prefix: String,
}

struct Uppercase;

impl Dispatcher for Uppercase {
    type Config = Config;

    fn dispatch(call: &Call<Config>, input: &Payload) -> Result<Outcome, Failure> {
        // Payloads live in the host; read them only when the plugin needs the bytes.
        let Ok(text) = input.parse_json::<String>() else {
            return Ok(Outcome::function_error("FUNCTION_ERROR", "uppercase expects a JSON string as input"));
        };
        log::info(&format!("upper-casing {} characters", text.chars().count()));
        Ok(Outcome::json(&format!("{}{}", call.config.prefix, text.to_uppercase())))
    }
}

nanofaas_plugin_sdk::export_dispatcher!(Uppercase);
