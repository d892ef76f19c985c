//! Runtime configuration. Every knob has a default, so the binary runs with no
//! file at all; `config/runtime.yaml` documents each one and CLI flags
//! override it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::admission::DEFAULT_TENANT;
use crate::flags::FlagsConfig;
use crate::governor::GovernorConfig;
use crate::policy::{Action, Breach, Indicator, Indicators, PolicyConfig, Scope};
use crate::speculation::SpeculationConfig;

/// Where the default model lands after `scripts/setup.sh` fetched it.
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Shortest `engine.max_park_ms` other than 0: a shorter limit would end
/// streams whose clients are merely a few engine steps behind.
pub const MIN_PARK_MS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub engine: EngineConfig,
    pub governor: GovernorConfig,
    pub admission: AdmissionConfig,
    pub flags: FlagsConfig,
    pub speculation: SpeculationConfig,
    pub qos: QosConfig,
    pub alerts: AlertsConfig,
}

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
    fn validate(&self) -> Result<(), ConfigError> {
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SloTargets {
    pub ttft_p50_seconds: Option<f64>,
    pub ttft_p95_seconds: Option<f64>,
    pub itl_p95_seconds: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub max_infra_cancel_rate: Option<f64>,
    pub max_rejection_rate: Option<f64>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Requests waiting for admission, over all tenants; more get 429.
    pub max_queue: usize,
    /// Longest a request waits for admission before it gets 429.
    pub max_wait_ms: u64,
    /// API keys to tenants. Requests without a known key belong to `default`.
    pub tenants: Vec<TenantConfig>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_queue: 512,
            max_wait_ms: 60_000,
            tenants: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// Bearer tokens that identify this tenant.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Share of admissions under contention, relative to other tenants.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Most streams this tenant may run at once; unlimited when unset.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Prompt plus completion tokens this tenant may use per minute (a
    /// token bucket holding one minute's worth); unlimited when unset.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
}

fn default_weight() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Largest request body accepted; larger bodies get 413.
    pub max_body_bytes: usize,
    /// On SIGTERM/SIGINT, running streams get this long to finish before
    /// they are cancelled.
    pub shutdown_grace_seconds: u64,
    /// Most stop strings one request may carry.
    pub max_stop_sequences: usize,
    /// Longest stop string accepted, in bytes.
    pub max_stop_bytes: usize,
    /// An idle SSE stream (no token yet, or a long prefill) gets a comment
    /// line this often, so proxies and clients do not time it out.
    pub sse_keepalive_ms: u64,
    /// Bearer token for `/admin/*`; the admin endpoints answer 404 when unset.
    pub admin_api_key: Option<String>,
    /// Test-only fault hooks (`POST /admin/fault/stall`) for chaos runs;
    /// off, they answer 404. Needs `admin_api_key`.
    pub fault_injection: bool,
    /// Serve TLS on the port (ALPN offers h2 and http/1.1) instead of
    /// cleartext HTTP/1.1 + h2c.
    pub tls: Option<TlsConfig>,
    pub http2: Http2Config,
    pub websocket: WebSocketConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 8080,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_seconds: 30,
            max_stop_sequences: 4,
            max_stop_bytes: 256,
            sse_keepalive_ms: 15_000,
            admin_api_key: None,
            fault_injection: false,
            tls: None,
            http2: Http2Config::default(),
            websocket: WebSocketConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Offer HTTP/2 to new connections (h2c prior knowledge, ALPN h2).
    /// Switchable at run time; open connections keep their protocol.
    pub enabled: bool,
    /// Streams one connection may run at once.
    pub max_concurrent_streams: u32,
    /// Flow-control window per stream and per connection, in bytes: large
    /// enough that a reading client never waits on WINDOW_UPDATE.
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    /// PING an idle connection this often; close it when the PONG takes
    /// longer than `keepalive_timeout_ms`. 0 disables pings.
    pub keepalive_interval_ms: u64,
    pub keepalive_timeout_ms: u64,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_streams: 256,
            stream_window_bytes: 1024 * 1024,
            connection_window_bytes: 8 * 1024 * 1024,
            keepalive_interval_ms: 20_000,
            keepalive_timeout_ms: 20_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Largest message a client may send; a larger one ends the socket.
    pub max_message_bytes: usize,
    /// Streams one socket may run at once; more get an error message.
    pub max_streams_per_socket: usize,
    /// Server pings this often; a socket silent for two intervals is closed.
    pub ping_interval_ms: u64,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_streams_per_socket: 16,
            ping_interval_ms: 20_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// GGUF file to serve.
    pub path: PathBuf,
    /// Name clients use in `model`; the file stem when unset.
    pub served_name: Option<String>,
    /// Jinja chat template file overriding the GGUF's `tokenizer.chat_template`.
    pub chat_template: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_MODEL_PATH),
            served_name: None,
            chat_template: None,
        }
    }
}

