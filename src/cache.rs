//! The token cache behind every clone of an `UnderstoryAuth`: single flight (a spawned fetch
//! whose outcome callers share, replaced past its deadline plus [`STRANDED_FETCH_GRACE`]),
//! refresh ahead, the failure window and the 401 rule; the user-facing rules are the crate
//! docs' "Cache behaviour" and "What happens on a 401". The hot path is in `local`.

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
use crate::builder::{DEFAULT_EXPIRY_MARGIN, DEFAULT_REFRESH_AHEAD};
use crate::rate_limit;
use crate::source::TokenSource;
use crate::token::{AccessToken, GrantedToken, Schedule, TokenId};

mod local;
pub(crate) use local::Held;

/// The fraction of the refresh margin drawn at random and added to it, per token.
pub(crate) const REFRESH_JITTER: f64 = 0.2;
/// The first retry delay after a transient failure (timeout, network, 5xx, 429).
pub(crate) const TRANSIENT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest retry delay after transient failures (unless `Retry-After` asks for more).
pub(crate) const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The first retry delay after a permanent failure (rejected credentials, scope, ...).
pub(crate) const PERMANENT_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// The longest retry delay after permanent failures.
pub(crate) const PERMANENT_BACKOFF_MAX: Duration = Duration::from_secs(120);
/// How long a token fetched to replace a rejected one must be rejected, with no request
/// carrying it accepted in between, before it is dropped in turn; four times longer with
/// each replacement dropped in a row, up to the token's lifetime.
pub(crate) const INVALIDATION_COOLDOWN: Duration = Duration::from_secs(5);
/// How long past a fetch's deadline (its start plus the load timeout) its callers still
/// wait for it. A fetch runs on the runtime of the caller that started it; if nobody drives
/// that runtime (a current-thread runtime left idle between `block_on` calls), its own
/// timeout never fires, so callers give up on it at its deadline plus this grace, and the
/// next caller starts a new fetch in its place.
const STRANDED_FETCH_GRACE: Duration = Duration::from_secs(1);

/// When tokens are refreshed and stop being handed out, as set on the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// The smallest refresh-ahead margin (default [`DEFAULT_REFRESH_AHEAD`]).
    pub(crate) refresh_ahead: Duration,
    /// The most a token's usable life is cut short (default [`DEFAULT_EXPIRY_MARGIN`]).
    pub(crate) expiry_margin: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            refresh_ahead: DEFAULT_REFRESH_AHEAD,
            expiry_margin: DEFAULT_EXPIRY_MARGIN,
        }
    }
}

/// How a flight ended, as every caller waiting for it sees it.
#[derive(Clone)]
enum Landed {
    /// The fetch ran to its end (a panic counts as a failure).
    Done(Result<AccessToken, Error>),
    /// The fetch was dropped before it ended: its runtime shut down, or it was replaced.
    Cancelled,
}

type Outcome = Shared<BoxFuture<'static, Landed>>;

/// A handle to the shared cache; clones share it. `M` is what its owner keeps beside the
/// cache, behind the same `Arc` (`UnderstoryAuth` keeps its endpoints there), so that a
/// handle is one `Arc`.
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
    /// The current token, the source of truth. The hot path reads `current` and its own
    /// thread's copy of the token first (see `local`).
    slot: RwLock<Option<AccessToken>>,
    /// The id of the token in `slot`, published with every write to it.
    current: local::Current,
    /// Lock order: `state` before `slot`. No code holding `state` runs anything that could
    /// drop a fetch (spawn, abort, the source's own code), so it is never taken re-entrantly.
    state: Mutex<FetchState>,
    source: Arc<dyn TokenSource>,
    load_timeout: Duration,
    timing: Timing,
    /// Draws the random fractions of the refresh margin and the backoff (injectable, so tests
    /// assert exact instants).
    jitter: fn() -> f64,
    counters: Counters,
    meta: M,
}

