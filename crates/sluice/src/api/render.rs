//! `POST /v1/completions/render` and `POST /v1/chat/completions/render`
//! (as vLLM serves them): a request's prompt token ids, chat template
//! applied, without generating. An inference gateway's endpoint picker
//! hashes them for prefix-aware routing. The same doors as a completion
//! (auth, intake gate, body limits, validation), then the tokenizer only.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::json;
use sluice_core::config::ServerConfig;

use super::ApiState;
use super::auth::TenantKeys;
use super::completions::{is_json, read_body};
use super::intake::PendingGate;
use crate::openai::ApiError;
use crate::openai::request::parse_request;
use crate::pipeline::{Endpoint, Pipeline};

pub fn handler(endpoint: Endpoint) -> MethodRouter<ApiState> {
    post(
        move |State(pipeline): State<Arc<Pipeline>>,
              State(tenants): State<Arc<TenantKeys>>,
              State(intake): State<Arc<PendingGate>>,
              State(server): State<Arc<ServerConfig>>,
              headers: HeaderMap,
              body: axum::body::Body| async move {
            let arrived_at = Instant::now();
            let tenant = tenants.tenant(&headers)?;
            is_json(&headers)?;
            let _pending = intake.enter(&tenant)?;
            let body = read_body(body, &server).await?;
            let request =
                parse_request(endpoint, &body, pipeline.served_name(), &server, arrived_at)?;
            let token_ids = pipeline.render(request).await?;
            // vLLM's shapes: one entry per prompt for completions, one
            // object for a chat.
            let answer = match endpoint {
                Endpoint::Completion => json!([{ "token_ids": token_ids }]),
                Endpoint::Chat => json!({ "token_ids": token_ids }),
            };
            Ok::<Response, ApiError>(axum::Json(answer).into_response())
        },
    )
}
