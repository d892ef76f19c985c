//! Runtime configuration. Every knob has a default, so the binary runs with no
//! file at all; `config/runtime.yaml` documents each one and CLI flags
//! override it. One file per part of the server: `server` (transport,
//! admission, tenants), `engine` (model and engine), `qos` (SLOs, alerts);
//! `validate` holds the cross-field checks run on load and on reload.

mod engine;
mod qos;
mod server;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::flags::FlagsConfig;
use crate::governor::GovernorConfig;
use crate::speculation::SpeculationConfig;

pub use engine::{
    DEFAULT_MODEL_PATH, EngineConfig, KvCacheType, KvEventsConfig, ModelConfig, PoolSize,
};
pub use qos::{AlertsConfig, QosConfig, SloTargets, WebhookConfig};
pub use server::{
    AdmissionConfig, Http2Config, LimitsConfig, QuotaFailMode, ServerConfig, SharedQuotaConfig,
    TenantConfig, TlsConfig, WebSocketConfig,
};
pub use validate::{MIN_PARK_MS, MIN_STEP_STALL_TIMEOUT_MS};

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
}

#[cfg(test)]
mod tests;
