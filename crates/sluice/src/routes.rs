//! HTTP handlers: OpenAI endpoints, health, models and metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use serde_json::json;
use sluice_core::admission::{Permit, Rejection};
use sluice_engine::{EngineError, EngineStatus, GenerationRequest, GenerationStream, StreamEvent};

use crate::api::error::ApiError;
use crate::api::openai::{ChatCompletionRequest, CompletionRequest, ValidatedParams};
use crate::api::sse::{ChunkFramer, Endpoint, usage_json};
use crate::observer::{RequestInfo, RequestObserver};
use crate::server::AppState;

/// Most ready events written together when a client is behind.
const MAX_COALESCED_EVENTS: usize = 16;

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::body_too_large(limit)
        } else {
            ApiError::bad_request(format!("Could not read the request body: {rejection}"))
        }
    })
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived_at = Instant::now();
    let tenant = state.tenant(&headers)?;
    let body = body_bytes(body, state.limits.max_body_bytes)?;
    let request = ChatCompletionRequest::parse(&body)?;
    let messages = request.chat_messages()?;
    let params = request
        .common
        .validate(&state.served_name, &state.limits, arrived_at)?;
    let model = state.ready_model()?;
    let prompt = tokio::task::spawn_blocking(move || model.tokenize_chat(&messages))
        .await
        .map_err(|err| ApiError::internal(format!("tokenizer task failed: {err}")))?
        .map_err(|err| ApiError::invalid("messages", err.to_string()))?;
    state
        .metrics
        .observe_stage("tokenize", arrived_at.elapsed());
    generate(&state, Endpoint::Chat, prompt, params, tenant, "messages").await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived_at = Instant::now();
    let tenant = state.tenant(&headers)?;
    let body = body_bytes(body, state.limits.max_body_bytes)?;
    let request = CompletionRequest::parse(&body)?;
    let prompt = request.prompt_text()?.to_owned();
    let params = request
        .common
        .validate(&state.served_name, &state.limits, arrived_at)?;
    let model = state.ready_model()?;
    let prompt = tokio::task::spawn_blocking(move || model.tokenize(&prompt, true))
        .await
        .map_err(|err| ApiError::internal(format!("tokenizer task failed: {err}")))?;
    state
        .metrics
        .observe_stage("tokenize", arrived_at.elapsed());
    generate(
        &state,
        Endpoint::Completion,
        prompt,
        params,
        tenant,
        "prompt",
    )
    .await
}

async fn generate(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    prompt: Vec<i32>,
    params: ValidatedParams,
    tenant: String,
    prompt_param: &str,
) -> Result<Response, ApiError> {
    let model = state.ready_model()?;
    let limit = model.context_per_sequence;
    if prompt.len() >= limit as usize {
        return Err(ApiError::context_length_exceeded(
            limit,
            prompt.len(),
            prompt_param,
        ));
    }
    let room = limit - prompt.len() as u32;
    let max_tokens = params
        .max_tokens
        .map_or(room, |requested| requested.min(room));
    let prompt_tokens = prompt.len();
    let queued_at = Instant::now();
    let permit = state
        .admission
        .acquire(&tenant)
        .await
        .map_err(|rejection| admission_error(state, &tenant, rejection))?;
    let admitted_at = Instant::now();
    state
        .metrics
        .observe_stage("admission", admitted_at - queued_at);
    let generation = state
        .engine
        .submit(GenerationRequest {
            prompt_tokens: prompt,
            sampling: params.sampling,
            max_tokens,
            stop: params.stop,
            ignore_eos: params.ignore_eos,
            arrived_at: params.arrived_at,
        })
        .map_err(engine_error)?;
    let id = format!("{}{}", endpoint.id_prefix(), state.next_request_id());
    let observer = RequestObserver::new(
        Arc::clone(&state.metrics),
        Arc::clone(&state.latency),
        RequestInfo {
            id: id.clone(),
            tenant,
            endpoint,
            arrived_at: params.arrived_at,
            admitted_at,
            prompt_tokens,
        },
    );
    if params.stream {
        let framer = ChunkFramer::new(
            endpoint,
            &id,
            unix_now(),
            &state.served_name,
            params.include_usage,
        );
        let writer = StreamWriter {
            generation,
            framer,
            observer,
            state: Arc::clone(state),
            _permit: permit,
            include_usage: params.include_usage,
            opened: false,
            done: false,
        };
        let body = futures::stream::unfold(writer, |mut writer| async move {
            writer
                .next_frame()
                .await
                .map(|frame| (Ok::<Bytes, Infallible>(frame), writer))
        });
        Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(body),
        )
            .into_response())
    } else {
        collect_response(state, endpoint, id, generation, observer, permit).await
    }
}