impl ModelConfig {
    /// The name clients must send in `model`.
    pub fn served_name(&self) -> String {
        self.served_name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_else(|| "default".to_owned())
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Sequences the llama.cpp context holds at once (`n_seq_max`): the most
    /// streams that can be in the running batch together.
    pub max_sequences: u32,
    /// KV cells each sequence may use: prompt plus generated tokens.
    pub context_per_sequence: u32,
    /// One KV buffer shared by all sequences (true) or one per sequence
    /// (false). Per-sequence buffers decode faster with many streams; see
    /// docs/architecture.md for the measurements.
    pub kv_unified: bool,
    /// Tokens one engine step may process (decode tokens of running streams
    /// plus prefill chunks of new ones). Smaller keeps inter-token gaps short
    /// while prompts prefill; larger prefills faster.
    pub step_token_budget: u32,
    /// Ceiling the governor may raise the step budget to while prompts wait
    /// for prefill and inter-token gaps have headroom; it sizes the
    /// llama.cpp batch. At or below `step_token_budget`, the budget is fixed.
    pub max_step_token_budget: u32,
    /// Smallest prefill chunk per step, so prefill progresses even when
    /// running streams fill the budget.
    pub min_prefill_chunk: u32,
    /// Cap on the step budget while more than one tenant has sequences in
    /// the engine (in this step or the last): a step cannot be cut short,
    /// so its length is what another tenant's new prompt may wait before
    /// its prefill starts. 0: no cap.
    pub mixed_step_token_budget: u32,
    /// Threads llama.cpp computes with; 0 means one per available core.
    pub threads: u32,
    /// Events buffered between the engine and one client's writer. A client
    /// that falls this far behind has its sequence parked.
    pub stream_buffer_events: usize,
    /// A stream whose client has not read for this long while events wait
    /// for it (parked, or finished with its last events undelivered) is
    /// ended with a slow-consumer error, freeing its sequence. 0: no limit.
    pub max_park_ms: u64,
    /// Requests waiting for a free sequence before new ones get 503.
    pub max_waiting: usize,
    /// A finished sequence keeps its KV; a new request takes the idle
    /// sequence holding the longest prefix of its prompt and prefills only
    /// the rest. Off: every sequence starts empty.
    pub prefix_cache: bool,
    /// KV prep: most prompt tokens per step the engine prefills for requests
    /// still queued for admission, from budget the step leaves spare. 0 turns
    /// KV prep off; it needs `prefix_cache`.
    pub prep_tokens_per_step: u32,
}

impl EngineConfig {
    /// The largest step budget the engine accepts at run time.
    pub fn step_budget_ceiling(&self) -> u32 {
        self.step_token_budget.max(self.max_step_token_budget)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_sequences: 128,
            context_per_sequence: 1024,
            kv_unified: false,
            step_token_budget: 128,
            max_step_token_budget: 512,
            min_prefill_chunk: 16,
            mixed_step_token_budget: 64,
            threads: 0,
            stream_buffer_events: 64,
            max_park_ms: 30_000,
            max_waiting: 1024,
            prefix_cache: true,
            prep_tokens_per_step: 32,
        }
    }
}

