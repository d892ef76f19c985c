//! One pool of sequences: a llama.cpp context over the shared model, its
//! slots, prefix cache, KV preps and queue. The engine thread ([`super`])
//! routes each request to the smallest pool that holds it and steps every
//! pool in turn; everything a step does happens inside one pool.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{KvCacheType as LlamaKvType, LlamaContextParams};
use llama_cpp_2::llama_batch::LlamaBatch;
use sluice_core::config::{EngineConfig, KvCacheType, PoolSize};

use super::inbox::{PrepJob, Submission};
use super::outbox::Outbox;
use super::planner::{Phase, StepInput, StepPlan};
use super::prefix_cache::CachedPrefix;
use super::sequence::Sequence;
use super::{BatchFault, EngineFault, round_budget};
use crate::model::{LoadedModel, backend};
use crate::request::StreamEvent;
use crate::{EngineError, EngineStats};

pub(crate) struct Pool {
    pub(super) model: Arc<LoadedModel>,
    pub(super) ctx: LlamaContext<'static>,
    pub(super) batch: LlamaBatch<'static>,
    pub(super) config: EngineConfig,
    /// KV cells each of this pool's sequences may use.
    pub(super) context: u32,
    pub(super) stats: Arc<EngineStats>,
    /// Tokens per step, set at run time by the governor (within
    /// `min_prefill_chunk..=step_budget_ceiling()`); read once per step.
    pub(super) step_budget: Arc<AtomicU32>,
    /// Tokens the pools stepped before this one took this round: the
    /// budget is the round's, so a second pool does not lengthen the gap
    /// between a short stream's tokens by a whole step.
    pub(super) budget_spent: u32,
    /// Charged per token of this pool's step in the round's budget
    /// (`round_budget::token_cost`, at its deepest sequence): a step deep
    /// in a document is sized by what its tokens' attention costs.
    pub(super) token_cost: f64,
    /// `LoadedModel::attention_depth` for a long pool; None for the first.
    pub(super) attention_depth: Option<u32>,
    /// When the pool last ran a step (a long pool's wait bound).
    pub(super) last_stepped: Instant,
    /// A long pool that waits this round for its share: its step, reaping
    /// of cancelled and gone streams included, comes at most
    /// `round_budget::LONG_POOL_MAX_WAIT` later.
    pub(super) sits_out_round: bool,
    pub(super) slots: Vec<Option<Sequence>>,
    /// Per slot, what its KV holds while the slot is free.
    pub(super) cached: Vec<CachedPrefix>,
    pub(super) frees: u64,
    pub(super) waiting: VecDeque<Submission>,
    /// KV preps not yet given a slot, oldest first.
    pub(super) preps: VecDeque<PrepJob>,
    pub(super) preps_started: u64,
    /// Finished streams whose last events still wait for room.
    pub(super) draining: Vec<Outbox>,
    pub(super) next_admission: u64,
    /// (slot, batch index) of every token whose logits the step samples.
    pub(super) sample_at: Vec<(usize, i32)>,
    /// The planner's input and plan; kept to reuse their allocations.
    pub(super) step_input: StepInput,
    pub(super) plan: StepPlan,
    /// Whether the last step had sequences of more than one tenant.
    pub(super) mixed_last_step: bool,
    pub(super) piece: Vec<u8>,
}

/// What a pool's sequences hold, summed over the pools for the stats.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PoolCounts {
    pub running: usize,
    pub parked: usize,
    pub kv_tokens: usize,
    pub cached_tokens: usize,
}

