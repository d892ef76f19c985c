//! Sliding time windows of latency samples: the governor's inputs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples of the last `span`, with exact percentiles. Sized for the
/// governor's few-second windows (hundreds of samples); the QoS evaluator's
/// long windows want a sketch instead.
#[derive(Debug)]
pub struct LatencyWindow {
    span: Duration,
    samples: VecDeque<(Instant, f64)>,
    /// Bounds memory whatever the token rate: oldest samples go first.
    capacity: usize,
}

impl LatencyWindow {
    pub fn new(span: Duration, capacity: usize) -> Self {
        Self {
            span,
            samples: VecDeque::new(),
            capacity,
        }
    }

    pub fn record(&mut self, at: Instant, value: f64) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((at, value));
    }

    /// The `q` quantile of samples newer than `now - span`; None when empty.
    pub fn quantile(&mut self, now: Instant, q: f64) -> Option<f64> {
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > self.span)
        {
            self.samples.pop_front();
        }
        if self.samples.is_empty() {
            return None;
        }
        let mut values: Vec<f64> = self.samples.iter().map(|&(_, value)| value).collect();
        values.sort_by(f64::total_cmp);
        let rank = (q.clamp(0.0, 1.0) * (values.len() - 1) as f64).round() as usize;
        Some(values[rank])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_cover_only_the_span() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(Duration::from_secs(4), 1000);
        for i in 0..100 {
            window.record(start, f64::from(i));
        }
        assert_eq!(window.quantile(start, 0.95), Some(94.0));
        let later = start + Duration::from_secs(5);
        window.record(later, 7.0);
        assert_eq!(
            window.quantile(later, 0.95),
            Some(7.0),
            "old samples aged out"
        );
        assert_eq!(window.quantile(later + Duration::from_secs(5), 0.95), None);
    }

    #[test]
    fn capacity_bounds_memory() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(Duration::from_secs(60), 10);
        for i in 0..100 {
            window.record(start, f64::from(i));
        }
        assert_eq!(window.samples.len(), 10);
        assert_eq!(window.quantile(start, 0.0), Some(90.0));
    }
}
