//! Helpers shared by the benchmarks (each bench is its own crate and uses a subset).
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use understory_auth::testing::SandboxServer;
use understory_auth::{Credentials, UnderstoryAuth};

/// A sandbox and an `UnderstoryAuth` pointed at it (nothing fetched yet).
pub async fn sandbox_and_auth() -> (SandboxServer, UnderstoryAuth) {
    let sandbox = SandboxServer::start().await.expect("sandbox starts");
    let auth = auth_for(&sandbox);
    (sandbox, auth)
}

/// A fresh `UnderstoryAuth` (own, empty cache) for `sandbox`.
pub fn auth_for(sandbox: &SandboxServer) -> UnderstoryAuth {
    UnderstoryAuth::builder(Credentials::new(
        sandbox.client_id(),
        sandbox.client_secret(),
    ))
    .token_url(sandbox.token_url())
    .api_base(sandbox.api_base())
    .build()
    .expect("auth builds")
}

/// An `UnderstoryAuth` for `sandbox` whose tokens go to `api_base` instead of the sandbox's
/// API (for a bench's own loopback server).
pub fn auth_for_api(sandbox: &SandboxServer, api_base: &str) -> UnderstoryAuth {
    UnderstoryAuth::builder(Credentials::new(
        sandbox.client_id(),
        sandbox.client_secret(),
    ))
    .token_url(sandbox.token_url())
    .api_base(api_base)
    .build()
    .expect("auth builds")
}

/// A minimal HTTP/1.1 server on loopback answering every request `200 OK` with an empty body
/// at once. Returns its base URL, `http://127.0.0.1:PORT`. Runs until the runtime stops.
pub async fn ok_server() -> String {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind loopback");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// Median, percentile and max of a sample of durations, in microseconds.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// One variant of an interleaved comparison: a name and a closure that runs `n` operations
/// and returns how long they took.
pub type Runner<'a> = (
    &'static str,
    Box<dyn FnMut(u64) -> std::time::Duration + 'a>,
);

/// One line of an interleaved comparison's result.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    /// Median over the rounds of the time per operation, in nanoseconds.
    pub median_ns: f64,
    /// Median over the rounds of (this variant's time / the baseline's time in the same
    /// round), with the 25th and 75th percentiles.
    pub ratio: f64,
    pub ratio_p25: f64,
    pub ratio_p75: f64,
}

/// Whether the bench binary was started by `cargo bench` (rather than by `cargo test
/// --benches`, which only checks that it runs).
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Runs the variants in `rounds` rounds of `iters` operations each, alternating them (and
/// rotating which goes first) so that drift in the machine's speed hits all alike, and
/// compares each to `variants[baseline]` round by round.
pub fn interleave(
    rounds: usize,
    iters: u64,
    variants: &mut [Runner<'_>],
    baseline: usize,
) -> Vec<Row> {
    let k = variants.len();
    // Warm-up: one pass of each.
    for (_, run) in variants.iter_mut() {
        run(iters / 4 + 1);
    }
    let mut per_op = vec![Vec::with_capacity(rounds); k];
    for round in 0..rounds {
        for j in 0..k {
            let i = (round + j) % k;
            let elapsed = (variants[i].1)(iters);
            per_op[i].push(elapsed.as_nanos() as f64 / iters as f64);
        }
    }
    (0..k)
        .map(|i| {
            let mut times = per_op[i].clone();
            times.sort_by(f64::total_cmp);
            let mut ratios: Vec<f64> = per_op[i]
                .iter()
                .zip(&per_op[baseline])
                .map(|(v, b)| v / b)
                .collect();
            ratios.sort_by(f64::total_cmp);
            Row {
                name: variants[i].0,
                median_ns: percentile(&times, 0.5),
                ratio: percentile(&ratios, 0.5),
                ratio_p25: percentile(&ratios, 0.25),
                ratio_p75: percentile(&ratios, 0.75),
            }
        })
        .collect()
}

/// Prints an interleaved comparison as a table.
pub fn print_rows(title: &str, unit: &str, baseline: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "{:<28} {:>14} {:>10} {:>18}",
        "variant",
        format!("median {unit}"),
        format!("÷ {baseline}"),
        "(p25 – p75)"
    );
    for r in rows {
        println!(
            "{:<28} {:>14.1} {:>9.3}× {:>8.3} – {:<8.3}",
            r.name, r.median_ns, r.ratio, r.ratio_p25, r.ratio_p75
        );
    }
}

/// Polls `future` once with a no-op waker; it must be ready (the benches' inner services
/// answer at once and the token is warm).
pub fn poll_ready_now<F: std::future::Future>(future: F) -> F::Output {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the future was expected to complete at once"),
    }
}

/// A tower service that answers every request at once: the innermost service of the
/// tower hot-path benches.
pub fn inner() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<()>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<()>, Infallible>>,
> + Clone {
    tower::service_fn(|request: http::Request<()>| {
        std::hint::black_box(&request);
        std::future::ready(Ok::<_, Infallible>(http::Response::new(())))
    })
}

/// Ends a reqwest-middleware chain with `200 OK` and an empty body, sending nothing.
pub struct Answer200;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Answer200 {
    async fn handle(
        &self,
        request: reqwest::Request,
        _extensions: &mut http::Extensions,
        _next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        std::hint::black_box(&request);
        Ok(reqwest::Response::from(http::Response::new(
            reqwest::Body::from(""),
        )))
    }
}

/// One request to `uri` through `service`, polled by hand (no executor).
#[inline(always)]
pub fn one_call<S>(service: &mut S, uri: &http::Uri)
where
    S: tower::Service<http::Request<()>, Response = http::Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut request = http::Request::new(());
    *request.uri_mut() = uri.clone();
    poll_ready_now(std::future::poll_fn(|cx| service.poll_ready(cx))).expect("ready");
    std::hint::black_box(poll_ready_now(service.call(request)).expect("response"));
}
