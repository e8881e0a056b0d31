//! [`WebhookDedup`]: "has this `webhook-id` been processed already?", for [`WebhookLayer`].
//!
//! [`WebhookLayer`]: crate::webhooks::WebhookLayer

use std::error::Error as StdError;
use std::fmt;

use async_trait::async_trait;

/// Where [`WebhookLayer::dedup`](crate::webhooks::WebhookLayer::dedup) records the `webhook-id`s it
/// has let through, so that a redelivery (Understory retries with the same id) is
/// acknowledged without being processed twice.
///
/// The layer [`claim`](Self::claim)s an id after verifying its signature (so only ids
/// Understory signed are ever stored) and before calling the inner service; if the inner
/// service fails or answers anything but a 2xx, it [`release`](Self::release)s the id, so
/// Understory's retry is processed. Implementations: [`MemoryWebhookDedup`] for one
/// process, [`RedisWebhookDedup`](crate::webhooks::RedisWebhookDedup) (feature `redis`) for a fleet.
///
/// [`MemoryWebhookDedup`]: crate::webhooks::MemoryWebhookDedup
///
/// ```
/// use std::collections::HashSet;
/// use understory_auth::webhooks::{WebhookDedup, WebhookDedupError};
///
/// /// Never forgets (a real store must expire its ids).
/// #[derive(Default)]
/// struct Forever(parking_lot::Mutex<HashSet<String>>);
///
/// #[async_trait::async_trait]
/// impl WebhookDedup for Forever {
///     async fn claim(&self, id: &str) -> Result<bool, WebhookDedupError> {
///         Ok(self.0.lock().insert(id.to_owned()))
///     }
///     async fn release(&self, id: &str) -> Result<(), WebhookDedupError> {
///         self.0.lock().remove(id);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait WebhookDedup: Send + Sync + 'static {
    /// Records `id` as being processed: `true` if it was not recorded yet (process the
    /// webhook), `false` if it was (a redelivery: acknowledge it, do not process it).
    /// Must be atomic: of two concurrent claims of one id, one gets `true`.
    async fn claim(&self, id: &str) -> Result<bool, WebhookDedupError>;

    /// Forgets `id`, after its processing failed, so that the next delivery is processed.
    async fn release(&self, id: &str) -> Result<(), WebhookDedupError>;
}

/// A [`WebhookDedup`] store failed (for example, Redis is unreachable).
/// [`WebhookLayer`](crate::webhooks::WebhookLayer) then answers `503 Service Unavailable`, so that
/// Understory delivers the webhook again later: nothing is lost, nothing processed twice.
///
/// ```
/// use understory_auth::webhooks::WebhookDedupError;
///
/// let error = WebhookDedupError::new("the dedup store is full");
/// assert_eq!(error.to_string(), "webhook deduplication failed: the dedup store is full");
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
    ///
    /// ```
    /// let error = understory_auth::webhooks::WebhookDedupError::new("store unreachable");
    /// # let _ = error;
    /// ```
    pub fn new(message: &'static str) -> Self {
        WebhookDedupError {
            message,
            source: None,
        }
    }

    /// An error that says `message`, caused by `source`.
    ///
    /// ```
    /// use std::error::Error;
    /// use understory_auth::webhooks::WebhookDedupError;
    ///
    /// let io = std::io::Error::other("connection refused");
    /// let error = WebhookDedupError::with_source("store unreachable", io);
    /// assert!(error.source().is_some());
    /// ```
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
