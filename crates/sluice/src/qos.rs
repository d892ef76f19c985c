//! Every `qos.evaluation_interval_ms`: end the telemetry window, evaluate it
//! against the SLO targets (globally and per tenant) and each flag's canary
//! against its baseline, remember the knobs in force as known-good when
//! nothing broke, and let the policy engine act. Every action is logged
//! with its evidence, counted in `sluice:policy_actions_total` and listed on
//! `/admin/state`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_core::config::QosConfig;
use sluice_core::flags::FlagsConfig;
use sluice_core::policy::{Action, Indicator, KnownGood, Outcome, PolicyEngine, Scope};
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, Evidence};
use crate::server::AppState;

/// Most past actions kept for `/admin/state`.
const ACTIONS_KEPT: usize = 64;

/// The run-time knobs a rollback restores.
#[derive(Debug, Clone, PartialEq)]
struct Knobs {
    flags: FlagsConfig,
    http2: bool,
    limit: u32,
    /// Each tenant's concurrency cap (`throttle_tenant` lowers them).
    tenant_caps: BTreeMap<String, u32>,
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
    let mut knobs_at_start = knobs(&state);
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
            state.alerter.notify(Alert::slo_breach(evidence(
                &breach.scope,
                breach.indicator,
                breach.value,
                breach.target,
                window_seconds,
            )));
        }
        let knobs_at_end = knobs(&state);
        known_good.observe(&knobs_at_start, &knobs_at_end, !breaches.is_empty());
        for outcome in policy.evaluate(now, &indicators) {
            let at_seconds = (now - started).as_secs_f64();
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
                    let applied = apply(
                        &state,
                        &action,
                        known_good.last_good(),
                        min_limit,
                        max_limit,
                    );
                    tracing::warn!(%rule, action = action.name(), evidence = %summary, %applied, "policy action");
                    state.alerter.notify(Alert::policy_action(
                        &rule,
                        action.name(),
                        &applied,
                        evidence(&scope, indicator, value, threshold, window_seconds),
                    ));
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
                    state
                        .alerter
                        .notify(Alert::breaker_open(&rule, action.name()));
                    state.policy_log.push(ActionRecord {
                        at_seconds,
                        rule,
                        action: "breaker_opened".to_owned(),
                        evidence: format!("{} kept being undone", action.name()),
                    });
                }
            }
        }
        knobs_at_start = knobs(&state);
        state
            .policy_log
            .breaker_open
            .store(policy.breaker_open(), Ordering::Relaxed);
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

fn knobs(state: &AppState) -> Knobs {
    Knobs {
        flags: (*state.flags.snapshot()).clone(),
        http2: state.protocol.http2_enabled(),
        limit: state.limit_bound.load(Ordering::Relaxed),
        tenant_caps: state.admission.tenant_caps(),
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
    // The policy moves the bound; the governor brings the admission limit
    // under it at its next tick.
    let limit = state.limit_bound.load(Ordering::Relaxed);
    match action {
        Action::TightenLimit { streams } => {
            let next = limit.saturating_sub(*streams).max(min_limit);
            state.limit_bound.store(next, Ordering::Relaxed);
            format!("limit bound {limit} -> {next}")
        }
        Action::RelaxLimit { streams } => {
            let next = limit.saturating_add(*streams).min(max_limit);
            state.limit_bound.store(next, Ordering::Relaxed);
            format!("limit bound {limit} -> {next}")
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
        Action::ThrottleTenant {
            tenant,
            max_concurrent,
        } => {
            let current = state
                .admission
                .tenant_caps()
                .get(tenant)
                .copied()
                .unwrap_or(u32::MAX);
            // Throttling never loosens a tighter cap already in force.
            let next = current.min(*max_concurrent);
            state.admission.set_tenant_cap(tenant, next);
            format!(
                "tenant {tenant} max_concurrent {} -> {next}",
                cap_text(current)
            )
        }
        Action::Rollback => match last_good {
            Some(good) => {
                state.flags.replace(good.flags.clone());
                state.protocol.set_http2(good.http2);
                state.limit_bound.store(good.limit, Ordering::Relaxed);
                state.admission.set_tenant_caps(&good.tenant_caps);
                let caps: Vec<String> = good
                    .tenant_caps
                    .iter()
                    .map(|(tenant, cap)| format!("{tenant} {}", cap_text(*cap)))
                    .collect();
                format!(
                    "rolled back to the last known-good flags, http2 = {}, limit bound = {}, \
                     tenant caps [{}]",
                    good.http2,
                    good.limit,
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
