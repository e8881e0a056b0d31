//! A webhook signing secret, parsed once and kept out of every `Debug`, error and log.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::WebhookError;

/// The prefix Standard Webhooks puts before the base64 of the key bytes.
const SECRET_PREFIX: &str = "whsec_";
/// What [`WebhookSecret::tag`] authenticates (no `.`, unlike every signed content).
const NAMESPACE_LABEL: &[u8] = b"understory-auth webhook dedup namespace";

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
        for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
            mac.update(part);
        }
        mac
    }

    /// A short tag naming this secret (the first 8 bytes of the HMAC, under it, of a fixed
    /// label), for a dedup namespace: the same secret always gives the same tag, it reveals
    /// nothing of the key, and it never equals a signature (a signed content holds two `.`,
    /// the label none).
    pub(crate) fn tag(&self) -> [u8; 8] {
        let mut mac = self.keyed.clone();
        mac.update(NAMESPACE_LABEL);
        <[u8; 8]>::try_from(&mac.finalize().into_bytes()[..8]).unwrap_or_default()
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
    fn tags_tell_secrets_apart_and_hold_nothing_of_the_key() {
        let one = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let same = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let other = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(one.tag(), same.tag());
        assert_ne!(one.tag(), other.tag());
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(!key.windows(4).any(|w| one.tag().windows(4).any(|t| t == w)));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "WebhookSecret(<redacted>)");
    }
}
