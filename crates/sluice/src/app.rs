//! The app: builds every part from the config, wires them together and runs
//! the server until shutdown (stop accepting, let streams finish within
//! the grace period, then cancel what is left). The top of the dependency
//! order: it may use every module; none uses it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::admission::{Admission, AdmissionLimits, TenantPolicy};
use sluice_core::clock::unix_seconds;
use sluice_core::config::RuntimeConfig;
use sluice_core::governor::{Governor, Targets};
use sluice_core::registry::StreamRegistry;
use sluice_engine::kv_events::KvEventSender;
use sluice_engine::{EngineHandle, EngineOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AdminState, ApiState, HostAllowlist, OpsState, PendingGate, TenantKeys};
use crate::control::RuntimeKnobs;
use crate::control::alerts::Alerter;
use crate::control::governor::{self, GovernorLoop};
use crate::control::qos::{self, PolicyLog, QosLoop};
use crate::pipeline::{Deadlines, Pipeline, PipelineParts, Quota, StreamLimits};
use crate::telemetry::{LatencyWindows, Metrics, start_kv_event_publisher};
use crate::transport::{self, TlsAcceptors};

/// A server running in the background, for `main` and for tests.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    pub pipeline: Arc<Pipeline>,
    pub admission: Arc<Admission>,
    knobs: Arc<RuntimeKnobs>,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

/// The shared parts every layer is given a narrow view of.
struct Parts {
    engine: EngineHandle,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    latency: Arc<LatencyWindows>,
    knobs: Arc<RuntimeKnobs>,
}

impl Parts {
    fn build(
        config: &RuntimeConfig,
        chat_template: Option<String>,
        kv_events: Option<KvEventSender>,
    ) -> Self {
        let mut engine_config = config.engine.clone();
        if !config.governor.adapt_step_budget {
            // A fixed budget: size the llama.cpp batch for it, not for a
            // ceiling nothing will raise it to.
            engine_config.max_step_token_budget = engine_config.step_token_budget;
        }
        let options = EngineOptions {
            model_path: config.model.path.clone(),
            chat_template,
            config: engine_config,
        };
        let engine = match kv_events {
            Some(sender) => EngineHandle::spawn_publishing(options, sender),
            None => EngineHandle::spawn(options),
        };
        let policies = config
            .admission
            .tenants
            .iter()
            .map(|tenant| {
                let policy = TenantPolicy {
                    weight: tenant.weight,
                    max_concurrent: tenant.max_concurrent.unwrap_or(u32::MAX),
                    tokens_per_minute: tenant.tokens_per_minute,
                    priority: tenant.priority,
                };
                (tenant.name.clone(), policy)
            })
            .collect();
        let admission = Admission::new(
            config.governor.max_streams,
            AdmissionLimits {
                max_queue: config.admission.max_queue,
                max_wait: Duration::from_millis(config.admission.max_wait_ms),
                interactive_reserve: config.admission.interactive_reserve,
            },
            policies,
        );
        let tenants = config.admission.tenants.iter();
        Self {
            engine,
            knobs: Arc::new(RuntimeKnobs::new(config, Arc::clone(&admission))),
            admission,
            metrics: Arc::new(Metrics::for_server(
                tenants.map(|tenant| tenant.name.clone()).collect(),
                config.server.vllm_metric_names,
            )),
            latency: Arc::new(LatencyWindows::new(Duration::from_millis(
                config.governor.window_ms,
            ))),
        }
    }
}

