//! What callers hand the engine and what the engine streams back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::admission::Priority;

/// Per-request sampling, already validated by the API layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: i32,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

/// A tokenized request ready for the engine.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt_tokens: Vec<i32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate; the sequence's context bounds it too.
    pub max_tokens: u32,
    /// Generation stops before any of these strings; they are never emitted.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (benchmarks want fixed
    /// output lengths).
    pub ignore_eos: bool,
    /// When the request arrived, for queue-time accounting.
    pub arrived_at: Instant,
    /// Look up a cached prefix (the `prefix_cache` flag's decision for this
    /// request); false prefills the whole prompt.
    pub use_prefix_cache: bool,
    /// Whose cached KV the request may reuse: the prefix cache, KV copies
    /// and KV preps only match within one namespace, so no tenant's request
    /// reuses (or learns through `cached_tokens`) another tenant's prompt.
    /// The server derives it from the tenant and the request's `cache_salt`.
    pub cache_namespace: String,
    /// Who sent it: prefill chunks go first to tenants with the fewest
    /// sequences in the engine, so one tenant's flood of prompts cannot
    /// hold back another tenant's first token.
    pub tenant: String,
    /// Its class: a batch sequence's decode sits out before an interactive
    /// one's, and its prompt prefills from what interactive work leaves.
    pub priority: Priority,
    /// Run on the engine thread when the engine ends the stream because its
    /// client stopped reading (`engine.max_park_ms`). The stream's own
    /// writer may never run again until the client reads, so whatever the
    /// server holds for the stream (its admission permit) is released here.
    pub on_slow_consumer: Option<SlowConsumerHook>,
}

/// See [`GenerationRequest::on_slow_consumer`].
#[derive(Clone)]
pub struct SlowConsumerHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for SlowConsumerHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlowConsumerHook")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the sequence's context was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose KV came from the prefix cache (vLLM's
    /// `usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u32,
}

/// How long the request spent in each engine stage, and how much of its
/// prefill the prefix cache saved.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineTimings {
    /// From arrival until the engine gave it a sequence.
    pub queue: Duration,
    /// From getting a sequence until the first token was sampled.
    pub prefill: Duration,
    /// Prompt tokens whose KV came from the prefix cache instead of being
    /// prefilled (vLLM's `usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u32,
    /// Engine steps from getting a sequence until the first token, waiting
    /// ones included: how many steps the prompt's prefill was spread over.
    pub prefill_steps: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// New text (always whole UTF-8 characters) and the token ids that made it.
    Token {
        text: String,
        token_ids: Vec<i32>,
    },
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: EngineTimings,
    },
    Error {
        message: String,
    },
    /// The client did not read for longer than `engine.max_park_ms`
    /// (`limit`): the engine ended the stream and dropped the events it had
    /// no room for. The client's doing, not an engine failure.
    SlowConsumer {
        limit: Duration,
    },
}
