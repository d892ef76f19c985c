//! Why the pipeline refused or ended a stream. Typed, so the one mapping to
//! HTTP statuses and OpenAI error bodies (`openai::error`) decides each
//! status once, for every transport.

use std::time::Duration;

use sluice_core::admission::Rejection;
use sluice_engine::EngineError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The server is draining (before the stream began or during it).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine cannot take the request: loading, failed, full, stopped.
    #[error(transparent)]
    Engine(EngineError),
    /// The prompt could not be rendered or tokenized.
    #[error("{message}")]
    Prompt {
        param: &'static str,
        message: String,
    },
    #[error("the prompt has {prompt_tokens} tokens; the server serves at most {served}")]
    ContextLength {
        /// The most tokens the server takes per request.
        served: u32,
        /// The context the model was trained for.
        trained: u32,
        prompt_tokens: usize,
        param: &'static str,
    },
    /// Admission turned the request away (queue, wait, tenant limits).
    #[error("admission refused the request: {rejection:?}")]
    Rejected {
        tenant: String,
        rejection: Rejection,
    },
    /// The engine failed the stream after it began.
    #[error("{0}")]
    EngineFailed(String),
    /// The client did not read the stream for this long; it was ended.
    #[error("the client did not read the stream for {0:?}")]
    SlowConsumer(Duration),
    /// The client read slower than this many bytes per second while the
    /// stream waited on it; it was ended.
    #[error("the client read slower than {0} bytes per second")]
    SlowReader(u64),
    /// The stream ran past `server.limits.max_stream_seconds`.
    #[error("the stream ran longer than {0:?}")]
    Expired(Duration),
    /// The engine's event channel closed without an end event.
    #[error("the engine ended the stream unexpectedly")]
    EndedUnexpectedly,
    /// A task the pipeline relies on failed (tokenizer pool).
    #[error("{0}")]
    Internal(String),
}
