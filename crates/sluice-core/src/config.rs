//! Runtime configuration. Every knob has a default, so the binary runs with no
//! file at all; `config/runtime.yaml` documents each one and CLI flags
//! override it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::flags::FlagsConfig;
use crate::governor::GovernorConfig;
use crate::policy::{Indicator, PolicyConfig};
use crate::speculation::SpeculationConfig;

/// Where the default model lands after `scripts/setup.sh` fetched it.
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

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
}

/// The SLO evaluator and the policy engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QosConfig {
    /// Length of one evaluation window.
    pub evaluation_interval_ms: u64,
    pub slo: SloTargets,
    pub policy: PolicyConfig,
}

impl Default for QosConfig {
    fn default() -> Self {
        Self {
            evaluation_interval_ms: 10_000,
            slo: SloTargets::default(),
            policy: PolicyConfig::default(),
        }
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
    pub fn breaches(
        &self,
        indicators: &std::collections::HashMap<Indicator, f64>,
    ) -> Vec<(Indicator, f64, f64)> {
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
    /// Smallest prefill chunk per step, so prefill progresses even when
    /// running streams fill the budget.
    pub min_prefill_chunk: u32,
    /// Threads llama.cpp computes with; 0 means one per available core.
    pub threads: u32,
    /// Events buffered between the engine and one client's writer. A client
    /// that falls this far behind has its sequence parked.
    pub stream_buffer_events: usize,
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

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_sequences: 128,
            context_per_sequence: 1024,
            kv_unified: false,
            step_token_budget: 128,
            min_prefill_chunk: 16,
            threads: 0,
            stream_buffer_events: 64,
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
                engine.stream_buffer_events == 0,
                "engine.stream_buffer_events must be at least 1",
            ),
            (
                self.server.max_body_bytes < 1024,
                "server.max_body_bytes must be at least 1024",
            ),
        ];
        if let Some((_, message)) = checks.iter().find(|(failed, _)| *failed) {
            return Err(ConfigError::Invalid((*message).to_owned()));
        }
        self.flags.validate().map_err(ConfigError::Invalid)
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
    fn served_name_defaults_to_file_stem() {
        let model = ModelConfig::default();
        assert_eq!(model.served_name(), "SmolLM2-135M-Instruct.Q4_1");
    }
}
