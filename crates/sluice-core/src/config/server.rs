//! The server sections: listening, transport limits, TLS, HTTP/2,
//! WebSocket, admission and tenants.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