#[derive(Default)]
struct FetchState {
    inflight: Option<Inflight>,
    /// The number of the last flight started; each flight has its own.
    flights: u64,
    /// The flight whose token is in the slot: an older flight never overwrites it.
    stored_flight: u64,
    failure: Option<Failure>,
    consecutive_failures: u32,
    /// Set by an invalidation, cleared when the next token is stored: that token replaces a
    /// rejected one, whichever fetch (already running or not) produced it.
    invalidated: bool,
    /// The cached token, if it replaced a rejected one.
    replacement: Option<Replacement>,
    /// How many replacement tokens in a row were dropped: the next one's cooldown is four
    /// times longer with each. Reset once a routine token lives to its refresh without a rejection.
    dropped_replacements: u32,
}

/// A token fetched to replace a rejected one: a 401 for it more likely means the endpoint
/// refuses the key (Understory answers 401 for a missing scope) than that it is stale.
struct Replacement {
    id: TokenId,
    /// How long it must be rejected, with no acceptance in between, before it is dropped.
    cooldown: Duration,
    /// Its first rejection since it last worked (meaningful while the token is doubted).
    doubted_since: Instant,
}

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
    /// Whether resending the request would carry another token.
    pub(crate) fn resend(self) -> bool {
        self != Rejection::Kept
    }
}

struct Inflight {
    flight: u64,
    outcome: Outcome,
    /// When the fetch's own timeout fires, if its runtime drives it.
    deadline: Instant,
    abort: Option<AbortHandle>,
}

impl Inflight {
    /// Whether waiting for this flight any longer is pointless: it should have ended by now,
    /// so its runtime is not driving it.
    fn stranded(&self, now: Instant) -> bool {
        now >= self.deadline + STRANDED_FETCH_GRACE
    }
}

struct Failure {
    error: Error,
    /// When the request failed.
    failed_at: Instant,
    retry_at: Instant,
}

impl Failure {
    /// The error as a caller at `now` gets it: it says when the next attempt is (a rate
    /// limit as [`Error::RateLimited`]), and, handed out from the failure window without a
    /// new request (`cached`), how long ago the request failed.
    fn error_at(&self, now: Instant, cached: bool) -> Error {
        let next_attempt_in = self.retry_at.saturating_duration_since(now);
        if !self.error.is_rate_limited() {
            let failed_ago = cached.then(|| now.saturating_duration_since(self.failed_at));
            return self
                .error
                .clone()
                .with_next_attempt(next_attempt_in, failed_ago);
        }
        Error::RateLimited {
            next_attempt_in,
            cause: Box::new(self.error.clone()),
        }
    }
}

/// What a caller without a usable token does.
enum Next {
    Ready(AccessToken),
    Wait {
        flight: u64,
        outcome: Outcome,
        give_up: Instant,
    },
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
    rate_limited: AtomicU64,
}

/// A snapshot of the cache's counters, cheap to take, for export to metrics.
///
/// Each counter counts one kind of event since the `UnderstoryAuth` was built. A *fetch* is
/// the cache getting a new token: without a
/// [`shared_cache`](crate::UnderstoryAuthBuilder::shared_cache) each fetch is one token
/// request to the auth server; with one, a fetch first asks the shared cache and makes a
/// token request only when that has no token to give (or fails). Each fetch is then one
/// [shared hit](Self::shared_hits) or one [token request](Self::token_requests) (neither if
/// the token timeout cuts it short), and [`shared_failures`](Self::shared_failures) says
/// whether the shared cache works.
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
/// Its `Debug` shows the time the cached token has left (`expires_in`) instead of the
/// instant it expires.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fetches started (foreground and background): token requests, or with a shared cache,
    /// fetches that ask it first, whether it gives a token or not.
    pub fetches: u64,
    /// Token requests made to the auth server. Without a shared cache, the same as
    /// [`CacheStats::fetches`]; with one, the fetches the shared cache could not serve.
    pub token_requests: u64,
    /// Tokens taken from the shared cache (another process's token), with no token request.
    /// Always 0 without a shared cache.
    pub shared_hits: u64,
    /// Shared-cache operations (a read, a lock, a write…) that failed or timed out; after
    /// each the fetch went on without the shared cache. Growing: the shared cache (for
    /// example Redis) is down or unreachable; the log says why. Always 0 without one.
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
    /// Of [`CacheStats::fetch_failures`], those the auth server refused with HTTP 429 (it is
    /// rate limiting this key).
    pub rate_limited: u64,
    /// The cached token's id, if there is one.
    pub token_id: Option<TokenId>,
    /// When the cached token expires, if there is one.
    pub expires_at: Option<std::time::Instant>,
}

