//! The soak test: 50 000 requests through the reqwest middleware and the tower layer at once,
//! from 200 tasks sharing one `UnderstoryAuth`, while tokens expire every second or two and
//! one token request in ten fails, in turn hanging, answering 5xx or 429, resetting the
//! connection mid-body or sending garbage.
//!
//! Sized for CI: the callers are paced to about 1 700 requests a second, so the run takes
//! about 30 s (longer on a slower machine); set `UNDERSTORY_SOAK_REQUESTS` to run longer.
//! Everything asserted is a count, never a duration.
//!
//! It is `#[ignore]`d, so it stays out of the everyday test command; CI runs it as a step of
//! its own: `cargo test --features test-util,shared-cache,webhooks --test integration --
//! --ignored soak::`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use std::time::Instant;
use tower::retry::Retry;
use tower::{ServiceBuilder, ServiceExt};
use understory_auth::testing::{SandboxServer, TokenFault};
use understory_auth::{
    AccessToken, BearerAuth, BearerAuthLayer, DEFAULT_EXPIRY_MARGIN, Error, RetryOnUnauthorized,
    TokenId, UnderstoryAuth,
};

use crate::common::credentials;

/// Requests in a CI run.
const DEFAULT_REQUESTS: usize = 50_000;
/// Concurrent callers; even ones use the reqwest middleware, odd ones the tower layer.
const TASKS: usize = 200;
/// Each caller sends at most one request per this period.
const PACE: Duration = Duration::from_millis(120);
/// The sandbox's token lifetimes (`"expires_in": 1` and `2`), switched every few seconds.
const LIFETIMES: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];
const LIFETIME_SWITCH: Duration = Duration::from_secs(4);
/// One token request in this many fails.
const FAULT_EVERY: u64 = 10;
/// The token timeout: a hanging token request costs this much of a token's refresh margin
/// (a 1 s token is refreshed from 0.35 s on, and handed out until 0.95 s).
const TOKEN_TIMEOUT: Duration = Duration::from_millis(300);

type Tower = Retry<RetryOnUnauthorized, BearerAuth<Client<HttpConnector, Full<Bytes>>>>;

/// The faults injected, in turn.
fn fault(n: u64) -> TokenFault {
    let faults = [
        TokenFault::Hang,
        TokenFault::ServerError,
        TokenFault::TooManyRequests {
            retry_after: Some(1),
        },
        TokenFault::ResetMidBody,
        TokenFault::MalformedJson,
        TokenFault::HtmlError { status: 502 },
        TokenFault::Unavailable,
    ];
    faults[(n as usize) % faults.len()].clone()
}

/// When the cache stops handing `token` out: its expiry minus the documented safety skew.
fn usable_until(token: &AccessToken) -> Instant {
    token.expires_at() - (token.lifetime() / 20).min(DEFAULT_EXPIRY_MARGIN)
}

/// The tokens the callers saw the cache hand out, and since when (at the latest): the
/// yardstick for "a valid token existed". Kept outside the cache, so that a cache that loses
/// a valid token is caught too.
#[derive(Default)]
struct Witness(Mutex<Vec<Seen>>);

struct Seen {
    id: TokenId,
    since: Instant,
    usable_until: Instant,
}

impl Witness {
    /// `token` was in the cache at `now`.
    fn saw(&self, token: &AccessToken, now: Instant) {
        let mut seen = self.0.lock();
        if !seen.iter().rev().any(|s| s.id == token.id()) {
            seen.push(Seen {
                id: token.id(),
                since: now,
                usable_until: usable_until(token),
            });
        }
    }

    /// A token that was in the cache by `started` and was still usable at `failed`. The
    /// cache drops a token before that only when a request carrying it is rejected, which
    /// the sandbox does only once it expired, after `usable_until`; so none should exist when
    /// a request fails for want of a token.
    fn usable(&self, started: Instant, failed: Instant) -> Option<String> {
        self.0
            .lock()
            .iter()
            .rev()
            .find(|s| s.since <= started && failed < s.usable_until)
            .map(|s| {
                format!(
                    "token #{} was usable for {:?} more",
                    s.id,
                    s.usable_until - failed
                )
            })
    }
}

