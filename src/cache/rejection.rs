//! [The 401 rule](crate#what-happens-on-a-401): its state and decisions; the cache applies
//! them under its lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::token::{AccessToken, TokenId};

/// How long a replacement token must be rejected before it is dropped in turn (the
/// [401 rule](crate#what-happens-on-a-401)).
pub const INVALIDATION_COOLDOWN: Duration = Duration::from_secs(5);

/// What a 401 did to the token the rejected request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// It was the cached token and was dropped: the next request gets a new one.
    Dropped,
    /// It is no longer the cached token: a resend carries another one.
    Superseded,
    /// It stays: it works elsewhere, or its cooldown has not run out.
    Kept,
}

impl Rejection {
    pub(crate) fn resend(self) -> bool {
        self != Rejection::Kept
    }
}

/// The id of the token rejected since it last worked (0 for none). Written only on a 401
/// and the first acceptance after one, so reading it on every response writes nothing shared.
#[derive(Default)]
pub(crate) struct Doubt(AtomicU64);

impl Doubt {
    pub(super) fn is_doubted(&self, token: &AccessToken) -> bool {
        self.0.load(Relaxed) == token.id().get()
    }

    /// Records a 401 for `token`; returns whether it was already doubted.
    fn doubt(&self, token: &AccessToken) -> bool {
        self.0.swap(token.id().get(), Relaxed) == token.id().get()
    }

    fn accepted(&self, token: &AccessToken) {
        let _ = self
            .0
            .compare_exchange(token.id().get(), 0, Relaxed, Relaxed);
    }
}

/// Whether an answer rejected `token`: a 401 from its origin. Any other answer from there
/// but a 5xx (a proxy's) is evidence it works. `from_token_origin` is asked only for a 401
/// or while the token is doubted.
#[inline]
pub(crate) fn is_rejection(
    doubt: &Doubt,
    token: &AccessToken,
    status: http::StatusCode,
    from_token_origin: impl FnOnce() -> bool,
) -> bool {
    if status == http::StatusCode::UNAUTHORIZED {
        return from_token_origin();
    }
    if !status.is_server_error() && doubt.is_doubted(token) && from_token_origin() {
        doubt.accepted(token);
    }
    false
}

/// What the 401 rule remembers between answers (under the cache's lock).
#[derive(Default)]
pub(super) struct Rejections {
    /// Set when a token is dropped: the next one stored is a replacement.
    invalidated: bool,
    replacement: Option<Replacement>,
    dropped_replacements: u32,
}

/// A 401 for a replacement more likely means a missing scope than a stale token.
struct Replacement {
    id: TokenId,
    cooldown: Duration,
    /// Its first rejection since it last worked (meaningful while it is doubted).
    doubted_since: Instant,
}

impl Rejections {
    /// A 401 for `token`, the cached one: whether to drop it.
    pub(super) fn should_drop(&mut self, doubt: &Doubt, token: &AccessToken, now: Instant) -> bool {
        if let Some(replacement) = self.replacement.as_mut().filter(|r| r.id == token.id()) {
            let doubted = doubt.doubt(token);
            if !doubted {
                replacement.doubted_since = now;
            }
            if !doubted || now < replacement.doubted_since + replacement.cooldown {
                tracing::debug!(
                    token_id = %token.id(),
                    "a 401 for a token that replaced a rejected one; kept (the endpoint may need a scope the key lacks)"
                );
                return false;
            }
            self.dropped_replacements = self.dropped_replacements.saturating_add(1);
        }
        self.invalidated = true;
        self.replacement = None;
        true
    }

    pub(super) fn stored(&mut self, token: &AccessToken, now: Instant) {
        if std::mem::take(&mut self.invalidated) {
            self.replacement = Some(Replacement {
                id: token.id(),
                cooldown: replacement_cooldown(self.dropped_replacements, token.lifetime()),
                doubted_since: now,
            });
        } else if self.replacement.take().is_none() {
            // A routine token follows one that lived to its refresh without a rejection.
            self.dropped_replacements = 0;
        }
    }
}

/// [`INVALIDATION_COOLDOWN`], four times longer per replacement dropped, at most `lifetime`.
fn replacement_cooldown(dropped: u32, lifetime: Duration) -> Duration {
    let factor = 4u32.saturating_pow(dropped);
    INVALIDATION_COOLDOWN.saturating_mul(factor).min(lifetime)
}

/// A token as handed out (one per thread per token), and where to report answers to it.
pub(crate) struct Held {
    token: AccessToken,
    doubt: Arc<Doubt>,
    cache: Weak<dyn Reject>,
}

/// What a [`Held`] needs of its cache.
pub(super) trait Reject: Send + Sync {
    fn reject(&self, token: &AccessToken) -> Rejection;
}

impl Held {
    pub(super) fn new(token: AccessToken, doubt: Arc<Doubt>, cache: Weak<dyn Reject>) -> Arc<Held> {
        Arc::new(Held {
            token,
            doubt,
            cache,
        })
    }

    #[inline]
    pub(crate) fn token(&self) -> &AccessToken {
        &self.token
    }

    pub(super) fn same_cache(&self, other: &Held) -> bool {
        self.cache.ptr_eq(&other.cache)
    }

    /// Whether it comes from the cache at `cache` (its shared state's address).
    pub(super) fn of_cache(&self, cache: *const ()) -> bool {
        std::ptr::addr_eq(self.cache.as_ptr(), cache)
    }

    pub(super) fn orphaned(&self) -> bool {
        self.cache.strong_count() == 0
    }

    /// The layer's report of an answer (from the token's origin): whether to resend. The
    /// cache is reached (a shared reference count) only for a 401.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    #[inline] // on every response the layer sees: inlined into the response future's poll
    pub(crate) fn answered(&self, status: http::StatusCode) -> bool {
        is_rejection(&self.doubt, &self.token, status, || true)
            && self
                .cache
                .upgrade()
                .is_some_and(|cache| cache.reject(&self.token).resend())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cooldown_grows_fourfold_up_to_the_lifetime() {
        let hour = Duration::from_secs(3600);
        let cooldowns: Vec<_> = (0..5).map(|n| replacement_cooldown(n, hour)).collect();
        let secs = [5, 20, 80, 320, 1280].map(Duration::from_secs);
        assert_eq!(cooldowns, secs);
        assert_eq!(replacement_cooldown(40, hour), hour);
    }
}
