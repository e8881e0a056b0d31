//! The cache under tokio's paused clock, driven by an in-memory token source: every test is
//! deterministic, and time-dependent behaviour is asserted by counts and outcomes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use futures_util::FutureExt;
use http::StatusCode;
use tokio::time::{advance, sleep, sleep_until};

use super::backoff::backoff;
use super::*;
use crate::token::TokenId;
use futures_util::future::BoxFuture;

/// One scripted answer of the in-memory source.
#[derive(Clone)]
enum Step {
    Token { lifetime: Duration, delay: Duration },
    Fail { error: Error, delay: Duration },
    Hang,
    Panic,
}

fn token(secs: u64) -> Step {
    Step::Token {
        lifetime: Duration::from_secs(secs),
        delay: Duration::ZERO,
    }
}

fn slow_token(secs: u64, delay_ms: u64) -> Step {
    Step::Token {
        lifetime: Duration::from_secs(secs),
        delay: Duration::from_millis(delay_ms),
    }
}

fn fail(error: Error) -> Step {
    Step::Fail {
        error,
        delay: Duration::ZERO,
    }
}

fn invalid_client() -> Error {
    Error::OAuth {
        status: StatusCode::UNAUTHORIZED,
        code: "invalid_client".into(),
        description: None,
        retry_after: None,
        key_from_env: false,
    }
}

fn unavailable() -> Error {
    Error::Status {
        status: StatusCode::SERVICE_UNAVAILABLE,
        retry_after: None,
    }
}

/// A token source that plays a script, then repeats its last step; counts its calls.
struct Scripted {
    calls: AtomicUsize,
    script: parking_lot::Mutex<VecDeque<Step>>,
    dropped: Arc<AtomicBool>,
    /// The scopes the auth server grants right now.
    scopes: parking_lot::Mutex<Vec<String>>,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = Step>) -> Arc<Self> {
        Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            script: parking_lot::Mutex::new(steps.into_iter().collect()),
            dropped: Arc::new(AtomicBool::new(false)),
            scopes: parking_lot::Mutex::new(vec![]),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Relaxed)
    }
}

/// Sets a flag when the fetch future holding it is dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

impl TokenSource for Scripted {
    fn fetch(self: Arc<Self>) -> BoxFuture<'static, Result<GrantedToken, Error>> {
        let n = self.calls.fetch_add(1, Relaxed);
        let step = {
            let mut script = self.script.lock();
            if script.len() > 1 {
                script.pop_front()
            } else {
                script.front().cloned()
            }
        };
        let flag = DropFlag(Arc::clone(&self.dropped));
        let scopes = self.scopes.lock().clone();
        Box::pin(async move {
            let _flag = flag;
            match step {
                Some(Step::Token { lifetime, delay }) => {
                    sleep(delay).await;
                    GrantedToken::new(&format!("token-{n}"), lifetime, scopes)
                }
                Some(Step::Fail { error, delay }) => {
                    sleep(delay).await;
                    Err(error)
                }
                Some(Step::Hang) | None => std::future::pending().await,
                Some(Step::Panic) => panic!("scripted panic"),
            }
        })
    }
}

impl TokenCache {
    /// What `UnderstoryAuth::invalidate` does: reports a 401, tells whether it dropped.
    fn invalidate(&self, token: &AccessToken) -> bool {
        self.reject(token) == Rejection::Dropped
    }
}

const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A cache over `source` with the default timing, whose random draws all return `jitter`.
fn cache_with(source: &Arc<Scripted>, load_timeout: Duration, jitter: fn() -> f64) -> TokenCache {
    let source = Arc::clone(source) as Arc<dyn TokenSource>;
    TokenCache::build(source, load_timeout, Timing::default(), jitter, ())
}

/// A cache over `source` whose random draws are all 0.0: no jitter, exact instants.
fn cache(source: &Arc<Scripted>) -> TokenCache {
    cache_with(source, LOAD_TIMEOUT, || 0.0)
}

