//! Operations endpoints: `/v1/models`, `/health`, `/metrics`, and the
//! OpenAI-style answers for unknown paths and methods.

use std::sync::Arc;

use axum::extract::{OriginalUri, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sluice_core::admission::Admission;
use sluice_engine::EngineStatus;

use crate::openai::ApiError;
use crate::pipeline::Pipeline;
use crate::telemetry::Metrics;

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
    let max_model_len = pipeline
        .engine()
        .model()
        .ok()
        .map(|m| m.context_per_sequence);
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

pub async fn health(State(pipeline): State<Arc<Pipeline>>) -> Response {
    let (status, body) = if pipeline.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        )
    } else {
        match pipeline.engine().status() {
            EngineStatus::Ready(_) => (StatusCode::OK, json!({"status": "ok"})),
            EngineStatus::Loading => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "loading"}),
            ),
            EngineStatus::Failed(error) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "failed", "error": error}),
            ),
        }
    };
    (status, axum::Json(body)).into_response()
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
            pipeline.engine().stats(),
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
