//! Question 5: does a request ever wait for a token refresh under steady load?
//!
//! A steady, open-loop stream of `GET /v1/me` (one request started every `PERIOD`, each in
//! its own task, so a slow one delays no other) goes through `ClientWithMiddleware` +
//! `UnderstoryAuth` to the sandbox, whose API rejects expired tokens and whose token
//! endpoint takes `TOKEN_DELAY` to answer: a request that had to wait for a token would take
//! at least that long. Three phases, on a multi-threaded runtime with 2 worker threads:
//!
//! 1. `control`: hour-long tokens, so no refresh happens: the latency floor and its noise;
//! 2. `understory_auth`: tokens live `TOKEN_LIFETIME`, so several are refreshed during the
//!    run (refresh-ahead: in the background, while the current token is still used);
//! 3. `naive_cache`: the same, with a typical hand-rolled cache instead,
//!    `tokio::sync::Mutex<Option<(String, Instant)>>` that fetches a new token under the lock
//!    once the cached one is (nearly) expired: the spike refresh-ahead avoids.
//!
//! Prints, per phase: requests, failures (non-200), token requests, median / p99 / p99.9 /
//! max latency and max ÷ median. A `harness = false` bench, about 25 s.
//! All three phases run equally long, so their maxima are drawn from as many requests.
//!
//! Run: `cargo bench --all-features --bench expiry_under_load`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest_middleware::ClientBuilder;
use understory_auth::testing::{AUDIENCE, SandboxServer};

mod common;

const PERIOD: Duration = Duration::from_millis(5); // 200 requests per second
const TOKEN_LIFETIME: Duration = Duration::from_secs(2);
const TOKEN_DELAY: Duration = Duration::from_millis(50);

/// A hand-rolled token cache of the usual kind: fetch under the lock when expired.
struct NaiveCache {
    http: reqwest::Client,
    token_url: String,
    form: String,
    slot: tokio::sync::Mutex<Option<(String, Instant)>>,
    fetches: AtomicUsize,
}

impl NaiveCache {
    fn new(sandbox: &SandboxServer, http: reqwest::Client) -> Self {
        // `~` literally: the sandbox, like Understory's server, refuses `%7E`.
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("audience", AUDIENCE)
            .append_pair("client_id", sandbox.client_id())
            .append_pair("client_secret", sandbox.client_secret())
            .finish()
            .replace("%7E", "~");
        NaiveCache {
            http,
            token_url: sandbox.token_url(),
            form,
            slot: tokio::sync::Mutex::new(None),
            fetches: AtomicUsize::new(0),
        }
    }

    async fn token(&self) -> String {
        let mut slot = self.slot.lock().await;
        if let Some((token, usable_until)) = slot.as_ref() {
            if Instant::now() < *usable_until {
                return token.clone();
            }
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let obtained = Instant::now();
        let body = self
            .http
            .post(&self.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(self.form.clone())
            .send()
            .await
            .expect("token request")
            .bytes()
            .await
            .expect("token body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("token json");
        let token = json["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        let lifetime = Duration::from_secs(json["expires_in"].as_u64().expect("expires_in"));
        // The same safety margin as understory-auth (5 % of the lifetime), no refresh-ahead.
        *slot = Some((token.clone(), obtained + lifetime - lifetime / 20));
        token
    }
}

#[derive(Clone)]
enum Client {
    Ours(reqwest_middleware::ClientWithMiddleware),
    Naive(Arc<NaiveCache>),
}

impl Client {
    /// One request; its latency and whether it succeeded.
    async fn get(&self, url: &str) -> (Duration, bool) {
        let start = Instant::now();
        let ok = match self {
            Client::Ours(client) => match client.get(url).send().await {
                Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                Err(_) => false,
            },
            Client::Naive(cache) => {
                let token = cache.token().await;
                match cache.http.get(url).bearer_auth(token).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        };
        (start.elapsed(), ok)
    }
}

/// Sends one request every `PERIOD` for `duration`; returns each request's latency (µs) and
/// the number that failed.
async fn steady_load(client: Client, url: String, duration: Duration) -> (Vec<f64>, usize) {
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    while Instant::now() < deadline {
        ticker.tick().await;
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move { client.get(&url).await }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failures = 0;
    for task in tasks {
        let (latency, ok) = task.await.expect("request task");
        latencies.push(latency.as_secs_f64() * 1e6);
        failures += usize::from(!ok);
    }
    latencies.sort_by(f64::total_cmp);
    (latencies, failures)
}

fn report(name: &str, latencies: &[f64], failures: usize, token_requests: usize) {
    let p50 = common::percentile(latencies, 0.5);
    let max = latencies.last().copied().unwrap_or(f64::NAN);
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>9.1}×",
        name,
        latencies.len(),
        failures,
        token_requests,
        p50,
        common::percentile(latencies, 0.99),
        common::percentile(latencies, 0.999),
        max,
        max / p50,
    );
}

fn main() {
    let full = common::full_run();
    let (control, loaded) = if full {
        (Duration::from_secs(8), Duration::from_secs(8))
    } else {
        (Duration::from_millis(200), Duration::from_millis(200))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sandbox = SandboxServer::start().await.expect("sandbox");
        sandbox.set_token_delay(TOKEN_DELAY);
        let url = format!("{}/v1/me", sandbox.api_base());
        let http = reqwest::Client::new();

        println!(
            "\nexpiry_under_load: one request every {PERIOD:?} ({} req/s); token endpoint delay \
             {TOKEN_DELAY:?}; token lifetime {TOKEN_LIFETIME:?} in the loaded phases",
            Duration::from_secs(1).as_nanos() / PERIOD.as_nanos()
        );
        println!(
            "{:<16} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "phase",
            "requests",
            "failed",
            "tokens",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "max÷p50"
        );

        // 1. Control: hour-long tokens, no refresh during the run.
        let auth = common::auth_for(&sandbox);
        let client = ClientBuilder::new(http.clone()).with(auth.clone()).build();
        client.get(&url).send().await.expect("warm-up");
        let before = sandbox.token_requests();
        let (lat, failed) = steady_load(Client::Ours(client), url.clone(), control).await;
        report("control", &lat, failed, sandbox.token_requests() - before);

        // 2. Short-lived tokens, understory-auth.
        sandbox.set_token_lifetime(TOKEN_LIFETIME);
        let auth = common::auth_for(&sandbox);
        let client = ClientBuilder::new(http.clone()).with(auth.clone()).build();
        client.get(&url).send().await.expect("warm-up");
        let before = sandbox.token_requests();
        let (lat, failed) = steady_load(Client::Ours(client), url.clone(), loaded).await;
        report(
            "understory_auth",
            &lat,
            failed,
            sandbox.token_requests() - before,
        );
        let stats = auth.stats();
        let ours_max = lat.last().copied().unwrap_or(f64::NAN);

        // 3. Short-lived tokens, the naive cache.
        let naive = Arc::new(NaiveCache::new(&sandbox, http.clone()));
        naive.token().await;
        let before = sandbox.token_requests();
        let (lat, failed) =
            steady_load(Client::Naive(Arc::clone(&naive)), url.clone(), loaded).await;
        report(
            "naive_cache",
            &lat,
            failed,
            sandbox.token_requests() - before,
        );

        println!(
            "understory_auth: {} background refreshes, {} waits for a token (coalesced), {} \
             fetch failures; slowest request {:.1} ms vs token delay {} ms",
            stats.background_refreshes,
            stats.coalesced_waits,
            stats.fetch_failures,
            ours_max / 1e3,
            TOKEN_DELAY.as_millis()
        );
    });
}
