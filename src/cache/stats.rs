//! What the cache counts, and [`CacheStats`], the snapshot users export to metrics.

use std::sync::atomic::AtomicU64;

use crate::token::TokenId;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) fetches: AtomicU64,
    pub(super) successes: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) background_refreshes: AtomicU64,
    pub(super) coalesced_waits: AtomicU64,
    pub(super) failed_fast: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) rate_limited: AtomicU64,
}

/// A snapshot of the cache's counters since the `UnderstoryAuth` was built, for metrics. A
/// *fetch* is the cache getting a new token: one token request, or with a
/// [`shared_cache`](crate::UnderstoryAuthBuilder::shared_cache), one
/// [shared hit](Self::shared_hits) or [token request](Self::token_requests).
///
/// ```
/// # #[cfg(all(feature = "test-util", feature = "redis"))]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{RedisStore, UnderstoryAuth};
///
/// let sandbox = understory_auth::testing::SandboxServer::start().await?;
/// // No Redis listens on port 1: the shared cache fails and the token is requested directly.
/// let auth = UnderstoryAuth::builder(sandbox.credentials())
///     .token_url(sandbox.token_url())
///     .api_base(sandbox.api_base())
///     .shared_cache(RedisStore::new("redis://127.0.0.1:1/")?)
///     .build()?;
/// auth.token().await?;
///
/// let stats = auth.stats();
/// assert_eq!((stats.fetches, stats.fetch_successes), (1, 1));
/// assert_eq!((stats.token_requests, stats.shared_hits), (1, 0));
/// assert!(stats.shared_failures >= 1);
/// println!("{} token requests, {} failed", stats.token_requests, stats.fetch_failures);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// Its `Debug` shows `expires_in` instead of `expires_at`.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fetches started (foreground and background).
    pub fetches: u64,
    /// Token requests made to the auth server (without a shared cache, `fetches`).
    pub token_requests: u64,
    /// Tokens taken from the shared cache, with no token request.
    pub shared_hits: u64,
    /// Shared-cache operations that failed or timed out (the fetch went on without it);
    /// growing: the shared cache is down, and the log says why.
    pub shared_failures: u64,
    /// Fetches that produced a token (from the auth server or the shared cache).
    pub fetch_successes: u64,
    /// Fetches that failed (the auth server refused or could not be reached).
    pub fetch_failures: u64,
    /// Of [`CacheStats::fetches`], those started ahead of expiry while a valid token remained.
    pub background_refreshes: u64,
    /// Callers that waited for a fetch another caller had already started.
    pub coalesced_waits: u64,
    /// Callers answered at once with the last error, inside its failure window.
    pub failed_fast: u64,
    /// Tokens dropped because a request carrying them was rejected.
    pub invalidations: u64,
    /// Of [`CacheStats::fetch_failures`], those refused with HTTP 429.
    pub rate_limited: u64,
    /// The cached token's id, if there is one.
    pub token_id: Option<TokenId>,
    /// When the cached token expires, if there is one.
    pub expires_at: Option<std::time::Instant>,
}

impl std::fmt::Debug for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("CacheStats");
        for (name, count) in [
            ("fetches", self.fetches),
            ("token_requests", self.token_requests),
            ("shared_hits", self.shared_hits),
            ("shared_failures", self.shared_failures),
            ("fetch_successes", self.fetch_successes),
            ("fetch_failures", self.fetch_failures),
            ("background_refreshes", self.background_refreshes),
            ("coalesced_waits", self.coalesced_waits),
            ("failed_fast", self.failed_fast),
            ("invalidations", self.invalidations),
            ("rate_limited", self.rate_limited),
        ] {
            out.field(name, &count);
        }
        let now = std::time::Instant::now();
        let expires_in = self.expires_at.map(|at| at.saturating_duration_since(now));
        out.field("token_id", &self.token_id)
            .field("expires_in", &expires_in)
            .finish()
    }
}
