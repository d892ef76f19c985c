//! Runs the limit controller: every tick it reads the latency windows and the
//! admission queue, and sets the admission limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::governor::{Decision, Governor, Signals, StepSample};
use sluice_core::window::LatencyWindow;
use sluice_engine::EngineStats;
use tokio_util::sync::CancellationToken;

use crate::server::AppState;

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

/// The engine's step counters at one tick, to take the next tick's steps
/// from.
struct StepCounters {
    steps: u64,
    micros: u64,
    tokens: u64,
}

impl StepCounters {
    fn read(stats: &EngineStats) -> Self {
        Self {
            steps: stats.steps_total.load(Ordering::Acquire),
            micros: stats.step_micros_total.load(Ordering::Relaxed),
            tokens: stats.step_tokens_total.load(Ordering::Relaxed),
        }
    }

    /// The steps that ended between `self` and `later`; None if none did.
    fn since(&self, later: &Self) -> Option<StepSample> {
        let steps = later.steps.checked_sub(self.steps).filter(|&n| n > 0)?;
        let seconds = later.micros.saturating_sub(self.micros) as f64 / 1e6;
        (seconds > 0.0).then(|| StepSample {
            seconds: seconds / steps as f64,
            tokens_per_second: later.tokens.saturating_sub(self.tokens) as f64 / seconds,
        })
    }
}

/// Ticks the governor until `stop`: it sets the engine's step token budget
/// and, with the adaptive limit on, the admission limit. The admission limit
/// never exceeds the policy engine's bound (`AppState::limit_bound`); with
/// the adaptive limit off it is `max_streams` under that bound.
pub async fn run(
    mut governor: Governor,
    tick: Duration,
    state: Arc<AppState>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut counters = StepCounters::read(state.engine.stats());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            now = ticker.tick() => {
                let dt = now.duration_since(last).as_secs_f64();
                last = now;
                let windows = &state.latency;
                let (ttft_p95, itl_p95) = windows.p95s(Instant::now());
                let now_counters = StepCounters::read(state.engine.stats());
                let steps = counters.since(&now_counters);
                counters = now_counters;
                let admission = state.admission.snapshot();
                let signals = Signals {
                    ttft_p95,
                    itl_p95,
                    queue_depth: admission.queued,
                    awaiting_first_token: windows.awaiting_first_token.load(Ordering::Relaxed),
                    active: admission.active as usize,
                    steps,
                };
                let decision = governor.tick(&signals, dt);
                let limit = decision.limit.min(state.limit_bound.load(Ordering::Relaxed));
                if limit != state.admission.snapshot().limit {
                    state.admission.set_limit(limit);
                }
                state.engine.set_step_budget(decision.step_budget);
                state.metrics.governor.observe(&signals, &Decision { limit, ..decision });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_between_two_reads_give_their_mean_time_and_rate() {
        let first = StepCounters {
            steps: 10,
            micros: 5_000_000,
            tokens: 1_000,
        };
        assert_eq!(first.since(&first), None, "no step ended");
        let later = StepCounters {
            steps: 12,
            micros: 6_000_000,
            tokens: 1_250,
        };
        assert_eq!(
            first.since(&later),
            Some(StepSample {
                seconds: 0.5,
                tokens_per_second: 250.0,
            })
        );
    }
}
