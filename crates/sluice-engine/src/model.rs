//! The loaded model as the rest of the server sees it: tokenizing and chat
//! templating, safe to call from any thread while the engine thread decodes.

use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use sluice_core::config::{EngineConfig, PoolSize};

use crate::EngineError;
use crate::template::{CHATML_TEMPLATE, ChatMessage, ChatTemplate, Segment, TemplateError};

/// llama.cpp's backend may be initialised once per process. Initialising it
/// fails only if something else in the process did so first.
pub(crate) fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|err| err.to_string())
        })
        .as_ref()
        .map_err(|err| EngineError::Load(format!("initialising the llama.cpp backend: {err}")))
}

pub struct LoadedModel {
    /// Leaked on purpose: contexts borrow the model, and the model lives as
    /// long as the process serves it.
    pub(crate) model: &'static LlamaModel,
    pub(crate) chat_template: ChatTemplate,
    /// The context the model was trained for.
    pub trained_context: u32,
    /// The engine's sequence pools, smallest context first; the last one's
    /// context is the most tokens a request may use.
    pub pools: Vec<PoolSize>,
    /// Bytes of KV cache one token takes in every layer.
    pub kv_bytes_per_cell: f64,
    /// The KV budget the pools were sized within, and where it came from.
    pub kv_budget_bytes: u64,
    pub kv_budget_source: &'static str,
    /// Where the chat template came from, for logs.
    pub chat_template_source: &'static str,
}

/// How much slower than its matmuls llama.cpp's CPU attention runs per
/// FLOP in a long pool (see [`LoadedModel::attention_depth`]).
const ATTENTION_RATE_DIVISOR: u64 = 5;

