//! Question 2: what does `UnderstoryAuth` as reqwest middleware cost per request once the
//! token is cached?
//!
//! **Loopback** (`hot_path_reqwest/loopback`): sequential `GET`s on one keep-alive
//! connection to a minimal hyper server in the same process that answers `200` at once, on a
//! current-thread runtime, so that the client's work is as large a share of each request as
//! it can be. Variants, all on the same `reqwest::Client` (same connection pool):
//!
//! * `reqwest_static_bearer`: `reqwest::Client` with `.bearer_auth(token)`, the baseline;
//! * `rm_static_bearer`: `reqwest_middleware::ClientWithMiddleware` without middleware and
//!   `.bearer_auth(token)` (what reqwest-middleware itself costs);
//! * `rm_understory_auth`: `ClientWithMiddleware` with `UnderstoryAuth`, token warm.
//!
//! **In process** (`hot_path_reqwest/in_process`): the same request builders, but the
//! middleware chain ends in a terminal middleware that answers `200` without any I/O, so
//! that only the header step is measured: `rm_static_bearer` vs `rm_understory_auth`. The
//! request goes to `https://api.understory.io/v1/me`, as in production.
//!
//! Figures are requests per second; the interleaved comparison printed at the end (variants
//! alternated round by round) is what `BENCHMARKS.md` quotes.
//!
//! Run: `cargo bench --all-features --bench hot_path_reqwest`
//!
//! For instruction counts, `HOT_PATH_ONLY=<loopback|in_process>:<variant>:<requests>` runs
//! one variant's loop and exits (run it under `valgrind --tool=callgrind`).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokio::runtime::Runtime;
use understory_auth::{Credentials, UnderstoryAuth};

mod common;

#[derive(Clone, Copy)]
enum Variant {
    ReqwestStatic,
    RmStatic,
    RmAuth,
}

struct Clients {
    url: String,
    token: String,
    plain: reqwest::Client,
    rm_plain: ClientWithMiddleware,
    rm_auth: ClientWithMiddleware,
}

impl Clients {
    async fn one(&self, variant: Variant) {
        let response = match variant {
            Variant::ReqwestStatic => {
                self.plain
                    .get(&self.url)
                    .bearer_auth(&self.token)
                    .send()
                    .await
            }
            Variant::RmStatic => self
                .rm_plain
                .get(&self.url)
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| panic!("{e}")),
            Variant::RmAuth => self
                .rm_auth
                .get(&self.url)
                .send()
                .await
                .map_err(|e| panic!("{e}")),
        }
        .expect("request succeeds");
        assert_eq!(response.status(), 200);
        std::hint::black_box(response.bytes().await.expect("body"));
    }

    fn run(&self, rt: &Runtime, variant: Variant, n: u64) -> Duration {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                self.one(variant).await;
            }
            start.elapsed()
        })
    }
}

struct Setup {
    rt: Runtime,
    _sandbox: understory_auth::testing::SandboxServer,
    loopback: Clients,
    in_process: Clients,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (sandbox, loopback, in_process) = rt.block_on(async {
        let sandbox = understory_auth::testing::SandboxServer::start()
            .await
            .expect("sandbox");
        let base = common::ok_server().await;
        let plain = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .expect("client");

        let auth = common::auth_for_api(&sandbox, &base);
        let token = auth.token().await.expect("token").secret().to_owned();
        let loopback = Clients {
            url: format!("{base}/v1/me"),
            token: token.clone(),
            plain: plain.clone(),
            rm_plain: ClientBuilder::new(plain.clone()).build(),
            rm_auth: ClientBuilder::new(plain.clone()).with(auth).build(),
        };

        // Tokens from the sandbox, for Understory's real API origin: nothing is sent there,
        // `common::Answer200` answers first.
        let prod = UnderstoryAuth::builder(Credentials::new(
            sandbox.client_id(),
            sandbox.client_secret(),
        ))
        .token_url(sandbox.token_url())
        .build()
        .expect("auth");
        prod.token().await.expect("token");
        let in_process = Clients {
            url: "https://api.understory.io/v1/me".to_owned(),
            token: token.clone(),
            plain: plain.clone(),
            rm_plain: ClientBuilder::new(plain.clone())
                .with(common::Answer200)
                .build(),
            rm_auth: ClientBuilder::new(plain)
                .with(prod)
                .with(common::Answer200)
                .build(),
        };
        (sandbox, loopback, in_process)
    });
    Setup {
        rt,
        _sandbox: sandbox,
        loopback,
        in_process,
    }
}

