//! HTTP handlers: OpenAI endpoints, health, models and metrics.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use serde_json::json;
use sluice_core::admission::Rejection;
use sluice_core::hints;
use sluice_core::registry::{EndReason, NewStream, Protocol, Stage, StreamHandle};
use sluice_core::speculation::{CachedOpening, OpeningCache};
use sluice_engine::{
    EngineError, EngineStatus, EngineTimings, FinishReason, GenerationRequest, GenerationStream,
    SlowConsumerHook, StreamEvent, Usage,
};

use crate::api::error::ApiError;
use crate::api::openai::{ChatCompletionRequest, CompletionRequest, ValidatedParams};
use crate::api::sse::{ChunkFramer, Endpoint, Framing, usage_json};
use crate::metrics::RejectedBy;
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
    version: Version,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    respond(&state, Endpoint::Chat, version, &headers, body).await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    version: Version,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    respond(&state, Endpoint::Completion, version, &headers, body).await
}

async fn respond(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    version: Version,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived_at = Instant::now();
    let tenant = state.tenant(headers)?;
    let body = body_bytes(body, state.limits.max_body_bytes)?;
    let protocol = if version == Version::HTTP_2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let mut stream = register_stream(state, endpoint, tenant, protocol, arrived_at);
    let prepared = prepare_stream(state, endpoint, &mut stream, &body).await?;
    let started = start(state, prepared, stream).await?;
    if started.stream {
        Ok(sse_response(state, started))
    } else {
        collect_response(state, started).await
    }
}

/// Registers a stream at its arrival: from here on the registry accounts
/// for it, however it ends.
pub fn register_stream(
    state: &AppState,
    endpoint: Endpoint,
    tenant: String,
    protocol: Protocol,
    arrived_at: Instant,
) -> StreamHandle {
    state.streams.register(NewStream {
        request_id: format!("{}{}", endpoint.id_prefix(), state.next_request_id()),
        tenant,
        protocol,
        arrived_at,
    })
}

/// [`prepare`] for a registered stream; an invalid request ends it as
/// rejected.
pub async fn prepare_stream(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    stream: &mut StreamHandle,
    body: &[u8],
) -> Result<Prepared, ApiError> {
    let tenant = stream.tenant().to_owned();
    let prepared = prepare(state, endpoint, tenant, body, stream.arrived_at()).await;
    if prepared.is_err() {
        stream.end(EndReason::Rejected);
    }
    prepared
}

/// A request parsed, validated and tokenized: ready for admission.
pub struct Prepared {
    endpoint: Endpoint,
    prompt: Vec<i32>,
    params: ValidatedParams,
    tenant: String,
    prompt_param: &'static str,
    tokenize_time: Duration,
    /// Stable hash of the model and the prompt's leading blocks.
    prefix_hint: u64,
}

impl Prepared {
    /// Streams whatever the request asked for (a WebSocket always streams).
    pub fn force_stream(&mut self) {
        self.params.stream = true;
    }
}

/// Parses, validates and tokenizes a request body. Tokenizing runs on a
/// blocking thread so neither the engine nor the async workers do it.
async fn prepare(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    tenant: String,
    body: &[u8],
    arrived_at: Instant,
) -> Result<Prepared, ApiError> {
    let (common, prompt_param) = match endpoint {
        Endpoint::Chat => {
            let request = ChatCompletionRequest::parse(body)?;
            let messages = request.chat_messages()?;
            (request.common, PromptSource::Chat(messages))
        }
        Endpoint::Completion => {
            let request = CompletionRequest::parse(body)?;
            let prompt = request.prompt_text()?.to_owned();
            (request.common, PromptSource::Text(prompt))
        }
    };
    let params = common.validate(&state.served_name, &state.limits, arrived_at)?;
    let model = state.ready_model()?;
    let param = prompt_param.param();
    let prompt = tokio::task::spawn_blocking(move || match prompt_param {
        PromptSource::Chat(messages) => model.tokenize_chat(&messages),
        PromptSource::Text(text) => Ok(model.tokenize(&text, true)),
    })
    .await
    .map_err(|err| ApiError::internal(format!("tokenizer task failed: {err}")))?
    .map_err(|err| ApiError::invalid(param, err.to_string()))?;
    let prompt_param = param;
    let tokenize_time = arrived_at.elapsed();
    state.metrics.observe_stage("tokenize", tokenize_time);
    let prefix_hint = hints::prefix_hint(&state.served_name, &prompt);
    Ok(Prepared {
        endpoint,
        prompt,
        params,
        tenant,
        prompt_param,
        tokenize_time,
        prefix_hint,
    })
}

