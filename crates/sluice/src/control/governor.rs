//! The governor loop: every tick it reads the latency windows, the
//! admission queue and the engine's step counters, asks the controller
//! (`sluice_core::governor`) for a step budget and an admission limit, and
//! sets them; and it tells admission the time an admitted stream now takes
//! to its first token, which deadline shedding adds to the queue wait.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_core::admission::Admission;
use sluice_core::governor::{Decision, Governor, Signals, StepSample};
use sluice_engine::{EngineHandle, EngineStats};
use tokio_util::sync::CancellationToken;

use super::knobs::RuntimeKnobs;
use crate::telemetry::{LatencyWindows, Metrics};

/// What the governor loop reads and sets.
pub struct GovernorLoop {
    pub engine: EngineHandle,
    pub admission: Arc<Admission>,
    pub latency: Arc<LatencyWindows>,
    pub knobs: Arc<RuntimeKnobs>,
    pub metrics: Arc<Metrics>,
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
/// never exceeds the policy engine's bound (`RuntimeKnobs::limit_bound`);
/// with the adaptive limit off it is `max_streams` under that bound.
pub async fn run(
    mut governor: Governor,
    tick: Duration,
    io: GovernorLoop,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    let mut counters = StepCounters::read(io.engine.stats());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            now = ticker.tick() => {
                let dt = now.duration_since(last).as_secs_f64();
                last = now;
                let wall = Instant::now();
                let (ttft_p95, itl_p95) = io.latency.p95s(wall);
                if let Some(service) = ttft_p95 {
                    // The p95, not the median: the SLO is on the p95 and a
                    // shed request costs less than a late one.
                    io.admission.set_service_time(Duration::from_secs_f64(service));
                }
                let now_counters = StepCounters::read(io.engine.stats());
                let steps = counters.since(&now_counters);
                counters = now_counters;
                let admission = io.admission.snapshot();
                let signals = Signals {
                    ttft_p95,
                    itl_p95,
                    queue_depth: admission.queued,
                    awaiting_first_token: io.latency.awaiting_first_token(),
                    active: admission.active as usize,
                    first_tokens_per_second: io.latency.first_tokens_per_second(wall),
                    steps,
                };
                let decision = governor.tick(&signals, dt);
                let limit = decision.limit.min(io.knobs.limit_bound());
                if limit != io.admission.snapshot().limit {
                    io.admission.set_limit(limit);
                }
                io.engine.set_step_budget(decision.step_budget);
                io.metrics.governor.observe(&signals, &Decision { limit, ..decision });
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
