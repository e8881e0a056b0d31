//! Interleaved rounds: variants alternated round by round, compared per round.
//! (Shared with `benches/production` through `#[path]`.)

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