/// What gets tokenized: chat messages through the template, or raw text.
enum PromptSource {
    Chat(Vec<sluice_engine::ChatMessage>),
    Text(String),
}

impl PromptSource {
    /// The request parameter a tokenizing failure is blamed on.
    fn param(&self) -> &'static str {
        match self {
            Self::Chat(_) => "messages",
            Self::Text(_) => "prompt",
        }
    }
}

/// A generation running in the engine, with its permit and observer: what
/// the SSE writer, the non-streaming collector and the WebSocket gateway
/// each turn into their own framing.
pub struct Started {
    pub id: String,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub include_usage: bool,
    pub server_timing: String,
    /// Sent as `x-sluice-prefix-hint`, for routing by cached prefix.
    pub prefix_hint: u64,
    driver: GenerationDriver,
}

/// Checks the context, waits for admission and submits to the engine. A
/// deterministic request whose opening is cached (first-token speculation)
/// gets it at once; the engine continues from the prompt plus that opening,
/// or is not needed at all when the opening is the whole answer.
pub async fn start(
    state: &Arc<AppState>,
    prepared: Prepared,
    stream: StreamHandle,
) -> Result<Started, ApiError> {
    let mut stream = Some(stream);
    let started = admit_and_submit(state, prepared, &mut stream).await;
    // Turned away (too long, over its rate or capacity, engine full), unless
    // the failure ended it otherwise already (timed out, engine failed).
    if started.is_err()
        && let Some(stream) = &mut stream
    {
        stream.end(EndReason::Rejected);
    }
    started
}

/// Ends the stream's record (releasing its admission permit) when the engine
/// ends the stream for not being read: the SSE writer only runs when the
/// client reads, which a stalled client does not.
fn slow_consumer_hook(state: &Arc<AppState>, stream_id: u64) -> SlowConsumerHook {
    let streams = Arc::clone(&state.streams);
    SlowConsumerHook(Arc::new(move || {
        streams.end(stream_id, EndReason::SlowConsumer);
    }))
}

