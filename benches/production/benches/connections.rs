//! Third-party apps at scale (issue 22): per-request cost with 10,000 connections against
//! one connection, and the memory an idle connection holds. Built as users build the crate
//! (tokio without `test-util`, see BENCHMARKS.md): the lookup reads the clock.
//!
//! * Seeding: `CONNECTIONS` authorizations completed against the sandbox over loopback HTTP
//!   (consent, code exchange, `/v1/me`), 16 at a time; each connection then has its own
//!   grant in a `MemoryGrantStore` and a cached access token. The time it took is printed.
//! * `lookup`: `app.connection(key).cached_token()` and the `Authorization` header value,
//!   for an app with one connection (the **baseline**), for the app with 10,000 and keys in
//!   a random order, and for that app with one key over and over; interleaved rounds,
//!   median of the per-round ratios.
//! * `one_client`: a request through the one reqwest-middleware client (the app, then a
//!   middleware answering `200` without I/O) with a `Connection` extension, same three.
//! * `memory`: a counting `#[global_allocator]` (live bytes). Dropping the app frees its
//!   caches, dropping the store its grants; the same for an app with `MEMORY_BASELINE`
//!   connections is subtracted (the fixed part, its token client's pooled sandbox
//!   connections included), and the rest divided by the extra connections.
//!
//! Run: `cargo bench -p understory-auth-bench --bench connections` (`cargo test --benches`
//! runs it briefly with 128 connections; `CONNECTIONS=<n>` sets the number).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use understory_auth::testing::SandboxServer;
use understory_auth::{Connection, MemoryGrantStore, UnderstoryApp};
use understory_auth_bench::{Answer200, Runner, full_run, interleave, poll_ready_now, print_rows};

/// Live heap bytes and allocations, counted for the memory section.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout` (all allocations go there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid request.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const API: &str = "https://api.understory.io/v1/me";

/// How many authorizations run at once while seeding.
const SEEDING_CONCURRENCY: usize = 16;

/// The connections of the app whose memory is subtracted as the fixed part: enough that its
/// token client pooled as many sandbox connections as the big app's.
const MEMORY_BASELINE: usize = 4 * SEEDING_CONCURRENCY;

/// An app, its store and its connections' keys.
struct Seeded {
    app: UnderstoryApp,
    store: MemoryGrantStore,
    keys: Vec<Connection>,
}

/// An app with `n` connections, each completed against the sandbox (so each has a grant in
/// the store and a cached token). Tokens are for Understory's production API origin.
async fn seed(sandbox: &SandboxServer, n: usize) -> Seeded {
    let store = MemoryGrantStore::new();
    let app = sandbox
        .app_builder()
        .api_base("https://api.understory.io")
        .me_url(format!("{}/v1/me", sandbox.api_base()))
        .grant_store(store.clone())
        .build()
        .expect("app");
    let keys: Vec<Connection> = (0..n)
        .map(|i| Connection::new(format!("tenant-{i:05}")))
        .collect();
    let sandbox = Arc::new(sandbox.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, key) in keys.iter().enumerate() {
        if tasks.len() >= SEEDING_CONCURRENCY {
            tasks.join_next().await.expect("a task").expect("seeded");
        }
        let (app, sandbox, key) = (app.clone(), Arc::clone(&sandbox), key.clone());
        let company = ["company-a", "company-b"][i % 2];
        tasks.spawn(async move {
            let start = app.authorize();
            let callback = sandbox
                .consent(start.url.as_str(), company)
                .await
                .expect("consent");
            app.complete(start.pending, &callback, key.key())
                .await
                .expect("complete");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("seeded");
    }
    assert_eq!(app.cached_connections(), n);
    Seeded { app, store, keys }
}

/// `len` indices below `n` in a pseudo-random order (xorshift; fixed seed).
fn random_order(n: usize, len: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as u32
        })
        .collect()
}

/// One request's lookup: the connection's cache, its token, the header value.
#[inline(always)]
fn lookup(app: &UnderstoryApp, key: &Connection) {
    let token = app.connection(key.key()).cached_token().expect("cached");
    black_box(token.header_value());
}

/// Runs `n` lookups over `keys` in `order` (cycled).
fn lookups(app: &UnderstoryApp, keys: &[Connection], order: &[u32], n: u64) -> Duration {
    let start = Instant::now();
    let mut i = 0;
    for _ in 0..n {
        lookup(app, &keys[order[i] as usize]);
        i = (i + 1) % order.len();
    }
    start.elapsed()
}

/// Runs `n` requests through `client` over `keys` in `order` (cycled).
fn requests(client: &ClientWithMiddleware, keys: &[Connection], order: &[u32], n: u64) -> Duration {
    let start = Instant::now();
    let mut i = 0;
    for _ in 0..n {
        let key = keys[order[i] as usize].clone();
        let response = poll_ready_now(client.get(API).with_extension(key).send()).expect("200");
        black_box(response);
        i = (i + 1) % order.len();
    }
    start.elapsed()
}

