//! The token cache: one token for every clone of an `UnderstoryAuth`, fetched by one request
//! however many callers need it.
//!
//! # How it works
//!
//! The current token lives in `slot`, a `parking_lot::RwLock<Option<AccessToken>>` inside the
//! cache's `Arc`. The hot path ([`TokenCache::fresh`]) takes the read lock, checks the clock
//! and clones an `Arc`: no write lock, no await, no allocation.
//!
//! Everything else happens under a second lock, `state`, which the hot path never touches
//! except for a `try_lock` while a token is due for refresh:
//!
//! * **Single flight.** A fetch runs in a spawned task whose outcome is a shared future.
//!   Callers that find no usable token join the fetch in flight or start one; all of them
//!   get its outcome. A caller dropped while waiting changes nothing for the others, and the
//!   task is bounded by the load timeout, so a hung auth server cannot wedge the cache.
//! * **Refresh ahead.** Each token carries a refresh instant, a margin before its expiry
//!   ([`MIN_REFRESH_MARGIN`], 10 % of the lifetime, at most half of it, minus up to
//!   [`REFRESH_JITTER`] of the margin so a fleet does not refresh in lockstep). The first
//!   caller past it starts a background fetch and, like everyone else, keeps using the valid
//!   token meanwhile.
//! * **Expired means expired.** A token is handed out only until its expiry minus a skew
//!   (5 % of its lifetime, at most [`MAX_EXPIRY_SKEW`]), so it does not expire in flight.
//! * **Failure window.** A failed fetch is remembered until its retry instant: callers in
//!   that window get the same error at once instead of sending another request. The window
//!   grows exponentially with jitter (transient failures from [`TRANSIENT_BACKOFF_BASE`] to
//!   [`TRANSIENT_BACKOFF_MAX`], rejected credentials or scopes from
//!   [`PERMANENT_BACKOFF_BASE`] to [`PERMANENT_BACKOFF_MAX`]) and is at least the server's
//!   `Retry-After`. While a valid token remains, a failed background refresh keeps it and
//!   retries within half of the time it has left.
//! * **Invalidation.** A caller whose token was rejected drops it only if it is still the
//!   cached one (compare by [`TokenId`](crate::TokenId)), so a hundred 401s for one stale
//!   token cause one new fetch. A token fetched to replace a rejected one is protected from
//!   invalidation for [`INVALIDATION_COOLDOWN`], so an API that rejects every token cannot
//!   turn each request into a token request.
//! * **Lifetime.** The fetch task holds the cache weakly; dropping the last clone aborts it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::{Mutex, RwLock};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::Error;
use crate::token::{AccessToken, GrantedToken, Schedule, TokenId};

mod local;
pub(crate) use local::Held;

/// The smallest refresh-ahead margin for tokens that live long enough to afford it (a
/// token's margin is never more than half its lifetime).
pub const MIN_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// The fraction of the refresh margin drawn at random and added to it, per token.
pub const REFRESH_JITTER: f64 = 0.2;
/// The most a token's usable life is cut short before its expiry, to cover clock skew and
/// request latency (for short-lived tokens: 5 % of the lifetime).
pub const MAX_EXPIRY_SKEW: Duration = Duration::from_secs(5);
/// The first retry delay after a transient failure (timeout, network, 5xx, 429).
pub const TRANSIENT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest retry delay after transient failures (unless `Retry-After` asks for more).
pub const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The first retry delay after a permanent failure (rejected credentials, scope, ...).
pub const PERMANENT_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// The longest retry delay after permanent failures.
pub const PERMANENT_BACKOFF_MAX: Duration = Duration::from_secs(120);
/// How long a token fetched to replace a rejected one cannot itself be invalidated.
pub const INVALIDATION_COOLDOWN: Duration = Duration::from_secs(5);

/// Where tokens come from: one fetch per call, no caching (that is the cache's job).
pub(crate) trait TokenSource: Send + Sync + 'static {
    /// Starts one token request.
    fn fetch(self: Arc<Self>) -> BoxFuture<'static, Result<GrantedToken, Error>>;
}

type Outcome = Shared<BoxFuture<'static, Result<AccessToken, Error>>>;

/// A handle to the shared cache; clones share it.
#[derive(Clone)]
pub(crate) struct TokenCache {
    shared: Arc<SharedCache>,
}