/// `start`'s work. The stream moves to the generation driver only once
/// nothing can fail any more, so `start` holds it on every error.
async fn admit_and_submit(
    state: &Arc<AppState>,
    prepared: Prepared,
    stream: &mut Option<StreamHandle>,
) -> Result<Started, ApiError> {
    let handle = stream.as_mut().expect("start passes its stream");
    let Prepared {
        endpoint,
        prompt,
        params,
        tenant,
        prompt_param,
        tokenize_time,
        prefix_hint,
    } = prepared;
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
    // Charged before queueing, so a tenant over its rate is answered at once
    // and holds no queue place. The charge is prompt plus max_tokens, the
    // most the request can use: with a guess instead, concurrent requests
    // could all pass against the same tokens and overshoot the rate. What
    // the answer leaves unused comes back when it ends (`TokenCharge`).
    let token_charge = state
        .admission
        .charge_tokens(&tenant, prompt_tokens as u64 + u64::from(max_tokens))
        .map_err(|rejection| admission_error(state, &tenant, rejection))?;
    // One snapshot for all of this request's flag decisions.
    let flags = state.flags.snapshot();
    let prefix_cache = flags.prefix_cache.decide("prefix_cache", &tenant);
    let speculation_flag = flags
        .first_token_speculation
        .decide("first_token_speculation", &tenant);
    let kv_prep_flag = flags.kv_prep.decide("kv_prep", &tenant);
    let canaries = [
        ("prefix_cache", &flags.prefix_cache, prefix_cache),
        ("kv_prep", &flags.kv_prep, kv_prep_flag),
        (
            "first_token_speculation",
            &flags.first_token_speculation,
            speculation_flag,
        ),
    ]
    .into_iter()
    .filter(|(_, flag, _)| flag.splits_traffic())
    .map(|(name, _, decision)| (name, decision.cohort))
    .collect();
    let speculate = speculation_flag.on;
    let kv_prep = kv_prep_flag.on;
    let speculation = Speculation::plan(state, speculate, &prompt, &params, max_tokens, limit);
    let queued_at = Instant::now();
    let prep = if speculation.serves_whole_answer() {
        None
    } else {
        // The engine may prefill the prompt while it waits in the queue;
        // dropping the handle (client gone, rejected) frees that KV.
        let prep = (kv_prep && prefix_cache.on && would_queue(state))
            .then(|| state.engine.prepare(prompt.clone()));
        // The permit moves into the stream's record, so the stream's end
        // releases it, whatever the end is.
        handle
            .admit(&state.admission)
            .await
            .map_err(|rejection| admission_error(state, &tenant, rejection))?;
        prep
    };
    let admitted_at = Instant::now();
    let queue_time = admitted_at - queued_at;
    state.metrics.observe_stage("admission", queue_time);
    let generation = match &speculation {
        Speculation::Whole { .. } => None,
        _ => {
            let served = speculation.served_token_ids();
            let mut prompt_tokens = prompt;
            prompt_tokens.extend_from_slice(&served);
            Some(
                state
                    .engine
                    .submit_prepared(
                        GenerationRequest {
                            prompt_tokens,
                            sampling: params.sampling,
                            max_tokens: max_tokens - served.len() as u32,
                            stop: params.stop,
                            ignore_eos: params.ignore_eos,
                            arrived_at: params.arrived_at,
                            use_prefix_cache: prefix_cache.on,
                            tenant,
                            on_slow_consumer: Some(slow_consumer_hook(state, handle.id())),
                        },
                        prep,
                    )
                    .map_err(|err| {
                        // A full engine turns the request away; anything
                        // else is the engine failing it.
                        if !matches!(err, EngineError::QueueFull { .. }) {
                            handle.end(EndReason::Failed);
                        }
                        engine_error(err)
                    })?,
            )
        }
    };
    if generation.is_some() {
        handle.advance(Stage::Prefilling);
    }
    let stream = stream.take().expect("start passes its stream");
    let id = stream.request_id().to_owned();
    let observer = RequestObserver::new(
        Arc::clone(&state.metrics),
        Arc::clone(&state.latency),
        stream,
        RequestInfo {
            endpoint,
            prompt_tokens,
            cohorts: vec![("prefix_cache", prefix_cache.cohort)],
            canaries,
            token_charge,
        },
    );
    Ok(Started {
        id,
        endpoint,
        stream: params.stream,
        include_usage: params.include_usage,
        prefix_hint,
        server_timing: format!(
            "tokenize;dur={:.3}, queue;dur={:.3}",
            millis(tokenize_time),
            millis(queue_time)
        ),
        driver: GenerationDriver {
            generation,
            opening: speculation.into_opening(state, prompt_tokens as u32),
            observer,
            state: Arc::clone(state),
            done: false,
        },
    })
}

/// Whether a request would wait for admission. A guess: the queue may move
/// before the request joins it.
fn would_queue(state: &AppState) -> bool {
    let admission = state.admission.snapshot();
    admission.queued > 0 || admission.active >= admission.limit
}

/// First-token speculation for one request.
enum Speculation {
    /// Not eligible: sampled, has stop strings, or the flag is off for it.
    Off,
    /// Eligible, nothing cached: record the opening as it streams.
    Record { key: Vec<u8> },
    /// Send the cached opening, then the engine continues after it.
    Continue { opening: CachedOpening },
    /// The cached opening is the whole answer (or reaches `max_tokens`).
    Whole {
        opening: CachedOpening,
        reason: FinishReason,
    },
}

