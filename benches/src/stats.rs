//! Percentiles and time buckets.

use std::time::Duration;

/// The median of `values` (sorted in place); 0 for none.
///
/// ```
/// assert_eq!(steadypool_benches::stats::median(&mut [3.0, 1.0, 2.0]), 2.0);
/// ```
pub fn median(values: &mut [f64]) -> f64 {
    percentile(values, 0.5)
}

/// The `q` quantile (0 to 1) of `values` (sorted in place), nearest rank; 0 for none.
///
/// ```
/// let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
/// assert_eq!(steadypool_benches::stats::percentile(&mut v, 0.99), 99.0);
/// ```
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Counts `instants` (offsets from one origin) per `width` bucket over `[0, until)`.
///
/// ```
/// use std::time::Duration;
/// let ms = Duration::from_millis;
/// let counts = steadypool_benches::stats::buckets(&[ms(10), ms(20), ms(150)], ms(100), ms(300));
/// assert_eq!(counts, vec![2, 1, 0]);
/// ```
pub fn buckets(instants: &[Duration], width: Duration, until: Duration) -> Vec<u64> {
    let n = (until.as_secs_f64() / width.as_secs_f64()).ceil() as usize;
    let mut counts = vec![0u64; n];
    for at in instants {
        let i = (at.as_secs_f64() / width.as_secs_f64()) as usize;
        if let Some(count) = counts.get_mut(i) {
            *count += 1;
        }
    }
    counts
}
