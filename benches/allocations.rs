//! Question 6: how many heap allocations does each hot-path call make, against the
//! static-header floor?
//!
//! A counting `#[global_allocator]` wraps the system allocator (this bench is its own crate;
//! the library itself forbids `unsafe`). Everything runs on one thread (a current-thread
//! runtime; the sandbox and the loopback server idle on it between requests), the token is
//! warm, and each figure is the average over `CALLS` calls after a warm-up:
//!
//! * the token cache: `token()`, `cached_token()`, and a `Mutex<Option<String>>` clone;
//! * the tower layer: no layer, `AddAuthorizationLayer::bearer` (the floor),
//!   `BearerAuthLayer`, and a hand-rolled `Mutex<Option<String>>` header layer, around a
//!   `service_fn` that answers at once;
//! * the reqwest middleware's header step: a middleware chain ending in a middleware that
//!   answers `200` without I/O, with `.bearer_auth(token)` (the floor) or `UnderstoryAuth`;
//! * a whole request on loopback (client and server in this process): `reqwest` with
//!   `.bearer_auth(token)` against `ClientWithMiddleware` + `UnderstoryAuth`.
//!
//! Run: `cargo bench --all-features --bench allocations` (prints a table; no timing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, Uri};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower::Layer;
use tower_http::auth::AddAuthorizationLayer;
use tower_http::set_header::SetRequestHeaderLayer;
use understory_auth::{BearerAuthLayer, Credentials, UnderstoryAuth};

mod common;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (all allocations go there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid request.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes per call of `f`, averaged over `calls` calls after a warm-up.
fn per_call(calls: u64, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..calls.min(1_000) {
        f();
    }
    let (a0, b0) = (ALLOCATIONS.load(Relaxed), BYTES.load(Relaxed));
    for _ in 0..calls {
        f();
    }
    let (a1, b1) = (ALLOCATIONS.load(Relaxed), BYTES.load(Relaxed));
    (
        (a1 - a0) as f64 / calls as f64,
        (b1 - b0) as f64 / calls as f64,
    )
}

struct Table {
    rows: Vec<(String, f64, f64, f64)>,
}

impl Table {
    fn group(&mut self, title: &str) {
        self.rows
            .push((title.to_owned(), f64::NAN, f64::NAN, f64::NAN));
    }

    fn row(&mut self, name: &str, (allocs, bytes): (f64, f64), floor: Option<f64>) {
        let delta = floor.map_or(f64::NAN, |f| allocs - f);
        self.rows.push((format!("  {name}"), allocs, bytes, delta));
    }

    fn print(&self) {
        println!(
            "\n{:<44} {:>12} {:>12} {:>12}",
            "allocations per call", "allocs", "bytes", "Δ allocs"
        );
        for (name, allocs, bytes, delta) in &self.rows {
            if allocs.is_nan() {
                println!("{name}");
            } else if delta.is_nan() {
                println!("{name:<44} {allocs:>12.2} {bytes:>12.1}");
            } else {
                println!("{name:<44} {allocs:>12.2} {bytes:>12.1} {delta:>+12.2}");
            }
        }
    }
}

fn main() {
    let calls: u64 = if common::full_run() { 20_000 } else { 100 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (sandbox, base) = rt.block_on(async {
        let sandbox = understory_auth::testing::SandboxServer::start()
            .await
            .expect("sandbox");
        (sandbox, common::ok_server().await)
    });
    let auth = common::auth_for_api(&sandbox, &base);
    let token = rt
        .block_on(auth.token())
        .expect("token")
        .secret()
        .to_owned();
    let _guard = rt.enter();
    let mut t = Table { rows: Vec::new() };

    // The token cache.
    t.group("token cache");
    let mutex = Mutex::new(Some(token.clone()));
    let floor = per_call(calls, || {
        black_box(mutex.lock().expect("not poisoned").clone());
    });
    t.row("Mutex<Option<String>> clone (baseline)", floor, None);
    let r = per_call(calls, || {
        black_box(common::poll_ready_now(auth.token()).expect("token"));
    });
    t.row("UnderstoryAuth::token()", r, Some(floor.0));
    let r = per_call(calls, || {
        black_box(auth.cached_token().expect("token"));
    });
    t.row("UnderstoryAuth::cached_token()", r, Some(floor.0));

    // The tower layer.
    t.group("tower, one call through the layer (request built per call)");
    let uri: Uri = format!("{base}/v1/me").parse().expect("uri");
    let mut plain = common::inner();
    let r = per_call(calls, || common::one_call(&mut plain, &uri));
    t.row("no layer", r, None);
    let mut fixed = AddAuthorizationLayer::bearer(&token).layer(common::inner());
    let floor = per_call(calls, || common::one_call(&mut fixed, &uri));
    t.row("AddAuthorizationLayer::bearer (floor)", floor, None);
    let mut ours = BearerAuthLayer::new(auth.clone()).layer(common::inner());
    let r = per_call(calls, || common::one_call(&mut ours, &uri));
    t.row("BearerAuthLayer", r, Some(floor.0));
    let cache = Arc::new(Mutex::new(Some(token.clone())));
    let mut hand =
        SetRequestHeaderLayer::overriding(http::header::AUTHORIZATION, move |_: &Request<()>| {
            let token = cache.lock().expect("not poisoned").clone()?;
            HeaderValue::try_from(format!("Bearer {token}")).ok()
        })
        .layer(common::inner());
    let r = per_call(calls, || common::one_call(&mut hand, &uri));
    t.row("hand-rolled Mutex<Option<String>> layer", r, Some(floor.0));

    // The reqwest middleware's header step, without I/O.
    t.group("reqwest-middleware, header step only (chain ends in a 200 answer)");
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let prod = UnderstoryAuth::builder(Credentials::new(
        sandbox.client_id(),
        sandbox.client_secret(),
    ))
    .token_url(sandbox.token_url())
    .build()
    .expect("auth");
    rt.block_on(prod.token()).expect("token");
    let api = "https://api.understory.io/v1/me";
    let rm_plain: ClientWithMiddleware = ClientBuilder::new(http.clone())
        .with(common::Answer200)
        .build();
    let rm_auth: ClientWithMiddleware = ClientBuilder::new(http.clone())
        .with(prod)
        .with(common::Answer200)
        .build();
    let floor = per_call(calls, || {
        let r = rt.block_on(rm_plain.get(api).bearer_auth(&token).send());
        black_box(r.expect("response"));
    });
    t.row(".bearer_auth(token) (floor)", floor, None);
    let r = per_call(calls, || {
        black_box(rt.block_on(rm_auth.get(api).send()).expect("response"));
    });
    t.row("UnderstoryAuth", r, Some(floor.0));

    // A whole request on loopback.
    t.group("whole GET on loopback (client + server allocations)");
    let url = format!("{base}/v1/me");
    let rm_loop = ClientBuilder::new(http.clone()).with(auth.clone()).build();
    let loop_calls = calls / 10;
    let floor = per_call(loop_calls, || {
        rt.block_on(async {
            let r = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .expect("response");
            black_box(r.bytes().await.expect("body"));
        })
    });
    t.row("reqwest + .bearer_auth(token) (floor)", floor, None);
    let r = per_call(loop_calls, || {
        rt.block_on(async {
            let r = rm_loop.get(&url).send().await.expect("response");
            black_box(r.bytes().await.expect("body"));
        })
    });
    t.row("ClientWithMiddleware + UnderstoryAuth", r, Some(floor.0));

    t.print();
    assert_eq!(sandbox.token_requests(), 2, "warm tokens served every call");
}
