//! The QoS sections: SLO targets the evaluator checks, the policy engine's
//! rules, and where alerts go.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::policy::{Breach, Indicator, Indicators, PolicyConfig, Scope};

/// Where SLO breaches, policy actions and breaker openings go besides the
/// log: JSON POSTs to webhooks, retried and deduplicated by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    pub webhooks: Vec<WebhookConfig>,
    /// One POST attempt gets this long to answer.
    pub timeout_ms: u64,
    /// Retries after a connect error, a timeout or a 5xx; a 4xx is final.
    pub max_retries: u32,
    /// Wait before the first retry; it doubles after each, up to
    /// `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The same alert key is sent at most once per window; 0 sends every
    /// alert.
    pub dedup_window_ms: u64,
    /// Alerts waiting for delivery; when full, new ones are dropped (and
    /// counted) rather than waited for.
    pub queue_capacity: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            timeout_ms: 2_000,
            max_retries: 3,
            initial_backoff_ms: 500,
            max_backoff_ms: 10_000,
            dedup_window_ms: 300_000,
            queue_capacity: 256,
        }
    }
}

impl AlertsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (index, webhook) in self.webhooks.iter().enumerate() {
            if let Some(problem) = webhook_url_problem(&webhook.url) {
                return Err(ConfigError::Invalid(format!(
                    "alerts.webhooks[{index}].url {:?} {problem}",
                    webhook.url
                )));
            }
            if webhook.bearer_token.as_ref().is_some_and(|token| {
                token.trim().is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            }) {
                return Err(ConfigError::Invalid(format!(
                    "alerts.webhooks[{index}].bearer_token must be non-empty printable ASCII"
                )));
            }
        }
        let checks = [
            (self.timeout_ms == 0, "alerts.timeout_ms must be at least 1"),
            (
                self.queue_capacity == 0,
                "alerts.queue_capacity must be at least 1",
            ),
            (
                self.initial_backoff_ms == 0 || self.initial_backoff_ms > self.max_backoff_ms,
                "alerts.initial_backoff_ms must be between 1 and alerts.max_backoff_ms",
            ),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, message)) => Err(ConfigError::Invalid((*message).to_owned())),
            None => Ok(()),
        }
    }
}

/// One alert receiver. Cleartext `http://` only: TLS would need a root
/// certificate store the server does not otherwise carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host[:port][/path][?query]`.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<String>,
}

/// What makes `url` unusable as a webhook, if anything.
fn webhook_url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Some(if url.starts_with("https://") {
            "is https, which is not supported: use an http:// URL (a local relay can add TLS)"
        } else {
            "must start with http://"
        });
    };
    if !url
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\"#<>\\^`{|}".contains(&b))
    {
        return Some("has a character a URL cannot hold (space, quote, #, ...)");
    }
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.contains('@') {
        return Some("must not carry credentials: use bearer_token");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, tail)) => match tail.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Some("has junk after its [IPv6] host"),
            },
            None => return Some("has an unclosed [ in its host"),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Some("has no host");
    }
    if port.is_some_and(|port| port.parse::<u16>().is_err() || port == "0") {
        return Some("has an invalid port");
    }
    None
}

/// The SLO evaluator and the policy engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QosConfig {
    /// Length of one evaluation window.
    pub evaluation_interval_ms: u64,
    /// A flag in partial rollout whose canary cohort's TTFT p95 or ITL p95
    /// is worse than its baseline's by more than this share (0.2 = 20 %)
    /// breaches the SLO.
    pub canary_margin: f64,
    /// Samples each cohort needs in a window before the two are compared.
    pub canary_min_samples: u64,
    pub slo: SloTargets,
    pub policy: PolicyConfig,
}

impl Default for QosConfig {
    fn default() -> Self {
        Self {
            evaluation_interval_ms: 10_000,
            canary_margin: 0.2,
            canary_min_samples: 20,
            slo: SloTargets::default(),
            policy: PolicyConfig::default(),
        }
    }
}

impl QosConfig {
    /// Every breach in one window: the SLO targets checked globally and for
    /// each tenant, and each compared canary against its margin.
    pub fn breaches(&self, indicators: &Indicators) -> Vec<Breach> {
        let mut out = Vec::new();
        for (scope, values) in indicators.scopes() {
            let breaches = match scope {
                Scope::Global | Scope::Tenant(_) => self.slo.breaches(values),
                Scope::Flag(_) => [
                    Indicator::CanaryTtftRegression,
                    Indicator::CanaryItlRegression,
                ]
                .into_iter()
                .filter_map(|indicator| {
                    let value = *values.get(&indicator)?;
                    (value > self.canary_margin).then_some((indicator, value, self.canary_margin))
                })
                .collect(),
            };
            out.extend(
                breaches
                    .into_iter()
                    .map(|(indicator, value, target)| Breach {
                        scope: scope.clone(),
                        indicator,
                        value,
                        target,
                    }),
            );
        }
        out
    }
}

/// A window breaches the SLO when any indicator is above its target; a
/// target left unset is not evaluated.
/// The SLO's TTFT p95 unless configured: the governor's target and
/// interactive requests' deadline.
pub const DEFAULT_TTFT_P95_SECONDS: f64 = 10.0;
/// The SLO's inter-token p95 unless configured.
pub const DEFAULT_ITL_P95_SECONDS: f64 = 2.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SloTargets {
    pub ttft_p50_seconds: Option<f64>,
    pub ttft_p95_seconds: Option<f64>,
    pub itl_p95_seconds: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub max_infra_cancel_rate: Option<f64>,
    pub max_rejection_rate: Option<f64>,
}

impl Default for SloTargets {
    fn default() -> Self {
        Self {
            ttft_p50_seconds: None,
            ttft_p95_seconds: Some(DEFAULT_TTFT_P95_SECONDS),
            itl_p95_seconds: Some(DEFAULT_ITL_P95_SECONDS),
            max_error_rate: None,
            max_infra_cancel_rate: None,
            max_rejection_rate: None,
        }
    }
}

impl SloTargets {
    /// The indicators over their targets, with value and target.
    pub fn breaches(&self, indicators: &HashMap<Indicator, f64>) -> Vec<(Indicator, f64, f64)> {
        [
            (Indicator::TtftP50Seconds, self.ttft_p50_seconds),
            (Indicator::TtftP95Seconds, self.ttft_p95_seconds),
            (Indicator::ItlP95Seconds, self.itl_p95_seconds),
            (Indicator::ErrorRate, self.max_error_rate),
            (Indicator::InfraCancelRate, self.max_infra_cancel_rate),
            (Indicator::RejectionRate, self.max_rejection_rate),
        ]
        .into_iter()
        .filter_map(|(indicator, target)| {
            let target = target?;
            let value = *indicators.get(&indicator)?;
            (value > target).then_some((indicator, value, target))
        })
        .collect()
    }
}