fn bench(c: &mut Criterion, s: &Setup) {
    let mut group = c.benchmark_group("hot_path_reqwest/loopback");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, variant) in [
        ("reqwest_static_bearer", Variant::ReqwestStatic),
        ("rm_static_bearer", Variant::RmStatic),
        ("rm_understory_auth", Variant::RmAuth),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|n| s.loopback.run(&s.rt, variant, n))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("hot_path_reqwest/in_process");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, variant) in [
        ("rm_static_bearer", Variant::RmStatic),
        ("rm_understory_auth", Variant::RmAuth),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|n| s.in_process.run(&s.rt, variant, n))
        });
    }
    group.finish();
}

fn interleaved(s: &Setup) {
    let full = common::full_run();
    let (rounds, iters) = if full { (30, 2_000) } else { (2, 20) };
    let mut variants: Vec<common::Runner<'_>> = vec![
        (
            "reqwest_static_bearer",
            Box::new(|n| s.loopback.run(&s.rt, Variant::ReqwestStatic, n)),
        ),
        (
            "rm_static_bearer",
            Box::new(|n| s.loopback.run(&s.rt, Variant::RmStatic, n)),
        ),
        (
            "rm_understory_auth",
            Box::new(|n| s.loopback.run(&s.rt, Variant::RmAuth, n)),
        ),
    ];
    let rows = common::interleave(rounds, iters, &mut variants, 0);
    print_rps(
        &format!(
            "hot_path_reqwest/loopback, interleaved: {rounds} rounds × {iters} requests per variant"
        ),
        "reqwest_static_bearer",
        &rows,
    );

    let (rounds, iters) = if full { (30, 50_000) } else { (2, 100) };
    let mut variants: Vec<common::Runner<'_>> = vec![
        (
            "rm_static_bearer",
            Box::new(|n| s.in_process.run(&s.rt, Variant::RmStatic, n)),
        ),
        (
            "rm_understory_auth",
            Box::new(|n| s.in_process.run(&s.rt, Variant::RmAuth, n)),
        ),
    ];
    let rows = common::interleave(rounds, iters, &mut variants, 0);
    print_rps(
        &format!(
            "hot_path_reqwest/in_process, interleaved: {rounds} rounds × {iters} requests per variant"
        ),
        "rm_static_bearer",
        &rows,
    );
}

/// Prints rows as requests per second and throughput relative to the baseline (the inverse
/// of the time ratio).
fn print_rps(title: &str, baseline: &str, rows: &[common::Row]) {
    println!("\n{title}");
    println!(
        "{:<24} {:>12} {:>10} {:>24}",
        "variant",
        "median req/s",
        format!("µs/req"),
        format!("req/s ÷ {baseline} (p25 – p75)")
    );
    for r in rows {
        println!(
            "{:<24} {:>12.0} {:>10.2} {:>9.3}× ({:.3} – {:.3})",
            r.name,
            1e9 / r.median_ns,
            r.median_ns / 1e3,
            1.0 / r.ratio,
            1.0 / r.ratio_p75,
            1.0 / r.ratio_p25,
        );
    }
}

/// `HOT_PATH_ONLY=<loopback|in_process>:<variant>:<requests>`: one variant's loop alone, for
/// callgrind.
fn only(s: &Setup, spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [set, variant, n] = parts[..] else {
        panic!("HOT_PATH_ONLY=<loopback|in_process>:<variant>:<requests>");
    };
    let clients = match set {
        "loopback" => &s.loopback,
        "in_process" => &s.in_process,
        other => panic!("unknown set {other}"),
    };
    let variant = match variant {
        "reqwest_static_bearer" => Variant::ReqwestStatic,
        "rm_static_bearer" => Variant::RmStatic,
        "rm_understory_auth" => Variant::RmAuth,
        other => panic!("unknown variant {other}"),
    };
    clients.run(&s.rt, variant, n.parse().expect("a number of requests"));
}

fn main() {
    let s = setup();
    if let Ok(spec) = std::env::var("HOT_PATH_ONLY") {
        only(&s, &spec);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &s);
    c.final_summary();
    interleaved(&s);
}
