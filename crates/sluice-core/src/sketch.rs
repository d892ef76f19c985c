//! A relative-error quantile sketch (DDSketch: Masson, Rim and Lee, VLDB
//! 2019) for latency telemetry: every quantile it reports is within
//! `relative_accuracy` of a value actually observed at that rank, whatever
//! the distribution's skew, in memory logarithmic in the value range.
//! Sketches of the same accuracy merge exactly, so per-tenant windows roll
//! up into global ones.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    gamma: f64,
    log_gamma: f64,
    /// Bucket index → count; bucket `i` holds values in `(γ^(i-1), γ^i]`.
    buckets: BTreeMap<i32, u64>,
    /// Values at or below `MIN_VALUE` (zero latencies).
    zeros: u64,
    count: u64,
    sum: f64,
}

/// Smaller values are counted as zero: a nanosecond is below any latency
/// Sluice measures in seconds.
const MIN_VALUE: f64 = 1e-9;

impl Sketch {
    /// `relative_accuracy` α in (0, 1): a reported quantile `q̂` of true
    /// value `q` satisfies `|q̂ − q| ≤ α q`.
    pub fn new(relative_accuracy: f64) -> Self {
        assert!(
            relative_accuracy > 0.0 && relative_accuracy < 1.0,
            "relative accuracy must be in (0, 1)"
        );
        let gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy);
        Self {
            gamma,
            log_gamma: gamma.ln(),
            buckets: BTreeMap::new(),
            zeros: 0,
            count: 0,
            sum: 0.0,
        }
    }

    pub fn record(&mut self, value: f64) {
        if !value.is_finite() || value < 0.0 {
            return;
        }
        self.count += 1;
        self.sum += value;
        if value <= MIN_VALUE {
            self.zeros += 1;
            return;
        }
        let index = (value.ln() / self.log_gamma).ceil() as i32;
        *self.buckets.entry(index).or_insert(0) += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The value at quantile `q` in [0, 1] (nearest rank), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).round() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (&index, &count) in &self.buckets {
            seen += count;
            if seen > rank {
                // The midpoint (in relative terms) of the bucket's range.
                return Some(2.0 * self.gamma.powi(index) / (self.gamma + 1.0));
            }
        }
        None
    }

    /// Adds another sketch of the same accuracy into this one.
    pub fn merge(&mut self, other: &Sketch) {
        assert!(
            (self.gamma - other.gamma).abs() < 1e-12,
            "sketches of different accuracy do not merge"
        );
        for (&index, &count) in &other.buckets {
            *self.buckets.entry(index).or_insert(0) += count;
        }
        self.zeros += other.zeros;
        self.count += other.count;
        self.sum += other.sum;
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64: a seeded generator, so the data is the same every run.
    struct SplitMix(u64);

    impl SplitMix {
        fn unit(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).round() as usize]
    }

    /// Log-normal and Pareto samples: long right tails, as TTFT under load.
    fn skewed(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix(seed);
        (0..n)
            .map(|i| {
                let u = rng.unit().max(1e-12);
                if i % 2 == 0 {
                    // Box-Muller normal → log-normal with σ = 1.5.
                    let v = rng.unit();
                    let normal = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                    (0.5 + 1.5 * normal).exp() * 1e-3
                } else {
                    // Pareto with α = 1.2.
                    0.05 / u.powf(1.0 / 1.2)
                }
            })
            .collect()
    }

    #[test]
    fn quantiles_on_skewed_data_are_within_the_relative_accuracy() {
        let values = skewed(50_000, 7);
        let mut sketch = Sketch::new(0.01);
        for &v in &values {
            sketch.record(v);
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let exact = exact_quantile(&sorted, q);
            let estimate = sketch.quantile(q).unwrap();
            assert!(
                (estimate - exact).abs() <= 0.01 * exact + 1e-12,
                "q{q}: sketch {estimate} vs exact {exact}"
            );
        }
        assert!(
            sketch.bucket_count() < 3000,
            "memory grows with the log of the range, not the count"
        );
    }

    #[test]
    fn merged_sketches_equal_one_sketch_of_everything() {
        let values = skewed(10_000, 11);
        let mut whole = Sketch::new(0.02);
        let mut left = Sketch::new(0.02);
        let mut right = Sketch::new(0.02);
        for (i, &v) in values.iter().enumerate() {
            whole.record(v);
            if i % 3 == 0 {
                left.record(v);
            } else {
                right.record(v);
            }
        }
        left.merge(&right);
        assert_eq!(left.count(), whole.count());
        for q in [0.5, 0.95, 0.99] {
            assert_eq!(left.quantile(q), whole.quantile(q));
        }
    }

    #[test]
    fn empty_zero_and_invalid_values() {
        let mut sketch = Sketch::new(0.01);
        assert_eq!(sketch.quantile(0.5), None);
        sketch.record(0.0);
        sketch.record(f64::NAN);
        sketch.record(-1.0);
        assert_eq!(sketch.count(), 1);
        assert_eq!(sketch.quantile(0.99), Some(0.0));
    }
}