impl std::fmt::Debug for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("CacheStats");
        // One line per counter.
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

impl<M: Send + Sync + 'static> TokenCache<M> {
    pub(crate) fn new(
        source: Arc<dyn TokenSource>,
        load_timeout: Duration,
        timing: Timing,
        meta: M,
    ) -> Self {
        Self::build(source, load_timeout, timing, fastrand::f64, meta)
    }

    /// `jitter` draws each random fraction in `0.0..1.0` (tests inject a constant).
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
                current: local::Current::default(),
                state: Mutex::new(FetchState::default()),
                source,
                load_timeout,
                timing,
                jitter,
                counters: Counters::default(),
                meta,
            }),
        }
    }

    /// What the owner keeps beside the cache.
    pub(crate) fn meta(&self) -> &M {
        &self.shared.meta
    }

    /// The hot path: the cached token if it is still usable, without waiting for anything.
    /// Past the token's refresh instant, it also starts a background refresh. The token is
    /// this thread's copy (see `local`): handing it out writes nothing shared.
    pub(crate) fn fresh(&self) -> Option<AccessToken> {
        local::lookup(self, |held| held.token().clone())
    }

    /// [`TokenCache::fresh`] with the handle the API's answer is reported to.
    pub(crate) fn fresh_held(&self) -> Option<Arc<Held>> {
        local::lookup(self, Arc::clone)
    }

    /// The handle the API's answer is reported to, for a token obtained some other way (a
    /// fetch).
    pub(crate) fn hold(&self, token: AccessToken) -> Arc<Held> {
        Held::new(self, token)
    }

    /// A usable token: the cached one, or the outcome of a fetch (joined or started).
    ///
    /// A caller waits for a fetch at most until the fetch's deadline plus
    /// [`STRANDED_FETCH_GRACE`], on its own runtime's clock, whichever runtime the fetch runs
    /// on. A fetch dropped before it ended (its runtime shut down) is started again once, and
    /// its callers wait for that one as long again: at most about 2 × (load timeout +
    /// [`STRANDED_FETCH_GRACE`]) in all.
    pub(crate) async fn token(&self) -> Result<AccessToken, Error> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let mut restarted = false;
        loop {
            let (flight, outcome, give_up) = match self.fetch_or_join()? {
                Next::Ready(token) => return Ok(token),
                Next::Wait {
                    flight,
                    outcome,
                    give_up,
                } => (flight, outcome, give_up),
            };
            // Checked first, so that no timer is made for an outcome already known; and a
            // runtime that is shutting down has no timer to offer (polling one panics).
            let landed = match outcome.clone().now_or_never() {
                Some(landed) => landed,
                None if runtime_shutting_down() => {
                    return Err(Error::Interrupted {
                        reason: "the runtime it was requested on is shutting down",
                    });
                }
                None => match tokio::time::timeout_at(give_up, outcome).await {
                    Ok(landed) => landed,
                    Err(_) => {
                        self.forget_stranded(flight);
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

    /// The one place that decides what an API answer to a request carrying `token` means:
    /// any answer but 401 (or 5xx) from where the token went is evidence the token works; a
    /// 401 from there is judged by [`Self::reject`]. `from_token_origin` tells whether the
    /// answer came from the origin the token was sent to, not from one a redirect led to
    /// (which never saw it); it is asked only for a 401 or while the token is doubted, so
    /// the hot path never looks. Returns whether the request should be resent with another
    /// token.
    pub(crate) fn answered(
        &self,
        token: &AccessToken,
        status: http::StatusCode,
        from_token_origin: impl FnOnce() -> bool,
    ) -> bool {
        is_rejection(token, status, from_token_origin) && self.reject(token).resend()
    }

    /// A request carrying `token` was answered 401: the rule in the crate docs ("What
    /// happens on a 401"). A routine token is dropped at once; a token that replaced a
    /// rejected one is kept while it works elsewhere, and dropped only once it has been
    /// rejected, with no acceptance in between, for its cooldown.
    pub(crate) fn reject(&self, token: &AccessToken) -> Rejection {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        // Under `state`, nobody else writes the slot.
        if self.shared.slot.read().as_ref().map(AccessToken::id) != Some(token.id()) {
            return Rejection::Superseded;
        }
        if let Some(replacement) = state.replacement.as_mut().filter(|r| r.id == token.id()) {
            let doubted = token.doubt();
            if !doubted {
                replacement.doubted_since = now;
            }
            if !doubted || now < replacement.doubted_since + replacement.cooldown {
                tracing::debug!(
                    token_id = %token.id(),
                    "a 401 for a token that replaced a rejected one; kept (the endpoint may need a scope the key lacks)"
                );
                return Rejection::Kept;
            }
            state.dropped_replacements = state.dropped_replacements.saturating_add(1);
        }
        let mut slot = self.shared.slot.write();
        *slot = None;
        self.shared.current.publish(None);
        drop(slot);
        state.invalidated = true;
        state.replacement = None;
        self.shared.counters.invalidations.fetch_add(1, Relaxed);
        tracing::debug!(token_id = %token.id(), "access token rejected; it will be replaced");
        Rejection::Dropped
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
        let mut state = self.shared.state.lock();
        if let Some(token) = self.usable(now) {
            // A fetch finished between our look at the slot and taking the lock.
            return Ok(Next::Ready(token));
        }
        let mut stranded = None;
        if let Some(inflight) = &state.inflight {
            if !inflight.stranded(now) {
                self.shared.counters.coalesced_waits.fetch_add(1, Relaxed);
                return Ok(Next::Wait {
                    flight: inflight.flight,
                    outcome: inflight.outcome.clone(),
                    give_up: inflight.deadline + STRANDED_FETCH_GRACE,
                });
            }
            stranded = state.inflight.take();
        }
        if let Some(failure) = state.failure.as_ref().filter(|f| now < f.retry_at) {
            self.shared.counters.failed_fast.fetch_add(1, Relaxed);
            return Err(failure.error_at(now, true));
        }
        let launch = self.record_flight(&mut state, now, false);
        drop(state);
        abort(stranded);
        Ok(self.launch(&runtime, launch))
    }

    /// Starts a background refresh unless one is running or the failure window forbids it.
    fn refresh_in_background(&self, now: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the next caller on a runtime will start it
        };
        // Whoever holds the lock is already deciding; nobody waits on the hot path.
        let Some(mut state) = self.shared.state.try_lock() else {
            return;
        };
        let in_window = state.failure.as_ref().is_some_and(|f| now < f.retry_at);
        let running = state.inflight.as_ref().is_some_and(|f| !f.stranded(now));
        if running || in_window {
            return;
        }
        let stranded = state.inflight.take();
        let launch = self.record_flight(&mut state, now, true);
        drop(state);
        abort(stranded);
        self.launch(&runtime, launch);
    }

    /// Records a new flight as the one everyone joins; [`Self::launch`] starts it once the
    /// lock is released.
    fn record_flight(&self, state: &mut FetchState, now: Instant, background: bool) -> Launch<M> {
        state.flights += 1;
        let flight = state.flights;
        let deadline = now + self.shared.load_timeout;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let outcome = receiver
            .map(|landed| landed.unwrap_or(Landed::Cancelled))
            .boxed()
            .shared();
        state.inflight = Some(Inflight {
            flight,
            outcome: outcome.clone(),
            deadline,
            abort: None,
        });
        Launch {
            guard: FlightGuard {
                cache: Arc::downgrade(&self.shared),
                flight,
                sender: Some(sender),
            },
            background,
            outcome,
            deadline,
        }
    }

    /// Spawns a recorded flight's task. Called without any lock held: a runtime that is
    /// shutting down drops the task inside `spawn`, and its guard then takes the lock.
    fn launch(&self, runtime: &tokio::runtime::Handle, launch: Launch<M>) -> Next {
        let Launch {
            guard,
            background,
            outcome,
            deadline,
        } = launch;
        let flight = guard.flight;
        let fetch = Arc::clone(&self.shared.source).fetch();
        let load_timeout = self.shared.load_timeout;
        let span = tracing::info_span!("understory_auth.fetch_token", background);
        let task = runtime.spawn(
            async move {
                guard.count_start(background);
                let started = Instant::now();
                // Its callers give up at the deadline recorded with the flight (plus a
                // grace): a task first polled late must not run past it.
                let result = match tokio::time::timeout_at(deadline, fetch).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout {
                        after: load_timeout,
                    }),
                };
                guard.finish(started, result);
            }
            .instrument(span),
        );
        let mut state = self.shared.state.lock();
        match state.inflight.as_mut().filter(|f| f.flight == flight) {
            Some(inflight) => inflight.abort = Some(task.abort_handle()),
            None => drop(state), // already over
        }
        Next::Wait {
            flight,
            outcome,
            give_up: deadline + STRANDED_FETCH_GRACE,
        }
    }

    /// Forgets `flight` if it is still the one in flight, so that the next caller starts a
    /// new one; its task is aborted.
    fn forget_stranded(&self, flight: u64) {
        let stranded = {
            let mut state = self.shared.state.lock();
            match &state.inflight {
                Some(inflight) if inflight.flight == flight => state.inflight.take(),
                _ => None,
            }
        };
        if stranded.is_some() {
            tracing::warn!(
                grace_ms = STRANDED_FETCH_GRACE.as_millis() as u64,
                "a token request was not driven by its runtime past its deadline; it will be replaced"
            );
        }
        abort(stranded);
    }
}

