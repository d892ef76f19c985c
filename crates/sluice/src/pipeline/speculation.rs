//! First-token speculation inside the pipeline: a deterministic request
//! whose opening was seen before gets those pieces at once, and the engine
//! continues after them (or is not needed when they are the whole answer).
//! A request with nothing cached records its own opening for the next.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_core::speculation::SpeculationConfig;
use sluice_core::speculation::{CachedOpening, OpeningCache};
use sluice_core::sync::lock;
use sluice_engine::{FinishReason, Usage};

use super::GenerationParams;
use crate::telemetry::Metrics;

/// The cached openings, shared by every stream, and their metrics.
pub struct OpeningStore {
    cache: Mutex<OpeningCache>,
    metrics: Arc<Metrics>,
}

impl OpeningStore {
    pub fn new(config: SpeculationConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            cache: Mutex::new(OpeningCache::new(config)),
            metrics,
        }
    }

    fn get(&self, key: &[u8]) -> Option<CachedOpening> {
        lock(&self.cache).get(key, Instant::now())
    }

    fn first_tokens(&self) -> usize {
        lock(&self.cache).first_tokens()
    }

    fn insert(&self, key: Vec<u8>, opening: CachedOpening) {
        let mut cache = lock(&self.cache);
        cache.insert(key, opening, Instant::now());
        let usage = cache.usage();
        self.metrics.speculation_entries.set(usage.entries as i64);
        self.metrics.speculation_bytes.set(usage.bytes as i64);
    }
}

/// First-token speculation for one request.
pub(super) enum Speculation {
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
    pub fn plan(
        store: &OpeningStore,
        flag_on: bool,
        namespace: &str,
        prompt: &[i32],
        params: &GenerationParams,
        max_tokens: u32,
        context: u32,
    ) -> Self {
        let deterministic = params.sampling.temperature == 0.0 || params.sampling.seed.is_some();
        // A stop string could straddle the seam between the cached opening
        // and the engine's continuation, where neither side would see it.
        if !flag_on || !deterministic || !params.stop.is_empty() {
            return Self::Off;
        }
        let key = speculation_key(namespace, prompt, params);
        let Some(mut opening) = store.get(&key) else {
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

    pub fn serves_whole_answer(&self) -> bool {
        matches!(self, Self::Whole { .. })
    }

    pub fn served_token_ids(&self) -> Vec<i32> {
        match self {
            Self::Continue { opening } | Self::Whole { opening, .. } => opening
                .pieces
                .iter()
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect(),
            Self::Off | Self::Record { .. } => Vec::new(),
        }
    }

    pub fn into_opening(self, store: &Arc<OpeningStore>, prompt_tokens: u32) -> OpeningState {
        match self {
            Self::Off => OpeningState::default(),
            Self::Record { key } => OpeningState {
                recorder: Some(OpeningRecorder {
                    key,
                    opening: CachedOpening::default(),
                    limit: store.first_tokens(),
                    store: Arc::clone(store),
                }),
                ..OpeningState::default()
            },
            Self::Continue { opening } => OpeningState::serve(store, opening, None, prompt_tokens),
            Self::Whole { opening, reason } => {
                OpeningState::serve(store, opening, Some(reason), prompt_tokens)
            }
        }
    }
}

/// The cache namespace (openings are not shared across tenants or salts),
/// the exact prompt and every parameter that shapes the answer's opening
/// (not `max_tokens`: it only cuts the answer short).
fn speculation_key(namespace: &str, prompt: &[i32], params: &GenerationParams) -> Vec<u8> {
    let sampling = &params.sampling;
    let mut key = Vec::with_capacity(namespace.len() + prompt.len() * 4 + 56);
    key.extend_from_slice(&(namespace.len() as u64).to_le_bytes());
    key.extend_from_slice(namespace.as_bytes());
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
pub(crate) struct OpeningState {
    /// Text pieces and how many tokens each holds.
    pub pending: VecDeque<(String, u32)>,
    /// Tokens served from the cache: the engine counts them as prompt.
    served_tokens: u32,
    /// The request's own prompt length, for the usage it is shown.
    prompt_tokens: u32,
    /// Served wholly from the cache, ending with this reason.
    pub whole: Option<FinishReason>,
    pub recorder: Option<OpeningRecorder>,
}

impl OpeningState {
    fn serve(
        store: &OpeningStore,
        opening: CachedOpening,
        whole: Option<FinishReason>,
        prompt_tokens: u32,
    ) -> Self {
        let served_tokens = opening.token_count() as u32;
        store.metrics.speculation_hits.inc();
        store
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
    pub fn client_usage(&self, engine: Usage) -> Usage {
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
pub(crate) struct OpeningRecorder {
    key: Vec<u8>,
    pub opening: CachedOpening,
    limit: usize,
    store: Arc<OpeningStore>,
}

impl OpeningRecorder {
    /// Adds a piece; true once the opening is long enough to store.
    pub fn push(&mut self, text: &str, token_ids: &[i32]) -> bool {
        self.opening
            .pieces
            .push((text.to_owned(), token_ids.to_vec()));
        self.opening.pieces.len() >= self.limit
    }

    pub fn store(self) {
        self.store.insert(self.key, self.opening);
    }
}
