//! The token cache behind every clone of an `UnderstoryAuth` ([Cache
//! behaviour](crate#cache-behaviour)): one slot and the decisions around it, each in its own
//! file ([`local`], [`flight`], [`backoff`], [`rejection`], [`stats`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::Error;
use crate::schedule::{Schedule, Timing};
use crate::source::TokenSource;
use crate::token::{AccessToken, GrantedToken};

mod backoff;
mod flight;
mod local;
mod rejection;
mod stats;

pub use backoff::{
    PERMANENT_BACKOFF_BASE, PERMANENT_BACKOFF_MAX, TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_MAX,
};
pub use rejection::INVALIDATION_COOLDOWN;
pub(crate) use rejection::{Held, Rejection};
pub use stats::CacheStats;

use backoff::FailureWindow;
use flight::{Flights, Landed, Landing, STRANDED_FETCH_GRACE, Wait, runtime_shutting_down};
use local::{Current, Found};
use rejection::{Doubt, Reject, Rejections, is_rejection};
use stats::Counters;

/// A handle to the shared cache. `M` is what its owner keeps behind the same `Arc`.
pub(crate) struct TokenCache<M = ()> {
    shared: Arc<SharedCache<M>>,
}

impl<M> Clone for TokenCache<M> {
    fn clone(&self) -> Self {
        TokenCache {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct SharedCache<M> {
    /// The source of truth; the hot path reads `current` and its thread's copy first.
    slot: RwLock<Option<AccessToken>>,
    current: Current,
    /// Lock order: `state` before `slot`. Nothing that could drop a fetch (spawn, abort, the
    /// source's code) runs under `state`, so it is never taken re-entrantly.
    state: Mutex<FetchState>,
    doubt: Arc<Doubt>,
    source: Arc<dyn TokenSource>,
    load_timeout: Duration,
    timing: Timing,
    /// Draws random fractions in `0.0..1.0` (tests inject a constant).
    jitter: fn() -> f64,
    counters: Counters,
    meta: M,
}

#[derive(Default)]
struct FetchState {
    flights: Flights,
    /// The flight whose token is in the slot: an older flight never overwrites it.
    stored_flight: u64,
    failures: FailureWindow,
    rejections: Rejections,
}

enum Next {
    Ready(AccessToken),
    Wait(Wait),
}

impl<M: Send + Sync + 'static> TokenCache<M> {
    pub(crate) fn new(
        source: Arc<dyn TokenSource>,
        load_timeout: Duration,
        timing: Timing,
        meta: M,
    ) -> Self {
        Self::build(source, load_timeout, timing, fastrand::f64, meta)
    }

    fn build(
        source: Arc<dyn TokenSource>,
        load_timeout: Duration,
        timing: Timing,
        jitter: fn() -> f64,
        meta: M,
    ) -> Self {
        TokenCache {
            shared: Arc::new(SharedCache {
                slot: RwLock::new(None),
                current: Current::default(),
                state: Mutex::new(FetchState::default()),
                doubt: Arc::default(),
                source,
                load_timeout,
                timing,
                jitter,
                counters: Counters::default(),
                meta,
            }),
        }
    }

    pub(crate) fn meta(&self) -> &M {
        &self.shared.meta
    }

    /// The hot path: this thread's copy of the cached token if usable; past its refresh
    /// instant, it also starts a background refresh.
    pub(crate) fn fresh(&self) -> Option<AccessToken> {
        self.lookup(|held| held.token().clone(), |token| token)
    }

    /// [`TokenCache::fresh`] with the handle the API's answer is reported to.
    pub(crate) fn fresh_held(&self) -> Option<Arc<Held>> {
        self.lookup(Arc::clone, |token| self.hold(token))
    }

    /// The handle the API's answer is reported to, for a token obtained by a fetch.
    pub(crate) fn hold(&self, token: AccessToken) -> Arc<Held> {
        let cache = Arc::downgrade(&self.shared) as Weak<dyn Reject>;
        Held::new(token, Arc::clone(&self.shared.doubt), cache)
    }

    /// The usable token as `read` makes it of this thread's copy, or, for a thread using
    /// more caches than it keeps copies of, as `shared` makes it of the slot's own token.
    #[inline]
    fn lookup<R>(
        &self,
        read: impl Fn(&Arc<Held>) -> R,
        shared: impl FnOnce(AccessToken) -> R,
    ) -> Option<R> {
        let held = match local::find(&self.shared.current, &read) {
            Found::Fast(value) => return Some(value),
            Found::Near(held) => held,
            Found::Missing => match self.copy_current()? {
                Ok(held) => held,
                Err(token) => {
                    self.due(&token, Instant::now())?;
                    return Some(shared(token));
                }
            },
        };
        self.due(held.token(), Instant::now())?;
        Some(read(&held))
    }

    /// `Some` if `token` may still be handed out at `now`; past its refresh instant, a
    /// background refresh starts.
    fn due(&self, token: &AccessToken, now: Instant) -> Option<()> {
        if now >= token.usable_until() {
            return None;
        }
        if now >= token.refresh_at() {
            self.refresh_in_background(now);
        }
        Some(())
    }

    /// Copies the slot's token for this thread, if usable, and keeps the copy; or, for a
    /// thread using more caches than it keeps copies of, the slot's token itself (`Err`).
    fn copy_current(&self) -> Option<Result<Arc<Held>, AccessToken>> {
        let now = Instant::now();
        let token = self.usable(now)?;
        if !local::has_room(Arc::as_ptr(&self.shared).cast()) {
            return Some(Err(token));
        }
        let cache = Arc::downgrade(&self.shared) as Weak<dyn Reject>;
        let held = Held::new(token.thread_copy(), Arc::clone(&self.shared.doubt), cache);
        local::keep(&held, token.refresh_at().saturating_duration_since(now));
        Some(Ok(held))
    }

    /// A usable token: the cached one, or a fetch's outcome (joined or started). A fetch
    /// dropped before it ended is started again once.
    pub(crate) async fn token(&self) -> Result<AccessToken, Error> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        // Boxed: the future of a warm call stays a few words, not the whole wait's state.
        Box::pin(self.obtain()).await
    }

    /// Caches `granted`, obtained outside the cache (a completed authorization's token), as
    /// if a flight had just fetched it.
    #[cfg(feature = "app")]
    pub(crate) fn seed(&self, granted: GrantedToken) {
        let flight = self.shared.state.lock().flights.number();
        let _ = self
            .shared
            .land(flight, Instant::now(), Duration::ZERO, Ok(granted));
    }

    async fn obtain(&self) -> Result<AccessToken, Error> {
        let mut restarted = false;
        loop {
            let wait = match self.fetch_or_join()? {
                Next::Ready(token) => return Ok(token),
                Next::Wait(wait) => wait,
            };
            // No timer for a known outcome; a runtime shutting down has none (polling panics).
            let landed = match wait.outcome.clone().now_or_never() {
                Some(landed) => landed,
                None if runtime_shutting_down() => {
                    return Err(Error::Interrupted {
                        reason: "the runtime it was requested on is shutting down",
                    });
                }
                None => match tokio::time::timeout_at(wait.give_up, wait.outcome).await {
                    Ok(landed) => landed,
                    Err(_) => {
                        self.forget_stranded(wait.flight);
                        return Err(Error::Interrupted {
                            reason: "the runtime it was started on did not run it before its deadline",
                        });
                    }
                },
            };
            match landed {
                Landed::Done(result) => return result,
                Landed::Cancelled if !restarted => restarted = true,
                Landed::Cancelled => {
                    return Err(Error::Interrupted {
                        reason: "the token request was cancelled: its runtime is shutting down",
                    });
                }
            }
        }
    }

    /// The API answered a request carrying `token`: whether to resend it (the 401 rule).
    /// `from_token_origin`: whether the answer came from the origin the token went to.
    pub(crate) fn answered(
        &self,
        token: &AccessToken,
        status: http::StatusCode,
        from_token_origin: impl FnOnce() -> bool,
    ) -> bool {
        is_rejection(&self.shared.doubt, token, status, from_token_origin)
            && self.reject(token).resend()
    }

    /// A 401 to a request carrying `token`: dropped unless the 401 rule keeps it.
    pub(crate) fn reject(&self, token: &AccessToken) -> Rejection {
        self.shared.reject(token)
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let fetches = c.fetches.load(Relaxed);
        let shared = self.shared.source.shared_counts();
        let slot = self.shared.slot.read();
        CacheStats {
            fetches,
            token_requests: shared.map_or(fetches, |s| s.token_requests),
            shared_hits: shared.map_or(0, |s| s.hits),
            shared_failures: shared.map_or(0, |s| s.failures),
            fetch_successes: c.successes.load(Relaxed),
            fetch_failures: c.failures.load(Relaxed),
            background_refreshes: c.background_refreshes.load(Relaxed),
            coalesced_waits: c.coalesced_waits.load(Relaxed),
            failed_fast: c.failed_fast.load(Relaxed),
            invalidations: c.invalidations.load(Relaxed),
            rate_limited: c.rate_limited.load(Relaxed),
            token_id: slot.as_ref().map(AccessToken::id),
            expires_at: slot.as_ref().map(AccessToken::expires_at),
        }
    }

    fn usable(&self, now: Instant) -> Option<AccessToken> {
        let slot = self.shared.slot.read();
        slot.as_ref().filter(|t| now < t.usable_until()).cloned()
    }

    /// Joins the fetch in flight, answers from the failure window, or starts a fetch.
    fn fetch_or_join(&self) -> Result<Next, Error> {
        // Without a runtime there is neither a fetch to run nor a timer to wait with.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Interrupted {
            reason: "no Tokio runtime to run the token request on",
        })?;
        let now = Instant::now();
        let state = self.shared.state.lock();
        if let Some(token) = self.usable(now) {
            // A fetch finished between our look at the slot and taking the lock.
            return Ok(Next::Ready(token));
        }
        if let Some(wait) = state.flights.join(now) {
            self.shared.counters.coalesced_waits.fetch_add(1, Relaxed);
            return Ok(Next::Wait(wait));
        }
        if let Some(failure) = state.failures.open_at(now) {
            self.shared.counters.failed_fast.fetch_add(1, Relaxed);
            return Err(failure.error_at(now, true));
        }
        Ok(Next::Wait(self.launch(&runtime, state, now, false)))
    }

    /// Starts a background refresh unless one is running or the failure window forbids it.
    fn refresh_in_background(&self, now: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the next caller on a runtime will start it
        };
        // Whoever holds the lock is already deciding.
        let Some(state) = self.shared.state.try_lock() else {
            return;
        };
        if state.flights.join(now).is_some() || state.failures.open_at(now).is_some() {
            return;
        }
        self.launch(&runtime, state, now, true);
    }

    /// Records a new flight as the one everyone joins, releases the lock, and spawns it.
    fn launch(
        &self,
        runtime: &tokio::runtime::Handle,
        mut state: parking_lot::MutexGuard<'_, FetchState>,
        now: Instant,
        background: bool,
    ) -> Wait {
        let landing = Arc::downgrade(&self.shared) as Weak<dyn Landing>;
        let load_timeout = self.shared.load_timeout;
        let (launch, stranded) = state.flights.record(now, load_timeout, background, landing);
        drop(state);
        stranded.now();
        let fetch = Arc::clone(&self.shared.source).fetch();
        let (abort, wait) = launch.spawn(runtime, fetch, load_timeout);
        self.shared.state.lock().flights.spawned(wait.flight, abort);
        wait
    }

    /// Forgets (and aborts) `flight` if still in flight, so the next caller starts a new one.
    fn forget_stranded(&self, flight: u64) {
        let stranded = self.shared.state.lock().flights.forget(flight);
        if let Some(stranded) = stranded {
            tracing::warn!(
                grace_ms = STRANDED_FETCH_GRACE.as_millis() as u64,
                "a token request was not driven by its runtime past its deadline; it will be replaced"
            );
            stranded.now();
        }
    }
}

