//! The stream pipeline, the middle of the request path: a parsed request is
//! registered, tokenized, charged to its tenant, admitted and submitted to
//! the engine, and comes back as a [`Generation`] that yields chunks. It
//! knows no HTTP and no JSON: the API layer parses into [`Request`], the
//! writers frame the chunks, `openai::error` maps [`PipelineError`].
//!
//! ```text
//! register → prepare (tokenize) → admit (charge, flags, speculation,
//!   KV prep, admission wait) → submit → Generation → writers
//! ```

mod admit;
mod error;
mod generation;
mod prepare;
mod quota;
mod speculation;

use std::hash::RandomState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_core::admission::{Admission, Priority};
use sluice_core::flags::Flags;
use sluice_core::registry::{EndReason, NewStream, Protocol, StreamHandle, StreamRegistry};
use sluice_core::speculation::SpeculationConfig;
use sluice_engine::{ChatMessage, EngineHandle, LoadedModel, SamplingParams};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{LatencyWindows, Metrics};

pub use error::PipelineError;
pub use generation::{Chunk, Generation, StreamLimits};
pub use quota::Quota;
pub use speculation::OpeningStore;

#[cfg(test)]
pub(crate) use generation::{script, scripted};

/// What kind of request a stream answers: its prompt and its ids differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Self::Chat => "chatcmpl-",
            Self::Completion => "cmpl-",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completion => "completion",
        }
    }
}

/// What gets tokenized: chat messages through the template, or raw text.
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
}

impl Prompt {
    /// The request parameter a tokenizing failure is blamed on.
    fn param(&self) -> &'static str {
        match self {
            Self::Chat(_) => "messages",
            Self::Text(_) => "prompt",
        }
    }
}

/// How to generate, as the client asked, after validation.
#[derive(Debug)]
pub struct GenerationParams {
    pub stream: bool,
    pub include_usage: bool,
    /// None: generate until the sequence's context is full.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Shares cached prompt KV and openings only with requests of the same
    /// tenant and salt (see `admit::cache_namespace`).
    pub cache_salt: Option<String>,
    /// The class asked for; None: the tenant's.
    pub priority: Option<Priority>,
    /// The first-token deadline asked for; None: the SLO's for
    /// interactive requests, none for batch.
    pub ttft_deadline: Option<Duration>,
    pub sampling: SamplingParams,
    pub arrived_at: Instant,
}

/// A validated request, ready for the pipeline.
pub struct Request {
    pub prompt: Prompt,
    pub params: GenerationParams,
}

/// What the pipeline needs, and nothing more: the engine, admission, the
/// stream registry, the flags it reads, the opening cache and telemetry.
pub struct Pipeline {
    engine: EngineHandle,
    served_name: String,
    admission: Arc<Admission>,
    quota: Quota,
    streams: Arc<StreamRegistry>,
    flags: Arc<Flags>,
    openings: Arc<OpeningStore>,
    metrics: Arc<Metrics>,
    latency: Arc<LatencyWindows>,
    draining: CancellationToken,
    request_counter: AtomicU64,
    request_id_salt: u64,
    stream_limits: StreamLimits,
    deadlines: Deadlines,
    /// Keys a request's retry (its `Retry-After` booking); per process, so
    /// a client cannot aim at another's key.
    retry_keys: RandomState,
    /// Tokenizer jobs running at once: one per core.
    tokenizers: Semaphore,
}

/// The first-token deadlines admission sheds by.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// Whether admission sheds by deadline at all.
    pub shedding: bool,
    /// An interactive request's deadline unless it gives one: the SLO's
    /// TTFT p95.
    pub interactive: Option<Duration>,
}

/// The shared parts a [`Pipeline`] is built from.
pub struct PipelineParts {
    pub engine: EngineHandle,
    pub served_name: String,
    pub admission: Arc<Admission>,
    /// Charges token rates: `admission`'s buckets, or shared ones.
    pub quota: Quota,
    pub streams: Arc<StreamRegistry>,
    pub flags: Arc<Flags>,
    pub speculation: SpeculationConfig,
    pub metrics: Arc<Metrics>,
    pub latency: Arc<LatencyWindows>,
    /// Seeds request ids, so two servers do not hand out the same ones.
    pub request_id_salt: u64,
    pub stream_limits: StreamLimits,
    pub deadlines: Deadlines,
}

impl Pipeline {
    pub fn new(parts: PipelineParts) -> Self {
        Self {
            openings: Arc::new(OpeningStore::new(
                parts.speculation,
                Arc::clone(&parts.metrics),
            )),
            engine: parts.engine,
            served_name: parts.served_name,
            admission: parts.admission,
            quota: parts.quota,
            streams: parts.streams,
            flags: parts.flags,
            metrics: parts.metrics,
            latency: parts.latency,
            draining: CancellationToken::new(),
            request_counter: AtomicU64::new(0),
            request_id_salt: parts.request_id_salt,
            stream_limits: parts.stream_limits,
            deadlines: parts.deadlines,
            retry_keys: RandomState::new(),
            tokenizers: Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            ),
        }
    }

    pub fn served_name(&self) -> &str {
        &self.served_name
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    pub fn streams(&self) -> &Arc<StreamRegistry> {
        &self.streams
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once the server begins to drain (WebSockets stop taking
    /// requests and close when their streams end).
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }

    /// Refuses new work from now on: the app's shutdown begins here.
    pub fn start_draining(&self) {
        self.draining.cancel();
        self.admission.close();
    }

    /// The loaded model, or why there is none to serve with.
    pub fn ready_model(&self) -> Result<Arc<LoadedModel>, PipelineError> {
        if self.is_draining() {
            return Err(PipelineError::ShuttingDown);
        }
        self.engine.model().map_err(PipelineError::Engine)
    }

    /// Registers a stream at its arrival: from here on the registry
    /// accounts for it, however it ends.
    pub fn register(
        &self,
        endpoint: Endpoint,
        tenant: String,
        protocol: Protocol,
        arrived_at: Instant,
    ) -> StreamHandle {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        self.streams.register(NewStream {
            request_id: format!(
                "{}{:016x}{n:08x}",
                endpoint.id_prefix(),
                self.request_id_salt
            ),
            tenant,
            protocol,
            arrived_at,
        })
    }

    /// Runs a registered stream's request through tokenizing, admission and
    /// submission. On any failure the stream ends as rejected (unless the
    /// failure ended it otherwise already) and the error says why.
    pub async fn start(
        self: &Arc<Self>,
        endpoint: Endpoint,
        mut stream: StreamHandle,
        request: Request,
    ) -> Result<Generation, PipelineError> {
        let prepared = match self.prepare(&stream, request).await {
            Ok(prepared) => prepared,
            Err(err) => {
                stream.end(EndReason::Rejected);
                return Err(err);
            }
        };
        let mut stream = Some(stream);
        let started = self.admit_and_submit(endpoint, prepared, &mut stream).await;
        if started.is_err()
            && let Some(stream) = &mut stream
        {
            stream.end(EndReason::Rejected);
        }
        started
    }
}

/// Time spent before the engine took the request, for `Server-Timing`.
#[derive(Debug, Clone, Copy)]
pub struct PreEngineTimes {
    pub tokenize: Duration,
    pub queue: Duration,
}
