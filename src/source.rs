//! [`TokenSource`]: where the cache's tokens come from (the grant, or the shared store).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::Error;
use crate::token::GrantedToken;

/// One fetch per call, no caching.
pub(crate) trait TokenSource: Send + Sync + 'static {
    fn fetch(self: Arc<Self>) -> BoxFuture<'static, Result<GrantedToken, Error>>;

    /// What a source in front of the token request counts.
    fn shared_counts(&self) -> Option<SharedCounts> {
        None
    }

    /// Learns of a token obtained elsewhere, to redact it as its own.
    #[cfg_attr(not(feature = "shared-cache"), allow(dead_code))]
    fn remember_token(&self, _token: &str) {}
}

/// The counts behind [`CacheStats`](crate::CacheStats)' shared fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SharedCounts {
    pub(crate) token_requests: u64,
    pub(crate) hits: u64,
    pub(crate) failures: u64,
}
