//! The engine thread's step heartbeat, beside the request path: the engine
//! beats when it finishes a step and when it takes up work after idling;
//! health checks read whether an engine with work has stopped beating (a
//! kernel that never returns, a deadlock), which no status change reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Heartbeat {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last beat.
    last_beat_ms: AtomicU64,
    /// Whether the engine has work; an idle engine does not beat and is not
    /// stalled.
    busy: AtomicBool,
}

impl Heartbeat {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }

    pub(crate) fn beat(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_beat_ms.store(now, Ordering::Release);
    }

    /// The engine takes up work: the stall clock starts now, not at the
    /// last step before it idled.
    pub(crate) fn working(&self) {
        self.beat();
        self.busy.store(true, Ordering::Release);
    }

    pub(crate) fn idle(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// How long an engine with work has gone without a beat, if at least
    /// `timeout`.
    pub(crate) fn stalled_for(&self, timeout: Duration) -> Option<Duration> {
        if !self.busy.load(Ordering::Acquire) {
            return None;
        }
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Acquire));
        let silent = self.epoch.elapsed().saturating_sub(last);
        (silent >= timeout).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_engine_with_work_and_no_recent_beat_is_stalled() {
        let heartbeat = Heartbeat::new();
        assert_eq!(heartbeat.stalled_for(Duration::ZERO), None, "idle");
        heartbeat.working();
        assert!(heartbeat.stalled_for(Duration::ZERO).is_some());
        assert_eq!(heartbeat.stalled_for(Duration::from_secs(3600)), None);
        heartbeat.idle();
        assert_eq!(heartbeat.stalled_for(Duration::ZERO), None);
    }
}