/// Whether the caller's runtime is shutting down (or gone): such a runtime drops a task at
/// once instead of running it, so a probe task is finished as soon as it is spawned. Only
/// asked before waiting for a fetch, never on the hot path.
fn runtime_shutting_down() -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return true;
    };
    let probe = runtime.spawn(std::future::pending::<()>());
    let dropped = probe.is_finished();
    probe.abort();
    dropped
}

/// Aborts a flight's task; called without any lock held.
fn abort(inflight: Option<Inflight>) {
    if let Some(abort) = inflight.and_then(|f| f.abort) {
        abort.abort();
    }
}

/// A recorded flight, not yet spawned.
struct Launch<M> {
    guard: FlightGuard<M>,
    background: bool,
    outcome: Outcome,
    /// When the fetch's own timeout fires: counted from when the flight was recorded, as
    /// its callers count, not from the task's first poll.
    deadline: Instant,
}

/// Owned by the fetch task: records the outcome in the cache and hands it to the waiters.
/// If the task is dropped before it ends (aborted, its runtime shut down, a panic), the
/// waiters learn it too, so the cache can never be left waiting for it.
struct FlightGuard<M> {
    cache: Weak<SharedCache<M>>,
    flight: u64,
    sender: Option<tokio::sync::oneshot::Sender<Landed>>,
}

