//! [`WebhookVerifier`]: the Standard Webhooks signature check. Not the `standardwebhooks`
//! crate's: it refuses non-UTF-8 bodies, holds one secret and reads the clock with no seam.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Mac;
use http::HeaderMap;

use super::secret::WebhookSecret;
use super::{WebhookError, WebhookEvent};

/// The default [`WebhookVerifier::tolerance`]: 5 minutes, as Standard Webhooks recommends.
pub const DEFAULT_WEBHOOK_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The default [`WebhookVerifier::max_body_bytes`]: 64 KiB (Understory's events are a few
/// hundred bytes).
pub const DEFAULT_WEBHOOK_BODY_LIMIT: usize = 64 * 1024;

/// The longest `webhook-id` accepted (ids are `msg_` and a few dozen characters).
pub const MAX_WEBHOOK_ID_BYTES: usize = 256;

/// The `webhook-id` header: the message id, the same on every retry of a delivery.
pub(crate) const HEADER_ID: &str = "webhook-id";
/// The `webhook-timestamp` header: Unix seconds of the delivery attempt.
pub(crate) const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// The `webhook-signature` header: space-separated `v1,<base64>` signatures.
pub(crate) const HEADER_SIGNATURE: &str = "webhook-signature";

/// The only signature version this verifier checks (HMAC-SHA256); others are ignored.
const SIGNATURE_VERSION: &str = "v1";
/// The length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// How many `v1` signatures of one header are checked at most (a rotation sends two).
const MAX_SIGNATURES: usize = 8;

/// Verifies that a webhook comes from Understory (Standard Webhooks: HMAC-SHA256 of
/// `{webhook-id}.{webhook-timestamp}.{raw body}`, a timestamp tolerance, a body limit). Clones
/// share the secret, which no `Debug`, error or log shows. Verify the body as received;
/// [`WebhookLayer`](crate::webhooks::WebhookLayer) does it in a tower stack.
///
/// ```
/// use understory_auth::webhooks::{WebhookPayload, WebhookVerifier};
///
/// # #[cfg(feature = "test-util")] {
/// # let sandbox = understory_auth::testing::WebhookSandbox::new();
/// # let secret = sandbox.secret();
/// # let message = sandbox.booking_created();
/// # let (headers, body) = (sandbox.headers(&message), message.body());
/// let verifier = WebhookVerifier::new(secret)?; // "whsec_…"
/// // `headers` and `body` as received: webhook-id, webhook-timestamp, webhook-signature.
/// let event = verifier.verify(&headers, &body)?;
/// if let WebhookPayload::BookingCreated(ids) = &event.payload {
///     println!("booking {} created", ids.booking_id);
/// }
/// # }
/// # Ok::<(), understory_auth::webhooks::WebhookError>(())
/// ```
#[derive(Clone)]
pub struct WebhookVerifier {
    secrets: Arc<[WebhookSecret]>,
    tolerance: Duration,
    max_body_bytes: usize,
}

impl WebhookVerifier {
    /// A verifier for `secret` (`whsec_<base64>` or bare base64), with the default tolerance
    /// and body limit; [`WebhookError::InvalidSecret`] if it is not base64.
    ///
    /// ```
    /// use std::time::Duration;
    /// use understory_auth::webhooks::WebhookVerifier;
    ///
    /// assert!(WebhookVerifier::new("whsec_not base64").is_err());
    /// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?
    ///     .with_secret("C2FVsBQIhrscChlQIMV+b5sSYspob7oD")? // during a rotation; no prefix
    ///     .tolerance(Duration::from_secs(60))
    ///     .max_body_bytes(4096);
    /// # Ok::<(), understory_auth::webhooks::WebhookError>(())
    /// ```
    pub fn new(secret: &str) -> Result<Self, WebhookError> {
        Ok(WebhookVerifier {
            secrets: Arc::new([WebhookSecret::parse(secret)?]),
            tolerance: DEFAULT_WEBHOOK_TOLERANCE,
            max_body_bytes: DEFAULT_WEBHOOK_BODY_LIMIT,
        })
    }

    /// Accepts signatures made with `secret` too (during a secret rotation).
    pub fn with_secret(mut self, secret: &str) -> Result<Self, WebhookError> {
        let added = WebhookSecret::parse(secret)?;
        self.secrets = self.secrets.iter().cloned().chain([added]).collect();
        Ok(self)
    }

    /// How far `webhook-timestamp` may lie from this server's clock, either way, in whole
    /// seconds (default [`DEFAULT_WEBHOOK_TOLERANCE`]; exactly `tolerance` is accepted).
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The largest body accepted, in bytes (default [`DEFAULT_WEBHOOK_BODY_LIMIT`]).
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// Verifies a webhook (headers, then timestamp, body limit, a `v1` signature, the event)
    /// against this server's clock, and returns its event.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<WebhookEvent, WebhookError> {
        self.verify_at(headers, body, SystemTime::now())
    }

    /// [`verify`](Self::verify) as if the clock read `now` (tests, replaying stored webhooks).
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use understory_auth::webhooks::{WebhookError, WebhookVerifier};
    ///
    /// // A published Standard Webhooks example.
    /// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap());
    /// headers.insert("webhook-timestamp", "1614265330".parse().unwrap());
    /// headers.insert(
    ///     "webhook-signature",
    ///     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".parse().unwrap(),
    /// );
    /// let body = br#"{"test": 2432232314}"#;
    /// let signed_at = UNIX_EPOCH + Duration::from_secs(1614265330);
    ///
    /// // Authentic (the signature matched), but not an event.
    /// let error = verifier.verify_at(&headers, body, signed_at).unwrap_err();
    /// assert!(matches!(error, WebhookError::InvalidEvent(_)));
    /// let later = signed_at + Duration::from_secs(600); // out of the tolerance
    /// let error = verifier.verify_at(&headers, body, later).unwrap_err();
    /// assert!(matches!(error, WebhookError::TimestampTooOld { age_secs: 600, .. }));
    /// # Ok::<(), WebhookError>(())
    /// ```
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<WebhookEvent, WebhookError> {
        let signed = self.check_headers(headers, now)?;
        if body.len() > self.max_body_bytes {
            return Err(self.body_too_large());
        }
        self.check_signature(&signed, body)?;
        serde_json::from_slice(body).map_err(WebhookError::InvalidEvent)
    }

    pub(crate) fn body_limit(&self) -> usize {
        self.max_body_bytes
    }

    /// The default dedup namespace: the hex of the first secret's [tag](WebhookSecret::tag).
    pub(crate) fn dedup_namespace(&self) -> String {
        self.secrets
            .first()
            .map(|secret| secret.tag().iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default()
    }

    pub(crate) fn body_too_large(&self) -> WebhookError {
        WebhookError::BodyTooLarge {
            limit: self.max_body_bytes,
        }
    }

    /// Every check that needs no body, which the layer runs before reading it.
    pub(crate) fn check_headers<'h>(
        &self,
        headers: &'h HeaderMap,
        now: SystemTime,
    ) -> Result<SignedHeaders<'h>, WebhookError> {
        let id = header(headers, HEADER_ID)?;
        if id.is_empty() {
            return Err(malformed(HEADER_ID, "empty"));
        }
        if id.len() > MAX_WEBHOOK_ID_BYTES {
            return Err(malformed(HEADER_ID, "longer than 256 bytes"));
        }
        let timestamp = header(headers, HEADER_TIMESTAMP)?;
        let signed_at = parse_timestamp(timestamp)?;
        let signatures = header(headers, HEADER_SIGNATURE)?;
        if v1_tags(signatures).next().is_none() {
            return Err(malformed(
                HEADER_SIGNATURE,
                "no `v1,<base64 HMAC-SHA256>` signature",
            ));
        }
        self.check_timestamp(signed_at, now)?;
        Ok(SignedHeaders {
            id,
            timestamp,
            signatures,
        })
    }

    fn check_timestamp(&self, signed_at: u64, now: SystemTime) -> Result<(), WebhookError> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let tolerance_secs = self.tolerance.as_secs();
        let age_secs = now.saturating_sub(signed_at);
        if age_secs > tolerance_secs {
            return Err(WebhookError::TimestampTooOld {
                age_secs,
                tolerance_secs,
            });
        }
        let ahead_secs = signed_at.saturating_sub(now);
        if ahead_secs > tolerance_secs {
            return Err(WebhookError::TimestampTooNew {
                ahead_secs,
                tolerance_secs,
            });
        }
        Ok(())
    }

    /// Whether any signature is the message's HMAC under any secret (in constant time).
    fn check_signature(&self, signed: &SignedHeaders<'_>, body: &[u8]) -> Result<(), WebhookError> {
        let matches = self.secrets.iter().any(|secret| {
            let mac = secret.mac(signed.id, signed.timestamp, body);
            v1_tags(signed.signatures).any(|tag| mac.clone().verify_slice(&tag).is_ok())
        });
        matches
            .then_some(())
            .ok_or(WebhookError::NoMatchingSignature)
    }
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance", &self.tolerance)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// The three headers of a webhook, checked.
pub(crate) struct SignedHeaders<'h> {
    id: &'h str,
    timestamp: &'h str,
    signatures: &'h str,
}

/// The first [`MAX_SIGNATURES`] `v1,<base64>` entries of a `webhook-signature`, decoded.
fn v1_tags(header: &str) -> impl Iterator<Item = [u8; TAG_LEN]> + '_ {
    header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| {
            let mut tag = [0; TAG_LEN];
            // A longer tag does not fit in `tag` and fails too.
            (STANDARD.decode_slice(encoded, &mut tag) == Ok(TAG_LEN)).then_some(tag)
        })
        .take(MAX_SIGNATURES)
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, WebhookError> {
    headers
        .get(name)
        .ok_or(WebhookError::MissingHeader(name))?
        .to_str()
        .map_err(|_| malformed(name, "not visible ASCII"))
}

/// `webhook-timestamp`: Unix seconds, digits only.
fn parse_timestamp(value: &str) -> Result<u64, WebhookError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(HEADER_TIMESTAMP, "not Unix seconds"));
    }
    value
        .parse()
        .map_err(|_| malformed(HEADER_TIMESTAMP, "out of range"))
}

fn malformed(header: &'static str, reason: &'static str) -> WebhookError {
    WebhookError::MalformedHeader { header, reason }
}

#[cfg(test)]
mod tests;
