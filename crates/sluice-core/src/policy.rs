//! The QoS policy engine's decision core: service-level indicators measured
//! over a window, declarative rules ("indicator above/below threshold for N
//! windows → action"), and the guards that keep automation from making
//! things worse: per-rule cooldowns, an action budget per period, and a
//! breaker that opens when actions keep undoing each other. Pure: callers
//! pass the time, so tests run on a scripted clock.
//!
//! Indicators have a [`Scope`]: the whole server, one tenant, or one feature
//! flag in partial rollout, whose canary cohort is compared with its
//! baseline.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::flags::Cohort;
use crate::sketch::Sketch;

/// What the SLO evaluator measures each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    TtftP50Seconds,
    TtftP95Seconds,
    ItlP95Seconds,
    /// Failed requests over requests.
    ErrorRate,
    /// Streams the server ended (engine error, stall, shutdown) over
    /// requests; client disconnects and slow readers do not count.
    InfraCancelRate,
    RejectionRate,
    OutputTokensPerSecond,
    /// How much slower a flag's canary cohort gets its first token than its
    /// baseline: `(canary TTFT p95 − baseline TTFT p95) / baseline TTFT
    /// p95`, positive when the canary is slower. Flag scope only.
    CanaryTtftRegression,
    /// The same for the inter-token gap p95.
    CanaryItlRegression,
}

impl Indicator {
    /// Whether the indicator compares a flag's cohorts (flag scope) rather
    /// than measuring traffic (global or tenant scope).
    pub fn compares_cohorts(self) -> bool {
        matches!(
            self,
            Indicator::CanaryTtftRegression | Indicator::CanaryItlRegression
        )
    }
}

/// What an indicator, a rule or a breach is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// All traffic.
    #[default]
    Global,
    /// One tenant's traffic.
    Tenant(String),
    /// One feature flag's canary cohort against its baseline.
    Flag(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Tenant(name) => write!(f, "tenant:{name}"),
            Scope::Flag(name) => write!(f, "flag:{name}"),
        }
    }
}

/// One evaluation window's raw material.
#[derive(Debug, Clone)]
pub struct Window {
    pub ttft: Sketch,
    pub itl: Sketch,
    pub requests: u64,
    pub errors: u64,
    pub infra_cancellations: u64,
    pub rejections: u64,
    pub output_tokens: u64,
    pub seconds: f64,
}

impl Window {
    pub fn new() -> Self {
        Self {
            ttft: Sketch::new(0.01),
            itl: Sketch::new(0.01),
            requests: 0,
            errors: 0,
            infra_cancellations: 0,
            rejections: 0,
            output_tokens: 0,
            seconds: 0.0,
        }
    }

    /// The indicators this window supports: latency needs samples, rates
    /// need requests.
    pub fn indicators(&self) -> HashMap<Indicator, f64> {
        let mut out = HashMap::new();
        let rate = |n: u64, of: u64| (of > 0).then(|| n as f64 / of as f64);
        let offered = self.requests + self.rejections;
        let values = [
            (Indicator::TtftP50Seconds, self.ttft.quantile(0.5)),
            (Indicator::TtftP95Seconds, self.ttft.quantile(0.95)),
            (Indicator::ItlP95Seconds, self.itl.quantile(0.95)),
            (Indicator::ErrorRate, rate(self.errors, self.requests)),
            (
                Indicator::InfraCancelRate,
                rate(self.infra_cancellations, self.requests),
            ),
            (Indicator::RejectionRate, rate(self.rejections, offered)),
            (
                Indicator::OutputTokensPerSecond,
                (self.seconds > 0.0).then(|| self.output_tokens as f64 / self.seconds),
            ),
        ];
        for (indicator, value) in values {
            if let Some(value) = value {
                out.insert(indicator, value);
            }
        }
        out
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

/// One cohort's latencies over a window.
#[derive(Debug, Clone)]
pub struct Latencies {
    pub ttft: Sketch,
    pub itl: Sketch,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            ttft: Sketch::new(0.01),
            itl: Sketch::new(0.01),
        }
    }
}

