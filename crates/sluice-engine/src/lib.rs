//! The only crate that links llama.cpp. One OS thread per loaded model owns
//! the llama.cpp context; async callers talk to it through channels only.

mod detokenizer;
mod heartbeat;
pub mod kv_events;
mod model;
mod request;
mod scheduler;
mod stop;
mod template;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sluice_core::config::EngineConfig;
use tokio::sync::{mpsc, oneshot, watch};

pub use detokenizer::Utf8Assembler;
use heartbeat::Heartbeat;
pub use model::LoadedModel;
pub use request::{
    EngineTimings, FinishReason, GenerationRequest, SamplingParams, SlowConsumerHook, StreamEvent,
    Usage,
};
pub use stop::{StopMatcher, StopOutcome};
pub use template::{ChatMessage, ChatTemplate, Segment, TemplateError};

use scheduler::{Command, PrepJob, Scheduler, Submission};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("model failed to load: {0}")]
    Load(String),
    /// The engine is `Failed`: the reason says whether loading failed or
    /// the running engine did.
    #[error("{0}")]
    Failed(String),
    #[error("the model is still loading")]
    Loading,
    #[error("the engine has stopped")]
    Stopped,
    #[error("{waiting} requests are already waiting for the engine")]
    QueueFull { waiting: usize },
}

/// Where the engine thread is in its life.
#[derive(Debug, Clone)]
pub enum EngineStatus {
    Loading,
    Ready(Arc<LoadedModel>),
    /// For good: the model failed to load, or the running engine failed (an
    /// engine fault, a panic on its thread). The reason is a sentence for
    /// clients and `/health`.
    Failed(String),
}

/// Counters the engine thread publishes after every step; read by metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Sequences in the running batch (parked ones included).
    pub running: AtomicUsize,
    /// Requests submitted and not yet given a sequence.
    pub waiting: AtomicUsize,
    pub parked: AtomicUsize,
    pub kv_tokens_in_use: AtomicUsize,
    pub steps_total: AtomicU64,
    /// Wall time spent in steps (model and sampling), and the tokens those
    /// steps processed: the governor's step time and rate per tick.
    pub step_micros_total: AtomicU64,
    pub step_tokens_total: AtomicU64,
    pub prompt_tokens_processed_total: AtomicU64,
    pub generated_tokens_total: AtomicU64,
    pub finished_total: AtomicU64,
    pub cancelled_total: AtomicU64,
    /// Prefix cache: requests looked up and their prompt tokens.
    pub prefix_cache_queries_total: AtomicU64,
    pub prefix_cache_query_tokens_total: AtomicU64,
    /// Requests that reused a cached prefix, and the prompt tokens reused
    /// (not prefilled).
    pub prefix_cache_hits_total: AtomicU64,
    pub prefix_cache_hit_tokens_total: AtomicU64,
    /// Idle sequences whose cached tokens were dropped to make room.
    pub prefix_cache_evictions_total: AtomicU64,
    /// KV cells held by idle sequences (cached prefixes and KV preps).
    pub kv_cached_tokens: AtomicUsize,
    /// KV prep: preps that took a sequence and began prefilling, the prompt
    /// tokens they prefilled, those their request then reused, and those
    /// dropped unused (their cells freed).
    pub kv_prep_started_total: AtomicU64,
    pub kv_prep_tokens_total: AtomicU64,
    pub kv_prep_used_total: AtomicU64,
    pub kv_prep_cancelled_total: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model_path: PathBuf,
    /// Jinja source that replaces the GGUF's chat template.
    pub chat_template: Option<String>,
    pub config: EngineConfig,
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    submissions: std::sync::mpsc::Sender<Command>,
    status: watch::Receiver<EngineStatus>,
    stats: Arc<EngineStats>,
    stream_buffer_events: usize,
    max_waiting: usize,
    next_prep: Arc<AtomicU64>,
    step_budget: Arc<AtomicU32>,
    heartbeat: Arc<Heartbeat>,
    /// `engine.step_stall_timeout_ms`; None: never reported stalled.
    stall_timeout: Option<Duration>,
}

/// The one start-up line an operator needs about the model and its KV.
fn log_loaded(path: &std::path::Path, model: &LoadedModel) {
    let pools: Vec<String> = model
        .pools
        .iter()
        .map(|pool| format!("{}x{}", pool.sequences, pool.context))
        .collect();
    const MIB: u64 = 1 << 20;
    tracing::info!(
        model = %path.display(),
        trained_context = model.trained_context,
        served_context = model.served_context(),
        pools = %pools.join(" + "),
        kv_mib = model.kv_bytes() / MIB,
        kv_budget_mib = model.kv_budget_bytes / MIB,
        kv_budget = model.kv_budget_source,
        chat_template = model.chat_template_source,
        "model loaded: sequences x KV cells per pool"
    );
}

