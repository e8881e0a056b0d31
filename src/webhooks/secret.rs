//! A webhook signing secret, parsed once and kept out of every `Debug`, error and log.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::WebhookError;

/// The prefix Standard Webhooks puts before the base64 of the key bytes.
const SECRET_PREFIX: &str = "whsec_";

/// The HMAC-SHA256 state of a Standard Webhooks secret, keyed once: verifying or signing a
/// message clones it and feeds it the signed content.
#[derive(Clone)]
pub(crate) struct WebhookSecret {
    keyed: Hmac<Sha256>,
}

impl WebhookSecret {
    /// Parses `whsec_<base64 key>` or the bare `<base64 key>` (surrounding whitespace, as
    /// left by a `.env` file, is ignored). The error never holds the secret.
    pub(crate) fn parse(secret: &str) -> Result<Self, WebhookError> {
        let trimmed = secret.trim();
        let encoded = trimmed.strip_prefix(SECRET_PREFIX).unwrap_or(trimmed);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| WebhookError::InvalidSecret)?;
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret);
        }
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
            .map_err(|_| WebhookError::InvalidSecret)?;
        Ok(WebhookSecret { keyed })
    }

    /// The HMAC of the signed content `{id}.{timestamp}.{body}`, ready to finalize.
    pub(crate) fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of a message, as a sender puts it in `webhook-signature`.
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_secret_with_and_without_its_prefix() {
        let with = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let without = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let tag = |s: &WebhookSecret| s.mac("id", "1", b"{}").finalize().into_bytes();
        assert_eq!(tag(&with), tag(&without));
    }

    #[test]
    fn refuses_empty_and_non_base64_secrets_without_echoing_them() {
        for bad in ["", "whsec_", "whsec_not base64!", "hunter2*"] {
            let error = WebhookSecret::parse(bad).unwrap_err();
            assert!(matches!(error, WebhookError::InvalidSecret));
            assert!(!error.to_string().contains("hunter2"));
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "WebhookSecret(<redacted>)");
    }
}