/// What the callers saw.
#[derive(Default)]
struct Tally {
    ok: usize,
    /// 401 answers that reached a caller (after the integration's one retry).
    unauthorized: usize,
    /// Token errors, in all.
    token_errors: usize,
    /// Token errors although a token the cache held before the request started was still
    /// usable when the error came back: the failures this test exists to rule out.
    violations: Vec<String>,
    /// Anything else: other statuses, transport errors.
    other: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.unauthorized += other.unauthorized;
        self.token_errors += other.token_errors;
        self.violations.extend(other.violations);
        self.other.extend(other.other);
    }
}

/// The process's resident memory, where the platform says.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A point where memory is measured under load (live tasks are shown, not judged: see
/// [`settled_tasks`]).
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    resident_kib: Option<u64>,
    alive_tasks: usize,
}

fn checkpoint() -> Checkpoint {
    Checkpoint {
        resident_kib: resident_kib(),
        alive_tasks: alive_tasks(),
    }
}

/// The tasks alive on this test's runtime (other tests run on runtimes of their own).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// How many times [`settled_tasks`] looks, 10 ms apart, before it gives up waiting.
const SETTLE_POLLS: usize = 3_000;

/// The live tasks once no more than `floor` are left, or after [`SETTLE_POLLS`] looks.
///
/// Measured while requests run, the count mostly says how many connections are open: each
/// HTTP/1 connection the callers open to the sandbox is two tasks, one in the client and one
/// in the sandbox, and the clients keep them pooled. Under load (other tests, other
/// processes on a 2-core CI machine) more requests overlap and the pools grow; idle
/// connections close again after the sandbox's 30 s header-read timeout. So a count taken
/// under load moves by hundreds (seen: 566 to 742, and 884 to 606) without any leak. Once
/// the clients and the sandbox are dropped, their connections close and only what the crate
/// keeps can remain.
async fn settled_tasks(floor: usize) -> usize {
    for _ in 0..SETTLE_POLLS {
        if alive_tasks() <= floor {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    alive_tasks()
}

/// The tasks an `UnderstoryAuth` keeps while it lives and nothing is in flight: the idle-
/// connection reaper of its token request's HTTP client.
const AUTH_IDLE_TASKS: usize = 1;

async fn one_request(
    n: usize,
    reqwest: &ClientWithMiddleware,
    tower: &Tower,
    url: &str,
) -> Result<StatusCode, Result<Error, String>> {
    if n % 2 == 0 {
        match reqwest.get(url).send().await {
            Ok(response) => Ok(response.status()),
            Err(reqwest_middleware::Error::Middleware(error)) => {
                Err(error.downcast::<Error>().map_err(|e| format!("{e:?}")))
            }
            Err(other) => Err(Err(format!("{other:?}"))),
        }
    } else {
        let request = Request::get(url)
            .body(Full::default())
            .expect("a valid request");
        match tower.clone().oneshot(request).await {
            Ok(response) => Ok(response.status()),
            Err(error) => Err(error
                .downcast::<Error>()
                .map(|e| *e)
                .map_err(|e| format!("{e:?}"))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 30 s soak: CI runs it as its own step (`-- --ignored soak::`)"]
async fn soak_expiring_tokens_and_failing_token_requests_under_load() {
    let total: usize = std::env::var("UNDERSTORY_SOAK_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_REQUESTS);
    let tasks_before = alive_tasks();
    let server = SandboxServer::builder()
        .token_lifetime(LIFETIMES[0])
        .start()
        .await
        .expect("sandbox starts");
    let auth = UnderstoryAuth::builder(credentials(&server))
        .token_url(server.token_url())
        .api_base(server.api_base())
        .token_timeout(TOKEN_TIMEOUT)
        .build()
        .expect("auth builds");
    let reqwest = ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    let tower: Tower = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::default())
        .layer(BearerAuthLayer::new(auth.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http());
    let url = format!("{}/v1/me", server.api_base());

    // The controller. The fault rhythm: after every FAULT_EVERY - 1 token requests, the next
    // one fails; never two in a row, so a token's refresh margin (at least 0.5 s) always
    // leaves room for a retry. The token lifetime switches between 1 s and 2 s. And the
    // sandbox's request log is cleared every second, so that memory measures the crate
    // rather than the sandbox's recordings.
    let done = Arc::new(AtomicBool::new(false));
    let injected = Arc::new(AtomicUsize::new(0));
    let controller = tokio::spawn({
        let (server, auth, done, injected) = (
            server.clone(),
            auth.clone(),
            Arc::clone(&done),
            Arc::clone(&injected),
        );
        async move {
            let mut last = 0;
            let mut cleared = Instant::now();
            let mut switched = Instant::now();
            let mut lifetimes = LIFETIMES.iter().cycle().skip(1);
            while !done.load(Relaxed) {
                let fetches = auth.stats().fetches;
                if fetches >= last + FAULT_EVERY - 1 {
                    server.push_token_fault(fault(injected.fetch_add(1, Relaxed) as u64));
                    last = fetches + 1;
                }
                if cleared.elapsed() >= Duration::from_secs(1) {
                    server.reset_counters();
                    cleared = Instant::now();
                }
                if switched.elapsed() >= LIFETIME_SWITCH {
                    server.set_token_lifetime(*lifetimes.next().expect("endless"));
                    switched = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let claimed = Arc::new(AtomicUsize::new(0));
    let witness = Arc::new(Witness::default());
    let middle = Arc::new(Mutex::new(None::<Checkpoint>));
    let end = Arc::new(Mutex::new(None::<Checkpoint>));
    let started = Instant::now();
    let workers: Vec<_> = (0..TASKS)
        .map(|task| {
            let (auth, reqwest, tower, url) =
                (auth.clone(), reqwest.clone(), tower.clone(), url.clone());
            let (claimed, middle, end, witness) = (
                Arc::clone(&claimed),
                Arc::clone(&middle),
                Arc::clone(&end),
                Arc::clone(&witness),
            );
            tokio::spawn(async move {
                let mut tally = Tally::default();
                // Spread the callers over the period, then keep each to its pace.
                tokio::time::sleep(PACE * task as u32 / TASKS as u32).await;
                let mut pace = tokio::time::interval(PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    pace.tick().await;
                    let n = claimed.fetch_add(1, Relaxed);
                    if n >= total {
                        return tally;
                    }
                    // Both measured under full load, with every worker still running.
                    if n == total / 2 {
                        *middle.lock() = Some(checkpoint());
                    }
                    if n == total - 1 {
                        *end.lock() = Some(checkpoint());
                    }
                    let started = Instant::now();
                    // The token the cache hands out now, if any, for the witness.
                    if let Some(token) = auth.cached_token() {
                        witness.saw(&token, Instant::now());
                    }
                    let outcome = one_request(task, &reqwest, &tower, &url).await;
                    let failed = Instant::now();
                    match outcome {
                        Ok(StatusCode::OK) => tally.ok += 1,
                        Ok(StatusCode::UNAUTHORIZED) => tally.unauthorized += 1,
                        Ok(status) => tally.other.push(format!("HTTP {status}")),
                        Err(Ok(error)) => {
                            tally.token_errors += 1;
                            // A rate limit is honoured for its full `Retry-After`, even if
                            // the cached token expires meanwhile (an older, longer-lived
                            // token the witness remembers does not count).
                            let usable = witness.usable(started, failed);
                            if let Some(usable) = usable.filter(|_| !error.is_rate_limited()) {
                                tally.violations.push(format!("{usable}, yet: {error}"));
                            }
                        }
                        Err(Err(other)) => tally.other.push(other),
                    }
                }
            })
        })
        .collect();
    let mut tally = Tally::default();
    for worker in workers {
        tally.add(worker.await.expect("a worker panicked"));
    }
    let elapsed = started.elapsed();
    done.store(true, Relaxed);
    controller.await.expect("the controller ran");

    let stats = auth.stats();
    let issued = server.issued_tokens().len() as u64;
    let middle = middle.lock().expect("the middle was measured");
    let end = end.lock().expect("the end was measured");
    eprintln!(
        "soak: {total} requests in {elapsed:?}: {} ok, {} 401, {} token errors ({} while a \
         token was usable), {} other\n\
         soak: {stats:?}; {issued} tokens issued, {} faults injected\n\
         soak: resident {:?} then {:?} KiB, live tasks under load (mostly connections) {} \
         then {}",
        tally.ok,
        tally.unauthorized,
        tally.token_errors,
        tally.violations.len(),
        tally.other.len(),
        injected.load(Relaxed),
        middle.resident_kib,
        end.resident_kib,
        middle.alive_tasks,
        end.alive_tasks,
    );

    // Every request was answered, and none failed for want of a token while one was usable.
    assert_eq!(
        tally.ok + tally.unauthorized + tally.token_errors + tally.other.len(),
        total
    );
    assert!(
        tally.violations.is_empty(),
        "{} token errors while a token was usable, e.g. {:?}",
        tally.violations.len(),
        &tally.violations[..tally.violations.len().min(5)]
    );
    assert_eq!(tally.unauthorized, 0, "401s reached the callers");
    assert!(
        tally.other.is_empty(),
        "{:?}",
        &tally.other[..tally.other.len().min(5)]
    );

    // Tokens did expire and get replaced: every accepted request carried a live token.
    let seconds = elapsed.as_secs_f64();
    let longest = LIFETIMES[1].as_secs_f64();
    assert!(
        issued as f64 >= (seconds / longest).floor(),
        "{issued} tokens in {seconds:.1} s"
    );
    // The faults happened: about one token request in ten failed.
    assert!(
        stats.fetch_failures * FAULT_EVERY * 2 >= stats.fetches,
        "{stats:?}"
    );
    // Token requests stay within a small factor of one per lifetime: a token is replaced
    // after 35 % to 45 % of its life, a failure adds one retry, a rejected token one fetch.
    let shortest = LIFETIMES[0].as_secs_f64();
    let bound =
        3.0 * seconds / shortest + (stats.fetch_failures + stats.invalidations) as f64 + 2.0;
    assert!(
        (stats.fetches as f64) <= bound,
        "{} token requests in {seconds:.1} s (bound {bound:.0})",
        stats.fetches
    );
    // Refreshes happen ahead of expiry, in the background: callers found the cache empty only
    // at the start, after a token was rejected, or (a scheduling stall) rarely otherwise.
    let foreground = stats.fetches - stats.background_refreshes;
    assert!(
        foreground <= 1 + stats.invalidations + 3,
        "{foreground} token requests made callers wait: {stats:?}"
    );

    // Memory stays flat over the second half of the run: no per-request or per-token leak.
    // (A generous bound: the whole test binary shares this process.)
    if let (Some(before), Some(after)) = (middle.resident_kib, end.resident_kib) {
        assert!(
            after <= before + 16 * 1024,
            "resident memory grew from {before} KiB to {after} KiB"
        );
    }

    // No task outlives its purpose: once the callers' clients and the sandbox are gone (and
    // with them every connection), only what a live `UnderstoryAuth` keeps is left, however
    // many requests, tokens, failed, hung, replaced or aborted fetches came before; and
    // nothing once it is dropped too.
    drop((reqwest, tower, server));
    let with_auth = settled_tasks(tasks_before + AUTH_IDLE_TASKS).await;
    drop(auth);
    let without_auth = settled_tasks(tasks_before).await;
    assert!(
        with_auth <= tasks_before + AUTH_IDLE_TASKS && without_auth <= tasks_before,
        "tasks left: {with_auth} with the auth handle, {without_auth} without it \
         ({tasks_before} before the run)"
    );
}
