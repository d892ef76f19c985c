//! Builds the router, binds the listener and runs the server until shutdown:
//! stop accepting, let streams finish within the grace period, then cancel
//! what is left.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, header};
use axum::routing::{any, get, post, put};
use sluice_core::admission::{Admission, AdmissionLimits, TenantPolicy};
use sluice_core::config::{Http2Config, RuntimeConfig, ServerConfig};
use sluice_core::flags::Flags;
use sluice_core::governor::Governor;
use sluice_core::registry::StreamRegistry;
use sluice_core::speculation::OpeningCache;
use sluice_engine::{EngineHandle, EngineOptions, LoadedModel};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alerter;
use crate::api::error::ApiError;
use crate::governor::{self, LatencyWindows};
use crate::metrics::Metrics;
use crate::qos::{self, PolicyLog};
use crate::routes;
use crate::transport::{self, ProtocolMode, TlsAcceptors};
use crate::{admin, ws};

pub use sluice_core::admission::DEFAULT_TENANT;

pub struct AppState {
    pub engine: EngineHandle,
    pub served_name: String,
    pub limits: ServerConfig,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    pub latency: Arc<LatencyWindows>,
    /// The policy engine's bound on the admission limit; the governor keeps
    /// the limit at or under it.
    pub limit_bound: AtomicU32,
    /// Whether new connections are offered HTTP/2.
    pub protocol: Arc<ProtocolMode>,
    pub flags: Flags,
    /// What the QoS policy engine has done.
    pub policy_log: PolicyLog,
    /// Logs and sends SLO breaches and policy actions.
    pub alerter: Alerter,
    /// First-token speculation's cached openings.
    pub speculation: std::sync::Mutex<OpeningCache>,
    /// API key → tenant name.
    tenants_by_key: HashMap<String, String>,
    pub started_at_unix: u64,
    draining: AtomicBool,
    /// Every live stream; closed when the shutdown grace period ends,
    /// which ends the streams still open.
    pub streams: Arc<StreamRegistry>,
    request_counter: AtomicU64,
    request_id_salt: u64,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The loaded model, or 503 while loading or draining.
    pub fn ready_model(&self) -> Result<Arc<LoadedModel>, ApiError> {
        if self.is_draining() {
            return Err(ApiError::unavailable("The server is shutting down."));
        }
        self.engine.model().map_err(|err| match err {
            sluice_engine::EngineError::Loading => {
                ApiError::unavailable("The model is still loading.")
            }
            other => ApiError::unavailable(other.to_string()),
        })
    }

    /// The tenant a request belongs to, from its bearer token. Without
    /// configured keys every request is the default tenant's; with them, a
    /// request carrying an unknown key is refused.
    pub fn tenant(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if self.tenants_by_key.is_empty() {
            return Ok(DEFAULT_TENANT.to_owned());
        }
        let key = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match key {
            None => Ok(DEFAULT_TENANT.to_owned()),
            Some(key) => self
                .tenants_by_key
                .get(key.trim())
                .cloned()
                .ok_or_else(ApiError::invalid_api_key),
        }
    }

