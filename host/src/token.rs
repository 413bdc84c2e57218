//! Per-execution callback tokens.
//!
//! A token is HMAC-SHA256(host secret, execution id), base64url. It authenticates the completion
//! callback (and the input download) of that one execution: it cannot be guessed without the
//! secret, cannot be reused for another execution, and needs no storage — the host recomputes
//! it to check it, in constant time. The secret is the operator's, or one the store generated
//! once and keeps, so tokens stay valid across restarts and replicas.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The HMAC keyed once: cloning a keyed MAC skips the key schedule on every token.
#[derive(Clone)]
pub struct TokenKey(HmacSha256);

impl TokenKey {
    /// A key from a secret.
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(b"nanofaas-callback-v1\0");
        Self(mac)
    }

    fn mac(&self, execution_id: &str) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(execution_id.as_bytes());
        mac
    }

    pub fn token(&self, execution_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(execution_id).finalize().into_bytes())
    }

    /// Checks a token for an execution in constant time.
    pub fn verify(&self, execution_id: &str, token: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(token.trim()) {
            Ok(bytes) => self.mac(execution_id).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_execution_and_per_secret() {
        let key = TokenKey::new(b"s3cret");
        let t = key.token("exec-1");
        assert!(key.verify("exec-1", &t));
        assert!(!key.verify("exec-2", &t));
        assert!(!TokenKey::new(b"other").verify("exec-1", &t));
        assert!(!key.verify("exec-1", ""));
        assert!(!key.verify("exec-1", "not base64 !"));
        assert_eq!(t, TokenKey::new(b"s3cret").token("exec-1"), "derived, not stored");
    }
}