struct SharedCache {
    /// The current token, the source of truth. The hot path reads `current` and its own
    /// thread's copy of the token first (see `local`).
    slot: RwLock<Option<AccessToken>>,
    /// The id of the token in `slot`, published with every write to it.
    current: local::Current,
    state: Mutex<FetchState>,
    source: Arc<dyn TokenSource>,
    load_timeout: Duration,
    counters: Counters,
}

#[derive(Default)]
struct FetchState {
    inflight: Option<Inflight>,
    failure: Option<Failure>,
    consecutive_failures: u32,
    /// Set by an invalidation; the next fetch replaces a rejected token.
    invalidated: bool,
    /// A token that replaced a rejected one, and until when it cannot be invalidated.
    protected: Option<(TokenId, Instant)>,
}

struct Inflight {
    outcome: Outcome,
    abort: AbortHandle,
}

struct Failure {
    error: Error,
    retry_at: Instant,
}

#[derive(Default)]
struct Counters {
    fetches: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    background_refreshes: AtomicU64,
    coalesced_waits: AtomicU64,
    failed_fast: AtomicU64,
    invalidations: AtomicU64,
}

/// A snapshot of the cache's counters, cheap to take, for export to metrics.
///
/// ```
/// # async fn demo(auth: understory_auth::UnderstoryAuth) {
/// let stats = auth.stats();
/// println!("{} token requests, {} failed", stats.fetches, stats.fetch_failures);
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Token requests started (foreground and background).
    pub fetches: u64,
    /// Token requests that produced a token.
    pub fetch_successes: u64,
    /// Token requests that failed.
    pub fetch_failures: u64,
    /// Of [`CacheStats::fetches`], those started ahead of expiry while a valid token remained.
    pub background_refreshes: u64,
    /// Callers that waited for a fetch another caller had already started.
    pub coalesced_waits: u64,
    /// Callers answered at once with the last error, inside its failure window.
    pub failed_fast: u64,
    /// Tokens dropped because a request carrying them was rejected.
    pub invalidations: u64,
    /// The cached token's id, if there is one.
    pub token_id: Option<TokenId>,
    /// When the cached token expires, if there is one.
    pub expires_at: Option<Instant>,
}

impl TokenCache {
    pub(crate) fn new(source: Arc<dyn TokenSource>, load_timeout: Duration) -> Self {
        TokenCache {
            shared: Arc::new(SharedCache {
                slot: RwLock::new(None),
                current: local::Current::default(),
                state: Mutex::new(FetchState::default()),
                source,
                load_timeout,
                counters: Counters::default(),
            }),
        }
    }

    /// The hot path: the cached token if it is still usable, without waiting for anything.
    /// Past the token's refresh instant, it also starts a background refresh. The token is
    /// this thread's copy (see `local`): handing it out writes nothing shared.
    pub(crate) fn fresh(&self) -> Option<AccessToken> {
        local::lookup(self, |held| held.token().clone())
    }

    /// [`TokenCache::fresh`] with the handle a 401 needs.
    pub(crate) fn fresh_held(&self) -> Option<Arc<Held>> {
        local::lookup(self, Arc::clone)
    }

    /// The handle a 401 needs, for a token obtained some other way (a fetch).
    pub(crate) fn hold(&self, token: AccessToken) -> Arc<Held> {
        Held::new(self, token)
    }

    /// A usable token: the cached one, or the outcome of a fetch (joined or started).
    pub(crate) async fn token(&self) -> Result<AccessToken, Error> {
        match self.fresh() {
            Some(token) => Ok(token),
            None => self.fetch_or_join()?.await,
        }
    }

    /// Drops `token` if it is still the cached one. Returns whether it was dropped.
    pub(crate) fn invalidate(&self, token: &AccessToken) -> bool {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        if let Some((id, until)) = state.protected {
            if id == token.id() && now < until {
                return false;
            }
        }
        let mut slot = self.shared.slot.write();
        if slot.as_ref().map(AccessToken::id) != Some(token.id()) {
            return false;
        }
        *slot = None;
        self.shared.current.publish(None);
        state.invalidated = true;
        self.shared.counters.invalidations.fetch_add(1, Relaxed);
        tracing::debug!(token_id = %token.id(), "access token rejected; it will be replaced");
        true
    }