/// A flag's canary and baseline cohorts over one window.
#[derive(Debug, Clone, Default)]
pub struct CohortWindows {
    pub canary: Latencies,
    pub baseline: Latencies,
}

impl CohortWindows {
    pub fn cohort_mut(&mut self, cohort: Cohort) -> &mut Latencies {
        match cohort {
            Cohort::Canary => &mut self.canary,
            Cohort::Baseline => &mut self.baseline,
        }
    }

    /// The canary's regressions against the baseline, each only when both
    /// cohorts have at least `min_samples` samples: a handful of requests
    /// says nothing about a p95.
    pub fn indicators(&self, min_samples: u64) -> HashMap<Indicator, f64> {
        let regression = |canary: &Sketch, baseline: &Sketch| {
            if canary.count() < min_samples || baseline.count() < min_samples {
                return None;
            }
            let baseline = baseline.quantile(0.95).filter(|p95| *p95 > 0.0)?;
            Some(canary.quantile(0.95)? / baseline - 1.0)
        };
        [
            (
                Indicator::CanaryTtftRegression,
                regression(&self.canary.ttft, &self.baseline.ttft),
            ),
            (
                Indicator::CanaryItlRegression,
                regression(&self.canary.itl, &self.baseline.itl),
            ),
        ]
        .into_iter()
        .filter_map(|(indicator, value)| Some((indicator, value?)))
        .collect()
    }
}

/// One evaluation window at every scope.
#[derive(Debug, Clone, Default)]
pub struct ScopedWindows {
    pub global: Window,
    pub tenants: Vec<(String, Window)>,
    /// Flags in partial rollout, with their cohorts.
    pub flags: Vec<(String, CohortWindows)>,
}

impl ScopedWindows {
    /// Every scope's indicators; a scope without evidence is left out.
    pub fn indicators(&self, canary_min_samples: u64) -> Indicators {
        let mut out = Indicators::global(self.global.indicators());
        for (tenant, window) in &self.tenants {
            out.insert(Scope::Tenant(tenant.clone()), window.indicators());
        }
        for (flag, cohorts) in &self.flags {
            out.insert(
                Scope::Flag(flag.clone()),
                cohorts.indicators(canary_min_samples),
            );
        }
        out
    }
}

/// One window's indicator values, by scope.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Indicators {
    by_scope: BTreeMap<Scope, HashMap<Indicator, f64>>,
}

impl Indicators {
    /// Only global values.
    pub fn global(values: HashMap<Indicator, f64>) -> Self {
        let mut out = Self::default();
        out.insert(Scope::Global, values);
        out
    }

    /// Sets a scope's values; an empty set (no evidence) is not kept.
    pub fn insert(&mut self, scope: Scope, values: HashMap<Indicator, f64>) {
        if values.is_empty() {
            self.by_scope.remove(&scope);
        } else {
            self.by_scope.insert(scope, values);
        }
    }

    pub fn get(&self, scope: &Scope, indicator: Indicator) -> Option<f64> {
        self.by_scope.get(scope)?.get(&indicator).copied()
    }

    /// Every scope with values, global first.
    pub fn scopes(&self) -> impl Iterator<Item = (&Scope, &HashMap<Indicator, f64>)> {
        self.by_scope.iter()
    }
}

/// An indicator over its SLO target (or a canary over its margin).
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub scope: Scope,
    pub indicator: Indicator,
    pub value: f64,
    pub target: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    Above,
    Below,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Lower the governor's ceiling by `streams`.
    TightenLimit { streams: u32 },
    /// Raise it by `streams` (up to the configured baseline).
    RelaxLimit { streams: u32 },
    /// Switch a feature flag off for everyone (kill switch).
    DisableFlag { flag: String },
    /// Offer new connections HTTP/1.1 only.
    Http1Only,
    /// Restore the last config under which no SLO was breached.
    Rollback,
    /// Cap a tenant's concurrent streams at `max_concurrent` (never raises
    /// a lower cap); admission applies it to the tenant's next requests.
    ThrottleTenant { tenant: String, max_concurrent: u32 },
}

