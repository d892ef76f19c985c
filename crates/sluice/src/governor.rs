//! Runs the limit controller: every tick it reads the latency windows and the
//! admission queue, and sets the admission limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::admission::Admission;
use sluice_core::governor::{GovernorConfig, LimitController, Signals};
use sluice_core::window::LatencyWindow;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Most samples a window keeps, whatever the token rate.
const WINDOW_CAPACITY: usize = 4096;

/// Recent TTFT and inter-token gaps, fed by every stream.
pub struct LatencyWindows {
    ttft: Mutex<LatencyWindow>,
    itl: Mutex<LatencyWindow>,
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
            awaiting_first_token: AtomicUsize::new(0),
        }
    }

    pub fn await_first_token(self: &Arc<Self>) -> AwaitingFirstToken {
        self.awaiting_first_token.fetch_add(1, Ordering::Relaxed);
        AwaitingFirstToken(Arc::clone(self))
    }

    pub fn record_ttft(&self, at: Instant, seconds: f64) {
        lock(&self.ttft).record(at, seconds);
    }

    pub fn record_itl(&self, at: Instant, seconds: f64) {
        lock(&self.itl).record(at, seconds);
    }

    fn p95s(&self, now: Instant) -> (Option<f64>, Option<f64>) {
        (
            lock(&self.ttft).quantile(now, 0.95),
            lock(&self.itl).quantile(now, 0.95),
        )
    }
}

fn lock(window: &Mutex<LatencyWindow>) -> std::sync::MutexGuard<'_, LatencyWindow> {
    window
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ticks the controller until `stop`; with the governor disabled the limit
/// stays at `max_streams`.
pub async fn run(
    config: GovernorConfig,
    admission: Arc<Admission>,
    windows: Arc<LatencyWindows>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    admission.set_limit(config.max_streams);
    metrics.governor.limit.set(i64::from(config.max_streams));
    if !config.enabled {
        return;
    }
    let tick = Duration::from_millis(config.tick_ms);
    let mut controller = LimitController::new(config);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            now = ticker.tick() => {
                let dt = now.duration_since(last).as_secs_f64();
                last = now;
                let (ttft_p95, itl_p95) = windows.p95s(Instant::now());
                let signals = Signals {
                    ttft_p95,
                    itl_p95,
                    queue_depth: admission.snapshot().queued,
                    awaiting_first_token: windows.awaiting_first_token.load(Ordering::Relaxed),
                };
                let decision = controller.tick(&signals, dt);
                admission.set_limit(decision.limit);
                metrics.governor.observe(&signals, &decision);
            }
        }
    }
}