impl<M: Send + Sync> Reject for SharedCache<M> {
    fn reject(&self, token: &AccessToken) -> Rejection {
        let now = Instant::now();
        let mut state = self.state.lock();
        if self.slot.read().as_ref().map(AccessToken::id) != Some(token.id()) {
            return Rejection::Superseded;
        }
        if !state.rejections.should_drop(&self.doubt, token, now) {
            return Rejection::Kept;
        }
        let mut slot = self.slot.write();
        *slot = None;
        self.current.publish(None);
        drop(slot);
        self.counters.invalidations.fetch_add(1, Relaxed);
        tracing::debug!(token_id = %token.id(), "access token rejected; it will be replaced");
        Rejection::Dropped
    }
}

impl<M: Send + Sync> Landing for SharedCache<M> {
    fn started(&self, background: bool) {
        self.counters.fetches.fetch_add(1, Relaxed);
        if background {
            self.counters.background_refreshes.fetch_add(1, Relaxed);
        }
    }

    fn land(
        &self,
        flight: u64,
        started: Instant,
        elapsed: Duration,
        result: Result<GrantedToken, Error>,
    ) -> Result<AccessToken, Error> {
        let elapsed_ms = elapsed.as_millis() as u64;
        let now = Instant::now();
        let mut state = self.state.lock();
        let current = state.flights.end(flight);
        match result {
            Ok(granted) => {
                let jitter = (self.jitter)();
                let schedule = Schedule::new(started, granted.lifetime(), jitter, self.timing);
                let token = AccessToken::new(granted, schedule);
                self.land_token(&mut state, flight, &token, elapsed_ms, now);
                Ok(token)
            }
            Err(error) => Err(self.land_failure(&mut state, current, error, elapsed_ms, now)),
        }
    }