impl Action {
    /// Whether `self` undoes `other` (a loop when it keeps happening).
    fn undoes(&self, other: &Action) -> bool {
        matches!(
            (self, other),
            (Action::TightenLimit { .. }, Action::RelaxLimit { .. })
                | (Action::RelaxLimit { .. }, Action::TightenLimit { .. })
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Action::TightenLimit { .. } => "tighten_limit",
            Action::RelaxLimit { .. } => "relax_limit",
            Action::DisableFlag { .. } => "disable_flag",
            Action::Http1Only => "http1_only",
            Action::Rollback => "rollback",
            Action::ThrottleTenant { .. } => "throttle_tenant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub indicator: Indicator,
    /// Whose indicator: global (the default), a tenant's, or a flag's
    /// canary comparison (the canary indicators need a flag).
    #[serde(default)]
    pub scope: Scope,
    pub comparison: Comparison,
    pub threshold: f64,
    /// Consecutive windows the condition must hold before the action.
    #[serde(default = "one")]
    pub sustained_windows: u32,
    pub action: Action,
    /// After firing, the rule waits this long before it may fire again.
    #[serde(default)]
    pub cooldown_ms: u64,
}

fn one() -> u32 {
    1
}

impl Rule {
    fn holds(&self, value: f64) -> bool {
        match self.comparison {
            Comparison::Above => value > self.threshold,
            Comparison::Below => value < self.threshold,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    pub rules: Vec<Rule>,
    /// Most actions in any `budget_period_ms`; more are suppressed.
    pub max_actions_per_period: u32,
    pub budget_period_ms: u64,
    /// An action undone this many times within the period opens the
    /// breaker: no more actions, an alert instead, until the period passes.
    pub loop_threshold: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            max_actions_per_period: 6,
            budget_period_ms: 10 * 60 * 1000,
            loop_threshold: 3,
        }
    }
}

/// Why a rule whose condition held did not act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppression {
    Cooldown,
    Budget,
    BreakerOpen,
}

/// What one evaluation decided, with the evidence.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Act {
        rule: String,
        action: Action,
        scope: Scope,
        indicator: Indicator,
        value: f64,
        threshold: f64,
    },
    Suppressed {
        rule: String,
        reason: Suppression,
    },
    /// Actions kept undoing each other: the breaker opened.
    BreakerOpened {
        rule: String,
        action: Action,
    },
}

pub struct PolicyEngine {
    config: PolicyConfig,
    /// Consecutive windows each rule's condition has held.
    streaks: HashMap<String, u32>,
    last_fired: HashMap<String, Instant>,
    /// Actions taken in the current budget period, oldest first.
    recent: VecDeque<(Instant, Action)>,
    breaker_opened_at: Option<Instant>,
}

impl PolicyEngine {
    pub fn new(config: PolicyConfig) -> Self {
        Self {
            config,
            streaks: HashMap::new(),
            last_fired: HashMap::new(),
            recent: VecDeque::new(),
            breaker_opened_at: None,
        }
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker_opened_at.is_some()
    }

