//! Question 4: how long do 1,000 concurrent requests for a token take on an empty cache,
//! when the token endpoint takes 50 ms?
//!
//! Each iteration builds a fresh `UnderstoryAuth` (empty cache; building it is not timed),
//! then times, on a multi-threaded runtime with 2 worker threads:
//!
//! * `one_token_round_trip`: one `token()` call, the baseline (one token request with the
//!   sandbox's 50 ms delay);
//! * `concurrent_1000`: 1,000 spawned tasks calling `token()` at once, until all have it.
//!
//! Every iteration checks that exactly one token request reached the sandbox. The ratio
//! `concurrent_1000 / one_token_round_trip` is what `BENCHMARKS.md` quotes (ideal: 1.0).
//!
//! Run: `cargo bench --all-features --bench cold_start`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use futures_util::future::join_all;
use tokio::runtime::Runtime;
use understory_auth::testing::SandboxServer;

mod common;

const TOKEN_DELAY: Duration = Duration::from_millis(50);
const CALLERS: usize = 1_000;

/// One cold start with `callers` concurrent callers: the wall time until all have a token.
fn cold_start(rt: &Runtime, sandbox: &SandboxServer, callers: usize) -> Duration {
    let auth = common::auth_for(sandbox);
    let before = sandbox.token_requests();
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        if callers == 1 {
            auth.token().await.expect("token");
        } else {
            let tasks = (0..callers).map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.token().await.map(|t| t.id()) })
            });
            let ids: Vec<_> = join_all(tasks)
                .await
                .into_iter()
                .map(|r| r.expect("task").expect("token"))
                .collect();
            assert!(ids.windows(2).all(|w| w[0] == w[1]), "one token for all");
        }
        start.elapsed()
    });
    let requests = sandbox.token_requests() - before;
    assert_eq!(
        requests, 1,
        "{callers} callers caused {requests} token requests"
    );
    elapsed
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sandbox = rt.block_on(SandboxServer::start()).expect("sandbox");
    sandbox.set_token_delay(TOKEN_DELAY);

    let mut c = Criterion::default().configure_from_args();
    {
        let mut group = c.benchmark_group("cold_start");
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_secs(3));
        for callers in [1, CALLERS] {
            let name = if callers == 1 {
                "one_token_round_trip"
            } else {
                "concurrent"
            };
            group.bench_with_input(BenchmarkId::new(name, callers), &callers, |b, &callers| {
                b.iter_custom(|iters| (0..iters).map(|_| cold_start(&rt, &sandbox, callers)).sum())
            });
        }
        group.finish();
    }
    c.final_summary();

    // Interleaved: one baseline and one 1,000-caller cold start per round.
    let rounds = if common::full_run() { 30 } else { 2 };
    let mut variants: Vec<common::Runner<'_>> = vec![
        (
            "one_token_round_trip",
            Box::new(|n| (0..n).map(|_| cold_start(&rt, &sandbox, 1)).sum()),
        ),
        (
            "concurrent_1000",
            Box::new(|n| (0..n).map(|_| cold_start(&rt, &sandbox, CALLERS)).sum()),
        ),
    ];
    let rows = common::interleave(rounds, 1, &mut variants, 0);
    common::print_rows(
        &format!(
            "cold_start, interleaved: {rounds} rounds; token endpoint delay {TOKEN_DELAY:?}; \
             exactly 1 token request per cold start (asserted)"
        ),
        "ns",
        "one_token_round_trip",
        &rows,
    );
    for r in &rows {
        println!("{:<28} median {:.2} ms", r.name, r.median_ns / 1e6);
    }
}
