//! The function-side contract: what a writer in one crate and a reader in another must agree
//! on, written once.
//!
//! - The STDIO envelope a function receives, shared by the `local` and `pool` plugins (compiled
//!   to Wasm) and by `nanofaas-runtime`:
//!   `{"input": <input>, "metadata": {<the caller's metadata>}}`. A JSON input is embedded as is
//!   (the envelope is built around it, so it is never re-encoded); any other input becomes a
//!   JSON string, base64-encoded (with `"inputEncoding": "base64"`) when it is not UTF-8.
//! - [`env`]: the environment variables a function's process or pod gets (written by the
//!   `local` plugin, the Job manifests of `jobkit` and the host; read by the runtime and by
//!   functions).
//! - [`termination`]: the result envelope `nanofaas-runtime` writes to a pod's termination
//!   message and the Job plugins read back when no callback came.
//! - [`callback`]: the body of a completion callback, written by `nanofaas-runtime` (and any
//!   runner) and read by the host.
//! - [`results`]: what a plugin's results must look like beyond their WIT types (failure codes,
//!   pending handles), checked by the host and asserted by the plugin SDK.
//! - [`CONTRACT_VERSION`]: the version of the `wit/` package, which the SDK reports in a
//!   plugin's metadata and the host names in its messages.

use serde_json::{Map, Value};

/// The caller's metadata as a JSON object.
pub fn metadata_object(metadata: &[(String, String)]) -> Value {
    Value::Object(metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>())
}

/// The bytes before and after a JSON input: `prefix + input + suffix` is the envelope.
pub fn json_envelope_parts(metadata: &[(String, String)]) -> (&'static [u8], Vec<u8>) {
    (b"{\"input\":", format!(",\"metadata\":{}}}", metadata_object(metadata)).into_bytes())
}

/// The whole envelope of a non-JSON input.
pub fn bytes_envelope(input: Vec<u8>, metadata: &[(String, String)]) -> Vec<u8> {
    let metadata = metadata_object(metadata);
    let doc = match String::from_utf8(input) {
        Ok(text) => serde_json::json!({"input": text, "metadata": metadata}),
        Err(e) => serde_json::json!({"input": base64(e.as_bytes()), "inputEncoding": "base64", "metadata": metadata}),
    };
    doc.to_string().into_bytes()
}

/// Whether a content type is JSON.
pub fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The version of `package nanofaas:dispatcher` in `wit/`: what plugins built now target.
pub const CONTRACT_VERSION: &str = "0.1.2";

/// The rules of a plugin's results that WIT types cannot say.
pub mod results {
    /// Longest failure code.
    pub const CODE_MAX: usize = 64;
    /// Longest pending handle (a Kubernetes object name fits).
    pub const HANDLE_MAX: usize = 253;

    /// A failure code is `UPPER_SNAKE_CASE`: 1 to [`CODE_MAX`] of `A-Z`, `0-9` and `_`.
    pub fn valid_code(code: &str) -> bool {
        !code.is_empty()
            && code.len() <= CODE_MAX
            && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    }

    /// A pending handle is 1 to [`HANDLE_MAX`] bytes.
    pub fn valid_handle(handle: &str) -> bool {
        (1..=HANDLE_MAX).contains(&handle.len())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn codes_and_handles() {
            for ok in ["A", "FUNCTION_ERROR", "K8S_ERROR", &"X".repeat(CODE_MAX)] {
                assert!(valid_code(ok), "{ok}");
            }
            for bad in ["", "lower", "WITH-DASH", "SPACE ", &"X".repeat(CODE_MAX + 1)] {
                assert!(!valid_code(bad), "{bad}");
            }
            assert!(valid_handle("h") && valid_handle(&"h".repeat(HANDLE_MAX)));
            assert!(!valid_handle("") && !valid_handle(&"h".repeat(HANDLE_MAX + 1)));
        }
    }
}