impl std::ops::AddAssign for PoolCounts {
    fn add_assign(&mut self, other: Self) {
        self.running += other.running;
        self.parked += other.parked;
        self.kv_tokens += other.kv_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

impl Pool {
    /// What slot `slot`'s KV cells hold: its running sequence's tokens, else
    /// its cached prefix (empty once cleared), and their cache namespace.
    pub(super) fn kv_content(&self, slot: usize) -> (&Arc<str>, &[i32]) {
        match &self.slots[slot] {
            Some(seq) => (&seq.cache_namespace, &seq.kv_tokens),
            None => (&self.cached[slot].namespace, &self.cached[slot].tokens),
        }
    }

    pub(super) fn new(
        model: Arc<LoadedModel>,
        size: PoolSize,
        attention_depth: Option<u32>,
        config: EngineConfig,
        stats: Arc<EngineStats>,
        step_budget: Arc<AtomicU32>,
    ) -> Result<Self, EngineError> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        } as i32;
        let n_ctx = size
            .context
            .checked_mul(size.sequences)
            .ok_or_else(|| EngineError::Load("context size overflows u32".into()))?;
        let batch_tokens = config.step_budget_ceiling() + size.sequences;
        let kv_type = match config.kv_cache_type {
            KvCacheType::F16 => LlamaKvType::F16,
            KvCacheType::Q8_0 => LlamaKvType::Q8_0,
        };
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(batch_tokens)
            .with_n_ubatch(batch_tokens.min(512))
            .with_n_seq_max(size.sequences)
            .with_kv_unified(config.kv_unified)
            .with_type_k(kv_type)
            .with_type_v(kv_type)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .model
            .new_context(backend()?, params)
            .map_err(|err| EngineError::Load(format!("creating the llama.cpp context: {err}")))?;
        let batch = LlamaBatch::new(batch_tokens as usize, 1);
        let slots = (0..size.sequences).map(|_| None).collect();
        let cached = (0..size.sequences)
            .map(|_| CachedPrefix::default())
            .collect();
        Ok(Self {
            model,
            ctx,
            batch,
            config,
            context: size.context,
            stats,
            step_budget,
            budget_spent: 0,
            token_cost: 1.0,
            attention_depth,
            last_stepped: Instant::now(),
            sits_out_round: false,
            slots,
            cached,
            frees: 0,
            waiting: VecDeque::new(),
            preps: VecDeque::new(),
            preps_started: 0,
            draining: Vec::new(),
            next_admission: 0,
            sample_at: Vec::new(),
            step_input: StepInput::default(),
            plan: StepPlan::default(),
            mixed_last_step: false,
            piece: Vec::with_capacity(64),
        })
    }

    /// Pinned preps count: the loop must keep stepping to prefill them and
    /// to notice when their handle drops.
    pub(super) fn has_work(&self) -> bool {
        !self.waiting.is_empty()
            || !self.draining.is_empty()
            || !self.preps.is_empty()
            || self.slots.iter().any(Option::is_some)
            || self.cached.iter().any(|cached| cached.prep.is_some())
    }

    /// The first half of this pool's step, after `budget_spent` units of
    /// the round's budget taken by other pools: reaps, admits and builds
    /// the batch. Returns its tokens, `Some(0)` when a failed build ended
    /// its streams (progress all the same), or `None` when there is
    /// nothing to run.
    pub(super) fn build_step(
        &mut self,
        budget_spent: u32,
        streams_decoding: bool,
    ) -> Result<Option<usize>, EngineFault> {
        let now = Instant::now();
        self.flush_draining(now);
        self.release_gone_clients(now)?;
        self.drop_cancelled_requests();
        self.drop_abandoned_preps()?;
        self.end_slow_consumers(now)?;
        self.admit_waiting()?;
        self.copy_prefixes()?;
        self.budget_spent = budget_spent;
        self.token_cost =
            round_budget::token_cost(self.deepest(), self.attention_depth, streams_decoding);
        if let Err(fault) = self.build_batch() {
            self.fail_batch_for(fault)?;
            self.batch.clear();
            return Ok(Some(0));
        }
        let tokens = self.batch.n_tokens();
        Ok((tokens > 0).then_some(tokens as usize))
    }

