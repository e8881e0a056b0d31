//! [`WebhookSandbox`]: signs and delivers webhooks the way Understory does, to test a
//! receiver without Understory (features `test-util` and `webhooks`).

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use crate::webhooks::WebhookError;
use crate::webhooks::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookSecret};

/// How long a delivery may take before [`WebhookSandbox::deliver`] gives up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many random bytes a generated secret has (Standard Webhooks: 24 to 64).
const GENERATED_KEY_BYTES: usize = 32;

/// Signs and delivers webhooks as Understory does (Standard Webhooks, HMAC-SHA256, `whsec_`
/// secrets, rotation), to test a receiver end to end; see the [module documentation](super).
pub struct WebhookSandbox {
    current: Secret,
    previous: Option<Secret>,
    client: OnceLock<reqwest::Client>,
}

/// A secret as shown to users (`whsec_…`) and as keyed for signing.
struct Secret {
    shown: String,
    keyed: WebhookSecret,
}

impl Secret {
    fn parse(shown: &str) -> Result<Self, WebhookError> {
        let keyed = WebhookSecret::parse(shown)?;
        let shown = shown.to_owned();
        Ok(Secret { shown, keyed })
    }

    fn random() -> Self {
        let key: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
            .take(GENERATED_KEY_BYTES)
            .collect();
        Self::parse(&format!("whsec_{}", STANDARD.encode(key))).unwrap_or_else(|_| unreachable!())
    }
}

impl WebhookSandbox {
    /// A sandbox with a random secret.
    pub fn new() -> Self {
        Self::signing_with(Secret::random())
    }

    /// A sandbox that signs with `secret` (`whsec_<base64>` or the bare base64).
    pub fn with_secret(secret: &str) -> Result<Self, WebhookError> {
        Secret::parse(secret).map(Self::signing_with)
    }

    fn signing_with(current: Secret) -> Self {
        WebhookSandbox {
            current,
            previous: None,
            client: OnceLock::new(),
        }
    }

    /// The current signing secret, to give the receiver's verifier.
    pub fn secret(&self) -> &str {
        &self.current.shown
    }

    /// Starts a rotation: a new random secret (returned) becomes current, and messages are
    /// signed with both until [`end_rotation`](Self::end_rotation).
    pub fn rotate_secret(&mut self) -> String {
        let old = std::mem::replace(&mut self.current, Secret::random());
        self.previous = Some(old);
        self.current.shown.clone()
    }

    /// Ends a rotation: messages are signed with the current secret only.
    pub fn end_rotation(&mut self) {
        self.previous = None;
    }

    /// A `v1.booking.created` event with fresh random identifiers, signed now.
    pub fn booking_created(&self) -> WebhookMessage {
        let payload = json!({
            "booking_id": random_uuid(),
            "host_id": random_uuid(),
            "experience_id": random_uuid(),
            "event_id": random_uuid(),
        });
        self.message("v1.booking.created", payload)
    }

    /// An event of `event_type` with `payload` in Understory's envelope, a fresh id, signed now.
    pub fn message(&self, event_type: &str, payload: serde_json::Value) -> WebhookMessage {
        let now = unix_now();
        let body = json!({
            "id": random_uuid(),
            "type": event_type,
            "timestamp": rfc3339(now),
            "payload": payload,
        });
        WebhookMessage {
            id: format!("msg_{}", random_uuid()),
            timestamp: now,
            signed_body: Bytes::from(body.to_string()),
            delivered_body: None,
        }
    }

    /// The headers of a delivery of `message`: `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature` (one `v1` signature per secret in use), a JSON `content-type`.
    pub fn headers(&self, message: &WebhookMessage) -> HeaderMap {
        let timestamp = message.timestamp.to_string();
        let signature = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .map(|secret| {
                secret
                    .keyed
                    .sign(&message.id, &timestamp, &message.signed_body)
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (HEADER_ID, message.id.as_str()),
            (HEADER_TIMESTAMP, timestamp.as_str()),
            (HEADER_SIGNATURE, signature.as_str()),
            ("content-type", "application/json"),
        ] {
            // The id is ours (hex), the rest digits and base64: always valid header values.
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        headers
    }

    /// `POST`s `message` to `url` as Understory does and returns the status (fails on a
    /// connection error or after 10 seconds).
    pub async fn deliver(
        &self,
        url: &str,
        message: &WebhookMessage,
    ) -> Result<StatusCode, reqwest::Error> {
        let client = match self.client.get() {
            Some(client) => client.clone(),
            None => {
                let client = reqwest::Client::builder()
                    .timeout(DELIVERY_TIMEOUT)
                    .build()?;
                self.client.get_or_init(|| client).clone()
            }
        };
        let response = client
            .post(url)
            .headers(self.headers(message))
            .body(message.body().to_vec())
            .send()
            .await?;
        Ok(response.status())
    }
}

impl Default for WebhookSandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for WebhookSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSandbox")
            .field("rotating", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// A webhook message of a [`WebhookSandbox`] (id, timestamp, body), signed when delivered.
#[derive(Debug, Clone)]
pub struct WebhookMessage {
    id: String,
    timestamp: u64,
    signed_body: Bytes,
    delivered_body: Option<Bytes>,
}

impl WebhookMessage {
    /// The `webhook-id`: the same for every retry of this message.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `webhook-timestamp`: Unix seconds of this attempt.
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    /// The body delivered (the signed one unless `tampered` or `delivered_as` changed it).
    pub fn body(&self) -> &[u8] {
        self.delivered_body.as_ref().unwrap_or(&self.signed_body)
    }

    /// A redelivery: the same id and body, signed now (a retry's timestamp is its own).
    pub fn retry(&self) -> Self {
        WebhookMessage {
            timestamp: unix_now(),
            ..self.clone()
        }
    }

    /// The same message signed with `webhook-timestamp` `unix_secs` (e.g. past a tolerance).
    pub fn signed_at(self, unix_secs: u64) -> Self {
        WebhookMessage {
            timestamp: unix_secs,
            ..self
        }
    }

    /// The same message with one byte of its body changed after signing, as by an attacker.
    pub fn tampered(self) -> Self {
        let mut body = self.body().to_vec();
        // The last byte of the first identifier's value, inside a string: still JSON.
        let at = body
            .iter()
            .position(|b| *b == b',')
            .and_then(|comma| comma.checked_sub(2))
            .unwrap_or(0);
        if let Some(byte) = body.get_mut(at) {
            *byte = if *byte == b'0' { b'1' } else { b'0' };
        }
        self.delivered_as(body)
    }

    /// The same message, signed over its original body but delivered with `body`.
    pub fn delivered_as(self, body: impl Into<Bytes>) -> Self {
        WebhookMessage {
            delivered_body: Some(body.into()),
            ..self
        }
    }
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A random version-4 UUID, as text.
fn random_uuid() -> String {
    let bits = fastrand::u128(..) & !(0xf000 << 64) | (0x4000 << 64);
    let bits = bits & !(0xc << 60) | (0x8 << 60);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `unix_secs` as an RFC 3339 UTC timestamp, as Understory writes an event's `timestamp`
/// (days to civil date: Howard Hinnant's algorithm).
fn rfc3339(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_769_714_941), "2026-01-29T19:29:01Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn uuids_are_version_4() {
        let uuid = random_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid.as_bytes()[14], b'4');
        assert!(matches!(uuid.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
    }
}