impl RuntimeConfig {
    /// Parses YAML; `origin` names the source in error messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_saphyr::from_str(text).map_err(|err| ConfigError::Parse {
            origin: origin.to_owned(),
            message: err.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_runtime_yaml_states_the_defaults() {
        let text = include_str!("../../../config/runtime.yaml");
        let parsed = RuntimeConfig::from_yaml(text, "config/runtime.yaml").unwrap();
        assert_eq!(parsed, RuntimeConfig::default());
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(
            RuntimeConfig::from_yaml("{}", "test").unwrap(),
            RuntimeConfig::default()
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = RuntimeConfig::from_yaml("engine:\n  max_seqs: 4\n", "test").unwrap_err();
        assert!(err.to_string().contains("max_seqs"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let err =
            RuntimeConfig::from_yaml("engine:\n  step_token_budget: 0\n", "test").unwrap_err();
        assert!(err.to_string().contains("step_token_budget"), "{err}");
    }

    #[test]
    fn fault_injection_needs_an_admin_key() {
        let err =
            RuntimeConfig::from_yaml("server:\n  fault_injection: true\n", "test").unwrap_err();
        assert!(err.to_string().contains("fault_injection"), "{err}");
        let with_key = "server:\n  fault_injection: true\n  admin_api_key: admin-key-0123456789\n";
        assert!(RuntimeConfig::from_yaml(with_key, "test").is_ok());
    }

    #[test]
    fn webhook_urls_are_checked_at_load_time() {
        let load = |url: &str| {
            RuntimeConfig::from_yaml(
                &format!("alerts:\n  webhooks: [{{url: {url:?}}}]\n"),
                "test",
            )
        };
        for good in [
            "http://127.0.0.1:9000/hook",
            "http://alerts.internal/v1/hook?team=serving",
            "http://[::1]:8080",
            "http://relay",
        ] {
            assert!(load(good).is_ok(), "{good}: {:?}", load(good));
        }
        for (bad, says) in [
            ("https://hooks.example.com/x", "https"),
            ("ftp://host/x", "http://"),
            ("http:///path", "no host"),
            ("http://host:99999/x", "port"),
            ("http://host:0", "port"),
            ("http://user:pw@host/x", "credentials"),
            ("http://host/a b", "character"),
            ("http://[::1/x", "unclosed"),
        ] {
            let err = load(bad).unwrap_err().to_string();
            assert!(
                err.contains("alerts.webhooks[0].url") && err.contains(says),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn alert_delivery_limits_are_checked() {
        for (yaml, names) in [
            ("alerts:\n  timeout_ms: 0\n", "timeout_ms"),
            ("alerts:\n  queue_capacity: 0\n", "queue_capacity"),
            (
                "alerts:\n  initial_backoff_ms: 20000\n  max_backoff_ms: 1000\n",
                "initial_backoff_ms",
            ),
            (
                "alerts:\n  webhooks: [{url: 'http://h', bearer_token: ''}]\n",
                "bearer_token",
            ),
        ] {
            let err = RuntimeConfig::from_yaml(yaml, "test")
                .unwrap_err()
                .to_string();
            assert!(err.contains(names), "{yaml}: {err}");
        }
    }

    #[test]
    fn park_limit_is_off_or_long_enough_to_outlast_a_step() {
        let parse =
            |ms: u64| RuntimeConfig::from_yaml(&format!("engine:\n  max_park_ms: {ms}\n"), "test");
        let err = parse(MIN_PARK_MS - 1).unwrap_err();
        assert!(err.to_string().contains("max_park_ms"), "{err}");
        assert_eq!(parse(0).unwrap().engine.max_park_ms, 0);
        assert_eq!(parse(MIN_PARK_MS).unwrap().engine.max_park_ms, MIN_PARK_MS);
    }

    #[test]
    fn mixed_tenant_step_cap_is_off_or_at_least_a_prefill_chunk() {
        let parse = |cap: u32| {
            RuntimeConfig::from_yaml(
                &format!("engine:\n  mixed_step_token_budget: {cap}\n"),
                "test",
            )
        };
        assert!(parse(0).is_ok(), "0 turns the cap off");
        assert!(parse(16).is_ok());
        let err = parse(8).unwrap_err();
        assert!(err.to_string().contains("mixed_step_token_budget"), "{err}");
    }

    #[test]
    fn rules_must_name_existing_tenants_and_flags() {
        let with_rule = |rule: &str| {
            RuntimeConfig::from_yaml(
                &format!(
                    "admission:\n  tenants: [{{name: acme, tokens_per_minute: 600}}]\n\
                     qos:\n  policy:\n    rules: [{rule}]\n"
                ),
                "test",
            )
        };
        let rule = |indicator: &str, scope: &str, action: &str| {
            format!(
                "{{name: r, indicator: {indicator}, scope: {scope}, comparison: above, \
                 threshold: 0.2, action: {action}}}"
            )
        };
        let throttle = |tenant: &str, max: u32| {
            format!("{{kind: throttle_tenant, tenant: {tenant}, max_concurrent: {max}}}")
        };
        for ok in [
            rule("ttft_p95_seconds", "{tenant: acme}", &throttle("acme", 2)),
            rule("error_rate", "{tenant: default}", &throttle("default", 1)),
            rule("error_rate", "global", "{kind: rollback}"),
            rule(
                "canary_ttft_regression",
                "{flag: prefix_cache}",
                "{kind: disable_flag, flag: prefix_cache}",
            ),
        ] {
            assert!(with_rule(&ok).is_ok(), "{ok}: {:?}", with_rule(&ok));
        }
        for (bad, says) in [
            (
                rule("ttft_p95_seconds", "{tenant: nobody}", "{kind: rollback}"),
                "no tenant 'nobody'",
            ),
            (
                rule("canary_ttft_regression", "global", "{kind: rollback}"),
                "needs scope",
            ),
            (
                rule(
                    "canary_itl_regression",
                    "{flag: warp_drive}",
                    "{kind: rollback}",
                ),
                "no flag 'warp_drive'",
            ),
            (
                rule("error_rate", "{flag: kv_prep}", "{kind: rollback}"),
                "not a canary indicator",
            ),
            (
                rule("error_rate", "global", &throttle("ghost", 1)),
                "no tenant 'ghost'",
            ),
            (
                rule("error_rate", "global", &throttle("acme", 0)),
                "at least 1",
            ),
        ] {
            let err = with_rule(&bad).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains("rules 'r'"),
                "{bad}: {err}"
            );
        }
        let err = RuntimeConfig::from_yaml(
            "admission:\n  tenants: [{name: acme, tokens_per_minute: 0}]\n",
            "test",
        )
        .unwrap_err();
        assert!(err.to_string().contains("tokens_per_minute"), "{err}");
    }

    #[test]
    fn breaches_are_checked_globally_per_tenant_and_per_canary() {
        let qos = QosConfig {
            slo: SloTargets {
                ttft_p95_seconds: Some(2.0),
                ..SloTargets::default()
            },
            ..QosConfig::default()
        };
        let mut indicators = Indicators::global(HashMap::from([(Indicator::TtftP95Seconds, 1.0)]));
        indicators.insert(
            Scope::Tenant("slow".into()),
            HashMap::from([(Indicator::TtftP95Seconds, 3.0)]),
        );
        indicators.insert(
            Scope::Tenant("fast".into()),
            HashMap::from([(Indicator::TtftP95Seconds, 0.5)]),
        );
        indicators.insert(
            Scope::Flag("prefix_cache".into()),
            HashMap::from([
                (Indicator::CanaryTtftRegression, 0.3),
                (Indicator::CanaryItlRegression, 0.1),
            ]),
        );
        indicators.insert(
            Scope::Flag("kv_prep".into()),
            HashMap::from([(Indicator::CanaryTtftRegression, -0.6)]),
        );
        assert_eq!(
            qos.breaches(&indicators),
            [
                Breach {
                    scope: Scope::Tenant("slow".into()),
                    indicator: Indicator::TtftP95Seconds,
                    value: 3.0,
                    target: 2.0
                },
                Breach {
                    scope: Scope::Flag("prefix_cache".into()),
                    indicator: Indicator::CanaryTtftRegression,
                    value: 0.3,
                    target: 0.2
                },
            ]
        );
    }

    #[test]
    fn served_name_defaults_to_file_stem() {
        let model = ModelConfig::default();
        assert_eq!(model.served_name(), "SmolLM2-135M-Instruct.Q4_1");
    }
}
