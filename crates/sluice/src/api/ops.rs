//! Operations endpoints: `/v1/models`, `/health` (and Kubernetes' pair,
//! `/health/live` and `/health/ready`), `/metrics`, and the OpenAI-style
//! answers for unknown paths and methods.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{OriginalUri, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_core::admission::Admission;
use sluice_engine::{EngineHandle, EngineStatus};

use crate::openai::ApiError;
use crate::pipeline::Pipeline;
use crate::telemetry::{EngineView, Metrics};

/// What the operations endpoints read beside the pipeline.
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub admission: Arc<Admission>,
    pub started_at_unix: u64,
}

pub async fn models(
    State(pipeline): State<Arc<Pipeline>>,
    State(ops): State<Arc<OpsState>>,
) -> Response {
    let max_model_len = pipeline.engine().model().ok().map(|m| m.served_context());
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": pipeline.served_name(),
            "object": "model",
            "created": ops.started_at_unix,
            "owned_by": "sluice",
            "max_model_len": max_model_len,
        }],
    }))
    .into_response()
}

/// The engine's health as the probes see it, worst first.
enum EngineHealth {
    Failed(String),
    /// Has work and has not finished a step for this long.
    Stalled(Duration),
    Loading,
    Ready,
}

impl EngineHealth {
    fn of(engine: &EngineHandle) -> Self {
        match engine.status() {
            EngineStatus::Failed(reason) => Self::Failed(reason),
            EngineStatus::Loading => Self::Loading,
            EngineStatus::Ready(_) => match engine.stalled_for() {
                Some(silent) => Self::Stalled(silent),
                None => Self::Ready,
            },
        }
    }

    /// The body of a probe that fails on this, or None.
    fn failure(&self) -> Option<serde_json::Value> {
        match self {
            Self::Failed(reason) => Some(json!({"status": "failed", "error": reason})),
            Self::Stalled(silent) => Some(json!({
                "status": "stalled",
                "error": format!(
                    "the engine has had work without finishing a step for {} ms",
                    silent.as_millis()
                ),
            })),
            Self::Loading | Self::Ready => None,
        }
    }
}

fn probe(ok: bool, body: serde_json::Value) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// 200 only while the server serves: the model loaded, not draining, the
/// engine healthy.
pub async fn health(State(pipeline): State<Arc<Pipeline>>) -> Response {
    let health = EngineHealth::of(pipeline.engine());
    if let Some(failure) = health.failure() {
        return probe(false, failure);
    }
    if pipeline.is_draining() {
        return probe(false, json!({"status": "draining"}));
    }
    match health {
        EngineHealth::Loading => probe(false, json!({"status": "loading"})),
        _ => probe(true, json!({"status": "ok"})),
    }
}

/// Liveness: 503 only when restarting the process is the cure, the engine
/// failed or stalled. Loading and draining are alive.
pub async fn live(State(pipeline): State<Arc<Pipeline>>) -> Response {
    match EngineHealth::of(pipeline.engine()).failure() {
        Some(failure) => probe(false, failure),
        None => probe(true, json!({"status": "alive"})),
    }
}

/// Readiness: whether to send this server requests; the same as `/health`.
pub async fn ready(state: State<Arc<Pipeline>>) -> Response {
    health(state).await
}

pub async fn metrics(
    State(pipeline): State<Arc<Pipeline>>,
    State(ops): State<Arc<OpsState>>,
) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.render(
            EngineView {
                stats: pipeline.engine().stats(),
                kv_cells: pipeline.engine().model().ok().map(|model| model.kv_cells()),
            },
            ops.admission.snapshot().queued,
            &pipeline.streams().counts(),
        ),
    )
        .into_response()
}

pub async fn not_found(OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(uri.path())
}

pub async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
