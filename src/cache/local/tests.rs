//! The per-thread copies: what they hand out, that they follow the slot, and the coarse
//! clock's error they rely on. Under tokio's paused clock (which both clocks follow here).

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::sleep;

use super::*;
use crate::Error;
use crate::cache::{Rejection, TokenCache};
use crate::schedule::Timing;
use crate::source::TokenSource;
use crate::token::GrantedToken;

/// A source answering fetches with a new token of `lifetime`, or, once `tokens` ran out,
/// with a 503.
struct Tokens {
    lifetime: Duration,
    tokens: AtomicU64,
}

impl TokenSource for Tokens {
    fn fetch(self: Arc<Self>) -> BoxFuture<'static, Result<GrantedToken, Error>> {
        Box::pin(async move {
            match self.tokens.fetch_sub(1, Ordering::Relaxed) {
                0 => Err(Error::Status {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    retry_after: None,
                }),
                _ => GrantedToken::new("token", self.lifetime, vec![]),
            }
        })
    }
}

fn cache_of(lifetime: Duration, tokens: u64) -> TokenCache {
    let source = Arc::new(Tokens {
        lifetime,
        tokens: AtomicU64::new(tokens),
    });
    TokenCache::new(source, Duration::from_secs(10), Timing::default(), ())
}

fn cache(lifetime: Duration) -> TokenCache {
    cache_of(lifetime, u64::MAX)
}

/// Where a token's header bytes live: equal for clones of one copy, different between copies.
fn bytes_of(token: &AccessToken) -> *const u8 {
    token.header_value().as_bytes().as_ptr()
}

#[tokio::test(start_paused = true)]
async fn each_thread_hands_out_clones_of_its_own_copy() {
    let cache = cache(Duration::from_secs(3600));
    let fetched = cache.token().await.unwrap();
    let (a, b) = (cache.fresh().unwrap(), cache.fresh().unwrap());
    assert_eq!((a.id(), b.id()), (fetched.id(), fetched.id()));
    assert_eq!(bytes_of(&a), bytes_of(&b), "one copy per thread");
    assert_ne!(bytes_of(&a), bytes_of(&fetched), "not the shared token");
    assert_eq!(a.header_value(), fetched.header_value());
    assert!(a.header_value().is_sensitive());

    let other = std::thread::scope(|s| {
        s.spawn(|| {
            let token = cache.fresh().unwrap();
            (token.id(), bytes_of(&token) as usize)
        })
        .join()
        .unwrap()
    });
    assert_eq!(other.0, fetched.id());
    assert_ne!(
        other.1,
        bytes_of(&a) as usize,
        "another thread has its own copy"
    );
}

#[tokio::test(start_paused = true)]
async fn a_copy_is_dropped_with_the_token_it_copies() {
    let cache = cache(Duration::from_secs(3600));
    let first = cache.token().await.unwrap();
    assert_eq!(cache.fresh().unwrap().id(), first.id()); // this thread's copy exists now
    assert_eq!(cache.reject(&first), Rejection::Dropped);
    assert!(
        cache.fresh().is_none(),
        "the invalidated token is not handed out"
    );
    let second = cache.token().await.unwrap();
    assert_ne!(second.id(), first.id());
    assert_eq!(cache.fresh().unwrap().id(), second.id());
}

#[tokio::test(start_paused = true)]
async fn a_copy_is_never_handed_out_past_its_usable_life() {
    // A 60 s token: refreshed from ~51 s (margin 6 s + jitter, skew 3 s), usable until 57 s.
    // Refreshes fail: the copy itself must stop being handed out.
    let cache = cache_of(Duration::from_secs(60), 1);
    let first = cache.token().await.unwrap();
    assert_eq!(cache.fresh().unwrap().id(), first.id());
    let held = cache.fresh_held().unwrap();
    sleep(Duration::from_millis(56_990)).await;
    assert_eq!(cache.fresh().unwrap().id(), first.id());
    sleep(Duration::from_millis(10)).await;
    assert!(cache.fresh().is_none());
    assert!(cache.fresh_held().is_none());
    assert_eq!(held.token().id(), first.id());
}

#[tokio::test(start_paused = true)]
async fn a_thread_keeps_copies_for_many_caches() {
    let caches: Vec<_> = (0..COPIES_PER_THREAD + 3)
        .map(|_| cache(Duration::from_secs(3600)))
        .collect();
    let mut ids = Vec::new();
    for cache in &caches {
        ids.push(cache.token().await.unwrap().id());
    }
    for _ in 0..3 {
        for (cache, id) in caches.iter().zip(&ids) {
            assert_eq!(cache.fresh().unwrap().id(), *id);
        }
    }
    COPIES.with(|copies| assert_eq!(copies.borrow().len(), COPIES_PER_THREAD));
    // The first caches keep their copies; the others hand out the shared token, and no copy
    // is made at each turn.
    for (n, cache) in caches.iter().enumerate().take(COPIES_PER_THREAD + 1) {
        let (a, b) = (cache.fresh_held().unwrap(), cache.fresh_held().unwrap());
        assert_eq!(Arc::ptr_eq(&a, &b), n < COPIES_PER_THREAD, "cache {n}");
        assert_eq!(a.token().id(), ids[n]);
    }
    // A cache that keeps being asked gets a copy after a few calls.
    let hot = caches.last().unwrap();
    for _ in 0..ADMIT_EVERY {
        hot.fresh_held().unwrap();
    }
    let (a, b) = (hot.fresh_held().unwrap(), hot.fresh_held().unwrap());
    assert!(Arc::ptr_eq(&a, &b), "the hot cache has its copy");
}

#[tokio::test(start_paused = true)]
async fn a_401_is_reported_to_the_cache_of_the_copy() {
    let cache = cache(Duration::from_secs(3600));
    let first = cache.token().await.unwrap();
    let held = cache.fresh_held().unwrap();
    assert!(!held.answered(http::StatusCode::OK));
    assert_eq!(cache.fresh().unwrap().id(), first.id());
    let unauthorized = http::StatusCode::UNAUTHORIZED;
    assert!(
        held.answered(unauthorized),
        "dropped: a resend carries another token"
    );
    assert!(cache.fresh().is_none());
    assert_ne!(cache.token().await.unwrap().id(), first.id());
    drop(cache);
    assert!(!held.answered(unauthorized), "the cache is gone");
}

/// The coarse clock's error, which `COARSE_CLOCK_TOLERANCE` must cover: it never runs ahead
/// of the precise monotonic clock and lags it by less than the tolerance.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn the_coarse_clock_lags_the_precise_one_by_less_than_the_tolerance() {
    use rustix::time::ClockId::Monotonic;
    let tolerance = COARSE_CLOCK_TOLERANCE.as_nanos() as u64;
    for _ in 0..10_000 {
        let coarse = coarse::now();
        let precise = coarse::nanos(Monotonic);
        assert!(coarse <= precise, "the coarse clock ran ahead");
        assert!(precise - coarse < tolerance, "lag {} ns", precise - coarse);
    }
}
