//! The model and engine sections.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the default model lands after `scripts/setup.sh` fetched it.
pub const DEFAULT_MODEL_PATH: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// GGUF file to serve.
    pub path: PathBuf,
    /// Name clients use in `model`; the file stem when unset.
    pub served_name: Option<String>,
    /// Jinja chat template file overriding the GGUF's `tokenizer.chat_template`.
    pub chat_template: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_MODEL_PATH),
            served_name: None,
            chat_template: None,
        }
    }
}

impl ModelConfig {
    /// The name clients must send in `model`.
    pub fn served_name(&self) -> String {
        self.served_name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_else(|| "default".to_owned())
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Sequences the llama.cpp context holds at once (`n_seq_max`): the most
    /// streams that can be in the running batch together.
    pub max_sequences: u32,
    /// KV cells each sequence may use: prompt plus generated tokens.
    pub context_per_sequence: u32,
    /// Sequences of the long pool, each holding a whole request of up to the
    /// served context (`max_model_len`) in a llama.cpp context of its own: a
    /// long prompt is served without widening the short sequences' KV (and
    /// so their attention). 0: no long pool; requests longer than
    /// `context_per_sequence` are refused.
    pub long_sequences: u32,
    /// Most tokens (prompt plus completion) one request may use; 0: the
    /// model's trained context. Never above the trained context.
    pub max_model_len: u32,
    /// Element type of the KV cache: f16, or q8_0 (half the memory).
    pub kv_cache_type: KvCacheType,
    /// Most bytes the KV cache of all pools may take; the pools' sequence
    /// counts shrink to fit it (the long pool's first, it is small). 0:
    /// half of the memory available when the engine starts.
    pub kv_cache_bytes: u64,
    /// KV-cache events for an inference gateway's prefix-aware routing.
    pub kv_events: KvEventsConfig,
    /// One KV buffer shared by all sequences (true) or one per sequence
    /// (false). Per-sequence buffers decode faster with many streams; see
    /// docs/architecture.md for the measurements.
    pub kv_unified: bool,
    /// Tokens one engine step may process (decode tokens of running streams
    /// plus prefill chunks of new ones). Smaller keeps inter-token gaps short
    /// while prompts prefill; larger prefills faster.
    pub step_token_budget: u32,
    /// Ceiling the governor may raise the step budget to while prompts wait
    /// for prefill and inter-token gaps have headroom; it sizes the
    /// llama.cpp batch. At or below `step_token_budget`, the budget is fixed.
    pub max_step_token_budget: u32,
    /// Smallest prefill chunk per step, so prefill progresses even when
    /// running streams fill the budget; in budget units, so deep in a long
    /// pool it is a few tokens.
    pub min_prefill_chunk: u32,
    /// Cap on the step budget while more than one tenant has sequences in
    /// the engine (in this step or the last): a step cannot be cut short,
    /// so its length is what another tenant's new prompt may wait before
    /// its prefill starts. 0: no cap.
    pub mixed_step_token_budget: u32,
    /// Most batch-class tokens (decodes and prompt chunks) one step takes
    /// while interactive sequences are in the engine: a step cannot be cut
    /// short, so this bounds what an interactive prompt arriving waits for
    /// batch work. Batch decodes beyond it take turns. 0: only
    /// `mixed_step_token_budget` bounds it.
    pub batch_step_token_budget: u32,
    /// Threads llama.cpp computes with; 0 means one per available core.
    pub threads: u32,
    /// Events buffered between the engine and one client's writer. A client
    /// that falls this far behind has its sequence parked.
    pub stream_buffer_events: usize,
    /// A stream whose client has not read for this long while events wait
    /// for it (parked, or finished with its last events undelivered) is
    /// ended with a slow-consumer error, freeing its sequence. 0: no limit.
    pub max_park_ms: u64,
    /// Requests waiting for a free sequence before new ones get 503.
    pub max_waiting: usize,
    /// A finished sequence keeps its KV; a new request takes the idle
    /// sequence holding the longest prefix of its prompt and prefills only
    /// the rest. Off: every sequence starts empty.
    pub prefix_cache: bool,
    /// KV prep: most prompt tokens per step the engine prefills for requests
    /// still queued for admission, from budget the step leaves spare. 0 turns
    /// KV prep off; it needs `prefix_cache`.
    pub prep_tokens_per_step: u32,
    /// An engine with work that has not finished a step for this long is
    /// reported stalled: `/health/live` answers 503, so an orchestrator
    /// restarts the process. 0: never reported stalled.
    pub step_stall_timeout_ms: u64,
}

/// How the KV cache stores keys and values (llama.cpp's `type_k`/`type_v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheType {
    #[default]
    F16,
    Q8_0,
}