    /// Unique, hard-to-guess request ids without a random-number crate.
    pub fn next_request_id(&self) -> String {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:08x}", self.request_id_salt)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        // `any`: WebSockets over HTTP/2 (RFC 8441) arrive as CONNECT.
        .route("/v1/ws", any(ws::upgrade))
        .route("/admin/state", get(admin::state))
        .route("/admin/streams", get(admin::streams))
        .route("/admin/protocol", put(admin::set_protocol))
        .route("/admin/flags/{name}", put(admin::set_flag))
        .route("/admin/fault/stall", post(admin::inject_stall))
        .route("/v1/models", get(routes::models))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A server running in the background, for `main` and for tests.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl RunningServer {
    /// Binds the configured address (port 0 picks a free one) and starts
    /// serving at once; the model loads in the background (`/health` says 503
    /// until it is ready).
    pub async fn start(config: &RuntimeConfig, chat_template: Option<String>) -> io::Result<Self> {
        let mut engine_config = config.engine.clone();
        if !config.governor.adapt_step_budget {
            // A fixed budget: size the llama.cpp batch for it, not for a
            // ceiling nothing will raise it to.
            engine_config.max_step_token_budget = engine_config.step_token_budget;
        }
        let engine = EngineHandle::spawn(EngineOptions {
            model_path: config.model.path.clone(),
            chat_template,
            config: engine_config,
        });
        let tls = config
            .server
            .tls
            .as_ref()
            .map(TlsAcceptors::load)
            .transpose()?;
        let listener = TcpListener::bind((config.server.host.as_str(), config.server.port)).await?;
        let local_addr = listener.local_addr()?;
        let policies = config
            .admission
            .tenants
            .iter()
            .map(|tenant| {
                let policy = TenantPolicy {
                    weight: tenant.weight,
                    max_concurrent: tenant.max_concurrent.unwrap_or(u32::MAX),
                    tokens_per_minute: tenant.tokens_per_minute,
                };
                (tenant.name.clone(), policy)
            })
            .collect();
        let tenants_by_key = config
            .admission
            .tenants
            .iter()
            .flat_map(|tenant| {
                tenant
                    .api_keys
                    .iter()
                    .map(|key| (key.clone(), tenant.name.clone()))
            })
            .collect();
        let admission = Admission::new(
            config.governor.max_streams,
            AdmissionLimits {
                max_queue: config.admission.max_queue,
                max_wait: Duration::from_millis(config.admission.max_wait_ms),
            },
            policies,
        );
        let latency = Arc::new(LatencyWindows::new(Duration::from_millis(
            config.governor.window_ms,
        )));
        let metrics = Arc::new(Metrics::with_tenants(
            config
                .admission
                .tenants
                .iter()
                .map(|tenant| tenant.name.clone())
                .collect(),
        ));
        let state = Arc::new(AppState {
            engine,
            served_name: config.model.served_name(),
            limits: config.server.clone(),
            metrics: Arc::clone(&metrics),
            admission: Arc::clone(&admission),
            latency: Arc::clone(&latency),
            limit_bound: AtomicU32::new(config.governor.max_streams),
            protocol: Arc::new(ProtocolMode::new(config.server.http2.enabled)),
            flags: Flags::new(config.flags.clone()),
            policy_log: PolicyLog::default(),
            alerter: Alerter::start(&config.alerts, metrics.alerts.clone())?,
            speculation: std::sync::Mutex::new(OpeningCache::new(config.speculation.clone())),
            tenants_by_key,
            started_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            draining: AtomicBool::new(false),
            streams: StreamRegistry::new(),
            request_counter: AtomicU64::new(0),
            request_id_salt: {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(local_addr)
            },
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(governor::run(
            Governor::new(
                config.governor.clone(),
                config.engine.step_token_budget,
                config.engine.step_budget_ceiling(),
            ),
            Duration::from_millis(config.governor.tick_ms),
            Arc::clone(&state),
            shutdown.clone(),
        ));
        tokio::spawn(qos::run(
            Arc::clone(&state),
            config.qos.clone(),
            config.governor.min_streams,
            config.governor.max_streams,
            shutdown.clone(),
        ));
        let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
        let task = tokio::spawn(serve(
            listener,
            tls,
            config.server.http2.clone(),
            Arc::clone(&state),
            shutdown.clone(),
            grace,
        ));
        Ok(Self {
            local_addr,
            state,
            shutdown,
            task,
        })
    }

    /// Applies what can change without a restart from a reloaded config
    /// (SIGHUP): feature flags and whether new connections get HTTP/2. Each
    /// is swapped whole. Returns the names of the other sections that
    /// differ, which need a restart.
    pub fn reload(&self, previous: &RuntimeConfig, next: &RuntimeConfig) -> Vec<&'static str> {
        self.state.flags.replace(next.flags.clone());
        self.state.protocol.set_http2(next.server.http2.enabled);
        let mut server = next.server.clone();
        server.http2.enabled = previous.server.http2.enabled;
        [
            ("server", server != previous.server),
            ("model", next.model != previous.model),
            ("engine", next.engine != previous.engine),
            ("governor", next.governor != previous.governor),
            ("admission", next.admission != previous.admission),
            ("alerts", next.alerts != previous.alerts),
            ("speculation", next.speculation != previous.speculation),
            ("qos", next.qos != previous.qos),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.state.engine
    }

    /// Begins graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> io::Result<()> {
        self.task
            .await
            .map_err(|err| io::Error::other(format!("server task failed: {err}")))?
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptors>,
    http2: Http2Config,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    grace: Duration,
) -> io::Result<()> {
    let app = router(Arc::clone(&state));
    let stop_accepting = CancellationToken::new();
    let drain = {
        let stop_accepting = stop_accepting.clone();
        let state = Arc::clone(&state);
        async move {
            shutdown.cancelled().await;
            state.draining.store(true, Ordering::Relaxed);
            state.admission.close();
            tracing::info!(
                grace_seconds = grace.as_secs(),
                "shutting down: draining streams"
            );
            stop_accepting.cancel();
            tokio::time::sleep(grace).await;
            tracing::warn!("grace period over: cancelling remaining streams");
            state.streams.close();
        }
    };
    let drain = tokio::spawn(drain);
    transport::serve(
        listener,
        app,
        tls,
        &http2,
        Arc::clone(&state.protocol),
        stop_accepting,
    )
    .await;
    drain.abort();
    Ok(())
}
