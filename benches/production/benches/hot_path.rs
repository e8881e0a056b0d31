//! The hot paths as users build them (tokio without `test-util`), warm token, requests to
//! `https://api.understory.io/v1/me` (nothing is sent: the inner service answers at once).
//!
//! * `tower`: per call, `no_layer` / `static_header` (tower-http's
//!   `AddAuthorizationLayer::bearer`, the floor and the baseline) / `bearer_auth_layer`;
//!   interleaved rounds, median of per-round ratios.
//! * `scaling`: `cached_token()`, `token()`, a `Mutex<Option<String>>` lock + clone and both
//!   tower layers, one OS thread vs two in a tight loop, interleaved; the ratio is two
//!   threads' calls per second ÷ one thread's.
//! * `reqwest`: per call, `token()` and `cached_token()` vs the mutex; the reqwest-middleware
//!   chain (ending in a middleware that answers `200` without I/O) with `UnderstoryAuth` vs
//!   `.bearer_auth(token)`.
//!
//! Run: `cargo bench -p understory-auth-bench [-- tower|scaling|reqwest]`.
//! `HOT_PATH_ONLY=<variant>:<calls>` runs one tower variant's loop and exits, for callgrind
//! (see BENCHMARKS.md).

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Uri;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower::Layer;
use tower_http::auth::AddAuthorizationLayer;
use understory_auth::testing::SandboxServer;
use understory_auth::{BearerAuthLayer, Credentials, UnderstoryAuth};
use understory_auth_bench::{
    Answer200, Runner, full_run, inner, interleave, one_call, poll_ready_now as poll_now,
    print_rows, scaling,
};

const API: &str = "https://api.understory.io/v1/me";

struct Setup {
    rt: tokio::runtime::Runtime,
    _sandbox: SandboxServer,
    auth: UnderstoryAuth,
    token: String,
    uri: Uri,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (sandbox, auth, token) = rt.block_on(async {
        let sandbox = SandboxServer::start().await.expect("sandbox");
        // Tokens from the sandbox, for Understory's production API origin.
        let credentials = Credentials::new(sandbox.client_id(), sandbox.client_secret());
        let auth = UnderstoryAuth::builder(credentials)
            .token_url(sandbox.token_url())
            .build()
            .expect("auth");
        let token = auth.token().await.expect("token").secret().to_owned();
        (sandbox, auth, token)
    });
    Setup {
        rt,
        _sandbox: sandbox,
        auth,
        token,
        uri: API.parse().expect("uri"),
    }
}

fn timed(n: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed()
}

fn tower(s: &Setup) {
    let (rounds, iters) = if full_run() {
        (40, 200_000)
    } else {
        (2, 1_000)
    };
    let uri = &s.uri;
    let mut plain = inner();
    let mut fixed = AddAuthorizationLayer::bearer(&s.token).layer(inner());
    let mut ours = BearerAuthLayer::new(s.auth.clone()).layer(inner());
    let mut variants: Vec<Runner<'_>> = vec![
        (
            "no_layer",
            Box::new(|n| timed(n, || one_call(&mut plain, uri))),
        ),
        (
            "static_header",
            Box::new(|n| timed(n, || one_call(&mut fixed, uri))),
        ),
        (
            "bearer_auth_layer",
            Box::new(|n| timed(n, || one_call(&mut ours, uri))),
        ),
    ];
    compare("tower", "ns/call", rounds, iters, &mut variants, 1);
}

fn scaling_section(s: &Setup) {
    let (rounds, iters) = if full_run() {
        (7, 2_000_000)
    } else {
        (1, 1_000)
    };
    let auth = &s.auth;
    let mutex = Mutex::new(Some(s.token.clone()));
    let uri = &s.uri;
    let fixed = AddAuthorizationLayer::bearer(&s.token).layer(inner());
    let ours = BearerAuthLayer::new(s.auth.clone()).layer(inner());
    // Each thread calls through its own clone of the service, as each worker of a server
    // would.
    let cached = || -> Box<dyn FnMut() + '_> {
        Box::new(|| drop(black_box(auth.cached_token().expect("warm"))))
    };
    let token = || -> Box<dyn FnMut() + '_> {
        Box::new(|| drop(black_box(poll_now(auth.token()).expect("warm"))))
    };
    let mutex_clone = || -> Box<dyn FnMut() + '_> {
        Box::new(|| drop(black_box(mutex.lock().expect("not poisoned").clone())))
    };
    let static_header = || -> Box<dyn FnMut() + '_> {
        let mut service = fixed.clone();
        Box::new(move || one_call(&mut service, uri))
    };
    let layer = || -> Box<dyn FnMut() + '_> {
        let mut service = ours.clone();
        Box::new(move || one_call(&mut service, uri))
    };
    scaling(
        "scaling, 2 threads ÷ 1 thread",
        rounds,
        iters,
        &[
            ("cached_token()", &cached),
            ("token()", &token),
            ("mutex_string_clone", &mutex_clone),
            ("static_header", &static_header),
            ("bearer_auth_layer", &layer),
        ],
    );
}

