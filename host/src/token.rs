//! Per-attempt callback tokens.
//!
//! A token is `ATTEMPT.MAC`, MAC = HMAC-SHA256(host secret, execution id, attempt), base64url.
//! It authenticates the completion callback (and the input download) of that one attempt of one
//! execution: it cannot be guessed without the secret, cannot be reused for another execution,
//! names the attempt it was made for (so the host refuses a stale attempt's pod), and needs no
//! storage — the host recomputes it to check it, in constant time. The secret is the operator's, or one the store generated
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
        mac.update(b"nanofaas-callback-v2\0");
        Self(mac)
    }

    fn mac(&self, execution_id: &str, attempt: u32) -> HmacSha256 {
        let mut mac = self.0.clone();
        mac.update(execution_id.as_bytes());
        mac.update(b"\0");
        mac.update(&attempt.to_be_bytes());
        mac
    }

    pub fn token(&self, execution_id: &str, attempt: u32) -> String {
        format!("{attempt}.{}", URL_SAFE_NO_PAD.encode(self.mac(execution_id, attempt).finalize().into_bytes()))
    }

    /// The attempt a token was made for, if it is a token of this execution (constant time).
    pub fn verify(&self, execution_id: &str, token: &str) -> Option<u32> {
        let (attempt, mac) = token.trim().split_once('.')?;
        let attempt: u32 = attempt.parse().ok()?;
        let bytes = URL_SAFE_NO_PAD.decode(mac).ok()?;
        self.mac(execution_id, attempt).verify_slice(&bytes).is_ok().then_some(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_attempt_per_execution_and_per_secret() {
        let key = TokenKey::new(b"s3cret");
        let t = key.token("exec-1", 2);
        assert_eq!(key.verify("exec-1", &t), Some(2));
        assert_eq!(key.verify("exec-2", &t), None);
        assert_eq!(TokenKey::new(b"other").verify("exec-1", &t), None);
        assert_eq!(key.verify("exec-1", ""), None);
        assert_eq!(key.verify("exec-1", "2.not base64 !"), None);
        // The attempt is bound into the MAC: relabelling a token does not move it.
        let forged = t.replacen("2.", "3.", 1);
        assert_eq!(key.verify("exec-1", &forged), None);
        assert_eq!(t, TokenKey::new(b"s3cret").token("exec-1", 2), "derived, not stored");
    }
}
