//! Summaries of timed samples, as the benchmarks print them.

use std::time::Duration;

/// A duration in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, nearest-rank p99 and max of a sample, in milliseconds.
pub(crate) fn summary(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let n = samples.len();
    let p99_rank = (n * 99).div_ceil(100).clamp(1, n);
    (
        ms(samples[n / 2]),
        ms(samples[p99_rank - 1]),
        ms(samples[n - 1]),
    )
}
