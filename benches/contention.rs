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
//! * `std_mutex_expiry`: the same, checking an expiry instant as a real cache must
//!   (`Mutex<Option<(String, Instant)>>`, one `Instant::now()` per call);
//! * `tokio_mutex_string`: `std_mutex_string` with `tokio::sync::Mutex`, the other common
//!   hand-rolled cache (needed when the fetch happens under the lock).
//!
//! The interleaved comparison printed at the end (variants alternated round by round at
//! each task count) is what `BENCHMARKS.md` quotes: throughput relative to
//! `std_mutex_string` (> 1 is faster) and relative to the same variant with 1 task.
//!
//! Run: `cargo bench --all-features --bench contention`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
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
    StdMutexExpiry(Arc<std::sync::Mutex<Option<(String, Instant)>>>),
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
                Variant::StdMutexExpiry(m) => {
                    for _ in 0..n {
                        let slot = m.lock().expect("not poisoned");
                        let (token, usable_until) = slot.as_ref().expect("token");
                        assert!(Instant::now() < *usable_until, "not expired");
                        black_box(token.clone());
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
            "std_mutex_expiry",
            Variant::StdMutexExpiry(Arc::new(std::sync::Mutex::new(Some((
                token.secret().to_owned(),
                Instant::now() + Duration::from_secs(3600),
            ))))),
        ),
        (
            "tokio_mutex_string",
            Variant::TokioMutex(Arc::new(tokio::sync::Mutex::new(secret))),
        ),
    ];

    let mut group = c.benchmark_group("contention");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
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

/// Interleaved: at each task count, the variants alternate round by round; prints calls per
/// second and the ratio to `std_mutex_string` (per round), and the scaling against 1 task.
fn interleaved() {
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
            "std_mutex_expiry",
            Variant::StdMutexExpiry(Arc::new(std::sync::Mutex::new(Some((
                token.secret().to_owned(),
                Instant::now() + Duration::from_secs(3600),
            ))))),
        ),
        (
            "tokio_mutex_string",
            Variant::TokioMutex(Arc::new(tokio::sync::Mutex::new(secret))),
        ),
    ];
    let (rounds, total) = if common::full_run() {
        (15, 1 << 20)
    } else {
        (1, 1 << 10)
    };
    let mut single = Vec::new();
    println!(
        "\ncontention, interleaved: {rounds} rounds × {total} calls per variant and task count \
         (2 worker threads)"
    );
    println!(
        "{:<20} {:>6} {:>10} {:>24} {:>18} {:>12}",
        "variant",
        "tasks",
        "M calls/s",
        "÷ std_mutex (p25–p75)",
        "÷ std_mutex_expiry",
        "÷ at 1 task"
    );
    for tasks in TASK_COUNTS {
        let per_task = total / tasks as u64;
        let mut runners: Vec<common::Runner<'_>> = variants
            .iter()
            .map(|(name, variant)| {
                let rt = &rt;
                let run: Box<dyn FnMut(u64) -> Duration + '_> =
                    Box::new(move |n| measure(rt, variant, tasks, n));
                (*name, run)
            })
            .collect();
        let rows = common::interleave(rounds, per_task, &mut runners, 2);
        let expiry_ns = rows[3].median_ns;
        for (i, r) in rows.iter().enumerate() {
            // `median_ns` is per call of one task; all tasks together did `tasks` calls.
            let mcalls = tasks as f64 * 1e3 / r.median_ns;
            if tasks == 1 {
                single.push(mcalls);
            }
            println!(
                "{:<20} {:>6} {:>10.2} {:>11.3}× ({:.2}–{:.2}) {:>17.3}× {:>11.2}×",
                r.name,
                tasks,
                mcalls,
                1.0 / r.ratio,
                1.0 / r.ratio_p75,
                1.0 / r.ratio_p25,
                expiry_ns / r.median_ns,
                mcalls / single[i]
            );
        }
    }
    assert_eq!(
        sandbox.token_requests(),
        1,
        "the warm token served every call"
    );
}

criterion_group!(benches, contention);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    interleaved();
}
