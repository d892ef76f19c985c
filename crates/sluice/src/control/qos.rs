//! Every `qos.evaluation_interval_ms`: end the telemetry window, evaluate it
//! against the SLO targets (globally and per tenant) and each flag's canary
//! against its baseline, remember the knobs in force as known-good when
//! nothing broke, and let the policy engine act. Every action is logged
//! with its evidence, counted in `sluice:policy_actions_total` and listed on
//! `/admin/state`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_core::config::QosConfig;
use sluice_core::policy::{Action, Indicator, KnownGood, Outcome, PolicyEngine, Scope};
use sluice_core::sync::lock;
use tokio_util::sync::CancellationToken;

use super::alerts::{Alert, Alerter, Evidence};
use super::knobs::{KnobValues, RuntimeKnobs};
use crate::telemetry::Metrics;

/// Most past actions kept for `/admin/state`.
const ACTIONS_KEPT: usize = 64;

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
    breaker_open: AtomicBool,
}

impl PolicyLog {
    pub fn recent(&self) -> Vec<ActionRecord> {
        lock(&self.actions).iter().cloned().collect()
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker_open.load(Ordering::Relaxed)
    }

    fn push(&self, record: ActionRecord) {
        let mut actions = lock(&self.actions);
        if actions.len() == ACTIONS_KEPT {
            actions.pop_front();
        }
        actions.push_back(record);
    }
}

/// What the QoS loop reads and acts on.
pub struct QosLoop {
    pub metrics: Arc<Metrics>,
    pub alerter: Alerter,
    pub log: Arc<PolicyLog>,
    pub knobs: Arc<RuntimeKnobs>,
}

/// Runs the QoS loop until `stop`.
pub async fn run(io: QosLoop, config: QosConfig, stop: CancellationToken) {
    let interval = Duration::from_millis(config.evaluation_interval_ms.max(1));
    let started = Instant::now();
    let mut policy = PolicyEngine::new(config.policy.clone());
    let mut known_good = KnownGood::new();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut window_start = Instant::now();
    let mut knobs_at_start = io.knobs.values();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let window = io
            .metrics
            .take_qos_window((now - window_start).as_secs_f64());
        window_start = now;
        let window_seconds = window.global.seconds;
        let indicators = window.indicators(config.canary_min_samples);
        let breaches = config.breaches(&indicators);
        for breach in &breaches {
            tracing::warn!(
                scope = %breach.scope,
                indicator = ?breach.indicator,
                value = breach.value,
                target = breach.target,
                "SLO breached"
            );
            io.alerter.notify(Alert::slo_breach(evidence(
                &breach.scope,
                breach.indicator,
                breach.value,
                breach.target,
                window_seconds,
            )));
        }
        known_good.observe(&knobs_at_start, &io.knobs.values(), !breaches.is_empty());
        let at_seconds = (now - started).as_secs_f64();
        for outcome in policy.evaluate(now, &indicators) {
            io.handle(outcome, at_seconds, window_seconds, known_good.last_good());
        }
        knobs_at_start = io.knobs.values();
        io.log
            .breaker_open
            .store(policy.breaker_open(), Ordering::Relaxed);
    }
}

impl QosLoop {
    /// Carries out, logs, counts and alerts one policy outcome.
    fn handle(
        &self,
        outcome: Outcome,
        at_seconds: f64,
        window_seconds: f64,
        last_good: Option<&KnobValues>,
    ) {
        match outcome {
            Outcome::Act {
                rule,
                action,
                scope,
                indicator,
                value,
                threshold,
            } => {
                let summary =
                    format!("{indicator:?} = {value:.3} vs threshold {threshold} ({scope})");
                let applied = apply(&self.knobs, &action, last_good);
                tracing::warn!(%rule, action = action.name(), evidence = %summary, %applied, "policy action");
                self.alerter.notify(Alert::policy_action(
                    &rule,
                    action.name(),
                    &applied,
                    evidence(&scope, indicator, value, threshold, window_seconds),
                ));
                self.metrics
                    .policy_actions
                    .get_or_create(&vec![
                        ("action", action.name().to_owned()),
                        ("reason", rule.clone()),
                    ])
                    .inc();
                self.log.push(ActionRecord {
                    at_seconds,
                    rule,
                    action: action.name().to_owned(),
                    evidence: format!("{summary}; {applied}"),
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
                self.alerter
                    .notify(Alert::breaker_open(&rule, action.name()));
                self.log.push(ActionRecord {
                    at_seconds,
                    rule,
                    action: "breaker_opened".to_owned(),
                    evidence: format!("{} kept being undone", action.name()),
                });
            }
        }
    }
}

/// An alert's evidence for an indicator of any scope.
fn evidence(
    scope: &Scope,
    indicator: Indicator,
    value: f64,
    threshold: f64,
    window_seconds: f64,
) -> Evidence {
    Evidence {
        scope: scope.to_string(),
        ..Evidence::global(indicator, value, threshold, window_seconds)
    }
}

/// Carries out an action; says what changed.
fn apply(knobs: &RuntimeKnobs, action: &Action, last_good: Option<&KnobValues>) -> String {
    match action {
        Action::TightenLimit { streams } => {
            let (before, after) = knobs.move_limit_bound(-i64::from(*streams));
            format!("limit bound {before} -> {after}")
        }
        Action::RelaxLimit { streams } => {
            let (before, after) = knobs.move_limit_bound(i64::from(*streams));
            format!("limit bound {before} -> {after}")
        }
        Action::DisableFlag { flag } => {
            if knobs.kill_flag(flag) {
                format!("flag {flag} killed")
            } else {
                format!("no flag {flag}: nothing done")
            }
        }
        Action::Http1Only => {
            knobs.set_http2(false);
            "new connections get HTTP/1.1".to_owned()
        }
        Action::ThrottleTenant {
            tenant,
            max_concurrent,
        } => {
            let (before, after) = knobs.throttle_tenant(tenant, *max_concurrent);
            format!(
                "tenant {tenant} max_concurrent {} -> {after}",
                cap_text(before)
            )
        }
        Action::Rollback => match last_good {
            Some(good) => {
                knobs.restore(good);
                let caps: Vec<String> = good
                    .tenant_caps
                    .iter()
                    .map(|(tenant, cap)| format!("{tenant} {}", cap_text(*cap)))
                    .collect();
                format!(
                    "rolled back to the last known-good flags, http2 = {}, limit bound = {}, \
                     tenant caps [{}]",
                    good.http2,
                    good.limit_bound,
                    caps.join(", ")
                )
            }
            None => "no known-good config yet: nothing done".to_owned(),
        },
    }
}

fn cap_text(cap: u32) -> String {
    if cap == u32::MAX {
        "unlimited".to_owned()
    } else {
        cap.to_string()
    }
}