impl KvCacheType {
    /// Bytes of one KV element, rounded up per element (q8_0 stores 32
    /// values in 34 bytes).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            Self::F16 => 2.0,
            Self::Q8_0 => 34.0 / 32.0,
        }
    }
}

/// One pool of sequences: each a llama.cpp context over the one loaded
/// model, with `sequences` sequences of `context` KV cells each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    pub sequences: u32,
    pub context: u32,
}

impl EngineConfig {
    /// The most tokens one request may use, for a model trained for
    /// `trained` tokens.
    pub fn served_context(&self, trained: u32) -> u32 {
        match self.max_model_len {
            0 => trained,
            limit => limit.min(trained),
        }
    }

    /// The sequence pools, smallest context first: up to `max_sequences`
    /// of `context_per_sequence` cells, and up to `long_sequences` holding
    /// the whole served context when that is longer, within
    /// `kv_budget_bytes` at `bytes_per_cell` (every layer's key and value
    /// of one token). The short pool keeps at least one sequence.
    pub fn pools(&self, trained: u32, bytes_per_cell: f64, kv_budget_bytes: u64) -> Vec<PoolSize> {
        let served = self.served_context(trained);
        let short_context = self.context_per_sequence.min(served);
        let mut budget = kv_budget_bytes as f64;
        let mut fit = |wanted: u32, context: u32| {
            let sequence_bytes = f64::from(context) * bytes_per_cell;
            let fitting = (budget / sequence_bytes).floor().min(f64::from(wanted)) as u32;
            budget -= f64::from(fitting) * sequence_bytes;
            fitting
        };
        let long = if served > short_context {
            fit(self.long_sequences, served)
        } else {
            0
        };
        let short = PoolSize {
            sequences: fit(self.max_sequences, short_context).max(1),
            context: short_context,
        };
        let mut pools = vec![short];
        if long > 0 {
            pools.push(PoolSize {
                sequences: long,
                context: served,
            });
        }
        pools
    }

    /// The largest step budget the engine accepts at run time.
    pub fn step_budget_ceiling(&self) -> u32 {
        self.step_token_budget.max(self.max_step_token_budget)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_sequences: 128,
            context_per_sequence: 1024,
            long_sequences: 4,
            max_model_len: 0,
            kv_cache_type: KvCacheType::F16,
            kv_cache_bytes: 0,
            kv_events: KvEventsConfig::default(),
            kv_unified: false,
            step_token_budget: 128,
            max_step_token_budget: 512,
            min_prefill_chunk: 16,
            mixed_step_token_budget: 64,
            batch_step_token_budget: 16,
            threads: 0,
            stream_buffer_events: 64,
            max_park_ms: 30_000,
            max_waiting: 1024,
            prefix_cache: true,
            prep_tokens_per_step: 32,
            step_stall_timeout_ms: 30_000,
        }
    }
}

/// KV-cache events, published over ZMQ as vLLM does (the llm-d KV-event
/// wire format): which 16-token blocks the engine holds, as they are
/// cached and dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvEventsConfig {
    pub enabled: bool,
    /// Where the ZMQ PUB socket binds, e.g. `tcp://*:5557`.
    pub endpoint: String,
    /// The pod name in each message's topic `kv@<pod>@<model>`; unset: the
    /// `HOSTNAME` environment variable (the pod's name on Kubernetes).
    pub pod: Option<String>,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "tcp://*:5557".to_owned(),
            pod: None,
        }
    }
}
