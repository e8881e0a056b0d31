//! [`TokenSource`]: where the token cache's tokens come from. The grant (a token request to the
//! auth server) is one; the shared store, asking other processes first, wraps another.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::Error;
use crate::token::GrantedToken;

/// Where tokens come from: one fetch per call, no caching (that is the cache's job).
pub(crate) trait TokenSource: Send + Sync + 'static {
    /// Starts one token request.
    fn fetch(self: Arc<Self>) -> BoxFuture<'static, Result<GrantedToken, Error>>;

    /// What a source in front of the token request counts: `None` for the token request
    /// itself (each fetch is one).
    fn shared_counts(&self) -> Option<SharedCounts> {
        None
    }

    /// Learns of a token for the same credentials obtained elsewhere (another process, via
    /// the shared cache), so that it is redacted from this source's answers as its own are.
    #[cfg_attr(not(feature = "shared-cache"), allow(dead_code))]
    fn remember_token(&self, _token: &str) {}
}

/// The counts of a source that asks a shared cache before the auth server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SharedCounts {
    /// Token requests made to the auth server.
    pub(crate) token_requests: u64,
    /// Tokens taken from the shared cache.
    pub(crate) hits: u64,
    /// Shared-cache operations that failed or timed out.
    pub(crate) failures: u64,
}
