//! The governor's input windows: recent TTFT (from admission), inter-token
//! gaps and the rate of first tokens, fed by every stream's observer and
//! read by the governor loop (`control::governor`) each tick.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::sync::lock;
use sluice_core::window::{EventRate, LatencyWindow};

/// Most samples a window keeps, whatever the token rate.
const WINDOW_CAPACITY: usize = 4096;

/// How far back first tokens count towards the engine's prompt rate: several
/// at a few per second, and a change of load shows within it.
const FIRST_TOKEN_SPAN: Duration = Duration::from_secs(20);

/// First tokens needed before their rate is trusted.
const MIN_FIRST_TOKENS: usize = 4;

/// Recent TTFT and inter-token gaps, fed by every stream.
pub struct LatencyWindows {
    ttft: Mutex<LatencyWindow>,
    itl: Mutex<LatencyWindow>,
    first_tokens: Mutex<EventRate>,
    /// Admitted streams that have not written their first token yet.
    awaiting_first_token: AtomicUsize,
}

/// Counts one admitted stream as awaiting its first token until dropped.
pub struct AwaitingFirstToken(Arc<LatencyWindows>);

impl Drop for AwaitingFirstToken {
    fn drop(&mut self) {
        self.0.awaiting_first_token.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LatencyWindows {
    pub fn new(span: Duration) -> Self {
        Self {
            ttft: Mutex::new(LatencyWindow::new(span, WINDOW_CAPACITY)),
            itl: Mutex::new(LatencyWindow::new(span, WINDOW_CAPACITY)),
            first_tokens: Mutex::new(EventRate::new(
                FIRST_TOKEN_SPAN,
                MIN_FIRST_TOKENS,
                WINDOW_CAPACITY,
            )),
            awaiting_first_token: AtomicUsize::new(0),
        }
    }

    pub fn await_first_token(self: &Arc<Self>) -> AwaitingFirstToken {
        self.awaiting_first_token.fetch_add(1, Ordering::Relaxed);
        AwaitingFirstToken(Arc::clone(self))
    }

    pub fn record_ttft(&self, at: Instant, seconds: f64) {
        lock(&self.ttft).record(at, seconds);
        lock(&self.first_tokens).record(at);
    }

    pub fn record_itl(&self, at: Instant, seconds: f64) {
        lock(&self.itl).record(at, seconds);
    }

    /// TTFT and inter-token p95 over the window ending `now`.
    pub fn p95s(&self, now: Instant) -> (Option<f64>, Option<f64>) {
        (
            lock(&self.ttft).quantile(now, 0.95),
            lock(&self.itl).quantile(now, 0.95),
        )
    }

    /// Prompts turned into first tokens per second lately; None until
    /// measured.
    pub fn first_tokens_per_second(&self, now: Instant) -> Option<f64> {
        lock(&self.first_tokens).per_second(now)
    }

    pub fn awaiting_first_token(&self) -> usize {
        self.awaiting_first_token.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_tokens_give_the_engines_prompt_rate() {
        let windows = LatencyWindows::new(Duration::from_secs(4));
        let start = Instant::now();
        for i in 0..4 {
            windows.record_ttft(start + Duration::from_millis(500 * i), 1.0);
        }
        let now = start + Duration::from_millis(1500);
        assert_eq!(windows.first_tokens_per_second(now), Some(2.0));
    }
}
