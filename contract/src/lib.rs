//! The function-side contract, shared by the `local` and `pool` plugins (compiled to Wasm) and
//! by `nanofaas-runtime`: the JSON envelope a function receives.
//!
//! `{"input": <input>, "metadata": {<the caller's metadata>}}`. A JSON input is embedded as is
//! (the envelope is built around it, so it is never re-encoded); any other input becomes a JSON
//! string, base64-encoded (with `"inputEncoding": "base64"`) when it is not UTF-8.

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

#[cfg(test)]
mod tests {
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
}