fn admission_error(state: &AppState, tenant: &str, rejection: Rejection) -> ApiError {
    let retry_after = rejection
        .retry_after()
        .map_or(1, |wait| wait.as_secs().max(1));
    let (reason, error) = match rejection {
        Rejection::QueueFull { .. } => (
            "queue_full",
            ApiError::too_many_requests(
                "server_overloaded",
                "queue_full",
                "The server's admission queue is full; retry after the Retry-After delay.",
                retry_after,
            ),
        ),
        Rejection::WaitTimedOut { .. } => (
            "wait_timeout",
            ApiError::too_many_requests(
                "server_overloaded",
                "admission_timeout",
                "The request waited for admission longer than the server's limit; retry after the Retry-After delay.",
                retry_after,
            ),
        ),
        Rejection::TenantQueueFull { .. } => (
            "tenant_limit",
            ApiError::too_many_requests(
                "rate_limit_exceeded",
                "tenant_concurrency_limit",
                format!(
                    "Tenant '{tenant}' is at its concurrent stream limit and the queue is full."
                ),
                retry_after,
            ),
        ),
        Rejection::Closed => (
            "draining",
            ApiError::unavailable("The server is shutting down."),
        ),
    };
    state.metrics.count_rejected(reason);
    error
}

fn engine_error(err: EngineError) -> ApiError {
    match err {
        EngineError::Loading => ApiError::unavailable("The model is still loading."),
        EngineError::QueueFull { waiting } => ApiError::unavailable(format!(
            "The server is at capacity: {waiting} requests are already waiting."
        )),
        EngineError::Stopped => ApiError::unavailable("The engine has stopped."),
        EngineError::Load(message) => ApiError::internal(message),
    }
}

/// Turns one generation into SSE frames, ending with `[DONE]` however the
/// generation ends (finish, engine error, server shutdown).
struct StreamWriter {
    generation: GenerationStream,
    framer: ChunkFramer,
    observer: RequestObserver,
    state: Arc<AppState>,
    /// Held for the stream's whole life; dropping the writer releases it.
    _permit: Permit,
    include_usage: bool,
    opened: bool,
    done: bool,
}

impl StreamWriter {
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = BytesMut::with_capacity(512);
        if !self.opened {
            self.opened = true;
            self.framer.role(&mut out);
            if !out.is_empty() {
                return Some(out.freeze());
            }
        }
        let event = tokio::select! {
            event = self.generation.next() => event,
            () = self.state.streams_cancelled() => {
                self.done = true;
                self.observer.fail("shutdown");
                self.framer.error(&ApiError::unavailable("The server is shutting down."), &mut out);
                return Some(out.freeze());
            }
        };
        self.write_event(event, &mut out);
        // A client that is behind gets the ready events in one write.
        for _ in 1..MAX_COALESCED_EVENTS {
            if self.done {
                break;
            }
            match self.generation.try_next() {
                Some(event) => self.write_event(Some(event), &mut out),
                None => break,
            }
        }
        Some(out.freeze())
    }

    fn write_event(&mut self, event: Option<StreamEvent>, out: &mut BytesMut) {
        match event {
            Some(StreamEvent::Token { text, .. }) => {
                self.observer.token_written(Instant::now());
                self.framer.text(&text, out);
            }
            Some(StreamEvent::Finished {
                reason,
                usage,
                timings,
            }) => {
                self.done = true;
                self.observer.finished(reason, usage, timings);
                self.framer
                    .finish(reason, self.include_usage.then_some(usage), out);
            }
            Some(StreamEvent::Error { message }) => {
                self.done = true;
                self.observer.fail("engine_error");
                self.framer.error(&ApiError::internal(message), out);
            }
            None => {
                self.done = true;
                self.observer.fail("engine_error");
                self.framer.error(
                    &ApiError::internal("The engine ended the stream unexpectedly."),
                    out,
                );
            }
        }
    }
}

async fn collect_response(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    id: String,
    mut generation: GenerationStream,
    mut observer: RequestObserver,
    _permit: Permit,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        let event = tokio::select! {
            event = generation.next() => event,
            () = state.streams_cancelled() => {
                observer.fail("shutdown");
                return Err(ApiError::unavailable("The server is shutting down."));
            }
        };
        match event {
            Some(StreamEvent::Token { text: piece, .. }) => {
                observer.token_written(Instant::now());
                text.push_str(&piece);
            }
            Some(StreamEvent::Finished {
                reason,
                usage,
                timings,
            }) => {
                observer.finished(reason, usage, timings);
                let choice = match endpoint {
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": reason.as_str(),
                    }),
                    Endpoint::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": null,
                        "finish_reason": reason.as_str(),
                    }),
                };
                let body = json!({
                    "id": id,
                    "object": endpoint.object(false),
                    "created": unix_now(),
                    "model": state.served_name,
                    "choices": [choice],
                    "usage": usage_json(usage),
                });
                return Ok(axum::Json(body).into_response());
            }
            Some(StreamEvent::Error { message }) => {
                observer.fail("engine_error");
                return Err(ApiError::internal(message));
            }
            None => {
                observer.fail("engine_error");
                return Err(ApiError::internal(
                    "The engine ended the request unexpectedly.",
                ));
            }
        }
    }
}

pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let max_model_len = state.engine.model().ok().map(|m| m.context_per_sequence);
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.served_name,
            "object": "model",
            "created": state.started_at_unix,
            "owned_by": "sluice",
            "max_model_len": max_model_len,
        }],
    }))
    .into_response()
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (status, body) = if state.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        )
    } else {
        match state.engine.status() {
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

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state
            .metrics
            .render(state.engine.stats(), state.admission.snapshot().queued),
    )
        .into_response()
}

pub async fn not_found(OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(uri.path())
}

pub async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