fn reqwest_section(s: &Setup) {
    let (rounds, iters) = if full_run() {
        (40, 200_000)
    } else {
        (2, 1_000)
    };
    let auth = &s.auth;
    let mutex = Mutex::new(Some(s.token.clone()));
    let mut variants: Vec<Runner<'_>> = vec![
        (
            "mutex_string_clone",
            Box::new(|n| {
                timed(n, || {
                    black_box(mutex.lock().expect("not poisoned").clone());
                })
            }),
        ),
        (
            "cached_token()",
            Box::new(|n| timed(n, || drop(black_box(auth.cached_token())))),
        ),
        (
            "token()",
            Box::new(|n| timed(n, || drop(black_box(poll_now(auth.token()))))),
        ),
    ];
    compare("token lookup", "ns/call", rounds, iters, &mut variants, 0);

    let client = reqwest::Client::new();
    let rm_static: ClientWithMiddleware =
        ClientBuilder::new(client.clone()).with(Answer200).build();
    let rm_auth: ClientWithMiddleware = ClientBuilder::new(client)
        .with(s.auth.clone())
        .with(Answer200)
        .build();
    let send = |c: &ClientWithMiddleware, bearer: Option<&str>| {
        let mut request = c.get(API);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = poll_now(request.send()).expect("200");
        black_box(response);
    };
    let iters = iters / 10;
    let mut variants: Vec<Runner<'_>> = vec![
        (
            "rm_static_bearer",
            Box::new(|n| timed(n, || send(&rm_static, Some(&s.token)))),
        ),
        (
            "rm_understory_auth",
            Box::new(|n| timed(n, || send(&rm_auth, None))),
        ),
    ];
    compare(
        "reqwest-middleware in process",
        "ns/req",
        rounds,
        iters,
        &mut variants,
        0,
    );
}

/// Runs an interleaved comparison and prints it.
fn compare(
    title: &str,
    unit: &str,
    rounds: usize,
    iters: u64,
    variants: &mut [Runner<'_>],
    baseline: usize,
) {
    let rows = interleave(rounds, iters, variants, baseline);
    let title = format!("{title}: {rounds} rounds × {iters} per variant, interleaved");
    print_rows(&title, unit, variants[baseline].0, &rows);
}

/// `HOT_PATH_ONLY=<variant>:<calls>`: one variant's loop alone, for callgrind (a tower
/// variant, or `cached_token`, `token`).
fn only(s: &Setup, spec: &str) {
    let (name, calls) = spec
        .split_once(':')
        .expect("HOT_PATH_ONLY=<variant>:<calls>");
    let calls: u64 = calls.parse().expect("a number of calls");
    let uri = &s.uri;
    match name {
        "no_layer" => timed(calls, || one_call(&mut inner(), uri)),
        "static_header" => {
            let mut service = AddAuthorizationLayer::bearer(&s.token).layer(inner());
            timed(calls, || one_call(&mut service, uri))
        }
        "bearer_auth_layer" => {
            let mut service = BearerAuthLayer::new(s.auth.clone()).layer(inner());
            timed(calls, || one_call(&mut service, uri))
        }
        "cached_token" => timed(calls, || drop(black_box(s.auth.cached_token()))),
        "token" => timed(calls, || drop(black_box(poll_now(s.auth.token())))),
        other => panic!("unknown variant {other}"),
    };
}

fn main() {
    let s = setup();
    let _guard = s.rt.enter();
    if let Ok(spec) = std::env::var("HOT_PATH_ONLY") {
        only(&s, &spec);
        return;
    }
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    if wants("tower") {
        tower(&s);
    }
    if wants("scaling") {
        scaling_section(&s);
    }
    if wants("reqwest") {
        reqwest_section(&s);
    }
}
