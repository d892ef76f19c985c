//! Cross-field checks of a loaded config, run on start and on every reload
//! (a config that fails them changes nothing).

use std::collections::HashSet;

use super::{ConfigError, RuntimeConfig};
use crate::admission::DEFAULT_TENANT;
use crate::policy::{Action, Scope};

/// Shortest `engine.max_park_ms` other than 0: a shorter limit would end
/// streams whose clients are merely a few engine steps behind.
pub const MIN_PARK_MS: u64 = 100;

/// HTTP/2 flow-control windows (RFC 9113 §6.9): the initial size and the
/// largest a window may be.
const H2_MIN_WINDOW: u32 = 65_535;
const H2_MAX_WINDOW: u32 = (1 << 31) - 1;
/// hyper's smallest read buffer, which a header block must fit.
const MIN_HEADER_BYTES: usize = 8192;
const MAX_CONNECTIONS: usize = 1_000_000;
/// Far above any useful step (a step this size already takes seconds on a
/// CPU) and small enough that the llama.cpp batch it sizes stays modest.
const MAX_STEP_TOKEN_BUDGET: u32 = 16_384;
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
                self.admission.shared_quota.as_ref().is_some_and(|quota| {
                    !quota.redis_url.starts_with("redis://") || quota.key_prefix.is_empty()
                }),
                "admission.shared_quota needs a redis:// URL and a non-empty key_prefix",
            ),
            (
                self.admission
                    .shared_quota
                    .as_ref()
                    .is_some_and(|quota| quota.timeout_ms == 0 || quota.retry_ms == 0),
                "admission.shared_quota.timeout_ms and retry_ms must be at least 1",
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
                engine.long_sequences > engine.max_sequences,
                "engine.long_sequences must not exceed engine.max_sequences",
            ),
            (
                engine.max_model_len != 0 && engine.max_model_len < 16,
                "engine.max_model_len must be 0 (the model's trained context) or at least 16",
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
        self.validate_limits()?;
        self.validate_tenants()?;
        self.alerts.validate()?;
        self.flags.validate().map_err(ConfigError::Invalid)?;
        self.validate_rules()
    }

    /// The transport, WebSocket and per-stream limits, the HTTP/2 windows,
    /// the controller's gains and the SLO targets: each a number a running
    /// server can use (no NaN, no zero timeout, nothing past what the
    /// protocol allows).
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.server.limits;
        let http2 = &self.server.http2;
        let websocket = &self.server.websocket;
        let governor = &self.governor;
        let valid_window = |bytes: u32| (H2_MIN_WINDOW..=H2_MAX_WINDOW).contains(&bytes);
        let slo = &self.qos.slo;
        let slo_values = [
            slo.ttft_p50_seconds,
            slo.ttft_p95_seconds,
            slo.itl_p95_seconds,
            slo.max_error_rate,
            slo.max_infra_cancel_rate,
            slo.max_rejection_rate,
        ];
        let checks = [
            (
                !(1..=MAX_CONNECTIONS).contains(&limits.max_connections),
                "server.limits.max_connections must be between 1 and 1000000",
            ),
            (
                limits.first_byte_timeout_ms == 0
                    || limits.header_read_timeout_ms == 0
                    || limits.body_read_timeout_ms == 0
                    || limits.idle_timeout_ms == 0,
                "server.limits timeouts (first_byte, header_read, body_read, idle) must be positive",
            ),
            (
                limits.max_header_count == 0,
                "server.limits.max_header_count must be at least 1",
            ),
            (
                limits.max_header_bytes < MIN_HEADER_BYTES,
                "server.limits.max_header_bytes must be at least 8192",
            ),
            (
                limits.max_pending_requests == 0
                    || limits.max_pending_per_tenant == 0
                    || limits.max_pending_per_tenant > limits.max_pending_requests,
                "server.limits.max_pending_per_tenant must be between 1 and max_pending_requests",
            ),
            (
                limits.max_prompt_bytes == 0,
                "server.limits.max_prompt_bytes must be at least 1",
            ),
            (
                limits.min_read_bytes_per_second > 0 && limits.slow_reader_grace_ms == 0,
                "server.limits.slow_reader_grace_ms must be positive when min_read_bytes_per_second is set",
            ),
            (
                limits.shutdown_hard_deadline_seconds == 0,
                "server.limits.shutdown_hard_deadline_seconds must be at least 1",
            ),
            (
                !valid_window(http2.stream_window_bytes)
                    || !valid_window(http2.connection_window_bytes),
                "server.http2 window sizes must be between 65535 and 2147483647 bytes",
            ),
            (
                http2.keepalive_interval_ms > 0 && http2.keepalive_timeout_ms == 0,
                "server.http2.keepalive_timeout_ms must be positive when keep-alive pings are on",
            ),
            (
                websocket.max_message_bytes < 1024 || websocket.send_timeout_ms == 0,
                "server.websocket.max_message_bytes must be at least 1024 and send_timeout_ms positive",
            ),
            (
                [governor.kp, governor.ki, governor.kd]
                    .iter()
                    .any(|gain| !gain.is_finite() || *gain < 0.0),
                "governor gains (kp, ki, kd) must be finite and at least 0",
            ),
            (
                self.engine.max_step_token_budget > MAX_STEP_TOKEN_BUDGET
                    || self.engine.step_token_budget > MAX_STEP_TOKEN_BUDGET,
                "engine step token budgets must be at most 16384",
            ),
            (
                slo_values
                    .iter()
                    .flatten()
                    .any(|value| !value.is_finite() || *value <= 0.0),
                "qos.slo targets must be positive numbers (null: not evaluated)",
            ),
        ];
        match checks.iter().find(|(failed, _)| *failed) {
            Some((_, message)) => Err(ConfigError::Invalid((*message).to_owned())),
            None => Ok(()),
        }
    }

    /// Tenant names and API keys are unique (a key naming two tenants
    /// would pick one silently), and keys can be required only if some exist.
    fn validate_tenants(&self) -> Result<(), ConfigError> {
        let tenants = &self.admission.tenants;
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for tenant in tenants {
            if tenant.name.trim().is_empty() || !names.insert(tenant.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "admission.tenants: name '{}' is empty or used twice",
                    tenant.name
                )));
            }
            for key in &tenant.api_keys {
                if key.trim().is_empty() || !keys.insert(key.trim()) {
                    return Err(ConfigError::Invalid(format!(
                        "admission.tenants '{}': an API key is empty or belongs to another tenant too",
                        tenant.name
                    )));
                }
            }
        }
        if self.server.require_api_key == Some(true) && keys.is_empty() {
            return Err(ConfigError::Invalid(
                "server.require_api_key is true but no tenant has an API key: every request would get 401"
                    .to_owned(),
            ));
        }
        let header_ok = self
            .server
            .trusted_tenant_header
            .as_deref()
            .is_none_or(|name| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !header_ok {
            return Err(ConfigError::Invalid(
                "server.trusted_tenant_header must be a header name (letters, digits, - and _)"
                    .to_owned(),
            ));
        }
        if let Some(hosts) = &self.server.allowed_hosts
            && hosts
                .iter()
                .any(|host| host.trim().is_empty() || host.contains(['/', ' ']))
        {
            return Err(ConfigError::Invalid(
                "server.allowed_hosts entries must be host names or addresses, without scheme or path"
                    .to_owned(),
            ));
        }
        Ok(())
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
