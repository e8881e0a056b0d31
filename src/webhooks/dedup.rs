//! [`WebhookDedup`]: which state a `webhook-id` is in (new, being processed, processed).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

/// How long a claim on a `webhook-id` holds by default
/// ([`WebhookLayer::dedup_lease`](crate::webhooks::WebhookLayer::dedup_lease)): 5 minutes.
pub const DEFAULT_WEBHOOK_DEDUP_LEASE: Duration = Duration::from_secs(5 * 60);

/// The longest ttl or lease a dedup store keeps: 365 days. Longer settings are saturated to
/// it (`Duration::MAX` means "as long as a store can"), shorter than 1 ms rounded up to it.
pub const MAX_WEBHOOK_DEDUP_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// `duration` within what a store keeps: at least 1 ms, at most [`MAX_WEBHOOK_DEDUP_DURATION`].
pub(crate) fn bounded(duration: Duration) -> Duration {
    duration.clamp(Duration::from_millis(1), MAX_WEBHOOK_DEDUP_DURATION)
}

/// The state a [`WebhookDedup`] store found a `webhook-id` in when it was
/// [claimed](WebhookDedup::claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WebhookIdState {
    /// Not seen, released, or its claim's lease ran out: now claimed by the caller.
    New,
    /// Claimed by a run whose lease has not run out (the layer answers `409 Conflict`).
    InProgress,
    /// Completed within the ttl (the layer answers `200 OK` without processing it again).
    Done,
}

/// Where [`WebhookLayer::dedup`](crate::webhooks::WebhookLayer::dedup) records the state of
/// the `webhook-id`s it lets through. For each verified webhook the layer
/// [`claim`](Self::claim)s its key (`<namespace>:<webhook-id>`) with an `owner` token unique
/// to the run, then [`complete`](Self::complete)s it after a 2xx or
/// [`release`](Self::release)s it otherwise. Each of the three must be atomic.
/// Implementations: [`MemoryWebhookDedup`] for one process,
/// [`RedisWebhookDedup`](crate::webhooks::RedisWebhookDedup) (feature `redis`) for a fleet.
///
/// [`MemoryWebhookDedup`]: crate::webhooks::MemoryWebhookDedup
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use understory_auth::webhooks::{WebhookDedup, WebhookDedupError, WebhookIdState};
///
/// /// Never forgets, and ignores leases (a real store must expire both).
/// #[derive(Default)]
/// struct Forever(parking_lot::Mutex<HashMap<String, Option<String>>>);
///
/// #[async_trait::async_trait]
/// impl WebhookDedup for Forever {
///     async fn claim(&self, key: &str, owner: &str, _lease: Duration) -> Result<WebhookIdState, WebhookDedupError> {
///         let mut keys = self.0.lock();
///         Ok(match keys.get(key) {
///             None => {
///                 keys.insert(key.to_owned(), Some(owner.to_owned()));
///                 WebhookIdState::New
///             }
///             Some(Some(_)) => WebhookIdState::InProgress,
///             Some(None) => WebhookIdState::Done,
///         })
///     }
///     async fn complete(&self, key: &str, _owner: &str) -> Result<(), WebhookDedupError> {
///         self.0.lock().insert(key.to_owned(), None);
///         Ok(())
///     }
///     async fn release(&self, key: &str, owner: &str) -> Result<(), WebhookDedupError> {
///         let mut keys = self.0.lock();
///         if keys.get(key).is_some_and(|held| held.as_deref() == Some(owner)) {
///             keys.remove(key);
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait WebhookDedup: Send + Sync + 'static {
    /// If `key` is new (never claimed, released, or its claim's lease ran out), claims it for
    /// `owner` for `lease` and answers [`New`](WebhookIdState::New); else answers the state it
    /// is in, unchanged. Atomic: of two concurrent claims of one key, one gets `New`.
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<WebhookIdState, WebhookDedupError>;

    /// Records `key` as processed (a run answered 2xx), for the store's ttl, replacing any
    /// claim on it.
    async fn complete(&self, key: &str, owner: &str) -> Result<(), WebhookDedupError>;

    /// Forgets `owner`'s claim on `key` (its run failed or was dropped), so that the next
    /// delivery is processed; does nothing if `owner` no longer holds it (its lease ran out
    /// and another run claimed it, or a run completed it).
    async fn release(&self, key: &str, owner: &str) -> Result<(), WebhookDedupError>;
}

/// A [`WebhookDedup`] store failed (for example, Redis is unreachable):
/// [`WebhookLayer`](crate::webhooks::WebhookLayer) answers `503 Service Unavailable`, so that
/// Understory delivers the webhook again later.
///
/// ```
/// use std::error::Error;
/// use understory_auth::webhooks::WebhookDedupError;
///
/// let error = WebhookDedupError::new("the dedup store is full");
/// assert_eq!(error.to_string(), "webhook deduplication failed: the dedup store is full");
/// let io = std::io::Error::other("connection refused");
/// assert!(WebhookDedupError::with_source("store unreachable", io).source().is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("webhook deduplication failed: {message}")]
pub struct WebhookDedupError {
    message: &'static str,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl WebhookDedupError {
    /// An error that says `message` (which must hold no secret).
    pub fn new(message: &'static str) -> Self {
        WebhookDedupError {
            message,
            source: None,
        }
    }

    /// An error that says `message`, caused by `source`.
    pub fn with_source(
        message: &'static str,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        WebhookDedupError {
            message,
            source: Some(Box::new(source)),
        }
    }
}

/// A shared [`WebhookDedup`], as the layer holds it.
#[derive(Clone)]
pub(crate) struct SharedDedup(pub(crate) std::sync::Arc<dyn WebhookDedup>);

impl fmt::Debug for SharedDedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookDedup")
    }
}