    /// Reports that a request carrying `token` was rejected (HTTP 401): drops the token if it
    /// is still the cached one, and tells whether a retry would carry another token. It
    /// would not while the rejected token is kept by the invalidation cooldown, and then a
    /// retry is pointless.
    #[cfg_attr(not(any(feature = "middleware", feature = "tower")), allow(dead_code))]
    pub(crate) fn reject(&self, token: &AccessToken) -> bool {
        self.invalidate(token) || self.fresh().is_none_or(|cached| cached.id() != token.id())
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let slot = self.shared.slot.read();
        CacheStats {
            fetches: c.fetches.load(Relaxed),
            fetch_successes: c.successes.load(Relaxed),
            fetch_failures: c.failures.load(Relaxed),
            background_refreshes: c.background_refreshes.load(Relaxed),
            coalesced_waits: c.coalesced_waits.load(Relaxed),
            failed_fast: c.failed_fast.load(Relaxed),
            invalidations: c.invalidations.load(Relaxed),
            token_id: slot.as_ref().map(AccessToken::id),
            expires_at: slot.as_ref().map(AccessToken::expires_at),
        }
    }

    fn usable(&self, now: Instant) -> Option<AccessToken> {
        let slot = self.shared.slot.read();
        slot.as_ref().filter(|t| now < t.usable_until()).cloned()
    }

    /// Joins the fetch in flight, answers from the failure window, or starts a fetch.
    fn fetch_or_join(&self) -> Result<Outcome, Error> {
        let mut state = self.shared.state.lock();
        let now = Instant::now();
        if let Some(token) = self.usable(now) {
            // A fetch finished between our look at the slot and taking the lock.
            return Ok(futures_util::future::ready(Ok(token)).boxed().shared());
        }
        if let Some(inflight) = &state.inflight {
            self.shared.counters.coalesced_waits.fetch_add(1, Relaxed);
            return Ok(inflight.outcome.clone());
        }
        if let Some(failure) = state.failure.as_ref().filter(|f| now < f.retry_at) {
            self.shared.counters.failed_fast.fetch_add(1, Relaxed);
            return Err(failure.error.clone());
        }
        self.start_fetch(&mut state, false)
    }

    /// Starts a background refresh unless one is running or the failure window forbids it.
    fn refresh_in_background(&self, now: Instant) {
        // Whoever holds the lock is already deciding; nobody waits on the hot path.
        let Some(mut state) = self.shared.state.try_lock() else {
            return;
        };
        let in_window = state.failure.as_ref().is_some_and(|f| now < f.retry_at);
        if state.inflight.is_none() && !in_window {
            // If no runtime is available the next caller simply tries again.
            let _ = self.start_fetch(&mut state, true);
        }
    }

    /// Spawns the fetch task and records it as the flight everyone joins.
    fn start_fetch(&self, state: &mut FetchState, background: bool) -> Result<Outcome, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Interrupted {
            reason: "no Tokio runtime to run the token request on",
        })?;
        let counters = &self.shared.counters;
        counters.fetches.fetch_add(1, Relaxed);
        if background {
            counters.background_refreshes.fetch_add(1, Relaxed);
        }
        let replaces_rejected = std::mem::take(&mut state.invalidated);
        let guard = FlightGuard {
            cache: Arc::downgrade(&self.shared),
            replaces_rejected,
            finished: false,
        };
        let fetch = Arc::clone(&self.shared.source).fetch();
        let load_timeout = self.shared.load_timeout;
        let span = tracing::info_span!("understory_auth.fetch_token", background);
        let task = runtime.spawn(
            async move {
                let started = Instant::now();
                let result = match tokio::time::timeout(load_timeout, fetch).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout {
                        after: load_timeout,
                    }),
                };
                guard.finish(started, result)
            }
            .instrument(span),
        );
        let abort = task.abort_handle();
        let outcome = async move {
            task.await.unwrap_or_else(|join_error| {
                Err(Error::Interrupted {
                    reason: if join_error.is_panic() {
                        "the token request panicked"
                    } else {
                        "the token request was cancelled"
                    },
                })
            })
        }
        .boxed()
        .shared();
        state.inflight = Some(Inflight {
            outcome: outcome.clone(),
            abort,
        });
        Ok(outcome)
    }
}

/// Owned by the fetch task: records the outcome in the cache, and clears the flight even if
/// the task is aborted or panics, so the cache can never be left waiting for it.
struct FlightGuard {
    cache: Weak<SharedCache>,
    replaces_rejected: bool,
    finished: bool,
}