    /// What this long pool's next step takes whatever the budget
    /// (`round_budget::reserve`); 0 for the short pool.
    pub(super) fn reserve(&self, streams_decoding: bool) -> u32 {
        if self.attention_depth.is_none() {
            return 0;
        }
        let running = self.slots.iter().flatten();
        let decodes = running
            .clone()
            .filter(|seq| matches!(seq.phase(), Phase::Decoding))
            .count();
        let prefilling = !self.waiting.is_empty()
            || running
                .clone()
                .any(|seq| matches!(seq.phase(), Phase::Prefilling { .. }));
        round_budget::reserve(
            decodes,
            prefilling,
            self.config.min_prefill_chunk,
            round_budget::token_cost(self.deepest(), self.attention_depth, streams_decoding),
        )
    }

    /// KV cells held by this pool's deepest running sequence.
    fn deepest(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|seq| seq.kv_tokens.len())
            .max()
            .unwrap_or(0)
    }

    /// Whether a sequence of this pool has a token to decode next step.
    pub(super) fn is_decoding(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|seq| matches!(seq.phase(), Phase::Decoding))
    }

    /// What `tokens` of this step take of the round's budget.
    pub(super) fn charge(&self, tokens: usize) -> u32 {
        round_budget::charge(tokens, self.token_cost)
    }

    /// The second half: decodes and samples the batch `build_step` built,
    /// if any. A failed decode or sample ends that batch's streams only.
    pub(super) fn run_step(&mut self) -> Result<(), EngineFault> {
        if self.batch.n_tokens() == 0 {
            return Ok(());
        }
        let started = Instant::now();
        if let Err(err) = self.ctx.decode(&mut self.batch) {
            self.batch.clear();
            return self.fail_batch(&format!("llama.cpp decode failed: {err}"));
        }
        let sampled = self.sample_batch();
        tracing::debug!(
            context = self.context,
            tokens = self.batch.n_tokens(),
            budget = self.plan.budget,
            decodes = self.plan.decodes.len(),
            batch_decodes = self.plan.batch_decodes_run(),
            prefill_tokens = self.plan.prefill_tokens(),
            token_cost = self.token_cost,
            micros = started.elapsed().as_micros() as u64,
            "pool step"
        );
        self.batch.clear();
        match sampled {
            Ok(()) => Ok(()),
            Err(fault) => self.fail_batch_for(fault),
        }
    }

    /// Ends the streams of a batch the engine could not build or sample; an
    /// engine fault goes on up.
    fn fail_batch_for(&mut self, fault: BatchFault) -> Result<(), EngineFault> {
        match fault {
            BatchFault::Inconsistent(message) => self.fail_batch(&message),
            BatchFault::Engine(fault) => Err(fault),
        }
    }

    /// After an [`EngineFault`]: every stream of the pool (running,
    /// finished with events still waiting, or queued) ends with `message`.
    /// Touches no llama.cpp state.
    pub(super) fn end_every_stream(&mut self, message: &str) {
        let error = || StreamEvent::Error {
            message: message.to_owned(),
        };
        for seq in self.slots.iter_mut().filter_map(Option::take) {
            let mut outbox = seq.outbox;
            outbox.end_with(error());
        }
        for mut drain in self.draining.drain(..) {
            drain.end_with(error());
        }
        self.preps.clear();
        for cached in &mut self.cached {
            cached.prep = None;
        }
        for submission in std::mem::take(&mut self.waiting) {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            // A client gone meanwhile needs no reason.
            let _ = submission.events.try_send(error());
        }
    }

    pub(super) fn counts(&self) -> PoolCounts {
        let mut counts = PoolCounts::default();
        for seq in self.slots.iter().flatten() {
            counts.running += 1;
            counts.parked += usize::from(seq.outbox.is_parked());
            counts.kv_tokens += seq.kv_tokens.len();
        }
        counts.cached_tokens = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].is_none())
            .map(|slot| self.cached[slot].tokens.len())
            .sum();
        counts
    }
}