/// The events of one generation. Dropping it cancels the generation: the
/// engine frees the sequence within one step.
pub struct GenerationStream {
    events: mpsc::Receiver<StreamEvent>,
}

impl GenerationStream {
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    /// An event that is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<StreamEvent> {
        self.events.try_recv().ok()
    }

    /// A stream fed by a script instead of the engine, for deterministic
    /// unit tests of the layers above: it yields what is sent on the
    /// returned sender and ends when the sender is dropped.
    pub fn scripted(capacity: usize) -> (mpsc::Sender<StreamEvent>, Self) {
        let (events_tx, events) = mpsc::channel(capacity.max(1));
        (events_tx, Self { events })
    }
}

/// A KV prep in the engine: while it lives, the engine may prefill the
/// prompt of a request still queued for admission into an idle sequence kept
/// for it. Hand it to [`EngineHandle::submit_prepared`] with that request;
/// dropping it earlier (the client left) frees the sequence and its cells.
pub struct PrepHandle {
    id: u64,
    /// Closed on drop, which is what the engine watches.
    _alive: oneshot::Receiver<()>,
}

impl EngineHandle {
    /// Starts the engine thread; the model loads in the background (status
    /// `Loading` until then).
    pub fn spawn(options: EngineOptions) -> Self {
        Self::spawn_inner(options, None)
    }

    /// As [`EngineHandle::spawn`], and the engine sends every round's
    /// KV-cache block changes to `kv_events`.
    pub fn spawn_publishing(options: EngineOptions, kv_events: kv_events::KvEventSender) -> Self {
        Self::spawn_inner(options, Some(kv_events))
    }

    fn spawn_inner(options: EngineOptions, kv_events: Option<kv_events::KvEventSender>) -> Self {
        let (submissions, commands) = std::sync::mpsc::channel();
        let (status_tx, status) = watch::channel(EngineStatus::Loading);
        let stats = Arc::new(EngineStats::default());
        let step_budget = Arc::new(AtomicU32::new(options.config.step_token_budget));
        let heartbeat = Arc::new(Heartbeat::new());
        let stall_timeout = Some(Duration::from_millis(options.config.step_stall_timeout_ms))
            .filter(|timeout| !timeout.is_zero());
        let handle = Self {
            submissions,
            status,
            stats: Arc::clone(&stats),
            stream_buffer_events: options.config.stream_buffer_events,
            max_waiting: options.config.max_waiting,
            next_prep: Arc::new(AtomicU64::new(0)),
            step_budget: Arc::clone(&step_budget),
            heartbeat: Arc::clone(&heartbeat),
            stall_timeout,
        };
        std::thread::Builder::new()
            .name("sluice-engine".into())
            .spawn(move || {
                // A panic while loading (inside llama.cpp's bindings) must
                // not leave the status `Loading` for ever.
                let loaded = std::panic::catch_unwind(|| {
                    LoadedModel::load(&options.model_path, options.chat_template, &options.config)
                })
                .unwrap_or_else(|payload| {
                    Err(EngineError::Load(format!(
                        "panicked: {}",
                        scheduler::panic_message(payload.as_ref())
                    )))
                })
                .map(Arc::new)
                .and_then(|model| {
                    Scheduler::new(
                        Arc::clone(&model),
                        options.config,
                        stats,
                        step_budget,
                        heartbeat,
                        kv_events,
                    )
                    .map(|scheduler| (model, scheduler))
                });
                match loaded {
                    Ok((model, scheduler)) => {
                        // Ready before the log line: whoever waits for the
                        // line (tests, operators) may send a request at once.
                        status_tx.send_replace(EngineStatus::Ready(Arc::clone(&model)));
                        log_loaded(&options.model_path, &model);
                        scheduler.run(commands, &status_tx);
                    }
                    Err(err) => {
                        tracing::error!(%err, "engine failed to start");
                        status_tx.send_replace(EngineStatus::Failed(err.to_string()));
                    }
                }
            })
            .expect("spawning the engine thread");
        handle
    }

    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    /// The model once loaded.
    pub fn model(&self) -> Result<Arc<LoadedModel>, EngineError> {
        match self.status() {
            EngineStatus::Ready(model) => Ok(model),
            EngineStatus::Loading => Err(EngineError::Loading),
            EngineStatus::Failed(reason) => Err(EngineError::Failed(reason)),
        }
    }