impl RunningServer {
    /// Binds the configured address (port 0 picks a free one) and starts
    /// serving at once; the model loads in the background (`/health` says 503
    /// until it is ready).
    pub async fn start(config: &RuntimeConfig, chat_template: Option<String>) -> io::Result<Self> {
        let tls = config
            .server
            .tls
            .as_ref()
            .map(TlsAcceptors::load)
            .transpose()?;
        let listener = TcpListener::bind((config.server.host.as_str(), config.server.port)).await?;
        let local_addr = listener.local_addr()?;
        let kv_events = if config.engine.kv_events.enabled {
            Some(
                start_kv_event_publisher(&config.engine.kv_events, &config.model.served_name())
                    .await?,
            )
        } else {
            None
        };
        let parts = Parts::build(config, chat_template, kv_events);
        let quota = Quota::new(
            &parts.admission,
            config.admission.shared_quota.as_ref(),
            &parts.metrics,
        )
        .map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("admission.shared_quota.redis_url: {error}"),
            )
        })?;
        let pipeline = Arc::new(Pipeline::new(PipelineParts {
            engine: parts.engine.clone(),
            served_name: config.model.served_name(),
            admission: Arc::clone(&parts.admission),
            quota,
            streams: StreamRegistry::new(),
            flags: Arc::clone(parts.knobs.flags()),
            speculation: config.speculation.clone(),
            metrics: Arc::clone(&parts.metrics),
            latency: Arc::clone(&parts.latency),
            stream_limits: StreamLimits::new(&config.server.limits),
            deadlines: Deadlines {
                shedding: config.admission.deadline_shedding,
                interactive: config.qos.slo.ttft_p95_seconds.map(Duration::from_secs_f64),
            },
            request_id_salt: {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(local_addr)
            },
        }));
        let shutdown = CancellationToken::new();
        let policy_log = Arc::new(PolicyLog::default());
        start_control_loops(config, &parts, &policy_log, &shutdown)?;
        let api = api_state(config, &parts, &pipeline, policy_log);
        let task = tokio::spawn(serve(ServeTask {
            listener,
            tls,
            config: config.clone(),
            api,
            knobs: Arc::clone(&parts.knobs),
            shutdown: shutdown.clone(),
        }));
        Ok(Self {
            local_addr,
            pipeline,
            admission: parts.admission,
            knobs: parts.knobs,
            shutdown,
            task,
        })
    }

    /// Applies what can change without a restart from a reloaded config
    /// (SIGHUP); returns the sections that differ from what runs and need
    /// a restart.
    pub fn reload(&self, next: &RuntimeConfig) -> Vec<&'static str> {
        self.knobs.reload(next)
    }

    pub fn engine(&self) -> &EngineHandle {
        self.pipeline.engine()
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

fn start_control_loops(
    config: &RuntimeConfig,
    parts: &Parts,
    policy_log: &Arc<PolicyLog>,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    tokio::spawn(governor::run(
        Governor::new(
            config.governor.clone(),
            Targets::from_slo(
                config.qos.slo.ttft_p95_seconds,
                config.qos.slo.itl_p95_seconds,
            ),
            config.engine.step_token_budget,
            config.engine.step_budget_ceiling(),
        ),
        Duration::from_millis(config.governor.tick_ms),
        GovernorLoop {
            engine: parts.engine.clone(),
            admission: Arc::clone(&parts.admission),
            latency: Arc::clone(&parts.latency),
            knobs: Arc::clone(&parts.knobs),
            metrics: Arc::clone(&parts.metrics),
        },
        shutdown.clone(),
    ));
    tokio::spawn(qos::run(
        QosLoop {
            metrics: Arc::clone(&parts.metrics),
            alerter: Alerter::start(&config.alerts, parts.metrics.alerts.clone())?,
            log: Arc::clone(policy_log),
            knobs: Arc::clone(&parts.knobs),
        },
        config.qos.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

fn api_state(
    config: &RuntimeConfig,
    parts: &Parts,
    pipeline: &Arc<Pipeline>,
    policy_log: Arc<PolicyLog>,
) -> ApiState {
    let server = Arc::new(config.server.clone());
    ApiState {
        pipeline: Arc::clone(pipeline),
        tenants: Arc::new(TenantKeys::new(&config.server, &config.admission)),
        intake: Arc::new(PendingGate::new(&config.server.limits)),
        hosts: Arc::new(HostAllowlist::new(&config.server)),
        ops: Arc::new(OpsState {
            metrics: Arc::clone(&parts.metrics),
            admission: Arc::clone(&parts.admission),
            started_at_unix: unix_seconds(),
        }),
        admin: Arc::new(AdminState {
            server: Arc::clone(&server),
            knobs: Arc::clone(&parts.knobs),
            admission: Arc::clone(&parts.admission),
            policy_log,
        }),
        server,
    }
}

struct ServeTask {
    listener: TcpListener,
    tls: Option<TlsAcceptors>,
    config: RuntimeConfig,
    api: ApiState,
    knobs: Arc<RuntimeKnobs>,
    shutdown: CancellationToken,
}

async fn serve(task: ServeTask) -> io::Result<()> {
    let ServeTask {
        listener,
        tls,
        config,
        api,
        knobs,
        shutdown,
    } = task;
    let pipeline = Arc::clone(&api.pipeline);
    let connection_metrics = Arc::new(api.ops.metrics.connections.clone());
    let app = api::router(api);
    let stop_accepting = CancellationToken::new();
    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    let hard_deadline =
        grace + Duration::from_secs(config.server.limits.shutdown_hard_deadline_seconds);
    let drain = {
        let stop_accepting = stop_accepting.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            pipeline.start_draining();
            tracing::info!(
                grace_seconds = grace.as_secs(),
                "shutting down: draining streams"
            );
            stop_accepting.cancel();
            tokio::time::sleep(grace).await;
            tracing::warn!("grace period over: cancelling remaining streams");
            pipeline.streams().close();
        }
    };
    let drain = tokio::spawn(drain);
    let serving = transport::serve(
        listener,
        transport::Serving {
            app,
            tls,
            http2: config.server.http2.clone(),
            limits: config.server.limits.clone(),
            mode: Arc::clone(knobs.protocol()),
            metrics: connection_metrics,
        },
        stop_accepting,
    );
    // Connections that outlive the cancelled streams (a client that never
    // reads its last bytes) do not hold the process past the hard deadline.
    let hard_stop = async {
        shutdown.cancelled().await;
        tokio::time::sleep(hard_deadline).await;
    };
    tokio::select! {
        () = serving => {}
        () = hard_stop => tracing::error!(
            seconds = hard_deadline.as_secs(),
            "hard shutdown deadline: exiting with connections still open"
        ),
    }
    drain.abort();
    Ok(())
}
