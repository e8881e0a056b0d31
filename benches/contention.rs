//! Question 3: does the token cache's hot path hold up when many tasks ask for the token at
//! once, on a multi-threaded runtime with 2 worker threads?
//!
//! For 1, 2, 8 and 64 tasks, each task asks for the (warm) token in a loop, yielding to the
//! scheduler every `CHUNK` calls so that the tasks really interleave on the two workers.
//! Criterion reports the throughput of all tasks together (calls per second). Variants:
//!
//! * `token`: `UnderstoryAuth::token().await` (the async API the middleware and layer use);
//! * `cached_token`: `UnderstoryAuth::cached_token()` (the synchronous hot path);
//! * `std_mutex_string`: the hand-rolled baseline, `std::sync::Mutex<Option<String>>`, lock
//!   and clone the token string;
//! * `tokio_mutex_string`: the same with `tokio::sync::Mutex`, the other common hand-rolled
//!   cache (needed when the fetch happens under the lock).
//!
//! Run: `cargo bench --all-features --bench contention`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use understory_auth::UnderstoryAuth;

mod common;

/// Calls between two `yield_now`s in each task.
const CHUNK: u64 = 128;
const TASK_COUNTS: [usize; 4] = [1, 2, 8, 64];

#[derive(Clone)]
enum Variant {
    Token(UnderstoryAuth),
    CachedToken(UnderstoryAuth),
    StdMutex(Arc<std::sync::Mutex<Option<String>>>),
    TokioMutex(Arc<tokio::sync::Mutex<Option<String>>>),
}

impl Variant {
    /// `iters` calls, yielding every `CHUNK`.
    async fn run(self, iters: u64) {
        let mut done = 0;
        while done < iters {
            let n = CHUNK.min(iters - done);
            match &self {
                Variant::Token(auth) => {
                    for _ in 0..n {
                        black_box(auth.token().await.expect("warm token"));
                    }
                }
                Variant::CachedToken(auth) => {
                    for _ in 0..n {
                        black_box(auth.cached_token().expect("warm token"));
                    }
                }
                Variant::StdMutex(m) => {
                    for _ in 0..n {
                        black_box(m.lock().expect("not poisoned").clone().expect("token"));
                    }
                }
                Variant::TokioMutex(m) => {
                    for _ in 0..n {
                        black_box(m.lock().await.clone().expect("token"));
                    }
                }
            }
            done += n;
            tokio::task::yield_now().await;
        }
    }
}

/// Wall time for `tasks` tasks doing `iters` calls each, all started together.
fn measure(rt: &Runtime, variant: &Variant, tasks: usize, iters: u64) -> Duration {
    rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(tasks + 1));
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let variant = variant.clone();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    variant.run(iters).await;
                })
            })
            .collect();
        barrier.wait().await;
        let start = Instant::now();
        for handle in handles {
            handle.await.expect("task finishes");
        }
        start.elapsed()
    })
}

fn contention(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (sandbox, auth) = rt.block_on(common::sandbox_and_auth());
    let token = rt.block_on(auth.token()).expect("first token");
    let secret = Some(token.secret().to_owned());
    let variants = [
        ("token", Variant::Token(auth.clone())),
        ("cached_token", Variant::CachedToken(auth.clone())),
        (
            "std_mutex_string",
            Variant::StdMutex(Arc::new(std::sync::Mutex::new(secret.clone()))),
        ),
        (
            "tokio_mutex_string",
            Variant::TokioMutex(Arc::new(tokio::sync::Mutex::new(secret))),
        ),
    ];

    let mut group = c.benchmark_group("contention");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    // Task count outer, variant inner: the variants compared at one count run back to back.
    for tasks in TASK_COUNTS {
        group.throughput(Throughput::Elements(tasks as u64));
        for (name, variant) in &variants {
            group.bench_with_input(BenchmarkId::new(*name, tasks), &tasks, |b, &tasks| {
                b.iter_custom(|iters| measure(&rt, variant, tasks, iters));
            });
        }
    }
    group.finish();

    assert_eq!(
        sandbox.token_requests(),
        1,
        "the warm token served every call"
    );
}

criterion_group!(benches, contention);
criterion_main!(benches);
