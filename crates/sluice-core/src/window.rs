//! Sliding time windows of latency samples and event times: the
//! governor's inputs.

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

/// Events per second over the last `span`: the events it holds over the
/// time since the oldest of them, so a burst that began three seconds ago
/// reads its own rate, not the span's average (a cold start would read a
/// tenth of what the engine does).
#[derive(Debug)]
pub struct EventRate {
    span: Duration,
    times: VecDeque<Instant>,
    /// Events needed before a rate is given.
    min_events: usize,
    /// Bounds memory whatever the event rate: oldest events go first.
    capacity: usize,
}

impl EventRate {
    pub fn new(span: Duration, min_events: usize, capacity: usize) -> Self {
        Self {
            span,
            times: VecDeque::new(),
            min_events: min_events.max(2),
            capacity,
        }
    }

    pub fn record(&mut self, at: Instant) {
        if self.times.len() == self.capacity {
            self.times.pop_front();
        }
        self.times.push_back(at);
    }

    /// The intervals between the events of the span over the time from
    /// the oldest to `now`; None with fewer than `min_events`.
    pub fn per_second(&mut self, now: Instant) -> Option<f64> {
        expire(&mut self.times, now, self.span);
        if self.times.len() < self.min_events {
            return None;
        }
        let oldest = *self.times.front()?;
        let covered = now.saturating_duration_since(oldest).as_secs_f64();
        (covered > 0.0).then(|| (self.times.len() - 1) as f64 / covered)
    }
}

/// Drops the times older than `window` from the front of `times`.
pub(crate) fn expire(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|&at| now.saturating_duration_since(at) > window)
    {
        times.pop_front();
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

    #[test]
    fn an_event_rate_reads_a_young_burst_at_its_own_pace() {
        let start = Instant::now();
        let mut rate = EventRate::new(Duration::from_secs(20), 4, 100);
        let at = |seconds: f64| start + Duration::from_secs_f64(seconds);
        for i in 0..3 {
            rate.record(at(f64::from(i) * 0.5));
        }
        assert_eq!(rate.per_second(at(1.0)), None, "three events");
        rate.record(at(1.5));
        // Four events half a second apart: 2 per second, not 4 / 20 s.
        assert_eq!(rate.per_second(at(1.5)), Some(2.0));
        // Silence lowers it: three intervals over 3 s.
        assert_eq!(rate.per_second(at(3.0)), Some(1.0));
        assert_eq!(rate.per_second(at(30.0)), None, "aged out");
    }
}
