//! Receiving Understory's webhooks (feature `webhooks`): trust in the other direction.
//!
//! Understory signs each webhook the Standard Webhooks way (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`: HMAC-SHA256 of `{id}.{timestamp}.{raw body}`
//! with the subscription's secret). This module checks that:
//!
//! * [`WebhookVerifier`] verifies one request's headers and raw body and returns its typed
//!   [`WebhookEvent`], or a [`WebhookError`] that says what was wrong;
//! * [`WebhookLayer`] does it in a tower stack (axum, hyper), handing the inner service the
//!   event; [`WebhookLayer::dedup`] processes each `webhook-id` once ([`MemoryWebhookDedup`];
//!   with feature `redis`, [`RedisWebhookDedup`]; or your own [`WebhookDedup`]).
//!
//! With feature `test-util`, [`testing::WebhookSandbox`](crate::testing::WebhookSandbox)
//! signs and delivers webhooks, to test a receiver without Understory;
//! `cargo run --example webhook_receiver --features test-util,webhooks` runs an axum receiver
//! against it, with no credentials.

mod dedup;
mod error;
mod event;
mod layer;
mod memory_dedup;
#[cfg(feature = "redis")]
mod redis_dedup;
mod secret;
mod verifier;

pub use dedup::{
    DEFAULT_WEBHOOK_DEDUP_LEASE, MAX_WEBHOOK_DEDUP_DURATION, WebhookDedup, WebhookDedupError,
    WebhookIdState,
};
pub use error::WebhookError;
pub use event::{BookingCreated, WebhookEvent, WebhookPayload};
pub use layer::{VerifyWebhook, WebhookFuture, WebhookLayer};
pub use memory_dedup::{
    DEFAULT_WEBHOOK_DEDUP_CAPACITY, DEFAULT_WEBHOOK_DEDUP_TTL, MemoryWebhookDedup,
};
#[cfg(feature = "redis")]
pub use redis_dedup::RedisWebhookDedup;
#[cfg(feature = "test-util")]
pub(crate) use secret::WebhookSecret;
pub use verifier::{
    DEFAULT_WEBHOOK_BODY_LIMIT, DEFAULT_WEBHOOK_TOLERANCE, MAX_WEBHOOK_ID_BYTES, WebhookVerifier,
};
#[cfg(feature = "test-util")]
pub(crate) use verifier::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_types_are_thread_safe() {
        fn shared<T: Clone + Send + Sync + 'static>() {}
        fn error<E: std::error::Error + Send + Sync + 'static>() {}
        shared::<WebhookVerifier>();
        shared::<WebhookLayer>();
        shared::<VerifyWebhook<()>>();
        shared::<MemoryWebhookDedup>();
        shared::<WebhookEvent>();
        error::<WebhookError>();
        error::<WebhookDedupError>();
    }
}