    /// How long the engine has had work without finishing a step, once
    /// that is `engine.step_stall_timeout_ms` or more: it is stuck.
    pub fn stalled_for(&self) -> Option<Duration> {
        self.stall_timeout
            .and_then(|timeout| self.heartbeat.stalled_for(timeout))
    }

    /// Waits until the engine fails (loading, or later) and returns why;
    /// never returns while it serves, or once it stopped without failing.
    pub async fn wait_failed(&self) -> String {
        let mut status = self.status.clone();
        let reason = match status
            .wait_for(|status| matches!(status, EngineStatus::Failed(_)))
            .await
            .as_deref()
        {
            Ok(EngineStatus::Failed(reason)) => Some(reason.clone()),
            _ => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Waits until the model has loaded (or failed to).
    pub async fn wait_ready(&self) -> Result<Arc<LoadedModel>, EngineError> {
        let mut status = self.status.clone();
        let status = status
            .wait_for(|status| !matches!(status, EngineStatus::Loading))
            .await
            .map_err(|_| EngineError::Stopped)?
            .clone();
        match status {
            EngineStatus::Ready(model) => Ok(model),
            EngineStatus::Failed(reason) => Err(EngineError::Failed(reason)),
            EngineStatus::Loading => unreachable!("waited for a status other than Loading"),
        }
    }

    /// Sets the tokens per engine step (decodes plus prefill chunks) from the
    /// next step on; the engine clamps it to `min_prefill_chunk` and
    /// `EngineConfig::step_budget_ceiling`.
    pub fn set_step_budget(&self, tokens: u32) {
        self.step_budget.store(tokens, Ordering::Relaxed);
    }

    pub fn step_budget(&self) -> u32 {
        self.step_budget.load(Ordering::Relaxed)
    }

    /// Fault injection for chaos tests: the engine thread sleeps for
    /// `duration` before its next step. Running streams see no tokens
    /// meanwhile; nothing else is affected.
    pub fn inject_stall(&self, duration: std::time::Duration) {
        // A stopped engine has nothing to stall.
        let _ = self.submissions.send(Command::Stall(duration));
    }

    /// Fault injection for chaos tests: the engine thread panics at its next
    /// step, as a bug would make it; the engine supervises that like any
    /// fatal error (status `Failed`, every stream ends with an error).
    pub fn inject_panic(&self) {
        // A stopped engine has nothing to panic.
        let _ = self.submissions.send(Command::Panic);
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Queues a generation. The engine admits it into the running batch at
    /// its next step when a sequence is free.
    pub fn submit(&self, request: GenerationRequest) -> Result<GenerationStream, EngineError> {
        self.submit_prepared(request, None)
    }

    /// Asks the engine to prefill `prompt_tokens` (all but the last) while
    /// the request waits for admission, in step budget that running streams
    /// leave spare. Preparing is best effort: the engine may never start it.
    /// `max_tokens` and `cache_namespace` are the request's (see
    /// [`GenerationRequest`]): the prep goes to the pool the request will.
    pub fn prepare(
        &self,
        prompt_tokens: Vec<i32>,
        max_tokens: u32,
        cache_namespace: &str,
    ) -> PrepHandle {
        let id = self.next_prep.fetch_add(1, Ordering::Relaxed);
        let (alive, alive_rx) = oneshot::channel();
        // A stopped engine has nothing to prepare; the handle is inert then.
        let _ = self.submissions.send(Command::Prepare(PrepJob {
            id,
            sequence_tokens: prompt_tokens.len() + max_tokens as usize,
            prompt_tokens,
            cache_namespace: Arc::from(cache_namespace),
            alive,
        }));
        PrepHandle {
            id,
            _alive: alive_rx,
        }
    }

    /// [`Self::submit`] for a request that was prepared: it may take the
    /// sequence its prep filled. The engine drops `prep` once the request
    /// has a sequence.
    pub fn submit_prepared(
        &self,
        request: GenerationRequest,
        prep: Option<PrepHandle>,
    ) -> Result<GenerationStream, EngineError> {
        self.model()?;
        let waiting = self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        if waiting >= self.max_waiting {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::QueueFull { waiting });
        }
        // One place more than the buffer: only the event that ends the
        // stream may take it, so a parked stream can always be told why it
        // ended.
        let (events_tx, events) = mpsc::channel(self.stream_buffer_events + 1);
        let submission = Submission {
            request,
            events: events_tx,
            prep,
        };
        if self
            .submissions
            .send(Command::Generate(submission))
            .is_err()
        {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Stopped);
        }
        Ok(GenerationStream { events })
    }
}
