//! Helpers for the production-faithful hot-path bench (`benches/hot_path.rs`): hand-polled
//! calls and interleaved rounds (shared with the root package's benches, `benches/common`),
//! and one-thread vs two-thread runs.

use std::sync::Barrier;
use std::time::{Duration, Instant};

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

/// What `threads` OS threads calling in a tight loop achieved.
#[derive(Clone, Copy)]
pub struct Run {
    /// Calls per second of wall time, all threads together (from the common start to the
    /// last thread's end).
    pub per_second: f64,
    /// Calls per second of CPU time the threads got: unaffected by how much of the
    /// machine other processes take, it drops only when the threads slow each other down
    /// (a cache line moving between cores).
    pub per_cpu_second: f64,
}

/// The calling thread's CPU time.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// `threads` OS threads each calling its own closure from `make` `iters` times in a tight
/// loop, started together.
pub fn throughput(threads: usize, iters: u64, make: MakeCall<'_>) -> Run {
    let barrier = Barrier::new(threads + 1);
    let (elapsed, cpu) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut call = make();
                    call(); // this thread's first call, untimed
                    barrier.wait();
                    let (start, cpu) = (Instant::now(), cpu_time());
                    for _ in 0..iters {
                        call();
                    }
                    (start.elapsed(), cpu_time().saturating_sub(cpu))
                })
            })
            .collect();
        barrier.wait();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread"))
            .fold((Duration::ZERO, Duration::ZERO), |(e, c), (we, wc)| {
                (e.max(we), c + wc)
            })
    });
    let calls = (threads as u64 * iters) as f64;
    Run {
        per_second: calls / elapsed.as_secs_f64(),
        per_cpu_second: calls / cpu.as_secs_f64(),
    }
}

/// For each variant, alternately one thread and two threads calling it in a tight loop, in
/// `rounds` interleaved rounds; prints the median one-thread rate and the median, p25 and
/// p75 of the per-round ratios two threads ÷ one thread: of calls per second (what the
/// issue asks for; bounded by the cores other processes leave free) and of calls per CPU
/// second (1.0 = the threads do not slow each other down). Returns the median ratios.
pub fn scaling(
    title: &str,
    rounds: usize,
    iters: u64,
    variants: &[(&'static str, MakeCall<'_>)],
) -> Vec<f64> {
    let k = variants.len();
    let mut one = vec![Vec::with_capacity(rounds); k];
    let mut wall = vec![Vec::with_capacity(rounds); k];
    let mut cpu = vec![Vec::with_capacity(rounds); k];
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
            one[i].push(a.per_second);
            wall[i].push(b.per_second / a.per_second);
            cpu[i].push(b.per_cpu_second / a.per_cpu_second);
        }
    }
    println!("\n{title}: {rounds} rounds × {iters} calls per thread, interleaved");
    println!(
        "{:<26} {:>12} {:>22} {:>24}",
        "variant", "1 thread M/s", "2 ÷ 1 thr /s (p25–p75)", "2 ÷ 1 thr /CPU s (p25–p75)"
    );
    (0..k)
        .map(|i| {
            let w = sorted(wall[i].clone());
            let c = sorted(cpu[i].clone());
            let q = |v: &[f64]| (percentile(v, 0.5), percentile(v, 0.25), percentile(v, 0.75));
            let ((wm, w25, w75), (cm, c25, c75)) = (q(&w), q(&c));
            println!(
                "{:<26} {:>12.1} {:>8.2}× ({:.2}–{:.2}) {:>10.2}× ({:.2}–{:.2})",
                variants[i].0,
                percentile(&sorted(one[i].clone()), 0.5) / 1e6,
                wm,
                w25,
                w75,
                cm,
                c25,
                c75
            );
            wm
        })
        .collect()
}