    /// Evaluates every rule against its scope's indicator in one window. A
    /// missing indicator (no samples) breaks a streak: no evidence, no
    /// action.
    pub fn evaluate(&mut self, now: Instant, indicators: &Indicators) -> Vec<Outcome> {
        let period = Duration::from_millis(self.config.budget_period_ms);
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > period)
        {
            self.recent.pop_front();
        }
        if self
            .breaker_opened_at
            .is_some_and(|at| now.duration_since(at) > period)
        {
            self.breaker_opened_at = None;
        }
        let mut outcomes = Vec::new();
        for rule in &self.config.rules {
            let value = indicators.get(&rule.scope, rule.indicator);
            let streak = self.streaks.entry(rule.name.clone()).or_insert(0);
            match value {
                Some(value) if rule.holds(value) => *streak += 1,
                _ => {
                    *streak = 0;
                    continue;
                }
            }
            if *streak < rule.sustained_windows {
                continue;
            }
            let value = value.expect("a holding condition has a value");
            let suppressed = |reason| Outcome::Suppressed {
                rule: rule.name.clone(),
                reason,
            };
            if self.breaker_opened_at.is_some() {
                outcomes.push(suppressed(Suppression::BreakerOpen));
                continue;
            }
            let cooling = self.last_fired.get(&rule.name).is_some_and(|at| {
                now.duration_since(*at) < Duration::from_millis(rule.cooldown_ms)
            });
            if cooling {
                outcomes.push(suppressed(Suppression::Cooldown));
                continue;
            }
            if self.recent.len() >= self.config.max_actions_per_period as usize {
                outcomes.push(suppressed(Suppression::Budget));
                continue;
            }
            let undone = self
                .recent
                .iter()
                .filter(|(_, earlier)| rule.action.undoes(earlier))
                .count();
            if undone + 1 >= self.config.loop_threshold as usize {
                self.breaker_opened_at = Some(now);
                outcomes.push(Outcome::BreakerOpened {
                    rule: rule.name.clone(),
                    action: rule.action.clone(),
                });
                continue;
            }
            *streak = 0;
            self.last_fired.insert(rule.name.clone(), now);
            self.recent.push_back((now, rule.action.clone()));
            outcomes.push(Outcome::Act {
                rule: rule.name.clone(),
                action: rule.action.clone(),
                scope: rule.scope.clone(),
                indicator: rule.indicator,
                value,
                threshold: rule.threshold,
            });
        }
        outcomes
    }
}

/// Clean windows in a row a config needs to become the known-good one. One
/// is not enough: the first window after a change is mostly requests that
/// started before it (a late first token is counted when it arrives).
pub const CLEAN_WINDOWS_FOR_GOOD: u32 = 2;

/// Configs in force and whether each ran clean, for `Action::Rollback`.
#[derive(Debug)]
pub struct KnownGood<C> {
    last_good: Option<C>,
    /// The config of the current run of clean windows and its length.
    candidate: Option<(C, u32)>,
}

impl<C: Clone + PartialEq> KnownGood<C> {
    pub fn new() -> Self {
        Self {
            last_good: None,
            candidate: None,
        }
    }

    /// Records one window: the config at its start and at its end, and
    /// whether any SLO was breached in it. A config becomes the known-good
    /// one after `CLEAN_WINDOWS_FOR_GOOD` clean windows in a row during
    /// which it was in force from start to end; a window in which it
    /// changed vouches for neither config.
    pub fn observe(&mut self, at_start: &C, at_end: &C, breached: bool) {
        if breached || at_start != at_end {
            self.candidate = None;
            return;
        }
        let clean = match self.candidate.take() {
            Some((config, clean)) if config == *at_end => clean + 1,
            _ => 1,
        };
        if clean >= CLEAN_WINDOWS_FOR_GOOD {
            self.last_good = Some(at_end.clone());
        }
        self.candidate = Some((at_end.clone(), clean));
    }

    /// The config to roll back to.
    pub fn last_good(&self) -> Option<&C> {
        self.last_good.as_ref()
    }
}

