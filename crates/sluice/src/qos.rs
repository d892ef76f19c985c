//! Every `qos.evaluation_interval_ms`: end the telemetry window, evaluate it
//! against the SLO targets, remember the knobs in force as known-good when
//! nothing broke, and let the policy engine act. Every action is logged
//! with its evidence, counted in `sluice:policy_actions_total` and listed on
//! `/admin/state`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_core::config::QosConfig;
use sluice_core::flags::FlagsConfig;
use sluice_core::policy::{Action, KnownGood, Outcome, PolicyEngine};
use tokio_util::sync::CancellationToken;

use crate::server::AppState;

/// Most past actions kept for `/admin/state`.
const ACTIONS_KEPT: usize = 64;

/// The run-time knobs a rollback restores.
#[derive(Debug, Clone, PartialEq)]
struct Knobs {
    flags: FlagsConfig,
    http2: bool,
    limit: u32,
}

/// One thing the policy engine did (or refused to do), with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    /// Seconds since the server started.
    pub at_seconds: f64,
    pub rule: String,
    pub action: String,
    pub evidence: String,
}

/// The policy engine's state as the admin API shows it.
#[derive(Default)]
pub struct PolicyLog {
    actions: Mutex<VecDeque<ActionRecord>>,
    breaker_open: std::sync::atomic::AtomicBool,
}

impl PolicyLog {
    pub fn recent(&self) -> Vec<ActionRecord> {
        lock(&self.actions).iter().cloned().collect()
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker_open.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn push(&self, record: ActionRecord) {
        let mut actions = lock(&self.actions);
        if actions.len() == ACTIONS_KEPT {
            actions.pop_front();
        }
        actions.push_back(record);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub async fn run(
    state: Arc<AppState>,
    config: QosConfig,
    min_limit: u32,
    max_limit: u32,
    stop: CancellationToken,
) {
    let interval = Duration::from_millis(config.evaluation_interval_ms.max(1));
    let started = Instant::now();
    let mut policy = PolicyEngine::new(config.policy.clone());
    let mut known_good = KnownGood::new();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut window_start = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let window = state
            .metrics
            .take_qos_window((now - window_start).as_secs_f64());
        window_start = now;
        let indicators = window.indicators();
        let breaches = config.slo.breaches(&indicators);
        for (indicator, value, target) in &breaches {
            tracing::warn!(?indicator, value, target, "SLO breached");
        }
        known_good.observe(&knobs(&state), !breaches.is_empty());
        for outcome in policy.evaluate(now, &indicators) {
            let at_seconds = (now - started).as_secs_f64();
            match outcome {
                Outcome::Act {
                    rule,
                    action,
                    indicator,
                    value,
                    threshold,
                } => {
                    let evidence = format!("{indicator:?} = {value:.3} vs threshold {threshold}");
                    let applied = apply(
                        &state,
                        &action,
                        known_good.last_good(),
                        min_limit,
                        max_limit,
                    );
                    tracing::warn!(%rule, action = action.name(), %evidence, %applied, "policy action");
                    state
                        .metrics
                        .policy_actions
                        .get_or_create(&vec![
                            ("action", action.name().to_owned()),
                            ("reason", rule.clone()),
                        ])
                        .inc();
                    state.policy_log.push(ActionRecord {
                        at_seconds,
                        rule,
                        action: action.name().to_owned(),
                        evidence: format!("{evidence}; {applied}"),
                    });
                }
                Outcome::Suppressed { rule, reason } => {
                    tracing::info!(%rule, ?reason, "policy action suppressed");
                }
                Outcome::BreakerOpened { rule, action } => {
                    tracing::error!(
                        %rule,
                        action = action.name(),
                        "policy breaker opened: actions kept undoing each other; alerting instead"
                    );
                    state.policy_log.push(ActionRecord {
                        at_seconds,
                        rule,
                        action: "breaker_opened".to_owned(),
                        evidence: format!("{} kept being undone", action.name()),
                    });
                }
            }
        }
        state
            .policy_log
            .breaker_open
            .store(policy.breaker_open(), std::sync::atomic::Ordering::Relaxed);
    }
}

fn knobs(state: &AppState) -> Knobs {
    Knobs {
        flags: (*state.flags.snapshot()).clone(),
        http2: state.protocol.http2_enabled(),
        limit: state.admission.snapshot().limit,
    }
}

/// Carries out an action; says what changed.
fn apply(
    state: &AppState,
    action: &Action,
    last_good: Option<&Knobs>,
    min_limit: u32,
    max_limit: u32,
) -> String {
    let limit = state.admission.snapshot().limit;
    match action {
        Action::TightenLimit { streams } => {
            let next = limit.saturating_sub(*streams).max(min_limit);
            state.admission.set_limit(next);
            format!("limit {limit} -> {next}")
        }
        Action::RelaxLimit { streams } => {
            let next = limit.saturating_add(*streams).min(max_limit);
            state.admission.set_limit(next);
            format!("limit {limit} -> {next}")
        }
        Action::DisableFlag { flag } => {
            let mut flags = (*state.flags.snapshot()).clone();
            match flags.get_mut(flag) {
                Some(setting) => {
                    setting.kill_switch = true;
                    state.flags.replace(flags);
                    format!("flag {flag} killed")
                }
                None => format!("no flag {flag}: nothing done"),
            }
        }
        Action::Http1Only => {
            state.protocol.set_http2(false);
            "new connections get HTTP/1.1".to_owned()
        }
        Action::Rollback => match last_good {
            Some(good) => {
                state.flags.replace(good.flags.clone());
                state.protocol.set_http2(good.http2);
                state.admission.set_limit(good.limit);
                format!(
                    "rolled back to the last known-good flags, http2 = {}, limit = {}",
                    good.http2, good.limit
                )
            }
            None => "no known-good config yet: nothing done".to_owned(),
        },
    }
}
