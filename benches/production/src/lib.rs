//! Helpers for the production-faithful hot-path bench (`benches/hot_path.rs`): hand-polled
//! calls and interleaved rounds (shared with the root package's benches, `benches/common`),
//! and one-thread vs two-thread runs.

use std::sync::Barrier;
use std::time::Instant;

#[path = "../../common/calls.rs"]
mod calls;
#[path = "../../common/rounds.rs"]
mod rounds;
pub use calls::*;
pub use rounds::*;

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Makes one thread's calling closure (each thread gets its own, e.g. its own service clone).
pub type MakeCall<'a> = &'a (dyn Fn() -> Box<dyn FnMut() + 'a> + Sync);

/// Calls per second of `threads` OS threads each calling its own closure from `make`
/// `iters` times in a tight loop, started together (timed from the common start to the last
/// thread's end).
pub fn throughput(threads: usize, iters: u64, make: MakeCall<'_>) -> f64 {
    let barrier = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut call = make();
                    call(); // this thread's first call, untimed
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        call();
                    }
                    start.elapsed()
                })
            })
            .collect();
        barrier.wait();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    });
    (threads as u64 * iters) as f64 / elapsed.as_secs_f64()
}

/// For each variant, alternately one thread and two threads calling it in a tight loop, in
/// `rounds` interleaved rounds; prints the median one-thread rate and the median, p25 and
/// p75 of the per-round ratio (two threads' rate ÷ one thread's). Returns the median ratios.
pub fn scaling(
    title: &str,
    rounds: usize,
    iters: u64,
    variants: &[(&'static str, MakeCall<'_>)],
) -> Vec<f64> {
    let k = variants.len();
    let mut one = vec![Vec::with_capacity(rounds); k];
    let mut ratio = vec![Vec::with_capacity(rounds); k];
    for round in 0..rounds {
        for j in 0..k {
            let i = (round + j) % k;
            let call = variants[i].1;
            let (a, b) = if round % 2 == 0 {
                let a = throughput(1, iters, call);
                (a, throughput(2, iters, call))
            } else {
                let b = throughput(2, iters, call);
                (throughput(1, iters, call), b)
            };
            one[i].push(a);
            ratio[i].push(b / a);
        }
    }
    println!("\n{title}: {rounds} rounds × {iters} calls per thread, interleaved");
    println!(
        "{:<26} {:>14} {:>16} {:>20}",
        "variant", "1 thread M/s", "2 thr ÷ 1 thr", "(p25 – p75)"
    );
    (0..k)
        .map(|i| {
            let r = sorted(ratio[i].clone());
            let m = percentile(&r, 0.5);
            println!(
                "{:<26} {:>14.1} {:>15.2}× {:>9.2} – {:<9.2}",
                variants[i].0,
                percentile(&sorted(one[i].clone()), 0.5) / 1e6,
                m,
                percentile(&r, 0.25),
                percentile(&r, 0.75)
            );
            m
        })
        .collect()
}
