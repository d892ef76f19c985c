//! `POST /v1/completions/render` and `POST /v1/chat/completions/render`
//! (as vLLM serves them): a request's prompt token ids, chat template
//! applied, without generating. An inference gateway's endpoint picker
//! hashes them for prefix-aware routing. The same doors as a completion
//! (auth, intake gate, body limits, validation), then the tokenizer only.

use std::time::Instant;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde_json::json;

use super::ApiState;
use super::doors::{Doors, Entered};
use crate::openai::ApiError;
use crate::openai::request::parse_request;
use crate::pipeline::Endpoint;

pub fn handler(endpoint: Endpoint) -> MethodRouter<ApiState> {
    post(
        move |doors: Doors, headers: HeaderMap, body: Body| async move {
            let arrived_at = Instant::now();
            let Entered {
                pending: _pending,
                body,
                ..
            } = doors.enter(&headers, body).await?;
            let Doors {
                pipeline, server, ..
            } = &doors;
            let request =
                parse_request(endpoint, &body, pipeline.served_name(), server, arrived_at)?;
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
