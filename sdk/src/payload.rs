//! Reading and building host payloads.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Invocation, Part, Payload};

/// Bytes read from the host per `read` call when a payload is read whole.
const CHUNK: u32 = 1 << 20;

impl Payload {
    /// A new payload holding `bytes`.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Payload {
        Payload::new(&[Part::Bytes(bytes.into())])
    }

    /// A new payload holding `value` as JSON.
    pub fn from_json(value: &impl Serialize) -> Payload {
        Payload::from_bytes(serde_json::to_vec(value).expect("a serde value serializes to JSON"))
    }

    /// A new payload with the same bytes, which are not copied through the plugin.
    pub fn share(&self) -> Payload {
        Payload::new(&[Part::Payload(self)])
    }

    /// All bytes, copied into the plugin (mind its memory limit for large payloads).
    pub fn bytes(&self) -> Vec<u8> {
        let size = self.size();
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while (out.len() as u64) < size {
            let chunk = self.read(out.len() as u64, CHUNK);
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// All bytes as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// The bytes parsed as JSON into `T`.
    pub fn parse_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.bytes())
    }

    /// The first `len` bytes as trimmed text: for error messages that quote a response.
    pub fn excerpt(&self, len: u32) -> String {
        String::from_utf8_lossy(&self.read(0, len)).trim().to_string()
    }
}

/// The STDIO envelope of an invocation (docs/runtime-contract.md), as a payload:
/// `{"input": <input>, "metadata": {…}}`. A JSON input is placed by handle, never copied into
/// the plugin; other inputs are read and embedded as a string (base64 when not UTF-8).
pub fn envelope(inv: &Invocation, input: &Payload) -> Payload {
    if nanofaas_contract::is_json(&inv.content_type) {
        let (prefix, suffix) = nanofaas_contract::json_envelope_parts(&inv.metadata);
        return Payload::new(&[Part::Bytes(prefix.to_vec()), Part::Payload(input), Part::Bytes(suffix)]);
    }
    Payload::from_bytes(nanofaas_contract::bytes_envelope(input.bytes(), &inv.metadata))
}
