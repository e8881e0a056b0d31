//! [`WebhookError`]: why a webhook was refused, and the HTTP status to answer it with.

use http::StatusCode;

/// Why a webhook could not be verified (or a webhook secret could not be used).
///
/// Every message says what to check; none holds the secret, a signature or the body.
/// [`status`](Self::status) is the answer a receiver should send, as
/// [`WebhookLayer`](crate::webhooks::WebhookLayer) does.
///
/// ```
/// use understory_auth::webhooks::{WebhookError, WebhookVerifier};
///
/// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let error = verifier.verify(&http::HeaderMap::new(), b"{}").unwrap_err();
/// assert!(matches!(error, WebhookError::MissingHeader("webhook-id")));
/// assert_eq!(error.status(), http::StatusCode::BAD_REQUEST);
/// assert_eq!(WebhookError::NoMatchingSignature.status(), 401);
/// assert_eq!(WebhookError::BodyTooLarge { limit: 10 }.status(), 413);
/// # Ok::<(), WebhookError>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A Standard Webhooks header is absent.
    #[error(
        "the request has no `{0}` header: check that it is a webhook from Understory and that no proxy strips the `webhook-*` headers"
    )]
    MissingHeader(&'static str),
    /// A Standard Webhooks header is present but cannot be read.
    #[error(
        "the `{header}` header is malformed ({reason}): check that no proxy rewrites the `webhook-*` headers"
    )]
    MalformedHeader {
        /// The header's name.
        header: &'static str,
        /// What is wrong with its value.
        reason: &'static str,
    },
    /// No `v1` signature in `webhook-signature` is the HMAC of this message under any of the
    /// verifier's secrets.
    #[error(
        "no signature matches: check that the verifier has the subscription's current signing secret and that the body reaches it byte for byte (not parsed and re-serialised, re-encoded or decompressed)"
    )]
    NoMatchingSignature,
    /// `webhook-timestamp` lies further in the past than the tolerance.
    #[error(
        "the webhook was signed {age_secs} s ago, more than the tolerance of {tolerance_secs} s: check this server's clock, or it is a replay"
    )]
    TimestampTooOld {
        /// How many seconds before now the message was signed.
        age_secs: u64,
        /// The verifier's tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// `webhook-timestamp` lies further in the future than the tolerance.
    #[error(
        "the webhook is signed {ahead_secs} s in the future, more than the tolerance of {tolerance_secs} s: check this server's clock"
    )]
    TimestampTooNew {
        /// How many seconds after now the message claims to be signed.
        ahead_secs: u64,
        /// The verifier's tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// The body is longer than the verifier's limit.
    #[error(
        "the webhook body is over the limit of {limit} bytes: raise `WebhookVerifier::max_body_bytes` if genuine events are this large"
    )]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request body could not be read (the sender went away or sent a broken body).
    #[error("the webhook body could not be read: the sender should retry the delivery")]
    BodyUnreadable,
    /// The body is authentic but is not a webhook event (`id`, `type`, `timestamp`,
    /// `payload`).
    #[error(
        "the verified body is not a webhook event ({0}): check that the subscription sends Understory's JSON events"
    )]
    InvalidEvent(#[source] serde_json::Error),
    /// A webhook secret is not `whsec_` followed by base64 (or the bare base64).
    #[error(
        "the webhook secret is not `whsec_` followed by base64 (or the bare base64 key): copy the subscription's signing secret again"
    )]
    InvalidSecret,
}

impl WebhookError {
    /// The HTTP status a receiver should answer this error with: `401 Unauthorized` for a
    /// signature that does not match or a timestamp outside the tolerance, `413 Payload Too
    /// Large` for a body over the limit, `500` for an unusable secret (a configuration
    /// error) and `400 Bad Request` for everything else.
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::NoMatchingSignature
            | WebhookError::TimestampTooOld { .. }
            | WebhookError::TimestampTooNew { .. } => StatusCode::UNAUTHORIZED,
            WebhookError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::InvalidSecret => StatusCode::INTERNAL_SERVER_ERROR,
            WebhookError::MissingHeader(_)
            | WebhookError::MalformedHeader { .. }
            | WebhookError::BodyUnreadable
            | WebhookError::InvalidEvent(_) => StatusCode::BAD_REQUEST,
        }
    }
}