impl Speculation {
    fn plan(
        state: &AppState,
        flag_on: bool,
        prompt: &[i32],
        params: &ValidatedParams,
        max_tokens: u32,
        context: u32,
    ) -> Self {
        let deterministic = params.sampling.temperature == 0.0 || params.sampling.seed.is_some();
        // A stop string could straddle the seam between the cached opening
        // and the engine's continuation, where neither side would see it.
        if !flag_on || !deterministic || !params.stop.is_empty() {
            return Self::Off;
        }
        let key = speculation_key(prompt, params);
        let Some(mut opening) = lock_cache(state).get(&key, Instant::now()) else {
            return Self::Record { key };
        };
        // Serve at most `max_tokens` tokens from the opening.
        let mut tokens = 0;
        let fits = opening.pieces.iter().take_while(|(_, ids)| {
            tokens += ids.len();
            tokens <= max_tokens as usize
        });
        let fitting = fits.count();
        if fitting < opening.pieces.len() || opening.token_count() >= max_tokens as usize {
            let complete = opening.complete && fitting == opening.pieces.len();
            opening.pieces.truncate(fitting);
            let reason = if complete {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            return Self::Whole { opening, reason };
        }
        if opening.complete {
            return Self::Whole {
                opening,
                reason: FinishReason::Stop,
            };
        }
        if prompt.len() + opening.token_count() >= context as usize {
            return Self::Off;
        }
        Self::Continue { opening }
    }

    fn serves_whole_answer(&self) -> bool {
        matches!(self, Self::Whole { .. })
    }

    fn served_token_ids(&self) -> Vec<i32> {
        match self {
            Self::Continue { opening } | Self::Whole { opening, .. } => opening
                .pieces
                .iter()
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect(),
            Self::Off | Self::Record { .. } => Vec::new(),
        }
    }

    fn into_opening(self, state: &AppState, prompt_tokens: u32) -> OpeningState {
        let first_tokens = lock_cache(state).first_tokens();
        match self {
            Self::Off => OpeningState::default(),
            Self::Record { key } => OpeningState {
                recorder: Some(OpeningRecorder {
                    key,
                    opening: CachedOpening::default(),
                    limit: first_tokens,
                }),
                ..OpeningState::default()
            },
            Self::Continue { opening } => OpeningState::serve(state, opening, None, prompt_tokens),
            Self::Whole { opening, reason } => {
                OpeningState::serve(state, opening, Some(reason), prompt_tokens)
            }
        }
    }
}

fn lock_cache(state: &AppState) -> std::sync::MutexGuard<'_, OpeningCache> {
    state
        .speculation
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The exact prompt and every parameter that shapes the answer's opening
/// (not `max_tokens`: it only cuts the answer short).
fn speculation_key(prompt: &[i32], params: &ValidatedParams) -> Vec<u8> {
    let sampling = &params.sampling;
    let mut key = Vec::with_capacity(prompt.len() * 4 + 48);
    for token in prompt {
        key.extend_from_slice(&token.to_le_bytes());
    }
    for value in [
        sampling.temperature,
        sampling.top_p,
        sampling.min_p,
        sampling.repetition_penalty,
        sampling.presence_penalty,
        sampling.frequency_penalty,
    ] {
        key.extend_from_slice(&value.to_le_bytes());
    }
    key.extend_from_slice(&sampling.top_k.to_le_bytes());
    key.extend_from_slice(&sampling.seed.map_or([0xff; 9], |seed| {
        let mut bytes = [0; 9];
        bytes[1..].copy_from_slice(&seed.to_le_bytes());
        bytes
    }));
    key.push(u8::from(params.ignore_eos));
    key
}

/// A request's side of the opening cache: the cached pieces still to send
/// (and how they change the engine's usage), or the recorder of its own
/// opening for the requests after it.
#[derive(Default)]
struct OpeningState {
    /// Text pieces and how many tokens each holds.
    pending: VecDeque<(String, u32)>,
    /// Tokens served from the cache: the engine counts them as prompt.
    served_tokens: u32,
    /// The request's own prompt length, for the usage it is shown.
    prompt_tokens: u32,
    /// Served wholly from the cache, ending with this reason.
    whole: Option<FinishReason>,
    recorder: Option<OpeningRecorder>,
}

impl OpeningState {
    fn serve(
        state: &AppState,
        opening: CachedOpening,
        whole: Option<FinishReason>,
        prompt_tokens: u32,
    ) -> Self {
        let served_tokens = opening.token_count() as u32;
        state.metrics.speculation_hits.inc();
        state
            .metrics
            .speculation_tokens
            .inc_by(u64::from(served_tokens));
        Self {
            pending: opening
                .pieces
                .into_iter()
                .map(|(text, ids)| (text, ids.len() as u32))
                .collect(),
            served_tokens,
            prompt_tokens,
            whole,
            recorder: None,
        }
    }

    /// The usage the client sees: its own prompt, and every token it got.
    fn client_usage(&self, engine: Usage) -> Usage {
        if self.served_tokens == 0 {
            return engine;
        }
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: engine.completion_tokens + self.served_tokens,
            cached_tokens: engine.cached_tokens.min(self.prompt_tokens),
        }
    }
}