impl<M> FlightGuard<M> {
    /// Counts the token request as started: only once its task runs, so that a task its
    /// runtime drops unrun (shutting down) or never drives (stranded) counts as no request.
    fn count_start(&self, background: bool) {
        if let Some(cache) = self.cache.upgrade() {
            cache.counters.fetches.fetch_add(1, Relaxed);
            if background {
                cache.counters.background_refreshes.fetch_add(1, Relaxed);
            }
        }
    }

    fn finish(mut self, started: Instant, result: Result<GrantedToken, Error>) {
        let elapsed = started.elapsed();
        // Without the cache nobody is waiting: the outcome only needs a shape.
        let result = match self.cache.upgrade() {
            Some(cache) => cache.land(self.flight, started, elapsed, result),
            None => result.map(|granted| {
                let schedule = schedule(started, granted.lifetime(), 0.0, Timing::default());
                AccessToken::new(granted, schedule)
            }),
        };
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Landed::Done(result));
        }
    }
}

impl<M> Drop for FlightGuard<M> {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        // Whoever drops the task holds no lock of ours (see `SharedCache::state`).
        if let Some(cache) = self.cache.upgrade() {
            let mut state = cache.state.lock();
            if state
                .inflight
                .as_ref()
                .is_some_and(|f| f.flight == self.flight)
            {
                state.inflight = None;
            }
        }
        let landed = if std::thread::panicking() {
            Landed::Done(Err(Error::Interrupted {
                reason: "the token request panicked",
            }))
        } else {
            Landed::Cancelled
        };
        let _ = sender.send(landed);
    }
}

