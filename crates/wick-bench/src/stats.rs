//! Order statistics over latency samples: mean and the p50/p90/p95/p99 percentiles that
//! every report prints, plus empirical CDF points for plots.
//!
//! Percentiles use linear interpolation between closest ranks (numpy's default), so a
//! report agrees with what a user computes from the `--json` samples themselves.
//! Non-finite samples are dropped, never propagated into a summary.

use serde::Serialize;

/// Mean and percentiles of one metric; all `None`-free: an empty sample gives zeros and
/// `count == 0`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Distribution {
    /// Number of samples.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest sample.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

impl Distribution {
    /// Summarises `samples` (any order; non-finite values are ignored).
    pub fn from_samples(samples: &[f64]) -> Self {
        let sorted = sorted_finite(samples);
        if sorted.is_empty() {
            return Self::default();
        }
        let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
        Self {
            count: sorted.len(),
            mean,
            min: sorted[0],
            p50: percentile_sorted(&sorted, 50.0),
            p90: percentile_sorted(&sorted, 90.0),
            p95: percentile_sorted(&sorted, 95.0),
            p99: percentile_sorted(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
        }
    }
}

/// Finite samples in ascending order.
pub fn sorted_finite(samples: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `p`-th percentile (0..=100) of an ascending slice, interpolating linearly between
/// closest ranks. Returns 0 for an empty slice.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// Points `(value, fraction <= value)` of the empirical CDF, thinned to at most
/// `max_points` so plots of 5,000 requests stay small.
pub fn cdf_points(samples: &[f64], max_points: usize) -> Vec<(f64, f64)> {
    let sorted = sorted_finite(samples);
    let n = sorted.len();
    if n == 0 || max_points == 0 {
        return Vec::new();
    }
    let step = n.div_ceil(max_points).max(1);
    let mut out: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (sorted[i], (i + 1) as f64 / n as f64))
        .collect();
    if out.last().map(|p| p.1) != Some(1.0) {
        out.push((sorted[n - 1], 1.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_hundred_interpolate_like_numpy() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let d = Distribution::from_samples(&samples);
        assert_eq!(d.count, 100);
        assert!((d.mean - 50.5).abs() < 1e-9);
        // numpy.percentile(range(1, 101), [50, 90, 95, 99]) = 50.5, 90.1, 95.05, 99.01
        assert!((d.p50 - 50.5).abs() < 1e-9);
        assert!((d.p90 - 90.1).abs() < 1e-9);
        assert!((d.p95 - 95.05).abs() < 1e-9);
        assert!((d.p99 - 99.01).abs() < 1e-9);
        assert_eq!((d.min, d.max), (1.0, 100.0));
    }

    #[test]
    fn empty_and_single_and_non_finite_samples() {
        assert_eq!(Distribution::from_samples(&[]), Distribution::default());
        let d = Distribution::from_samples(&[7.0, f64::NAN, f64::INFINITY]);
        assert_eq!(d.count, 1);
        assert_eq!((d.p50, d.p99, d.mean), (7.0, 7.0, 7.0));
    }

    #[test]
    fn cdf_is_monotone_ends_at_one_and_is_thinned() {
        let samples: Vec<f64> = (0..1000).map(|i| f64::from(i % 97)).collect();
        let pts = cdf_points(&samples, 50);
        assert!(pts.len() <= 51);
        assert_eq!(pts.last().map(|p| p.1), Some(1.0));
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        assert!(cdf_points(&[], 10).is_empty());
    }
}
