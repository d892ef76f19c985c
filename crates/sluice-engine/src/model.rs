//! The loaded model as the rest of the server sees it: tokenizing and chat
//! templating, safe to call from any thread while the engine thread decodes.

use std::path::Path;
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

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
    /// KV cells one sequence may use (prompt + generated).
    pub context_per_sequence: u32,
    /// Where the chat template came from, for logs.
    pub chat_template_source: &'static str,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("context_per_sequence", &self.context_per_sequence)
            .field("chat_template_source", &self.chat_template_source)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    pub(crate) fn load(
        path: &Path,
        chat_template_override: Option<String>,
        context_per_sequence: u32,
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
        let context_per_sequence = context_per_sequence.min(model.n_ctx_train());
        Ok(Self {
            model,
            chat_template,
            context_per_sequence,
            chat_template_source: template_origin,
        })
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
