//! Cross-field checks of a loaded config, run on start and on every reload
//! (a config that fails them changes nothing).

use super::{ConfigError, RuntimeConfig};
use crate::admission::DEFAULT_TENANT;
use crate::policy::{Action, Scope};

/// Shortest `engine.max_park_ms` other than 0: a shorter limit would end
/// streams whose clients are merely a few engine steps behind.
pub const MIN_PARK_MS: u64 = 100;

/// Shortest `engine.step_stall_timeout_ms` other than 0: a long prefill
/// step on a slow machine takes a good part of a second, and a live engine
/// must not be reported stalled.
pub const MIN_STEP_STALL_TIMEOUT_MS: u64 = 1_000;

impl RuntimeConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let engine = &self.engine;
        let governor = &self.governor;
        let checks = [
            (
                governor.min_streams == 0 || governor.min_streams > governor.max_streams,
                "governor.min_streams must be between 1 and governor.max_streams",
            ),
            (
                governor.max_streams > engine.max_sequences,
                "governor.max_streams must not exceed engine.max_sequences",
            ),
            (governor.tick_ms == 0, "governor.tick_ms must be at least 1"),
            (
                governor.ttft_p95_target_ms == 0 || governor.itl_p95_target_ms == 0,
                "governor latency targets must be positive",
            ),
            (
                self.admission
                    .tenants
                    .iter()
                    .any(|t| !t.weight.is_finite() || t.weight <= 0.0),
                "admission.tenants[].weight must be positive",
            ),
            (
                self.admission
                    .tenants
                    .iter()
                    .any(|t| t.tokens_per_minute == Some(0)),
                "admission.tenants[].tokens_per_minute must be at least 1 (null: unlimited)",
            ),
            (
                !self.qos.canary_margin.is_finite() || self.qos.canary_margin < 0.0,
                "qos.canary_margin must be a share of at least 0",
            ),
            (
                self.qos.canary_min_samples == 0,
                "qos.canary_min_samples must be at least 1",
            ),
            (
                engine.max_sequences == 0,
                "engine.max_sequences must be at least 1",
            ),
            (
                self.server.http2.max_concurrent_streams == 0,
                "server.http2.max_concurrent_streams must be at least 1",
            ),
            (
                self.server.websocket.max_streams_per_socket == 0
                    || self.server.websocket.ping_interval_ms == 0,
                "server.websocket.max_streams_per_socket and ping_interval_ms must be positive",
            ),
            (
                self.server
                    .admin_api_key
                    .as_ref()
                    .is_some_and(|key| key.trim().len() < 16),
                "server.admin_api_key must be at least 16 characters",
            ),
            (
                self.server.fault_injection && self.server.admin_api_key.is_none(),
                "server.fault_injection needs server.admin_api_key",
            ),
            (
                engine.context_per_sequence < 16,
                "engine.context_per_sequence must be at least 16",
            ),
            (
                engine.step_token_budget == 0,
                "engine.step_token_budget must be at least 1",
            ),
            (
                engine.min_prefill_chunk == 0
                    || engine.min_prefill_chunk > engine.step_token_budget,
                "engine.min_prefill_chunk must be between 1 and engine.step_token_budget",
            ),
            (
                engine.mixed_step_token_budget != 0
                    && engine.mixed_step_token_budget < engine.min_prefill_chunk,
                "engine.mixed_step_token_budget must be 0 (no cap) or at least engine.min_prefill_chunk",
            ),
            (
                engine.stream_buffer_events == 0,
                "engine.stream_buffer_events must be at least 1",
            ),
            (
                (1..MIN_PARK_MS).contains(&engine.max_park_ms),
                "engine.max_park_ms must be 0 (no limit) or at least 100",
            ),
            (
                (1..MIN_STEP_STALL_TIMEOUT_MS).contains(&engine.step_stall_timeout_ms),
                "engine.step_stall_timeout_ms must be 0 (off) or at least 1000",
            ),
            (
                self.server.max_body_bytes < 1024,
                "server.max_body_bytes must be at least 1024",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(failed, _)| *failed) {
            return Err(ConfigError::Invalid((*message).to_owned()));
        }
        self.alerts.validate()?;
        self.flags.validate().map_err(ConfigError::Invalid)?;
        self.validate_rules()
    }

    /// Each rule's scope and tenant action name something that exists: a
    /// rule about an unknown tenant or flag would never fire.
    fn validate_rules(&self) -> Result<(), ConfigError> {
        let known_tenant = |name: &str| {
            name == DEFAULT_TENANT || self.admission.tenants.iter().any(|t| t.name == name)
        };
        for rule in &self.qos.policy.rules {
            let problem = match (&rule.scope, rule.indicator.compares_cohorts()) {
                (Scope::Flag(flag), true) if self.flags.get(flag).is_none() => {
                    Some(format!("scope names no flag '{flag}'"))
                }
                (Scope::Flag(_), true) => None,
                (_, true) => Some(format!(
                    "{:?} compares a flag's cohorts: it needs scope {{flag: NAME}}",
                    rule.indicator
                )),
                (Scope::Flag(_), false) => Some(format!(
                    "{:?} is not a canary indicator: scope must be global or a tenant",
                    rule.indicator
                )),
                (Scope::Tenant(tenant), false) if !known_tenant(tenant) => {
                    Some(format!("scope names no tenant '{tenant}'"))
                }
                _ => None,
            };
            let problem = problem.or_else(|| match &rule.action {
                Action::ThrottleTenant { tenant, .. } if !known_tenant(tenant) => {
                    Some(format!("throttle_tenant names no tenant '{tenant}'"))
                }
                Action::ThrottleTenant {
                    max_concurrent: 0, ..
                } => Some("throttle_tenant needs max_concurrent of at least 1".to_owned()),
                _ => None,
            });
            if let Some(problem) = problem {
                return Err(ConfigError::Invalid(format!(
                    "qos.policy.rules '{}': {problem}",
                    rule.name
                )));
            }
        }
        Ok(())
    }
}