impl FlightGuard {
    fn finish(
        mut self,
        started: Instant,
        result: Result<GrantedToken, Error>,
    ) -> Result<AccessToken, Error> {
        self.finished = true;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let result = result.map(|granted| {
            let schedule = schedule(started, granted.lifetime());
            AccessToken::new(granted, schedule)
        });
        let Some(cache) = self.cache.upgrade() else {
            return result;
        };
        let now = Instant::now();
        let mut state = cache.state.lock();
        state.inflight = None;
        match &result {
            Ok(token) => {
                let mut slot = cache.slot.write();
                *slot = Some(token.clone());
                cache.current.publish(slot.as_ref());
                drop(slot);
                state.failure = None;
                state.consecutive_failures = 0;
                state.protected = self
                    .replaces_rejected
                    .then(|| (token.id(), now + INVALIDATION_COOLDOWN));
                cache.counters.successes.fetch_add(1, Relaxed);
                tracing::info!(
                    token_id = %token.id(),
                    lifetime_secs = token.lifetime().as_secs(),
                    scopes = %token.scopes().join(" "),
                    elapsed_ms,
                    "obtained access token"
                );
            }
            Err(error) => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                let mut delay = backoff(error, state.consecutive_failures);
                // With a valid token left, retry soon enough to replace it before it expires.
                if let Some(current) = cache.slot.read().as_ref() {
                    let left = current.usable_until().saturating_duration_since(now);
                    if !left.is_zero() {
                        delay = delay.min(left / 2);
                    }
                }
                state.failure = Some(Failure {
                    error: error.clone(),
                    retry_at: now + delay,
                });
                cache.counters.failures.fetch_add(1, Relaxed);
                tracing::warn!(
                    error = %error,
                    transient = error.is_transient(),
                    retry_in_ms = delay.as_millis() as u64,
                    elapsed_ms,
                    "token request failed"
                );
            }
        }
        result
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(cache) = self.cache.upgrade() {
            let mut state = cache.state.lock();
            state.inflight = None;
            state.invalidated |= self.replaces_rejected;
        }
    }
}

impl Drop for SharedCache {
    fn drop(&mut self) {
        if let Some(inflight) = self.state.get_mut().inflight.take() {
            inflight.abort.abort();
        }
    }
}

/// Places a token obtained at `obtained_at` with `lifetime` in time: see the module docs.
fn schedule(obtained_at: Instant, lifetime: Duration) -> Schedule {
    let skew = expiry_skew(lifetime);
    let margin = refresh_margin(lifetime);
    let jitter = margin.mul_f64(fastrand::f64() * REFRESH_JITTER);
    // Lifetimes are clamped to a day, so this cannot overflow; if it did, the token would
    // simply count as expired.
    let expires_at = obtained_at.checked_add(lifetime).unwrap_or(obtained_at);
    let usable_until = expires_at.checked_sub(skew).unwrap_or(obtained_at);
    let refresh_at = usable_until
        .checked_sub(margin + jitter)
        .unwrap_or(obtained_at)
        .max(obtained_at);
    Schedule {
        expires_at,
        usable_until,
        refresh_at,
    }
}

/// How long before its expiry a token of `lifetime` stops being handed out.
fn expiry_skew(lifetime: Duration) -> Duration {
    (lifetime / 20).min(MAX_EXPIRY_SKEW)
}

/// How long before a token of `lifetime` stops being handed out it is refreshed (before
/// jitter).
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).max(MIN_REFRESH_MARGIN).min(lifetime / 2)
}

/// How long before its expiry a token of `lifetime` may be due for refresh, whatever the
/// jitter draws: a token with less left than this is due (or past due) by [`schedule`].
///
/// Never larger for a shorter lifetime, so a token handed on with its remaining lifetime is
/// due for refresh no later than by its original schedule (see `store`).
#[cfg(feature = "shared-cache")]
pub(crate) fn refresh_lead(lifetime: Duration) -> Duration {
    expiry_skew(lifetime) + refresh_margin(lifetime).mul_f64(1.0 + REFRESH_JITTER)
}

/// The failure window after the `attempt`-th consecutive failure: exponential, with half
/// of it random, and never shorter than the server's `Retry-After`.
fn backoff(error: &Error, attempt: u32) -> Duration {
    let (base, max) = if error.is_transient() {
        (TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_MAX)
    } else {
        (PERMANENT_BACKOFF_BASE, PERMANENT_BACKOFF_MAX)
    };
    let exponent = attempt.saturating_sub(1).min(16);
    let delay = base.saturating_mul(1 << exponent).min(max);
    let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
    jittered.max(error.retry_after().unwrap_or_default())
}

#[cfg(test)]
mod tests;
