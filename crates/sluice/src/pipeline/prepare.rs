//! Pipeline step one: tokenize a validated request on the blocking pool, so
//! neither the engine thread nor the async workers spend time on it; at
//! most one job per core at a time.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::hints;
use sluice_core::registry::StreamHandle;

use super::{GenerationParams, Pipeline, PipelineError, Prompt, Request};

/// A request tokenized: ready for admission.
pub(super) struct Prepared {
    pub prompt: Vec<i32>,
    pub params: GenerationParams,
    pub prompt_param: &'static str,
    pub tokenize_time: Duration,
    /// Stable hash of the model and the prompt's leading blocks.
    pub prefix_hint: u64,
}

impl Pipeline {
    pub(super) async fn prepare(
        self: &Arc<Self>,
        stream: &StreamHandle,
        request: Request,
    ) -> Result<Prepared, PipelineError> {
        let Request { prompt, params } = request;
        let param = prompt.param();
        let tokens = self.tokenize(prompt).await?;
        let tokenize_time = stream.arrived_at().elapsed();
        self.metrics.observe_stage("tokenize", tokenize_time);
        let prefix_hint = hints::prefix_hint(&self.served_name, &tokens);
        Ok(Prepared {
            prompt: tokens,
            params,
            prompt_param: param,
            tokenize_time,
            prefix_hint,
        })
    }

    /// The prompt's token ids as generation would see them (chat template
    /// applied): what a gateway's prefix-aware router hashes
    /// (`/v1/*/render`).
    pub async fn render(self: &Arc<Self>, request: Request) -> Result<Vec<i32>, PipelineError> {
        self.tokenize(request.prompt).await
    }

    async fn tokenize(self: &Arc<Self>, prompt: Prompt) -> Result<Vec<i32>, PipelineError> {
        let model = self.ready_model()?;
        let param = prompt.param();
        // One tokenizer job per core at most; the rest wait here, where a
        // client that leaves drops its job before it starts.
        let _tokenizer = self
            .tokenizers
            .acquire()
            .await
            .map_err(|_| PipelineError::ShuttingDown)?;
        tokio::task::spawn_blocking(move || match prompt {
            Prompt::Chat(messages) => model.tokenize_chat(&messages),
            Prompt::Text(text) => Ok(model.tokenize(&text, true)),
        })
        .await
        .map_err(|err| PipelineError::Internal(format!("tokenizer task failed: {err}")))?
        .map_err(|err| PipelineError::Prompt {
            param,
            message: err.to_string(),
        })
    }
}