/// Environment variables of a function's process (local) or pod (Job).
pub mod env {
    pub const FUNCTION_NAME: &str = "FUNCTION_NAME";
    pub const EXECUTION_ID: &str = "EXECUTION_ID";
    /// 1 for the first attempt, then 2, 3, …
    pub const ATTEMPT: &str = "ATTEMPT";
    /// The execution's trace id (the caller's `X-Trace-Id`, or generated).
    pub const TRACE_ID: &str = "TRACE_ID";
    /// A W3C `traceparent` naming the span the function runs under, set by the host.
    pub const TRACEPARENT: &str = "TRACEPARENT";
    /// The deadline, milliseconds since the Unix epoch.
    pub const DEADLINE_UNIX_MS: &str = "DEADLINE_UNIX_MS";
    // Job pods only, for nanofaas-runtime:
    pub const CONTENT_TYPE: &str = "CONTENT_TYPE";
    /// The caller's metadata as a JSON object.
    pub const FUNCTION_METADATA: &str = "FUNCTION_METADATA";
    pub const CALLBACK_URL: &str = "CALLBACK_URL";
    pub const CALLBACK_TOKEN: &str = "CALLBACK_TOKEN";
    /// How long the runtime may keep retrying its callback, in milliseconds.
    pub const CALLBACK_BUDGET_MS: &str = "CALLBACK_BUDGET_MS";
    /// The input, inline (when it fits), else fetched from [`INPUT_URL`].
    pub const INVOCATION_PAYLOAD: &str = "INVOCATION_PAYLOAD";
    pub const INPUT_URL: &str = "INPUT_URL";
    /// `STDIO`, `FILE` or `HTTP`.
    pub const RUNTIME_MODE: &str = "RUNTIME_MODE";
}

/// The result envelope of a pod's termination message:
/// `{"v":1, "success", "output" | "outputSize" + "outputSha256", "error", "exitCode"}`.
pub mod termination {
    use serde_json::{Value, json};

    /// Kubernetes keeps at most 4096 bytes of a termination message.
    pub const LIMIT: usize = 4096;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Envelope {
        /// The output, as JSON text.
        Output(String),
        /// An output too large for the message: its size and SHA-256 (hex).
        TooLarge {
            size: u64,
            sha256: String,
        },
        Error {
            code: String,
            message: String,
            exit_code: Option<i32>,
        },
    }

    impl Envelope {
        /// The envelope as written (an `Output`'s text is embedded as is, never re-encoded).
        pub fn to_json(&self) -> String {
            match self {
                Envelope::Output(output) => format!(r#"{{"v":1,"success":true,"output":{output}}}"#),
                Envelope::TooLarge { size, sha256 } => {
                    json!({"v": 1, "success": true, "outputSize": size, "outputSha256": sha256}).to_string()
                }
                Envelope::Error { code, message, exit_code } => {
                    json!({"v": 1, "success": false, "exitCode": exit_code, "error": {"code": code, "message": message}})
                        .to_string()
                }
            }
        }

        /// An envelope read back; `None` when the text is not one (another program's message).
        pub fn parse(text: &str) -> Option<Self> {
            let v: Value = serde_json::from_str(text).ok()?;
            if v["v"] != 1 {
                return None;
            }
            if v["success"] == true {
                if let Some(output) = v.get("output") {
                    return Some(Envelope::Output(output.to_string()));
                }
                return Some(Envelope::TooLarge {
                    size: v["outputSize"].as_u64().unwrap_or(0),
                    sha256: v["outputSha256"].as_str().unwrap_or("").to_string(),
                });
            }
            Some(Envelope::Error {
                code: v["error"]["code"].as_str().unwrap_or("FUNCTION_ERROR").to_string(),
                message: v["error"]["message"].as_str().unwrap_or("").to_string(),
                exit_code: v["exitCode"].as_i64().and_then(|e| i32::try_from(e).ok()),
            })
        }
    }
}

/// The body of a completion callback (`POST {callback-url}` with the execution's bearer token):
/// `{"success": true, "output": <any JSON>}` or
/// `{"success": false, "error": {"code": …, "message": …}}`. A reader takes a missing output as
/// `null` and a missing code as `FUNCTION_ERROR`.
pub mod callback {
    use serde::Deserialize;
    use serde_json::value::RawValue;