impl<M> SharedCache<M> {
    /// Records the outcome of `flight` and returns it as its callers see it.
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
        let current = state.inflight.as_ref().is_some_and(|f| f.flight == flight);
        if current {
            state.inflight = None;
        }
        match result {
            Ok(granted) => {
                let jitter = (self.jitter)();
                let schedule = schedule(started, granted.lifetime(), jitter, self.timing);
                let token = AccessToken::new(granted, schedule);
                self.land_token(&mut state, flight, &token, elapsed_ms, now);
                Ok(token)
            }
            Err(error) => Err(self.land_failure(&mut state, current, error, elapsed_ms, now)),
        }
    }

    /// A fetch produced `token`: it is cached unless a newer flight's token already is.
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
        self.store(state, flight, token, now);
        tracing::info!(
            token_id = %token.id(),
            lifetime_secs = token.lifetime().as_secs(),
            scopes = %token.scopes().join(" "),
            elapsed_ms,
            "obtained access token"
        );
    }

    /// A fetch failed: the failure window opens (unless the flight was replaced, and its
    /// successor decides). Every failure is counted and logged here, a rate limit as one
    /// whether or not its flight was replaced. Returns the error as the flight's callers get it.
    fn land_failure(
        &self,
        state: &mut FetchState,
        current: bool,
        error: Error,
        elapsed_ms: u64,
        now: Instant,
    ) -> Error {
        self.counters.failures.fetch_add(1, Relaxed);
        let failure = current.then(|| self.open_failure_window(state, &error, now));
        // Absent from the log for a replaced flight, which opened no window.
        let retry_in_ms = failure.map(|f| (f.retry_at - now).as_millis() as u64);
        if error.is_rate_limited() {
            self.counters.rate_limited.fetch_add(1, Relaxed);
            tracing::warn!(
                error = %error,
                transient = error.is_transient(),
                retry_in_ms,
                elapsed_ms,
                "token request rate limited by the auth server (HTTP 429)"
            );
        } else {
            tracing::warn!(
                error = %error,
                transient = error.is_transient(),
                retry_in_ms,
                elapsed_ms,
                "token request failed"
            );
        }
        match failure {
            Some(failure) => failure.error_at(now, false),
            None => error,
        }
    }

    /// Makes `token` the cached one.
    fn store(&self, state: &mut FetchState, flight: u64, token: &AccessToken, now: Instant) {
        let mut slot = self.slot.write();
        *slot = Some(token.clone());
        self.current.publish(slot.as_ref());
        drop(slot);
        state.stored_flight = flight;
        state.failure = None;
        state.consecutive_failures = 0;
        if std::mem::take(&mut state.invalidated) {
            state.replacement = Some(Replacement {
                id: token.id(),
                cooldown: replacement_cooldown(state.dropped_replacements, token.lifetime()),
                doubted_since: now,
            });
        } else if state.replacement.take().is_none() {
            // A routine token follows one that lived to its refresh without a rejection.
            state.dropped_replacements = 0;
        }
    }

    /// Remembers a failure until its retry instant, and returns it.
    fn open_failure_window<'s>(
        &self,
        state: &'s mut FetchState,
        error: &Error,
        now: Instant,
    ) -> &'s Failure {
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        let mut delay = backoff(error, state.consecutive_failures, (self.jitter)());
        // With a valid token left, retry soon enough to replace it before it expires, though
        // never sooner than a rate limit allows.
        if let Some(current) = self.slot.read().as_ref() {
            let left = current.usable_until().saturating_duration_since(now);
            if !left.is_zero() {
                delay = delay.min((left / 2).max(rate_limit_floor(error)));
            }
        }
        state.failure.insert(Failure {
            error: error.clone(),
            failed_at: now,
            retry_at: now + delay,
        })
    }
}

impl<M> Drop for SharedCache<M> {
    fn drop(&mut self) {
        abort(self.state.get_mut().inflight.take());
    }
}