/// Collects a deterministic request's first pieces and stores them.
struct OpeningRecorder {
    key: Vec<u8>,
    opening: CachedOpening,
    limit: usize,
}

impl OpeningRecorder {
    /// Adds a piece; true once the opening is long enough to store.
    fn push(&mut self, text: &str, token_ids: &[i32]) -> bool {
        self.opening
            .pieces
            .push((text.to_owned(), token_ids.to_vec()));
        self.opening.pieces.len() >= self.limit
    }

    fn store(self, state: &AppState) {
        let mut cache = lock_cache(state);
        cache.insert(self.key, self.opening, Instant::now());
        let usage = cache.usage();
        state.metrics.speculation_entries.set(usage.entries as i64);
        state.metrics.speculation_bytes.set(usage.bytes as i64);
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn admission_error(state: &AppState, tenant: &str, rejection: Rejection) -> ApiError {
    let retry_after = rejection
        .retry_after()
        .map_or(1, |wait| wait.as_secs().max(1));
    let (reason, by, error) = match rejection {
        Rejection::QueueFull { .. } => (
            "queue_full",
            RejectedBy::Server,
            ApiError::too_many_requests(
                "server_overloaded",
                "queue_full",
                "The server's admission queue is full; retry after the Retry-After delay.",
                retry_after,
            ),
        ),
        Rejection::WaitTimedOut { .. } => (
            "wait_timeout",
            RejectedBy::Server,
            ApiError::too_many_requests(
                "server_overloaded",
                "admission_timeout",
                "The request waited for admission longer than the server's limit; retry after the Retry-After delay.",
                retry_after,
            ),
        ),
        Rejection::TenantQueueFull { .. } => (
            "tenant_limit",
            RejectedBy::TenantLimit,
            ApiError::too_many_requests(
                "rate_limit_exceeded",
                "tenant_concurrency_limit",
                format!(
                    "Tenant '{tenant}' is at its concurrent stream limit and the queue is full."
                ),
                retry_after,
            ),
        ),
        Rejection::TokenRateExceeded {
            tokens_per_minute, ..
        } => (
            "tenant_tokens_per_minute",
            RejectedBy::TenantLimit,
            ApiError::too_many_requests(
                "rate_limit_exceeded",
                "tenant_tokens_per_minute",
                format!(
                    "Tenant '{tenant}' is over its limit of {tokens_per_minute} tokens per minute \
                     (each request reserves its prompt plus max_tokens); retry after the \
                     Retry-After delay."
                ),
                retry_after,
            ),
        ),
        Rejection::Closed => (
            "draining",
            RejectedBy::Server,
            ApiError::unavailable("The server is shutting down."),
        ),
    };
    state.metrics.count_rejected(reason, tenant, by);
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

/// What a stream delivers next, before framing.
pub enum Chunk {
    Text(String),
    Finish {
        reason: FinishReason,
        usage: Usage,
    },
    /// The stream ends with this error.
    Error(ApiError),
}

/// Pulls a generation's events, accounts for them and ends however the
/// generation ends (finish, engine error, server shutdown). Owns the
/// stream's handle (in its observer), which holds the admission permit:
/// dropping the driver (client gone, stream cancelled) ends the stream,
/// releasing the permit, and drops the engine stream, which frees the
/// sequence.
struct GenerationDriver {
    /// None when the opening cache serves the whole answer.
    generation: Option<GenerationStream>,
    opening: OpeningState,
    observer: RequestObserver,
    state: Arc<AppState>,
    done: bool,
}

impl GenerationDriver {
    /// The next chunk, waiting for it; `None` after the stream ended.
    /// Cancel-safe: nothing is consumed unless a chunk is returned.
    async fn next(&mut self) -> Option<Chunk> {
        if let Some(chunk) = self.ready_without_engine() {
            return chunk;
        }
        let generation = self.generation.as_mut()?;
        let event = tokio::select! {
            event = generation.next() => event,
            () = self.state.streams.closed() => {
                self.done = true;
                self.observer.fail(EndReason::Shutdown);
                return Some(Chunk::Error(ApiError::unavailable("The server is shutting down.")));
            }
        };
        Some(self.chunk(event))
    }

    /// A chunk that is ready now, without waiting.
    fn try_next(&mut self) -> Option<Chunk> {
        if let Some(chunk) = self.ready_without_engine() {
            return chunk;
        }
        let event = self.generation.as_mut()?.try_next()?;
        Some(self.chunk(Some(event)))
    }

    /// What comes before (or instead of) the engine: the end once done,
    /// cached opening pieces, the finish of an answer served from the cache.
    fn ready_without_engine(&mut self) -> Option<Option<Chunk>> {
        if self.done {
            return Some(None);
        }
        if let Some((text, tokens)) = self.opening.pending.pop_front() {
            self.observer.token_written(Instant::now(), tokens);
            return Some(Some(Chunk::Text(text)));
        }
        if self.generation.is_some() {
            return None;
        }
        self.done = true;
        let reason = self.opening.whole.unwrap_or(FinishReason::Length);
        let usage = self.opening.client_usage(Usage::default());
        self.observer
            .finished(reason, usage, EngineTimings::default());
        Some(Some(Chunk::Finish { reason, usage }))
    }

    fn chunk(&mut self, event: Option<StreamEvent>) -> Chunk {
        match event {
            Some(StreamEvent::Token { text, token_ids }) => {
                self.observer
                    .token_written(Instant::now(), token_ids.len() as u32);
                let long_enough = self
                    .opening
                    .recorder
                    .as_mut()
                    .is_some_and(|recorder| recorder.push(&text, &token_ids));
                if long_enough && let Some(recorder) = self.opening.recorder.take() {
                    recorder.store(&self.state);
                }
                Chunk::Text(text)
            }
            Some(StreamEvent::Finished {
                reason,
                usage,
                timings,
            }) => {
                self.done = true;
                // An answer that ended within the opening is cached whole;
                // one cut by `max_tokens` is still a valid opening.
                if let Some(mut recorder) = self.opening.recorder.take() {
                    recorder.opening.complete = reason == FinishReason::Stop;
                    recorder.store(&self.state);
                }
                let usage = self.opening.client_usage(usage);
                self.observer.finished(reason, usage, timings);
                Chunk::Finish { reason, usage }
            }
            Some(StreamEvent::Error { message }) => {
                self.done = true;
                self.observer.fail(EndReason::Failed);
                Chunk::Error(ApiError::internal(message))
            }
            Some(StreamEvent::SlowConsumer { limit }) => {
                self.done = true;
                self.observer.fail(EndReason::SlowConsumer);
                Chunk::Error(ApiError::slow_consumer(limit))
            }
            None => {
                self.done = true;
                self.observer.fail(EndReason::Failed);
                Chunk::Error(ApiError::internal(
                    "The engine ended the stream unexpectedly.",
                ))
            }
        }
    }

    /// `bytes` reached the transport.
    fn wrote(&mut self, bytes: usize) {
        self.observer.stream().bytes_written(bytes);
    }

    /// The writer waited `waited` for the client to take what it wrote.
    fn blocked(&mut self, waited: Duration) {
        self.observer.stream().blocked(waited);
    }
}

/// A chunk framed by `framer` into `out`.
fn frame_chunk(framer: &ChunkFramer, chunk: &Chunk, out: &mut BytesMut) {
    match chunk {
        Chunk::Text(text) => framer.text(text, out),
        Chunk::Finish { reason, usage } => framer.finish(*reason, *usage, out),
        Chunk::Error(error) => framer.error(error, out),
    }
}

/// Lets the WebSocket gateway drive a started generation with its own framing.
pub struct ChunkSource(GenerationDriver);

impl ChunkSource {
    pub async fn next(&mut self) -> Option<Chunk> {
        self.0.next().await
    }

    /// `bytes` were handed to the socket's queue.
    pub fn wrote(&mut self, bytes: usize) {
        self.0.wrote(bytes);
    }

    /// The stream waited `waited` for room in the socket's queue.
    pub fn blocked(&mut self, waited: Duration) {
        self.0.blocked(waited);
    }
}

impl Started {
    pub fn into_chunks(self) -> ChunkSource {
        ChunkSource(self.driver)
    }
}

/// An SSE comment: ignored by clients, keeps proxies from timing out.
const SSE_KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Frames chunks as SSE into one reused buffer.
struct SseWriter {
    driver: GenerationDriver,
    framer: ChunkFramer,
    buffer: BytesMut,
    keepalive: Duration,
    opened: bool,
    /// When the last frame went to the transport. The transport asks for
    /// the next frame once it has room, so the time until then is time the
    /// client held the stream up.
    handed_over_at: Option<Instant>,
}

/// Room reserved per write; a frame rarely exceeds it, and reserving the
/// same amount each time lets the buffer reclaim its own allocation once
/// the transport has dropped the previous frame.
const FRAME_RESERVE: usize = 4096;

impl SseWriter {
    async fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(handed_over_at) = self.handed_over_at.take() {
            self.driver.blocked(handed_over_at.elapsed());
        }
        let frame = self.frame().await?;
        self.driver.wrote(frame.len());
        self.handed_over_at = Some(Instant::now());
        Some(frame)
    }

    async fn frame(&mut self) -> Option<Bytes> {
        self.buffer.reserve(FRAME_RESERVE);
        if !self.opened {
            self.opened = true;
            self.framer.role(&mut self.buffer);
            if !self.buffer.is_empty() {
                return Some(self.buffer.split().freeze());
            }
        }
        let Ok(chunk) = tokio::time::timeout(self.keepalive, self.driver.next()).await else {
            self.buffer.extend_from_slice(SSE_KEEPALIVE);
            return Some(self.buffer.split().freeze());
        };
        let chunk = chunk?;
        frame_chunk(&self.framer, &chunk, &mut self.buffer);
        // A client that is behind gets the ready chunks in one write.
        for _ in 1..MAX_COALESCED_EVENTS {
            match self.driver.try_next() {
                Some(chunk) => frame_chunk(&self.framer, &chunk, &mut self.buffer),
                None => break,
            }
        }
        Some(self.buffer.split().freeze())
    }
}

fn sse_response(state: &Arc<AppState>, started: Started) -> Response {
    let framer = ChunkFramer::new(
        started.endpoint,
        &started.id,
        unix_now(),
        &state.served_name,
        started.include_usage,
        Framing::Sse,
    );
    let writer = SseWriter {
        driver: started.driver,
        framer,
        buffer: BytesMut::with_capacity(FRAME_RESERVE),
        keepalive: Duration::from_millis(state.limits.sse_keepalive_ms.max(1)),
        opened: false,
        handed_over_at: None,
    };
    let body = futures::stream::unfold(writer, |mut writer| async move {
        writer
            .next_frame()
            .await
            .map(|frame| (Ok::<Bytes, Infallible>(frame), writer))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        [
            (SERVER_TIMING, started.server_timing),
            (PREFIX_HINT, format!("{:016x}", started.prefix_hint)),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

const SERVER_TIMING: header::HeaderName = header::HeaderName::from_static("server-timing");
const PREFIX_HINT: header::HeaderName = header::HeaderName::from_static("x-sluice-prefix-hint");

async fn collect_response(state: &Arc<AppState>, started: Started) -> Result<Response, ApiError> {
    let Started {
        id,
        endpoint,
        server_timing,
        prefix_hint,
        mut driver,
        ..
    } = started;
    let admitted_at = Instant::now();
    let mut text = String::new();
    let mut first_token_at = None;
    loop {
        match driver.next().await {
            Some(Chunk::Text(piece)) => {
                first_token_at.get_or_insert_with(Instant::now);
                text.push_str(&piece);
            }
            Some(Chunk::Finish { reason, usage }) => {
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
                let first_token = first_token_at.map_or(Duration::ZERO, |at| at - admitted_at);
                let timing = format!(
                    "{server_timing}, first_token;dur={:.3}, generate;dur={:.3}",
                    millis(first_token),
                    millis(admitted_at.elapsed())
                );
                let headers = [
                    (SERVER_TIMING, timing),
                    (PREFIX_HINT, format!("{prefix_hint:016x}")),
                ];
                let body = serde_json::to_vec(&body).expect("JSON values serialize");
                driver.wrote(body.len());
                let content_type = [(header::CONTENT_TYPE, "application/json")];
                return Ok((content_type, headers, body).into_response());
            }
            Some(Chunk::Error(error)) => return Err(error),
            None => {
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
        state.metrics.render(
            state.engine.stats(),
            state.admission.snapshot().queued,
            &state.streams.counts(),
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

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