fn one_client(app: &UnderstoryApp) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(app.clone())
        .with(Answer200)
        .build()
}

/// Live heap bytes once the runtime has had a moment to finish what dropping started.
fn live_after(rt: &tokio::runtime::Runtime) -> i64 {
    rt.block_on(tokio::time::sleep(Duration::from_millis(200)));
    LIVE.load(Relaxed)
}

/// Bytes freed by dropping the app (its caches) and then its store (its grants).
fn freed(rt: &tokio::runtime::Runtime, seeded: Seeded) -> (i64, i64) {
    let Seeded { app, store, keys } = seeded;
    drop(keys);
    let before = live_after(rt);
    drop(app);
    let caches = live_after(rt);
    drop(store);
    let grants = live_after(rt);
    (before - caches, caches - grants)
}

/// The `lookup` and `one_client` sections.
fn timing(one: &Seeded, big: &Seeded, many: usize, rounds: usize, iters: u64) {
    let order_many = random_order(many, 1 << 16);
    let order_one = vec![0u32; 1 << 16];
    let allocations = ALLOCATIONS.load(Relaxed);
    lookups(&big.app, &big.keys, &order_many, 10_000);
    let allocations = ALLOCATIONS.load(Relaxed) - allocations;
    println!(
        "heap allocations per lookup: {}",
        allocations as f64 / 10_000.0
    );

    let mut variants: Vec<Runner<'_>> = vec![
        (
            "1 connection",
            Box::new(|n| lookups(&one.app, &one.keys, &order_one, n)),
        ),
        (
            "all connections, random",
            Box::new(|n| lookups(&big.app, &big.keys, &order_many, n)),
        ),
        (
            "all connections, one key",
            Box::new(|n| lookups(&big.app, &big.keys, &order_one, n)),
        ),
    ];
    let rows = interleave(rounds, iters, &mut variants, 0);
    let title =
        format!("lookup + header ({many} connections): {rounds} rounds × {iters}, interleaved");
    print_rows(&title, "ns/call", variants[0].0, &rows);

    let (client_one, client_big) = (one_client(&one.app), one_client(&big.app));
    let mut variants: Vec<Runner<'_>> = vec![
        (
            "1 connection",
            Box::new(|n| requests(&client_one, &one.keys, &order_one, n)),
        ),
        (
            "all connections, random",
            Box::new(|n| requests(&client_big, &big.keys, &order_many, n)),
        ),
        (
            "all connections, one key",
            Box::new(|n| requests(&client_big, &big.keys, &order_one, n)),
        ),
    ];
    let rows = interleave(rounds, iters / 10, &mut variants, 0);
    let title = format!(
        "one client, request with Connection ({many} connections): {rounds} rounds × {}, interleaved",
        iters / 10
    );
    print_rows(&title, "ns/req", variants[0].0, &rows);
}

fn main() {
    let many = match std::env::var("CONNECTIONS") {
        Ok(n) => n.parse().expect("CONNECTIONS=<a number of connections>"),
        Err(_) if full_run() => 10_000,
        Err(_) => 2 * MEMORY_BASELINE,
    };
    let (rounds, iters) = if full_run() {
        (30, 200_000)
    } else {
        (2, 1_000)
    };
    assert!(
        many > MEMORY_BASELINE,
        "CONNECTIONS must be over {MEMORY_BASELINE}"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let sandbox = rt.block_on(SandboxServer::start()).expect("sandbox");

    let started = Instant::now();
    let big = rt.block_on(seed(&sandbox, many));
    let seeding = started.elapsed();
    let one = rt.block_on(seed(&sandbox, 1));
    let token_len = one
        .app
        .connection(one.keys[0].key())
        .cached_token()
        .expect("cached")
        .secret()
        .len();
    println!(
        "\nseeded {many} connections in {:.1} s ({:.0} µs each, {SEEDING_CONCURRENCY} at a time; access tokens of {token_len} bytes)",
        seeding.as_secs_f64(),
        seeding.as_secs_f64() * 1e6 / many as f64
    );

    timing(&one, &big, many, rounds, iters);

    drop(one);
    let small = rt.block_on(seed(&sandbox, MEMORY_BASELINE));
    let (caches_many, grants_many) = freed(&rt, big);
    let (caches_one, grants_one) = freed(&rt, small);
    let extra = (many - MEMORY_BASELINE) as f64;
    println!(
        "\nmemory per idle connection (live heap bytes, {many} vs {MEMORY_BASELINE} connections):\n  token cache {:.0} B, grant in MemoryGrantStore {:.0} B, together {:.0} B",
        (caches_many - caches_one) as f64 / extra,
        (grants_many - grants_one) as f64 / extra,
        (caches_many - caches_one + grants_many - grants_one) as f64 / extra,
    );
}