impl<C: Clone + PartialEq> Default for KnownGood<C> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(indicator: Indicator, comparison: Comparison, threshold: f64, action: Action) -> Rule {
        Rule {
            name: format!("{indicator:?}-{comparison:?}"),
            indicator,
            scope: Scope::Global,
            comparison,
            threshold,
            sustained_windows: 2,
            action,
            cooldown_ms: 30_000,
        }
    }

    fn engine(rules: Vec<Rule>) -> PolicyEngine {
        PolicyEngine::new(PolicyConfig {
            rules,
            ..PolicyConfig::default()
        })
    }

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    fn ind(indicator: Indicator, value: f64) -> Indicators {
        Indicators::global(HashMap::from([(indicator, value)]))
    }

    fn scoped(scope: Scope, indicator: Indicator, value: f64) -> Indicators {
        let mut out = Indicators::default();
        out.insert(scope, HashMap::from([(indicator, value)]));
        out
    }

    fn acted(outcomes: &[Outcome]) -> Vec<&str> {
        outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Act { action, .. } => Some(action.name()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_rule_fires_on_its_condition_sustained_and_not_on_its_opposite() {
        let t0 = Instant::now();
        let high_ttft = rule(
            Indicator::TtftP95Seconds,
            Comparison::Above,
            3.0,
            Action::TightenLimit { streams: 4 },
        );
        let low_throughput = rule(
            Indicator::OutputTokensPerSecond,
            Comparison::Below,
            40.0,
            Action::Rollback,
        );
        let mut policy = engine(vec![high_ttft, low_throughput]);
        // Opposite conditions: fast first tokens, high throughput.
        for s in 0..5 {
            let values = Indicators::global(HashMap::from([
                (Indicator::TtftP95Seconds, 1.0),
                (Indicator::OutputTokensPerSecond, 90.0),
            ]));
            assert!(acted(&policy.evaluate(at(t0, 10 * s), &values)).is_empty());
        }
        // One slow window is not sustained; two are.
        assert!(
            acted(&policy.evaluate(at(t0, 60), &ind(Indicator::TtftP95Seconds, 5.0))).is_empty()
        );
        assert_eq!(
            acted(&policy.evaluate(at(t0, 70), &ind(Indicator::TtftP95Seconds, 5.0))),
            ["tighten_limit"]
        );
        // Low throughput fires the rule written for low throughput.
        let low = ind(Indicator::OutputTokensPerSecond, 20.0);
        policy.evaluate(at(t0, 80), &low);
        let outcomes = policy.evaluate(at(t0, 90), &low);
        assert_eq!(acted(&outcomes), ["rollback"]);
        assert!(matches!(
            &outcomes[0],
            Outcome::Act { value, threshold, .. } if *value == 20.0 && *threshold == 40.0
        ));
    }

    #[test]
    fn missing_evidence_breaks_a_streak() {
        let t0 = Instant::now();
        let mut policy = engine(vec![rule(
            Indicator::ItlP95Seconds,
            Comparison::Above,
            1.0,
            Action::Http1Only,
        )]);
        policy.evaluate(t0, &ind(Indicator::ItlP95Seconds, 2.0));
        policy.evaluate(at(t0, 10), &Indicators::default());
        assert!(
            acted(&policy.evaluate(at(t0, 20), &ind(Indicator::ItlP95Seconds, 2.0))).is_empty()
        );
        assert_eq!(
            acted(&policy.evaluate(at(t0, 30), &ind(Indicator::ItlP95Seconds, 2.0))),
            ["http1_only"]
        );
    }

    #[test]
    fn cooldown_holds_then_releases() {
        let t0 = Instant::now();
        let mut policy = engine(vec![rule(
            Indicator::ErrorRate,
            Comparison::Above,
            0.01,
            Action::DisableFlag {
                flag: "prefix_cache".into(),
            },
        )]);
        let bad = ind(Indicator::ErrorRate, 0.2);
        policy.evaluate(t0, &bad);
        assert_eq!(acted(&policy.evaluate(at(t0, 10), &bad)), ["disable_flag"]);
        policy.evaluate(at(t0, 20), &bad);
        let outcomes = policy.evaluate(at(t0, 30), &bad);
        assert_eq!(
            outcomes,
            [Outcome::Suppressed {
                rule: "ErrorRate-Above".into(),
                reason: Suppression::Cooldown
            }]
        );
        assert_eq!(acted(&policy.evaluate(at(t0, 41), &bad)), ["disable_flag"]);
    }

    #[test]
    fn the_budget_caps_actions_per_period() {
        let t0 = Instant::now();
        let mut fast = rule(
            Indicator::RejectionRate,
            Comparison::Above,
            0.1,
            Action::Http1Only,
        );
        fast.sustained_windows = 1;
        fast.cooldown_ms = 0;
        let mut policy = PolicyEngine::new(PolicyConfig {
            rules: vec![fast],
            max_actions_per_period: 2,
            budget_period_ms: 60_000,
            loop_threshold: 3,
        });
        let bad = ind(Indicator::RejectionRate, 0.5);
        let fired: usize = (0..5)
            .map(|s| acted(&policy.evaluate(at(t0, s), &bad)).len())
            .sum();
        assert_eq!(fired, 2);
        assert!(matches!(
            policy.evaluate(at(t0, 6), &bad)[0],
            Outcome::Suppressed {
                reason: Suppression::Budget,
                ..
            }
        ));
        assert_eq!(acted(&policy.evaluate(at(t0, 61), &bad)), ["http1_only"]);
    }

    #[test]
    fn actions_that_keep_undoing_each_other_open_the_breaker() {
        let t0 = Instant::now();
        let mut tighten = rule(
            Indicator::TtftP95Seconds,
            Comparison::Above,
            3.0,
            Action::TightenLimit { streams: 4 },
        );
        let mut relax = rule(
            Indicator::TtftP95Seconds,
            Comparison::Below,
            2.0,
            Action::RelaxLimit { streams: 4 },
        );
        for r in [&mut tighten, &mut relax] {
            r.sustained_windows = 1;
            r.cooldown_ms = 0;
        }
        let mut policy = engine(vec![tighten, relax]);
        // TTFT flaps between too slow and very fast every window.
        let mut actions = Vec::new();
        let mut opened = false;
        for s in 0..10 {
            let value = if s % 2 == 0 { 5.0 } else { 1.0 };
            let outcomes = policy.evaluate(at(t0, 10 * s), &ind(Indicator::TtftP95Seconds, value));
            actions.extend(acted(&outcomes).into_iter().map(str::to_owned));
            opened |= outcomes
                .iter()
                .any(|o| matches!(o, Outcome::BreakerOpened { .. }));
        }
        assert!(opened && policy.breaker_open());
        assert!(actions.len() <= 3, "the flapping stopped: {actions:?}");
    }

    #[test]
    fn rollback_restores_the_exact_last_known_good_config() {
        #[derive(Debug, Clone, PartialEq)]
        struct Config {
            prefill_chunk: u32,
        }
        let small = Config { prefill_chunk: 64 };
        let good = Config { prefill_chunk: 96 };
        let bad = Config { prefill_chunk: 512 };
        let mut history = KnownGood::new();
        assert_eq!(history.last_good(), None);
        history.observe(&small, &small, false);
        assert_eq!(history.last_good(), None, "one clean window is not enough");
        history.observe(&small, &small, false);
        history.observe(&small, &good, false);
        history.observe(&good, &good, false);
        history.observe(&good, &good, false);
        assert_eq!(history.last_good(), Some(&good));
        // The bad change lands mid-window: that window vouches for nothing,
        // nor does the next, still clean (its late first tokens not in yet).
        history.observe(&good, &bad, false);
        history.observe(&bad, &bad, false);
        history.observe(&bad, &bad, true);
        history.observe(&bad, &bad, true);
        assert_eq!(history.last_good(), Some(&good));
    }

    #[test]
    fn window_indicators_follow_their_definitions() {
        let mut window = Window::new();
        for ms in [100.0, 200.0, 300.0, 400.0, 5000.0] {
            window.ttft.record(ms / 1000.0);
        }
        window.requests = 50;
        window.errors = 5;
        window.infra_cancellations = 1;
        window.rejections = 50;
        window.output_tokens = 1000;
        window.seconds = 10.0;
        let values = window.indicators();
        assert!((values[&Indicator::TtftP50Seconds] - 0.3).abs() < 0.01);
        assert_eq!(values[&Indicator::ErrorRate], 0.1);
        assert_eq!(values[&Indicator::InfraCancelRate], 0.02);
        assert_eq!(values[&Indicator::RejectionRate], 0.5);
        assert_eq!(values[&Indicator::OutputTokensPerSecond], 100.0);
        assert!(
            !values.contains_key(&Indicator::ItlP95Seconds),
            "no samples"
        );
    }

    fn sketch_of(values: impl IntoIterator<Item = f64>) -> Sketch {
        let mut sketch = Sketch::new(0.01);
        for value in values {
            sketch.record(value);
        }
        sketch
    }

    fn cohorts(canary_ttft: f64, baseline_ttft: f64, samples: usize) -> CohortWindows {
        let latencies = |ttft: f64| Latencies {
            ttft: sketch_of(std::iter::repeat_n(ttft, samples)),
            itl: sketch_of(std::iter::repeat_n(0.05, samples)),
        };
        CohortWindows {
            canary: latencies(canary_ttft),
            baseline: latencies(baseline_ttft),
        }
    }

    #[test]
    fn canary_regression_is_positive_when_the_canary_is_slower_and_needs_samples() {
        let slower = cohorts(1.5, 1.0, 20).indicators(20);
        assert!((slower[&Indicator::CanaryTtftRegression] - 0.5).abs() < 0.03);
        assert!(slower[&Indicator::CanaryItlRegression].abs() < 0.03);
        let faster = cohorts(0.5, 1.0, 20).indicators(20);
        assert!((faster[&Indicator::CanaryTtftRegression] + 0.5).abs() < 0.03);
        assert!(
            cohorts(1.5, 1.0, 19).indicators(20).is_empty(),
            "too few samples per cohort"
        );
        let mut one_sided = cohorts(1.5, 1.0, 20);
        one_sided.baseline = Latencies::default();
        assert!(one_sided.indicators(1).is_empty(), "no baseline to compare");
    }

    #[test]
    fn scoped_windows_give_each_tenant_and_flag_its_own_indicators() {
        let mut windows = ScopedWindows::default();
        windows.global.requests = 10;
        let mut noisy = Window::new();
        noisy.requests = 4;
        noisy.errors = 2;
        windows.tenants.push(("noisy".into(), noisy));
        windows.tenants.push(("idle".into(), Window::new()));
        windows
            .flags
            .push(("prefix_cache".into(), cohorts(2.0, 1.0, 5)));
        let values = windows.indicators(5);
        assert_eq!(values.get(&Scope::Global, Indicator::ErrorRate), Some(0.0));
        assert_eq!(
            values.get(&Scope::Tenant("noisy".into()), Indicator::ErrorRate),
            Some(0.5)
        );
        assert_eq!(
            values
                .scopes()
                .map(|(scope, _)| scope.to_string())
                .collect::<Vec<_>>(),
            ["global", "tenant:noisy", "flag:prefix_cache"],
            "a scope without evidence is left out"
        );
        let regression = values
            .get(
                &Scope::Flag("prefix_cache".into()),
                Indicator::CanaryTtftRegression,
            )
            .unwrap();
        assert!((regression - 1.0).abs() < 0.05);
    }

    #[test]
    fn a_canary_regression_rule_fires_on_a_slower_canary_and_not_on_a_faster_one() {
        let t0 = Instant::now();
        let flag = Scope::Flag("prefix_cache".into());
        let mut regression = rule(
            Indicator::CanaryTtftRegression,
            Comparison::Above,
            0.2,
            Action::DisableFlag {
                flag: "prefix_cache".into(),
            },
        );
        regression.scope = flag.clone();
        let mut policy = engine(vec![regression]);
        // A faster canary (negative regression) and a slower one within the
        // margin never fire; neither does a regression of another flag.
        for (s, value) in [-0.5, 0.1, -0.5, 0.1].into_iter().enumerate() {
            let values = scoped(flag.clone(), Indicator::CanaryTtftRegression, value);
            assert!(acted(&policy.evaluate(at(t0, 10 * s as u64), &values)).is_empty());
        }
        let other = scoped(
            Scope::Flag("kv_prep".into()),
            Indicator::CanaryTtftRegression,
            3.0,
        );
        policy.evaluate(at(t0, 50), &other);
        assert!(acted(&policy.evaluate(at(t0, 60), &other)).is_empty());
        let slower = scoped(flag.clone(), Indicator::CanaryTtftRegression, 0.5);
        assert!(acted(&policy.evaluate(at(t0, 70), &slower)).is_empty());
        let outcomes = policy.evaluate(at(t0, 80), &slower);
        assert_eq!(acted(&outcomes), ["disable_flag"]);
        assert!(matches!(&outcomes[0], Outcome::Act { scope, .. } if *scope == flag));
    }

    #[test]
    fn a_tenant_rule_reads_its_tenant_and_throttles_it() {
        let t0 = Instant::now();
        let noisy = Scope::Tenant("noisy".into());
        let mut slow = rule(
            Indicator::TtftP95Seconds,
            Comparison::Above,
            2.0,
            Action::ThrottleTenant {
                tenant: "noisy".into(),
                max_concurrent: 2,
            },
        );
        slow.scope = noisy.clone();
        let mut policy = engine(vec![slow]);
        // Slow globally or for another tenant, fast for this one: no action.
        for s in 0..3 {
            let mut values = ind(Indicator::TtftP95Seconds, 9.0);
            values.insert(
                Scope::Tenant("quiet".into()),
                HashMap::from([(Indicator::TtftP95Seconds, 9.0)]),
            );
            values.insert(
                noisy.clone(),
                HashMap::from([(Indicator::TtftP95Seconds, 1.0)]),
            );
            assert!(acted(&policy.evaluate(at(t0, 10 * s), &values)).is_empty());
        }
        let values = scoped(noisy.clone(), Indicator::TtftP95Seconds, 3.0);
        policy.evaluate(at(t0, 40), &values);
        let outcomes = policy.evaluate(at(t0, 50), &values);
        assert_eq!(acted(&outcomes), ["throttle_tenant"]);
        assert!(matches!(
            &outcomes[0],
            Outcome::Act { action: Action::ThrottleTenant { tenant, max_concurrent: 2 }, .. }
                if tenant == "noisy"
        ));
    }

    #[test]
    fn rules_read_scopes_and_throttle_from_yaml() {
        let rule: Rule = serde_saphyr::from_str(
            "{name: canary, indicator: canary_itl_regression, scope: {flag: kv_prep}, \
             comparison: above, threshold: 0.2, \
             action: {kind: throttle_tenant, tenant: acme, max_concurrent: 3}}",
        )
        .unwrap();
        assert_eq!(rule.scope, Scope::Flag("kv_prep".into()));
        assert_eq!(
            rule.action,
            Action::ThrottleTenant {
                tenant: "acme".into(),
                max_concurrent: 3
            }
        );
        let global: Rule = serde_saphyr::from_str(
            "{name: g, indicator: error_rate, comparison: above, threshold: 0.1, \
             action: {kind: rollback}}",
        )
        .unwrap();
        assert_eq!(global.scope, Scope::Global);
    }
}