/// `MemAvailable` of /proc/meminfo: what the machine can give without
/// swapping. None where there is no such file (not Linux).
fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("trained_context", &self.trained_context)
            .field("pools", &self.pools)
            .field("chat_template_source", &self.chat_template_source)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    pub(crate) fn load(
        path: &Path,
        chat_template_override: Option<String>,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        if !path.is_file() {
            return Err(EngineError::Load(format!(
                "model file {} does not exist (run scripts/setup.sh to fetch the default model)",
                path.display()
            )));
        }
        let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default())
            .map_err(|err| EngineError::Load(format!("{}: {err}", path.display())))?;
        let model: &'static LlamaModel = Box::leak(Box::new(model));
        let vocab = model.vocab();
        let token_text = |token: LlamaToken| {
            String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
        };
        let bos = token_text(vocab.bos());
        let eos = token_text(vocab.eos());
        let (source, template_origin) = match chat_template_override {
            Some(source) => (source, "override"),
            None => match model.meta_val_str("tokenizer.chat_template") {
                Ok(source) => (source, "gguf"),
                Err(_) => (CHATML_TEMPLATE.to_owned(), "built-in chatml"),
            },
        };
        let chat_template = ChatTemplate::new(source, bos, eos)
            .map_err(|err| EngineError::Load(err.to_string()))?;
        let trained_context = model.n_ctx_train();
        let head_dim = model.n_embd() as f64 / f64::from(model.n_head().max(1));
        let kv_bytes_per_cell = f64::from(model.n_layer())
            * 2.0
            * head_dim
            * f64::from(model.n_head_kv())
            * config.kv_cache_type.bytes_per_element();
        let (kv_budget_bytes, kv_budget_source) = match config.kv_cache_bytes {
            0 => (
                available_memory_bytes().unwrap_or(u64::MAX) / 2,
                "half of the memory available",
            ),
            bytes => (bytes, "engine.kv_cache_bytes"),
        };
        Ok(Self {
            model,
            chat_template,
            trained_context,
            pools: config.pools(trained_context, kv_bytes_per_cell, kv_budget_bytes),
            kv_bytes_per_cell,
            kv_budget_bytes,
            kv_budget_source,
            chat_template_source: template_origin,
        })
    }

    /// KV cells (one token each) of every pool's sequences.
    pub fn kv_cells(&self) -> u64 {
        self.pools
            .iter()
            .map(|pool| u64::from(pool.sequences) * u64::from(pool.context))
            .sum()
    }

    /// Bytes the pools' KV caches take.
    pub fn kv_bytes(&self) -> u64 {
        (self.kv_cells() as f64 * self.kv_bytes_per_cell) as u64
    }

    /// The most tokens (prompt plus completion) one request may use.
    pub fn served_context(&self) -> u32 {
        self.pools.last().map_or(0, |pool| pool.context)
    }

    /// The short pool's sequence context: a request fitting it is a chat,
    /// one over it goes to a long pool.
    pub fn short_context(&self) -> u32 {
        self.pools.first().map_or(0, |pool| pool.context)
    }

    /// The KV depth at which a long-pool token costs twice a short chat's:
    /// a token at depth `d` costs about `1 + d / attention_depth`. Per token
    /// and layer the weights take `2 · n_params / n_layer` FLOPs and
    /// attention `4 · n_embd` per cell of depth, so on FLOPs alone that
    /// depth is `n_params / (2 · n_layer · n_embd)` (3,906 for SmolLM2).
    /// llama.cpp's CPU attention over several per-sequence KV streams runs
    /// at about a fifth of its matmuls' rate: measured with four long
    /// sequences beside 28 short streams (rag-mix, per-pool step times at
    /// debug level), a long-pool token cost 3.6x a short-pool one at depth
    /// 1,950 and 6.5x at 4,500, so 780 cells for SmolLM2.
    pub fn attention_depth(&self) -> u32 {
        let per_cell = 2 * u64::from(self.model.n_layer()) * self.model.n_embd().max(1) as u64;
        (self.model.n_params() / per_cell.max(1) / ATTENTION_RATE_DIVISOR).max(1) as u32
    }

    /// The context of the sequence a request of `tokens` tokens (prompt
    /// plus completion) runs in: the smallest that holds them, else the
    /// largest.
    pub fn sequence_context(&self, tokens: usize) -> u32 {
        self.pools
            .iter()
            .map(|pool| pool.context)
            .find(|&context| context as usize >= tokens)
            .unwrap_or_else(|| self.served_context())
    }

    /// Tokenizes `text`, parsing special tokens: its author may spell
    /// `<|im_start|>` and get the control token. That is right for a raw
    /// `/v1/completions` prompt, whose client owns the whole prompt, and
    /// wrong for chat content (see [`Self::tokenize_chat`]). `add_special`
    /// adds BOS when the model asks for one.
    pub fn tokenize(&self, text: &str, add_special: bool) -> Vec<i32> {
        self.tokenize_as(text, add_special, true)
    }

    fn tokenize_as(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<i32> {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), add_special, parse_special)
            .into_iter()
            .map(|token| token.0)
            .collect()
    }

    /// Renders a conversation with the chat template and tokenizes it. Only
    /// the template's text may spell special tokens: a message's content is
    /// tokenized as plain text, so a client cannot forge turns
    /// (`<|im_end|><|im_start|>system ...`) or other control tokens.
    pub fn tokenize_chat(&self, messages: &[ChatMessage]) -> Result<Vec<i32>, TemplateError> {
        let segments = self.chat_template.render_segments(messages, true)?;
        // Templates that write the BOS text themselves must not get a second one.
        let vocab = self.model.vocab();
        let bos_text = vocab.token_to_piece(vocab.bos(), true, None);
        let template_writes_bos = matches!(
            segments.first(),
            Some(Segment::Template(text)) if text.as_bytes().starts_with(&bos_text)
        );
        let mut tokens = Vec::new();
        if vocab.should_add_bos() && !template_writes_bos {
            tokens.push(vocab.bos().0);
        }
        for segment in &segments {
            let (text, parse_special) = match segment {
                Segment::Template(text) => (text.as_str(), true),
                Segment::Content(index) => (messages[*index].content.as_str(), false),
            };
            tokens.extend(self.tokenize_as(text, false, parse_special));
        }
        Ok(tokens)
    }

    /// Text of `tokens`, for tests and logs.
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let vocab = self.model.vocab();
        let mut bytes = Vec::new();
        for &token in tokens {
            bytes.extend_from_slice(&vocab.token_to_piece(LlamaToken(token), false, None));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