    /// The body of a completion callback (the output is kept as its JSON text, never re-encoded).
    #[derive(Clone, Debug, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CallbackResult))]
    pub struct Body {
        pub success: bool,
        /// The function's output, any JSON value.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(value_type = Option<serde_json::Value>))]
        pub output: Option<Box<RawValue>>,
        #[serde(default)]
        pub error: Option<Error>,
    }

    #[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CallbackError))]
    pub struct Error {
        #[serde(default)]
        pub code: Option<String>,
        #[serde(default)]
        pub message: Option<String>,
    }

    /// The body of a success whose output is `output` (JSON text, embedded as is).
    pub fn success(output: &str) -> String {
        format!(r#"{{"success":true,"output":{output}}}"#)
    }

    /// The body of a failure.
    pub fn failure(code: &str, message: &str) -> String {
        serde_json::json!({"success": false, "error": {"code": code, "message": message}}).to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn callback_bodies_read_back_as_written() {
        use super::callback::{Body, Error, failure, success};
        let body: Body = serde_json::from_str(&success(r#"{"a": [1, 2]}"#)).unwrap();
        assert!(body.success && body.error.is_none());
        assert_eq!(body.output.unwrap().get(), r#"{"a": [1, 2]}"#, "the output's text is kept as written");
        let body: Body = serde_json::from_str(&failure("TIMEOUT", "late \"quoted\"")).unwrap();
        let error = Error { code: Some("TIMEOUT".into()), message: Some(r#"late "quoted""#.into()) };
        assert_eq!((body.success, body.error), (false, Some(error)));
        // What other runners send: no output, no error details.
        let body: Body = serde_json::from_str(r#"{"success":true}"#).unwrap();
        assert!(body.output.is_none());
        assert!(serde_json::from_str::<Body>(r#"{"output":1}"#).is_err(), "success is required");
    }

    #[test]
    fn termination_envelopes_read_back_as_written() {
        use super::termination::Envelope;
        for envelope in [
            Envelope::Output(r#"{"a":[1,2]}"#.into()),
            Envelope::TooLarge { size: 9000, sha256: "ab".repeat(32) },
            Envelope::Error { code: "FUNCTION_ERROR".into(), message: "boom \"quoted\"".into(), exit_code: Some(3) },
            Envelope::Error { code: "NO_OUTPUT".into(), message: String::new(), exit_code: None },
        ] {
            assert_eq!(Envelope::parse(&envelope.to_json()), Some(envelope.clone()), "{}", envelope.to_json());
        }
        assert_eq!(Envelope::parse("killed by the OOM killer"), None);
        assert_eq!(Envelope::parse(r#"{"v":2,"success":true}"#), None, "a version it does not know");
    }

    use super::*;

    #[test]
    fn json_envelope_wraps_the_input_unchanged() {
        let (prefix, suffix) = json_envelope_parts(&[("k".into(), "v".into())]);
        let doc = [prefix, br#"{"a": [1, 2]}"#.as_slice(), &suffix].concat();
        let v: Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(v, serde_json::json!({"input": {"a": [1, 2]}, "metadata": {"k": "v"}}));
    }

    #[test]
    fn bytes_envelope_is_text_or_base64() {
        let v: Value = serde_json::from_slice(&bytes_envelope(b"hi".to_vec(), &[])).unwrap();
        assert_eq!(v, serde_json::json!({"input": "hi", "metadata": {}}));
        let v: Value = serde_json::from_slice(&bytes_envelope(vec![0, 159, 146, 150, 255], &[])).unwrap();
        assert_eq!(v["input"], "AJ+Slv8=");
        assert_eq!(v["inputEncoding"], "base64");
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
    }

    #[test]
    fn the_contract_version_is_the_wit_packages() {
        let wit = include_str!("../../wit/dispatcher.wit");
        let package = wit.lines().find_map(|l| l.strip_prefix("package nanofaas:dispatcher@")).unwrap();
        assert_eq!(package.trim_end_matches(';'), CONTRACT_VERSION);
    }
}