    fn dropped(&self, flight: u64) {
        self.state.lock().flights.end(flight);
    }
}

impl<M> SharedCache<M> {
    /// `token` becomes the cached one unless a newer flight's already is.
    fn land_token(
        &self,
        state: &mut FetchState,
        flight: u64,
        token: &AccessToken,
        elapsed_ms: u64,
        now: Instant,
    ) {
        self.counters.successes.fetch_add(1, Relaxed);
        if flight < state.stored_flight {
            tracing::debug!(token_id = %token.id(), "a newer token is cached; not storing a late one");
            return;
        }
        let mut slot = self.slot.write();
        *slot = Some(token.clone());
        self.current.publish(slot.as_ref());
        drop(slot);
        state.stored_flight = flight;
        state.failures.close();
        state.rejections.stored(token, now);
        tracing::info!(
            token_id = %token.id(),
            lifetime_secs = token.lifetime().as_secs(),
            scopes = %token.scopes().join(" "),
            elapsed_ms,
            "obtained access token"
        );
    }

    /// The failure window opens (unless the flight was replaced); returns the error as the
    /// flight's callers get it.
    fn land_failure(
        &self,
        state: &mut FetchState,
        current: bool,
        error: Error,
        elapsed_ms: u64,
        now: Instant,
    ) -> Error {
        self.counters.failures.fetch_add(1, Relaxed);
        let failure = current.then(|| {
            let left = self
                .slot
                .read()
                .as_ref()
                .map(|token| token.usable_until().saturating_duration_since(now));
            state.failures.open(&error, now, (self.jitter)(), left)
        });
        let retry_in_ms = failure.as_ref().map(|f| f.retry_in(now).as_millis() as u64);
        let rate_limited = error.is_rate_limited();
        if rate_limited {
            self.counters.rate_limited.fetch_add(1, Relaxed);
        }
        tracing::warn!(
            error = %error,
            transient = error.is_transient(),
            retry_in_ms,
            elapsed_ms,
            "{}",
            match rate_limited {
                true => "token request rate limited by the auth server (HTTP 429)",
                false => "token request failed",
            }
        );
        match failure {
            Some(failure) => failure.error_at(now, false),
            None => error,
        }
    }
}

impl<M> Drop for SharedCache<M> {
    fn drop(&mut self) {
        self.state.get_mut().flights.clear().now();
    }
}

#[cfg(test)]
mod tests;
