//! Question 1: what does `BearerAuthLayer` cost per request once the token is cached?
//!
//! Each variant wraps the same `tower::service_fn` that answers at once, and each call
//! builds the same `http::Request<()>` to the API, polls the service ready and calls it
//! (polling the futures by hand with a no-op waker, so that no executor overhead dilutes the
//! difference). Variants:
//!
//! * `no_layer`: the inner service alone;
//! * `static_header`: `tower_http::auth::AddAuthorizationLayer::bearer` with a fixed token,
//!   the floor for any bearer layer (one header insert) and the baseline of the ratios;
//! * `bearer_auth_layer`: `understory_auth::BearerAuthLayer` with a warm token;
//! * `hand_rolled_mutex`: what a hand-rolled cache typically does,
//!   `tower_http::set_header::SetRequestHeaderLayer` reading a `Mutex<Option<String>>` and
//!   formatting `Bearer <token>` per request.
//!
//! Besides criterion's figures, the bench prints an interleaved comparison (variants
//! alternated round by round, ratios to `static_header` taken per round) which is what
//! `BENCHMARKS.md` quotes.
//!
//! Run: `cargo bench --all-features --bench hot_path_tower`
//!
//! For instruction counts, `HOT_PATH_ONLY=<variant>:<calls>` runs one variant's loop and
//! exits; run it under `valgrind --tool=callgrind` with two call counts and take the
//! difference (see BENCHMARKS.md).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::Criterion;
use http::{HeaderValue, Request, Response, Uri};
use tower::{Layer, Service};
use tower_http::auth::AddAuthorizationLayer;
use tower_http::set_header::SetRequestHeaderLayer;
use understory_auth::BearerAuthLayer;

mod common;

/// Runs `calls` calls through `service`, returning the time they took.
fn run<S>(service: &mut S, uri: &Uri, calls: u64) -> Duration
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..calls {
        common::one_call(service, uri);
    }
    start.elapsed()
}

struct Setup {
    _rt: tokio::runtime::Runtime,
    _sandbox: understory_auth::testing::SandboxServer,
    auth: understory_auth::UnderstoryAuth,
    token: String,
    uri: Uri,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (sandbox, auth) = rt.block_on(common::sandbox_and_auth());
    let token = rt
        .block_on(auth.token())
        .expect("token")
        .secret()
        .to_owned();
    let uri: Uri = format!("{}/v1/me", sandbox.api_base())
        .parse()
        .expect("uri");
    Setup {
        _rt: rt,
        _sandbox: sandbox,
        auth,
        token,
        uri,
    }
}

/// The hand-rolled variant's header: lock, clone, format.
fn hand_rolled(
    cache: Arc<Mutex<Option<String>>>,
) -> impl Fn(&Request<()>) -> Option<HeaderValue> + Clone {
    move |_: &Request<()>| {
        let token = cache.lock().expect("not poisoned").clone()?;
        let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

fn bench(c: &mut Criterion, s: &Setup) {
    let uri = &s.uri;
    let mut group = c.benchmark_group("hot_path_tower");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut plain = common::inner();
    group.bench_function("no_layer", |b| b.iter(|| common::one_call(&mut plain, uri)));
    let mut fixed = AddAuthorizationLayer::bearer(&s.token).layer(common::inner());
    group.bench_function("static_header", |b| {
        b.iter(|| common::one_call(&mut fixed, uri))
    });
    let mut ours = BearerAuthLayer::new(s.auth.clone()).layer(common::inner());
    group.bench_function("bearer_auth_layer", |b| {
        b.iter(|| common::one_call(&mut ours, uri))
    });
    let cache = Arc::new(Mutex::new(Some(s.token.clone())));
    let mut hand =
        SetRequestHeaderLayer::overriding(http::header::AUTHORIZATION, hand_rolled(cache))
            .layer(common::inner());
    group.bench_function("hand_rolled_mutex", |b| {
        b.iter(|| common::one_call(&mut hand, uri))
    });
    group.finish();
}

fn interleaved(s: &Setup) {
    let (rounds, iters) = if common::full_run() {
        (40, 200_000)
    } else {
        (2, 1_000)
    };
    let uri = &s.uri;
    let mut plain = common::inner();
    let mut fixed = AddAuthorizationLayer::bearer(&s.token).layer(common::inner());
    let mut ours = BearerAuthLayer::new(s.auth.clone()).layer(common::inner());
    let cache = Arc::new(Mutex::new(Some(s.token.clone())));
    let mut hand =
        SetRequestHeaderLayer::overriding(http::header::AUTHORIZATION, hand_rolled(cache))
            .layer(common::inner());
    let mut variants: Vec<common::Runner<'_>> = vec![
        ("no_layer", Box::new(|n| run(&mut plain, uri, n))),
        ("static_header", Box::new(|n| run(&mut fixed, uri, n))),
        ("bearer_auth_layer", Box::new(|n| run(&mut ours, uri, n))),
        ("hand_rolled_mutex", Box::new(|n| run(&mut hand, uri, n))),
    ];
    let rows = common::interleave(rounds, iters, &mut variants, 1);
    common::print_rows(
        &format!("hot_path_tower, interleaved: {rounds} rounds × {iters} calls per variant"),
        "ns/call",
        "static_header",
        &rows,
    );
}

/// `HOT_PATH_ONLY=<variant>:<calls>`: one variant's loop alone, for callgrind.
fn only(s: &Setup, spec: &str) {
    let (name, calls) = spec
        .split_once(':')
        .expect("HOT_PATH_ONLY=<variant>:<calls>");
    let calls: u64 = calls.parse().expect("a number of calls");
    let uri = &s.uri;
    match name {
        "no_layer" => run(&mut common::inner(), uri, calls),
        "static_header" => run(
            &mut AddAuthorizationLayer::bearer(&s.token).layer(common::inner()),
            uri,
            calls,
        ),
        "bearer_auth_layer" => run(
            &mut BearerAuthLayer::new(s.auth.clone()).layer(common::inner()),
            uri,
            calls,
        ),
        "hand_rolled_mutex" => {
            let cache = Arc::new(Mutex::new(Some(s.token.clone())));
            let layer =
                SetRequestHeaderLayer::overriding(http::header::AUTHORIZATION, hand_rolled(cache));
            run(&mut layer.layer(common::inner()), uri, calls)
        }
        other => panic!("unknown variant {other}"),
    };
}

fn main() {
    let s = setup();
    let _guard = s._rt.enter();
    if let Ok(spec) = std::env::var("HOT_PATH_ONLY") {
        only(&s, &spec);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &s);
    c.final_summary();
    interleaved(&s);
}
