//! The server sections: listening, transport limits, TLS, HTTP/2,
//! WebSocket, admission and tenants.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::admission::Priority;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Requests waiting for admission, over all tenants; more get 429.
    pub max_queue: usize,
    /// Longest a request waits for admission before it gets 429.
    pub max_wait_ms: u64,
    /// Admission permits batch requests may not take, so interactive ones
    /// never wait for a batch flood to finish.
    pub interactive_reserve: u32,
    /// Shed at once (429 with a booked `Retry-After`) a request whose
    /// predicted first token misses its deadline: the TTFT SLO
    /// (`qos.slo.ttft_p95_seconds`) for interactive requests, or the
    /// request's own `ttft_deadline_ms`. Batch requests have none of
    /// their own.
    pub deadline_shedding: bool,
    /// API keys to tenants. Requests without a known key belong to `default`.
    pub tenants: Vec<TenantConfig>,
    /// Tenants' token rates kept in Redis and shared by every node behind
    /// one gateway; unset: each node counts against its own buckets.
    pub shared_quota: Option<SharedQuotaConfig>,
}

/// Where the token buckets of several nodes live, and what a node does when
/// it cannot reach them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedQuotaConfig {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// Prefix of the bucket keys; nodes sharing quotas use the same one.
    pub key_prefix: String,
    /// Longest a charge waits for Redis before the node counts it as down.
    pub timeout_ms: u64,
    /// How long after a failure the node counts locally before it tries
    /// Redis again.
    pub retry_ms: u64,
    /// While Redis is unreachable: `local` counts against this node's own
    /// buckets (fail open: each node grants the whole rate), `reject`
    /// answers 503 (fail closed).
    pub when_unreachable: QuotaFailMode,
}

impl Default for SharedQuotaConfig {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "sluice".to_owned(),
            timeout_ms: 50,
            retry_ms: 1_000,
            when_unreachable: QuotaFailMode::Local,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaFailMode {
    Local,
    Reject,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_queue: 512,
            max_wait_ms: 60_000,
            interactive_reserve: 8,
            deadline_shedding: true,
            tenants: Vec::new(),
            shared_quota: None,
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
    /// The class of this tenant's requests that name none.
    #[serde(default)]
    pub priority: Priority,
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
    /// Refuse requests without an API key (401) instead of serving them as
    /// the `default` tenant. Unset: required as soon as any tenant has a key.
    pub require_api_key: Option<bool>,
    /// A header naming the tenant, set by a gateway that authenticated the
    /// client (e.g. `x-llm-d-inference-fairness-id`). When present it wins
    /// over the API key, so only set it where clients cannot reach the
    /// server except through that gateway. Unset: off.
    pub trusted_tenant_header: Option<String>,
    /// Also expose the gauges an inference gateway's endpoint picker
    /// scrapes (queued and running requests, KV-cache use, cache config)
    /// under vLLM's `vllm:` names, for routers that hard-code them.
    pub vllm_metric_names: bool,
    /// `Host` (and `Origin`, when sent) values accepted, without port; others
    /// get 403 (DNS rebinding, cross-site WebSockets). Unset: the loopback
    /// names when bound to a loopback address, anything otherwise.
    pub allowed_hosts: Option<Vec<String>>,
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
    pub limits: LimitsConfig,
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
            require_api_key: None,
            vllm_metric_names: false,
            trusted_tenant_header: None,
            allowed_hosts: None,
            admin_api_key: None,
            fault_injection: false,
            tls: None,
            http2: Http2Config::default(),
            websocket: WebSocketConfig::default(),
            limits: LimitsConfig::default(),
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
    /// A message the client does not take within this ends the socket, so a
    /// client that never reads cannot pin the socket's task and queue.
    pub send_timeout_ms: u64,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_streams_per_socket: 16,
            ping_interval_ms: 20_000,
            send_timeout_ms: 30_000,
        }
    }
}

/// What one client may hold: connections, time before a request is
/// complete, work before admission, and a stream's lifetime. Each limit
/// answers the way a client can understand (431, 408, 429, an error event)
/// or closes a connection that sent nothing usable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections at most; a connection over it is closed at once
    /// (counted in `sluice:connections_refused_total`).
    pub max_connections: usize,
    /// A new connection must send its first byte (TLS: finish its
    /// handshake) within this.
    pub first_byte_timeout_ms: u64,
    /// A request's headers, or the HTTP/2 preface, must be complete within
    /// this after its first byte.
    pub header_read_timeout_ms: u64,
    /// A request body must be complete within this; 408 otherwise.
    pub body_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2: GOAWAY).
    pub idle_timeout_ms: u64,
    /// A connection older than this is asked to close once its requests
    /// finish (HTTP/2: GOAWAY; streams run to the end), so load rebalances
    /// across replicas. 0: no limit.
    pub max_connection_age_seconds: u64,
    /// Most header fields in one request; more get 431.
    pub max_header_count: usize,
    /// Largest header block of one request, in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Requests being read, parsed and tokenized at once, before admission,
    /// over all tenants and per tenant; more get 429 at once.
    pub max_pending_requests: usize,
    pub max_pending_per_tenant: usize,
    /// A chat or completion prompt (text, before tokenizing) larger than
    /// this gets 400 before any tokenizing.
    pub max_prompt_bytes: usize,
    /// Longest a stream may run from arrival to its last event; it then
    /// ends with an error event. 0: no limit.
    pub max_stream_seconds: u64,
    /// A client that holds its stream up (the server waits on it to read)
    /// must read at least this many bytes per second of that waiting, after
    /// `slow_reader_grace_ms` of it; slower, the stream ends with an error
    /// event and frees its sequence. 0: no limit.
    pub min_read_bytes_per_second: u64,
    pub slow_reader_grace_ms: u64,
    /// After the shutdown grace period, streams still open are cancelled;
    /// the process exits this long after that whatever is left.
    pub shutdown_hard_deadline_seconds: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            first_byte_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            max_connection_age_seconds: 0,
            max_header_count: 100,
            max_header_bytes: 16 * 1024,
            max_pending_requests: 256,
            max_pending_per_tenant: 128,
            max_prompt_bytes: 512 * 1024,
            max_stream_seconds: 1800,
            min_read_bytes_per_second: 64,
            slow_reader_grace_ms: 10_000,
            shutdown_hard_deadline_seconds: 10,
        }
    }
}