/// Whether an answer to a request carrying `token` rejected it (a 401 from the origin the
/// token went to, for [`TokenCache::reject`] to judge); any other answer from there is
/// recorded as evidence it works. `from_token_origin` is asked only for a 401 or while the
/// token is doubted (see [`TokenCache::answered`]).
#[inline]
fn is_rejection(
    token: &AccessToken,
    status: http::StatusCode,
    from_token_origin: impl FnOnce() -> bool,
) -> bool {
    if status == http::StatusCode::UNAUTHORIZED {
        // Another origin's 401 answers a request without the token: it says nothing.
        return from_token_origin();
    }
    // A 5xx may come from a proxy that never looked at the token; an answer from an origin
    // a redirect led to never saw it (the client strips it across origins).
    if !status.is_server_error() && token.is_doubted() && from_token_origin() {
        token.note_accepted();
    }
    false
}

/// Places a token obtained at `obtained_at` with `lifetime` in time (see the module docs);
/// `jitter` in `0.0..1.0` draws the random part of the refresh margin.
fn schedule(obtained_at: Instant, lifetime: Duration, jitter: f64, timing: Timing) -> Schedule {
    let skew = expiry_skew(lifetime, timing);
    let margin = refresh_margin(lifetime, timing);
    let jitter = margin.mul_f64(jitter * REFRESH_JITTER);
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

/// How long a replacement token must be rejected, with no acceptance in between, before it
/// is dropped, after `dropped` replacements in a row were: [`INVALIDATION_COOLDOWN`], four
/// times longer with each, at most the token's lifetime (so that a token that keeps being
/// rejected is kept until its regular refresh).
fn replacement_cooldown(dropped: u32, lifetime: Duration) -> Duration {
    let factor = 4u32.saturating_pow(dropped);
    INVALIDATION_COOLDOWN.saturating_mul(factor).min(lifetime)
}

/// How long before its expiry a token of `lifetime` stops being handed out: 5 % of the
/// lifetime, at most the expiry margin.
fn expiry_skew(lifetime: Duration, timing: Timing) -> Duration {
    (lifetime / 20).min(timing.expiry_margin)
}

/// How long before a token of `lifetime` stops being handed out it is refreshed (before
/// jitter): 10 % of the lifetime, at least the refresh-ahead margin, at most half of it.
fn refresh_margin(lifetime: Duration, timing: Timing) -> Duration {
    (lifetime / 10).max(timing.refresh_ahead).min(lifetime / 2)
}

/// How long before its expiry a token of `lifetime` may be due for refresh by `timing`,
/// whatever the jitter draws: a token with less left than this is due (or past due) by
/// [`schedule`].
///
/// Never larger for a shorter lifetime, so a token handed on with its remaining lifetime is
/// due for refresh no later than by its original schedule (see `store`).
#[cfg(feature = "shared-cache")]
pub(crate) fn refresh_lead(lifetime: Duration, timing: Timing) -> Duration {
    expiry_skew(lifetime, timing) + refresh_margin(lifetime, timing).mul_f64(1.0 + REFRESH_JITTER)
}

/// The failure window after the `attempt`-th consecutive failure (`jitter` in `0.0..1.0`
/// draws its random part). A rate limit (HTTP 429) waits for the server's `Retry-After`, or
/// else [`RATE_LIMIT_BACKOFF`](rate_limit::RATE_LIMIT_BACKOFF) plus up to [`RATE_LIMIT_JITTER`](rate_limit::RATE_LIMIT_JITTER). Other failures grow
/// exponentially, half of the window random, and are never shorter than a `Retry-After`.
fn backoff(error: &Error, attempt: u32, jitter: f64) -> Duration {
    if error.is_rate_limited() {
        return rate_limit::wait(error.retry_after(), jitter);
    }
    let (base, max) = if error.is_transient() {
        (TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_MAX)
    } else {
        (PERMANENT_BACKOFF_BASE, PERMANENT_BACKOFF_MAX)
    };
    let exponent = attempt.saturating_sub(1).min(16);
    let delay = base.saturating_mul(1 << exponent).min(max);
    let jittered = delay.mul_f64(0.5 + jitter * 0.5);
    jittered.max(error.retry_after().unwrap_or_default())
}

/// The shortest wait after `error`, even with a token about to expire: the server's
/// `Retry-After` or [`RATE_LIMIT_BACKOFF`](rate_limit::RATE_LIMIT_BACKOFF) for a rate limit, nothing otherwise.
fn rate_limit_floor(error: &Error) -> Duration {
    match error.is_rate_limited() {
        true => rate_limit::wait(error.retry_after(), 0.0),
        false => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests;