/// Lets spawned tasks run without moving the paused clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_cold_callers_make_one_request_and_share_its_token() {
    let source = Scripted::new([slow_token(3600, 200)]);
    let cache = cache(&source);
    let callers: Vec<_> = (0..500)
        .map(|_| {
            tokio::spawn({
                let cache = cache.clone();
                async move { cache.token().await }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for caller in callers {
        ids.push(caller.await.unwrap().unwrap().id());
    }
    assert_eq!(source.calls(), 1);
    assert!(ids.iter().all(|id| *id == ids[0]));
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.fetch_successes), (1, 1));
    assert_eq!(stats.coalesced_waits, 499);
    assert_eq!(stats.token_id, Some(ids[0]));
}

#[tokio::test(start_paused = true)]
async fn concurrent_cold_callers_share_one_error() {
    let source = Scripted::new([Step::Fail {
        error: invalid_client(),
        delay: Duration::from_millis(100),
    }]);
    let cache = cache(&source);
    let callers: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn({
                let cache = cache.clone();
                async move { cache.token().await }
            })
        })
        .collect();
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        assert_eq!(err.oauth_code(), Some("invalid_client"));
    }
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_first_caller_strands_nobody() {
    let source = Scripted::new([slow_token(3600, 1000)]);
    let cache = cache(&source);
    // The caller that starts the fetch is dropped mid-flight...
    let leader = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    settle().await;
    assert_eq!(source.calls(), 1);
    leader.abort();
    // ...and a caller that joined the flight gives up too.
    let mut joined = Box::pin(cache.token());
    assert!((&mut joined).now_or_never().is_none());
    drop(joined);
    // The fetch goes on: the next caller gets its token without a second request.
    let token = cache.token().await.unwrap();
    assert_eq!(source.calls(), 1);
    assert_eq!(cache.token().await.unwrap().id(), token.id());
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_runs_in_the_background_while_callers_keep_the_valid_token() {
    let source = Scripted::new([token(100), slow_token(100, 2000)]);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    // 100 s lifetime: margin 50 s (half the lifetime), skew 5 s, no jitter drawn: the
    // refresh instant is 45 s.
    assert_eq!(first.refresh_at() - Instant::now(), Duration::from_secs(45));
    advance(Duration::from_millis(44_999)).await;
    assert_eq!(
        cache.token().now_or_never().unwrap().unwrap().id(),
        first.id()
    );
    settle().await;
    assert_eq!(source.calls(), 1, "no refresh before the margin");

    advance(Duration::from_millis(1)).await;
    // Past the refresh instant: callers get the valid token at once, without waiting...
    for _ in 0..100 {
        let token = cache.token().now_or_never().expect("never waits").unwrap();
        assert_eq!(token.id(), first.id());
    }
    settle().await;
    // ...and exactly one background fetch runs.
    assert_eq!(source.calls(), 2);
    assert_eq!(cache.stats().background_refreshes, 1);

    sleep(Duration::from_millis(2100)).await;
    let second = cache.token().now_or_never().unwrap().unwrap();
    assert_ne!(second.id(), first.id());
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_keeps_the_token_and_retries_before_expiry() {
    // The first refresh fails, then the auth server recovers.
    let source = Scripted::new([
        token(600),
        fail(unavailable()),
        fail(unavailable()),
        token(600),
    ]);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    let usable_until = first.usable_until();
    let mut replaced_at = None;
    while Instant::now() < usable_until {
        let token = cache.token().now_or_never().expect("never waits");
        let token = token.expect("no error while a valid token exists");
        if token.id() != first.id() {
            replaced_at = Some(Instant::now());
            break;
        }
        sleep(Duration::from_millis(500)).await;
    }
    assert!(
        replaced_at.is_some(),
        "replaced before the old token expired"
    );
    assert_eq!(source.calls(), 4);
    assert_eq!(cache.stats().fetch_failures, 2);
}

#[tokio::test(start_paused = true)]
async fn background_retries_are_bounded_by_the_time_the_token_has_left() {
    // A 503 asking for an hour must not outlive a token with minutes left (a 429 is
    // honoured: see the rate-limit tests).
    let unavailable = Error::Status {
        status: StatusCode::SERVICE_UNAVAILABLE,
        retry_after: Some(Duration::from_secs(3600)),
    };
    let source = Scripted::new([token(300), fail(unavailable), token(300)]);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    let usable_until = first.usable_until();
    let mut ids = vec![first.id()];
    while Instant::now() < usable_until {
        let token = cache.token().now_or_never().unwrap().unwrap();
        ids.push(token.id());
        sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(source.calls(), 3);
    assert_ne!(ids.last(), Some(&first.id()));
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_never_handed_out() {
    let source = Scripted::new([token(60), fail(unavailable())]);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    // Skew for a 60 s token: 3 s. Just before that it is still served...
    sleep(Duration::from_millis(56_900)).await;
    assert_eq!(cache.token().await.unwrap().id(), first.id());
    // ...and from then on never, though every refresh fails.
    sleep(Duration::from_millis(200)).await;
    for _ in 0..50 {
        match cache.token().await {
            Ok(token) => panic!("handed out token {} after its usable life", token.id()),
            Err(err) => assert!(err.is_transient()),
        }
        sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_four_second_token_is_used_for_most_of_its_life_and_refreshed_ahead() {
    let source = Scripted::new([Step::Token {
        lifetime: Duration::from_secs(4),
        delay: Duration::from_millis(50),
    }]);
    let cache = cache(&source);
    cache.token().await.unwrap();
    let mut waited = 0;
    for _ in 0..400 {
        sleep(Duration::from_millis(50)).await;
        if cache.token().now_or_never().is_none() {
            waited += 1;
        }
    }
    // 20 s of 4 s tokens refreshed 1.8 s after their request started (half of the life,
    // less the 5 % skew): the first fetch and one at each 1.8 s up to 19.8 s, none of which
    // made a caller wait.
    assert_eq!(source.calls(), 12);
    assert_eq!(waited, 0, "no caller waited for a refresh");
}

#[tokio::test(start_paused = true)]
async fn wrong_credentials_under_load_make_a_handful_of_requests_a_minute() {
    let source = Scripted::new([fail(invalid_client())]);
    let cache = cache(&source);
    // 1,000 callers a second for a minute.
    for _ in 0..60 {
        for _ in 0..1000 {
            let err = cache.token().await.unwrap_err();
            assert_eq!(err.oauth_code(), Some("invalid_client"));
        }
        sleep(Duration::from_secs(1)).await;
    }
    // Windows of 2.5 s, 5 s, 10 s, 20 s, 40 s (the lower half of each, as drawn): requests
    // at 0, 2.5, 7.5, 17.5 and 37.5 s.
    assert_eq!(source.calls(), 5);
    // Every other caller of the 60,000 got the failure at once.
    assert_eq!(cache.stats().failed_fast, 60_000 - 5);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_and_recover_without_a_restart() {
    let source = Scripted::new([
        fail(unavailable()),
        fail(unavailable()),
        fail(unavailable()),
        token(3600),
    ]);
    let cache = cache(&source);
    let mut errors = 0;
    let token = loop {
        match cache.token().await {
            Ok(token) => break token,
            Err(_) => errors += 1,
        }
        sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(source.calls(), 4);
    // Windows of 0.25 s, 0.5 s, 1 s (the lower bound of each, as drawn): requests at 0,
    // 0.3, 0.8 and 1.8 s; the callers every 100 ms between them (2, 4 and 9) got the
    // window's error without new requests: 3 + 15 errors.
    assert_eq!(errors, 18);
    assert_eq!(cache.token().await.unwrap().id(), token.id());
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let limited = Error::Status {
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: Some(Duration::from_secs(30)),
    };
    let source = Scripted::new([fail(limited), token(3600)]);
    let cache = cache(&source);
    assert!(cache.token().await.is_err());
    sleep(Duration::from_secs(29)).await;
    let err = cache.token().await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(source.calls(), 1);
    sleep(Duration::from_millis(1100)).await;
    assert!(cache.token().await.is_ok());
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalidation_compares_ids_so_many_rejections_cause_one_refresh() {
    let source = Scripted::new([token(3600)]);
    let cache = cache(&source);
    let stale = cache.token().await.unwrap();
    let rejected: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn({
                let (cache, stale) = (cache.clone(), stale.clone());
                async move {
                    cache.invalidate(&stale);
                    cache.token().await.unwrap().id()
                }
            })
        })
        .collect();
    let mut fresh = Vec::new();
    for task in rejected {
        fresh.push(task.await.unwrap());
    }
    assert_eq!(source.calls(), 2);
    assert!(fresh.iter().all(|id| *id == fresh[0] && *id != stale.id()));
    assert_eq!(cache.stats().invalidations, 1);
    assert!(!cache.invalidate(&stale), "a stale token no longer matches");
}

#[tokio::test(start_paused = true)]
async fn a_replacement_token_is_protected_for_the_cooldown() {
    let source = Scripted::new([token(3600)]);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    assert!(cache.invalidate(&first));
    let second = cache.token().await.unwrap();
    // An API rejecting every token: the replacement is kept for the cooldown...
    assert!(!cache.invalidate(&second));
    assert_eq!(cache.token().await.unwrap().id(), second.id());
    // ...and can be dropped after it.
    sleep(INVALIDATION_COOLDOWN).await;
    assert!(cache.invalidate(&second));
    let third = cache.token().await.unwrap();
    assert_ne!(third.id(), second.id());
    assert_eq!(source.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_hung_token_request_times_out_and_is_retried_later() {
    let source = Scripted::new([Step::Hang, token(3600)]);
    let cache = cache(&source);
    let err = cache.token().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { after } if after == LOAD_TIMEOUT));
    assert!(source.dropped.load(Relaxed), "the hung request was dropped");
    sleep(TRANSIENT_BACKOFF_BASE).await;
    assert!(cache.token().await.is_ok());
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_first_polled_late_still_times_out_at_the_deadline_its_callers_count() {
    let source = Scripted::new([Step::Hang, token(3600)]);
    let cache = cache(&source);
    // One poll records the flight and spawns its task, which has not run yet...
    assert!(Box::pin(cache.token()).now_or_never().is_none());
    assert_eq!(cache.stats().fetches, 0, "counted once its task runs");
    // ...and first runs well into the load timeout (`advance` yields after moving the clock).
    advance(LOAD_TIMEOUT / 2).await;
    assert_eq!(cache.stats().fetches, 1);
    // A caller joining it gets the fetch's own timeout, at the deadline it counts from, not
    // a give-up after it: the fetch and its callers agree, and nothing is started twice.
    let err = cache.token().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(source.dropped.load(Relaxed), "the hung request was dropped");
    assert_eq!(source.calls(), 1);
    let stats = cache.stats();
    assert_eq!((stats.fetches, stats.fetch_failures), (1, 1), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_does_not_wedge_the_cache() {
    let source = Scripted::new([Step::Panic, token(3600)]);
    let cache = cache(&source);
    let err = cache.token().await.unwrap_err();
    assert!(matches!(err, Error::Interrupted { .. }), "{err}");
    assert!(cache.token().await.is_ok());
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_fetch() {
    let source = Scripted::new([Step::Hang]);
    let cache = cache(&source);
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    settle().await;
    assert_eq!(source.calls(), 1);
    waiter.abort();
    let _ = waiter.await;
    assert!(!source.dropped.load(Relaxed));
    drop(cache);
    settle().await;
    assert!(source.dropped.load(Relaxed), "the fetch task was aborted");
}

#[test]
fn outside_a_runtime_it_reports_an_error_instead_of_panicking() {
    let source = Scripted::new([token(3600)]);
    let err = cache(&source).token().now_or_never().unwrap().unwrap_err();
    assert!(matches!(err, Error::Interrupted { .. }), "{err}");
    assert_eq!(source.calls(), 0);
}

#[test]
fn backoff_grows_is_capped_and_honours_retry_after() {
    let secs = Duration::from_secs_f64;
    // (attempt, transient with no jitter, with the most, permanent with no jitter)
    let cases = [
        (1, secs(0.25), secs(0.5), secs(2.5)),
        (2, secs(0.5), secs(1.0), secs(5.0)),
        (7, secs(15.0), secs(30.0), secs(60.0)),
        (40, secs(15.0), secs(30.0), secs(60.0)),
    ];
    for (attempt, calm, most, permanent) in cases {
        assert_eq!(backoff(&unavailable(), attempt, 0.0), calm, "{attempt}");
        assert_eq!(backoff(&unavailable(), attempt, 1.0), most, "{attempt}");
        assert_eq!(
            backoff(&invalid_client(), attempt, 0.0),
            permanent,
            "{attempt}"
        );
    }
    let asked = Error::Status {
        status: StatusCode::SERVICE_UNAVAILABLE,
        retry_after: Some(Duration::from_secs(600)),
    };
    assert_eq!(backoff(&asked, 1, 1.0), Duration::from_secs(600));
    assert_eq!(
        backoff(&rate_limited(None), 1, 0.0),
        Duration::from_secs(60)
    );
    assert_eq!(
        backoff(&rate_limited(None), 1, 1.0),
        Duration::from_secs(90)
    );
    assert_eq!(
        backoff(&rate_limited(Some(5)), 3, 1.0),
        Duration::from_secs(5)
    );
}

/// Runs `f` on its own thread and waits at most `limit` for it, so that a deadlock fails the
/// test instead of hanging it.
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("the cache is stuck")
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A multi-thread runtime with one worker, which drives its tasks without being blocked on.
fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_caller_on_a_dropped_runtime_gets_an_error_and_healthy_callers_are_unaffected() {
    let source = Scripted::new([token(3600)]);
    let cache = cache(&source);
    let dead = current_thread_runtime();
    let handle = dead.handle().clone();
    drop(dead);
    let on_dead = bounded(Duration::from_secs(10), {
        let cache = cache.clone();
        move || {
            let _entered = handle.enter();
            cache.token().now_or_never()
        }
    });
    let err = on_dead.expect("answers at once").unwrap_err();
    assert!(matches!(err, Error::Interrupted { .. }), "{err}");
    let cache_stats = cache.clone();
    let healthy = bounded(Duration::from_secs(10), move || {
        let result = current_thread_runtime().block_on(cache.token());
        (result.map(|t| t.id()), cache.stats().token_id)
    });
    let (id, cached) = healthy;
    assert_eq!(Some(id.unwrap()), cached);
    // The dead runtime never ran a token request, so the stats count none for it.
    let stats = cache_stats.stats();
    assert_eq!((stats.fetches, stats.fetch_successes), (1, 1), "{stats:?}");
}

#[test]
fn a_fetch_stranded_on_an_idle_runtime_is_replaced_after_its_deadline() {
    let load_timeout = Duration::from_millis(200);
    let source = Scripted::new([token(3600)]);
    let cache = cache_with(&source, load_timeout, || 0.0);
    // A sync bridge: one poll on runtime A starts the fetch there, then A sits idle.
    let idle = current_thread_runtime();
    idle.block_on(async {
        let mut first = Box::pin(cache.token());
        assert!((&mut first).now_or_never().is_none());
    });
    assert_eq!(source.calls(), 1);
    let outcome = bounded(Duration::from_secs(20), {
        let cache = cache.clone();
        move || {
            current_thread_runtime().block_on(async {
                // The caller that joins the stranded fetch gives up after its deadline...
                let joined = cache.token().await.map(|t| t.id());
                // ...and the next caller replaces the fetch instead of joining it.
                let next = cache.token().await.map(|t| t.id());
                (joined, next)
            })
        }
    });
    match outcome {
        (Err(Error::Interrupted { .. }), Ok(_)) => {}
        (joined, next) => panic!("joined: {joined:?}, next: {next:?}"),
    }
    assert_eq!(source.calls(), 2);
    drop(idle);
}

#[test]
fn waiters_of_a_fetch_cancelled_with_its_runtime_are_served_by_a_new_fetch() {
    let source = Scripted::new([token(3600)]);
    let cache = cache(&source);
    let doomed = current_thread_runtime();
    doomed.block_on(async {
        let mut first = Box::pin(cache.token());
        assert!((&mut first).now_or_never().is_none());
    });
    let healthy = one_worker_runtime();
    let waiter = healthy.spawn({
        let cache = cache.clone();
        async move { cache.token().await.map(|t| t.id()) }
    });
    while cache.stats().coalesced_waits == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(doomed);
    let result = bounded(Duration::from_secs(20), move || {
        healthy.block_on(async { tokio::time::timeout(Duration::from_secs(10), waiter).await })
    });
    let id = result.expect("the waiter is served").unwrap();
    assert!(id.is_ok(), "{id:?}");
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_during_a_background_refresh_marks_that_refresh_as_the_replacement() {
    let source = Scripted::new([token(100), slow_token(100, 2000), token(100)]);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    sleep_until(first.refresh_at()).await;
    cache.fresh(); // starts the background refresh
    settle().await;
    assert!(cache.invalidate(&first));
    let second = cache.token().await.unwrap();
    assert_eq!(source.calls(), 2, "the callers joined the refresh");
    assert!(
        !cache.invalidate(&second),
        "the refresh replaced a rejected token"
    );
    // A token lifetime later, the routine refresh's token is not protected.
    sleep_until(second.refresh_at()).await;
    cache.fresh();
    settle().await;
    let third = cache.token().await.unwrap();
    assert_ne!(third.id(), second.id());
    assert!(
        cache.invalidate(&third),
        "a routine token is dropped at its first rejection"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_replacement_fetch_passes_its_role_to_the_next_one() {
    let source = Scripted::new([token(3600), fail(unavailable()), token(3600)]);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    assert!(cache.invalidate(&first));
    assert!(cache.token().await.is_err());
    sleep(TRANSIENT_BACKOFF_MAX).await;
    let second = cache.token().await.unwrap();
    assert_eq!(source.calls(), 3);
    assert!(
        !cache.invalidate(&second),
        "the token replacing a rejected one is protected"
    );
}

/// Lands `result` as the outcome of a flight numbered before every flight `cache` started:
/// one that was replaced.
fn land_replaced(cache: &TokenCache, result: Result<GrantedToken, Error>) {
    let _ = cache.shared.land(0, Instant::now(), Duration::ZERO, result);
}

#[tokio::test(start_paused = true)]
async fn a_late_fetch_never_overwrites_a_newer_token() {
    let source = Scripted::new([token(3600)]);
    let cache = cache(&source);
    let newer = cache.token().await.unwrap();
    // A fetch numbered before the one that produced the cached token ends late.
    let late = GrantedToken::new("late", Duration::from_secs(3600), vec![]);
    land_replaced(&cache, late);
    assert_eq!(cache.stats().token_id, Some(newer.id()));
    assert_eq!(cache.token().await.unwrap().id(), newer.id());
}

// The 401 rule, against a model of Understory's API: an endpoint may need a scope, and a
// revoked token is refused everywhere.

const BOOKINGS: Option<&str> = Some("booking.read");
const CONSENTS: Option<&str> = Some("marketing.read");

#[derive(Default)]
struct Api {
    revoked: parking_lot::Mutex<Vec<TokenId>>,
    requests: AtomicUsize,
}

impl Api {
    fn answer(&self, token: &AccessToken, needs: Option<&str>) -> StatusCode {
        self.requests.fetch_add(1, Relaxed);
        let revoked = self.revoked.lock().contains(&token.id());
        let allowed = needs.is_none_or(|scope| token.scopes().iter().any(|s| s == scope));
        if revoked || !allowed {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        }
    }

    fn revoke(&self, token: &AccessToken) {
        self.revoked.lock().push(token.id());
    }
}

/// One request as both integrations make it: the current token, the answer reported to
/// the cache, and one resend when the cache says so.
async fn request(cache: &TokenCache, api: &Api, needs: Option<&str>) -> StatusCode {
    let token = cache.token().await.unwrap();
    let status = api.answer(&token, needs);
    if !cache.answered(&token, status, || true) {
        return status;
    }
    let token = cache.token().await.unwrap();
    let status = api.answer(&token, needs);
    cache.answered(&token, status, || true);
    status
}

fn granting(scopes: &[&str], lifetime_secs: u64) -> Arc<Scripted> {
    let source = Scripted::new([token(lifetime_secs)]);
    *source.scopes.lock() = scopes.iter().map(|s| (*s).to_owned()).collect();
    source
}

#[tokio::test(start_paused = true)]
async fn a_forbidden_endpoint_costs_at_most_one_token_request_per_token_lifetime() {
    let source = granting(&["marketing.read"], 120);
    let cache = cache(&source);
    let api = Api::default();
    // Ten minutes of /v1/bookings 20 times a second, /v1/marketing-consents once a second.
    for tick in 0..12_000 {
        assert_eq!(
            request(&cache, &api, BOOKINGS).await,
            StatusCode::UNAUTHORIZED
        );
        if tick % 20 == 0 {
            assert_eq!(request(&cache, &api, CONSENTS).await, StatusCode::OK);
        }
        sleep(Duration::from_millis(50)).await;
    }
    let stats = cache.stats();
    // 120 s tokens are refreshed 55 s into their life: 10 refreshes in 10 minutes, and one
    // extra token for each routine token the forbidden endpoint rejects.
    assert_eq!(stats.background_refreshes, 10);
    assert_eq!(stats.invalidations, stats.background_refreshes + 1);
    assert_eq!(
        stats.fetches,
        1 + stats.background_refreshes + stats.invalidations
    );
    // A request is resent only when its token was dropped.
    let sent = api.requests.load(Relaxed) as u64;
    assert_eq!(sent, 12_000 + 600 + stats.invalidations);
}

#[tokio::test(start_paused = true)]
async fn without_other_traffic_the_cooldown_grows_to_the_token_lifetime() {
    let source = granting(&["marketing.read"], 120);
    let cache = cache(&source);
    let api = Api::default();
    let mut dropped_at = Vec::new();
    for _ in 0..12_000 {
        let before = cache.stats().invalidations;
        request(&cache, &api, BOOKINGS).await;
        if cache.stats().invalidations > before {
            dropped_at.push(Instant::now());
        }
        sleep(Duration::from_millis(50)).await;
    }
    let start = dropped_at[0];
    let secs: Vec<u64> = dropped_at
        .iter()
        .map(|at| (*at - start).as_secs())
        .collect();
    // The first replacement is dropped after 5 s of rejections, the next after 20 s; from
    // then on the cooldown (80 s) outlasts a replacement's time to its refresh (55 s), and
    // only each routine token costs one extra.
    assert_eq!(&secs[..4], &[0, 5, 25, 80]);
    let stats = cache.stats();
    assert_eq!(stats.invalidations as usize, dropped_at.len());
    assert_eq!(
        stats.invalidations,
        stats.background_refreshes + 3,
        "{secs:?} {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_revoked_token_heals_with_one_token_request_and_one_resend() {
    let source = granting(&["marketing.read"], 3600);
    let cache = cache(&source);
    let api = Api::default();
    let first = cache.token().await.unwrap();
    api.revoke(&first);
    assert_eq!(request(&cache, &api, CONSENTS).await, StatusCode::OK);
    assert_eq!((source.calls(), api.requests.load(Relaxed)), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_rejections_causes_one_token_request() {
    let source = granting(&["marketing.read"], 3600);
    let cache = cache(&source);
    let api = Arc::new(Api::default());
    let revoked = cache.token().await.unwrap();
    api.revoke(&revoked);
    // All 100 requests carry the revoked token before the first answer is reported.
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let burst: Vec<_> = (0..100)
        .map(|_| {
            let (cache, api, barrier) = (cache.clone(), Arc::clone(&api), Arc::clone(&barrier));
            tokio::spawn(async move {
                let token = cache.token().await.unwrap();
                let status = api.answer(&token, CONSENTS);
                barrier.wait().await;
                assert!(cache.answered(&token, status, || true));
                let token = cache.token().await.unwrap();
                api.answer(&token, CONSENTS)
            })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(source.calls(), 2);
    assert_eq!(api.requests.load(Relaxed), 200);
}

#[tokio::test(start_paused = true)]
async fn a_revoked_replacement_is_dropped_after_its_cooldown() {
    let source = granting(&["marketing.read"], 3600);
    let cache = cache(&source);
    let api = Api::default();
    api.revoke(&cache.token().await.unwrap());
    assert_eq!(request(&cache, &api, CONSENTS).await, StatusCode::OK);
    // The replacement worked, then it is revoked too: it may be a forbidden endpoint, so it
    // is kept while it keeps being rejected, for its cooldown.
    let replacement = cache.token().await.unwrap();
    api.revoke(&replacement);
    let started = Instant::now();
    while request(&cache, &api, CONSENTS).await != StatusCode::OK {
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(Instant::now() - started, INVALIDATION_COOLDOWN);
    assert_eq!(source.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn only_answers_from_the_token_origin_count_and_only_a_doubted_token_asks() {
    let source = granting(&["marketing.read"], 3600);
    let cache = cache(&source);
    let first = cache.token().await.unwrap();
    assert!(cache.invalidate(&first));
    let replacement = cache.token().await.unwrap();
    let asked = AtomicUsize::new(0);
    let from = |origin: bool| {
        let asked = &asked;
        move || {
            asked.fetch_add(1, Relaxed);
            origin
        }
    };
    // The hot path: a token in good standing never asks where an answer came from.
    assert!(!cache.answered(&replacement, StatusCode::OK, from(true)));
    assert_eq!(asked.load(Relaxed), 0);
    // A 401 from another origin says nothing; one from the token's origin puts it in doubt.
    assert!(!cache.answered(&replacement, StatusCode::UNAUTHORIZED, from(false)));
    assert!(!cache.shared.doubt.is_doubted(&replacement));
    assert!(!cache.answered(&replacement, StatusCode::UNAUTHORIZED, from(true)));
    assert!(cache.shared.doubt.is_doubted(&replacement));
    // While doubted, an answer from elsewhere is no acceptance; one from its origin is.
    assert!(!cache.answered(&replacement, StatusCode::OK, from(false)));
    assert!(cache.shared.doubt.is_doubted(&replacement));
    assert!(!cache.answered(&replacement, StatusCode::OK, from(true)));
    assert!(!cache.shared.doubt.is_doubted(&replacement));
    assert_eq!(asked.load(Relaxed), 4);
}

#[tokio::test(start_paused = true)]
async fn a_scope_gained_works_at_the_latest_after_the_next_regular_refresh() {
    let source = granting(&["marketing.read"], 600);
    let cache = cache(&source);
    let api = Api::default();
    let mut granted_refresh_at = None;
    let mut first_ok = None;
    for tick in 0..12_000 {
        if tick == 2_000 {
            // The key is given the scope in Backoffice, 100 s in.
            source.scopes.lock().push("booking.read".to_owned());
            granted_refresh_at = Some(cache.token().await.unwrap().refresh_at());
        }
        if request(&cache, &api, BOOKINGS).await == StatusCode::OK {
            first_ok = Some(Instant::now());
            break;
        }
        if tick % 20 == 0 {
            request(&cache, &api, CONSENTS).await;
        }
        sleep(Duration::from_millis(50)).await;
    }
    let (refresh_at, ok_at) = (granted_refresh_at.unwrap(), first_ok.unwrap());
    // The caller that starts the refresh still carries the old token; the next one (one tick
    // later) carries the new one.
    assert!(
        ok_at <= refresh_at + Duration::from_millis(50),
        "{:?}",
        ok_at - refresh_at
    );
}

// Rate limits (HTTP 429) from the token endpoint, with the jitter drawn as 0.5.

fn rate_limited(retry_after: Option<u64>) -> Error {
    Error::Status {
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: retry_after.map(Duration::from_secs),
    }
}

fn half_jittered(source: &Arc<Scripted>) -> TokenCache {
    cache_with(source, LOAD_TIMEOUT, || 0.5)
}

fn next_attempt_in(error: &Error) -> Duration {
    match error {
        Error::RateLimited {
            next_attempt_in, ..
        } => *next_attempt_in,
        other => panic!("not a rate limit: {other}"),
    }
}

/// Captures what the cache logs while it lives.
#[derive(Clone, Default)]
struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures what this thread logs until the guard is dropped.
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let logs = Captured::default();
        let guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer({
                    let logs = logs.clone();
                    move || logs.clone()
                })
                .with_ansi(false)
                .finish(),
        );
        (logs, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_without_retry_after_backs_off_a_minute_and_a_random_part() {
    let (logs, _subscriber) = Captured::start();
    let source = Scripted::new([fail(rate_limited(None)), token(3600)]);
    let cache = half_jittered(&source);
    // 60 s, and half of the 30 s random part.
    let err = cache.token().await.unwrap_err();
    assert_eq!(next_attempt_in(&err), Duration::from_secs(75));
    assert!(err.is_transient() && err.is_rate_limited());
    let message = err.to_string();
    assert!(message.contains("rate limiting this key"), "{message}");
    assert!(
        message.contains("next attempt will be made in 75s"),
        "{message}"
    );

    sleep(Duration::from_secs(74)).await;
    let err = cache.token().await.unwrap_err();
    assert_eq!(next_attempt_in(&err), Duration::from_secs(1));
    assert_eq!(source.calls(), 1);

    sleep(Duration::from_secs(1)).await;
    assert!(cache.token().await.is_ok());
    assert_eq!(source.calls(), 2);
    let stats = cache.stats();
    assert_eq!(
        (stats.rate_limited, stats.fetch_failures, stats.failed_fast),
        (1, 1, 1)
    );
    let logs = logs.text();
    assert!(
        logs.contains("rate limited by the auth server (HTTP 429)"),
        "{logs}"
    );
    assert!(logs.contains("retry_in_ms=75000"), "{logs}");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_with_retry_after_waits_exactly_that_long() {
    let source = Scripted::new([fail(rate_limited(Some(10))), token(3600)]);
    let cache = half_jittered(&source);
    let err = cache.token().await.unwrap_err();
    assert_eq!(next_attempt_in(&err), Duration::from_secs(10));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(10)));
    sleep(Duration::from_millis(9_999)).await;
    assert!(cache.token().await.is_err());
    sleep(Duration::from_millis(1)).await;
    assert!(cache.token().await.is_ok());
    assert_eq!(source.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_refresh_keeps_the_valid_token_and_waits_its_minute() {
    let source = Scripted::new([token(3600), fail(rate_limited(None)), token(3600)]);
    let cache = half_jittered(&source);
    let first = cache.token().await.unwrap();
    sleep_until(first.refresh_at()).await;
    assert_eq!(cache.token().await.unwrap().id(), first.id());
    settle().await;
    assert_eq!((source.calls(), cache.stats().rate_limited), (2, 1));
    // Callers keep the valid token, and no request is made for 75 s...
    sleep(Duration::from_millis(74_999)).await;
    assert_eq!(cache.token().await.unwrap().id(), first.id());
    settle().await;
    assert_eq!(source.calls(), 2);
    // ...then the next caller starts one.
    sleep(Duration::from_millis(1)).await;
    assert_eq!(cache.token().await.unwrap().id(), first.id());
    settle().await;
    assert_eq!(source.calls(), 3);
    assert_ne!(cache.token().await.unwrap().id(), first.id());
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_ending_a_replaced_flight_is_counted_and_logged_as_one() {
    let (logs, _subscriber) = Captured::start();
    let source = Scripted::new([token(3600)]);
    let cache = cache(&source);
    let current = cache.token().await.unwrap();
    // A flight replaced by a newer one (as a stranded fetch is) is refused with a 429.
    land_replaced(&cache, Err(rate_limited(Some(10))));
    let stats = cache.stats();
    assert_eq!(
        (stats.fetch_failures, stats.rate_limited),
        (1, 1),
        "{stats:?}"
    );
    let logs = logs.text();
    assert!(
        logs.contains("rate limited by the auth server (HTTP 429)"),
        "{logs}"
    );
    // Its successor decides: no failure window, the cached token stays.
    assert!(!logs.contains("retry_in_ms"), "{logs}");
    assert_eq!(cache.token().await.unwrap().id(), current.id());
    assert_eq!(cache.stats().failed_fast, 0);
}

#[test]
fn a_caller_on_a_dropped_runtime_joining_a_healthy_fetch_gets_an_error_not_a_panic() {
    let source = Scripted::new([Step::Hang]);
    let cache = cache(&source);
    // A fetch in flight on a healthy runtime, which keeps driving it.
    let healthy = one_worker_runtime();
    let _running = healthy.spawn({
        let cache = cache.clone();
        async move { cache.token().await.map(|t| t.id()) }
    });
    while source.calls() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // A caller on a runtime that was dropped joins it: it has no timer to wait with.
    let dead = current_thread_runtime();
    let handle = dead.handle().clone();
    drop(dead);
    let on_dead = bounded(Duration::from_secs(10), {
        let cache = cache.clone();
        move || {
            let _entered = handle.enter();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cache.token().now_or_never()
            }))
        }
    });
    let answer = on_dead.expect("no panic").expect("answers at once");
    assert!(
        matches!(answer, Err(Error::Interrupted { .. })),
        "{answer:?}"
    );
    assert_eq!(source.calls(), 1, "the healthy fetch is left alone");
}

#[test]
fn stats_debug_shows_the_time_left_not_an_instant() {
    let stats = CacheStats {
        fetches: 3,
        expires_at: Some(std::time::Instant::now() + Duration::from_secs(3600)),
        ..CacheStats::default()
    };
    let shown = format!("{stats:?}");
    assert!(shown.starts_with("CacheStats { fetches: 3, "), "{shown}");
    assert!(shown.contains("expires_in: Some("), "{shown}");
    assert!(
        !shown.contains("tv_sec") && !shown.contains("expires_at"),
        "{shown}"
    );
    assert!(shown.contains("rate_limited: 0"), "{shown}");
}
