//! The step executor: it hands the planner the engine's state, turns the
//! plan into a llama.cpp batch (decodes, prompt chunks, prep chunks), and
//! after the decode samples each sequence's next token, turning it into
//! text and events. A batch that cannot be built, decoded or sampled fails
//! on its own: its streams end with an error and the engine goes on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use sluice_core::admission::Priority;

use super::outbox::Delivery;
use super::planner::{Budget, Phase, PrefillChunk, SlotInput, StepPlan, plan_step};
use super::sequence::Sequence;
use super::{BatchFault, EngineFault, Pool, round_budget};
use crate::model::LoadedModel;
use crate::request::{FinishReason, SamplingParams, StreamEvent};
use crate::stop::StopOutcome;

/// Penalties look back this many tokens (llama.cpp's default window).
const PENALTY_WINDOW: i32 = 64;

impl Pool {
    /// Plans the step and builds its batch.
    pub(super) fn build_batch(&mut self) -> Result<(), BatchFault> {
        self.batch.clear();
        self.sample_at.clear();
        self.fill_step_input();
        plan_step(&self.step_input, &mut self.plan);
        self.mixed_last_step = self.plan.mixed;
        // Taken out while the batch is built from it, then put back so its
        // allocations serve the next step (and `fail_batch` sees it).
        let plan = std::mem::take(&mut self.plan);
        let added = self.add_plan(&plan);
        self.plan = plan;
        added
    }

    fn add_plan(&mut self, plan: &StepPlan) -> Result<(), BatchFault> {
        self.count_step(plan)?;
        for &slot in &plan.decodes {
            self.add_decode(slot)?;
        }
        for chunk in &plan.prefills {
            self.add_prefill(chunk)?;
        }
        for chunk in &plan.preps {
            self.add_prep_chunk(chunk)?;
        }
        Ok(())
    }

    fn fill_step_input(&mut self) {
        let input = &mut self.step_input;
        input.slots.clear();
        input
            .slots
            .extend(self.slots.iter().enumerate().filter_map(|(slot, seq)| {
                let seq = seq.as_ref()?;
                Some(SlotInput {
                    slot,
                    tenant: Arc::clone(&seq.tenant),
                    admission_order: seq.admission_order,
                    batch: seq.priority == Priority::Batch,
                    phase: seq.phase(),
                    steps_sat_out: seq.steps_sat_out,
                })
            }));
        input.budget = Budget {
            requested: round_budget::pool_budget(
                self.step_budget.load(Ordering::Relaxed),
                self.budget_spent,
                self.token_cost,
            ),
            min_prefill_chunk: round_budget::prefill_floor(
                self.config.min_prefill_chunk,
                self.token_cost,
            ),
            ceiling: self.config.step_budget_ceiling(),
            mixed_step_cap: self.config.mixed_step_token_budget,
            batch_step_cap: self.config.batch_step_token_budget,
            prep_tokens_per_step: self.config.prep_tokens_per_step,
        };
        input.mixed_last_step = self.mixed_last_step;
        self.fill_prep_input();
    }

    /// Counts the step for every prompt still prefilling (waiting ones
    /// included) and for every decode that sits it out.
    fn count_step(&mut self, plan: &StepPlan) -> Result<(), BatchFault> {
        for input in &self.step_input.slots {
            if let Phase::Prefilling { .. } = input.phase {
                live_mut(&mut self.slots, input.slot)?.prefill_steps += 1;
            }
        }
        for &slot in plan.sitting_out.iter().chain(&plan.batch_sitting_out) {
            let seq = live_mut(&mut self.slots, slot)?;
            seq.steps_sat_out = seq.steps_sat_out.saturating_add(1);
        }
        Ok(())
    }

    fn add_decode(&mut self, slot: usize) -> Result<(), BatchFault> {
        let seq = live_mut(&mut self.slots, slot)?;
        seq.steps_sat_out = 0;
        let token = seq.next_token.take().ok_or_else(|| {
            BatchFault::Inconsistent(format!("slot {slot} is planned to decode without a token"))
        })?;
        let index = self.batch.n_tokens();
        self.batch
            .add(
                LlamaToken(token),
                seq.kv_tokens.len() as i32,
                &[seq.seq_id],
                true,
            )
            .map_err(no_room)?;
        seq.kv_tokens.push(token);
        self.sample_at.push((slot, index));
        Ok(())
    }

    fn add_prefill(&mut self, chunk: &PrefillChunk) -> Result<(), BatchFault> {
        let slot = chunk.slot;
        let seq = live_mut(&mut self.slots, slot)?;
        let tokens = match seq.prompt.get(chunk.tokens.clone()) {
            Some(tokens) if chunk.tokens.start == seq.prefilled => tokens,
            _ => {
                return Err(BatchFault::Inconsistent(format!(
                    "the step plan prefills prompt tokens {:?} of slot {slot}, \
                     which has {} of {} prefilled",
                    chunk.tokens,
                    seq.prefilled,
                    seq.prompt.len()
                )));
            }
        };
        let prompt_len = seq.prompt.len();
        for (offset, &token) in tokens.iter().enumerate() {
            let pos = chunk.tokens.start + offset;
            let is_last_prompt_token = pos + 1 == prompt_len;
            let index = self.batch.n_tokens();
            self.batch
                .add(
                    LlamaToken(token),
                    pos as i32,
                    &[seq.seq_id],
                    is_last_prompt_token,
                )
                .map_err(no_room)?;
            if is_last_prompt_token {
                self.sample_at.push((slot, index));
            }
        }
        self.stats
            .prompt_tokens_processed_total
            .fetch_add(tokens.len() as u64, Ordering::Relaxed);
        seq.kv_tokens.extend_from_slice(tokens);
        seq.prefilled = chunk.tokens.end;
        Ok(())
    }

    /// Samples every token the batch asked logits for. Reads `sample_at` in
    /// place, so a failure leaves it for `fail_batch`.
    pub(super) fn sample_batch(&mut self) -> Result<(), BatchFault> {
        let now = Instant::now();
        for at in 0..self.sample_at.len() {
            let (slot, index) = self.sample_at[at];
            let seq = live_mut(&mut self.slots, slot)?;
            let token = seq.sampler.sample(&self.ctx, index);
            self.stats
                .generated_tokens_total
                .fetch_add(1, Ordering::Relaxed);
            let context = self.context as usize;
            if let Some(ended) =
                accept_token(seq, token, &self.model, context, &mut self.piece, now)
            {
                self.finish(slot, ended, now)?;
            }
        }
        Ok(())
    }

    /// Ends the streams in a batch that failed (each gets an error event)
    /// and frees their slots, their KV cleared: what a failed batch left in
    /// those cells is unknown.
    pub(super) fn fail_batch(&mut self, message: &str) -> Result<(), EngineFault> {
        tracing::error!(message, "engine step failed; ending the streams in it");
        let mut slots: Vec<usize> = self.sample_at.iter().map(|&(slot, _)| slot).collect();
        // A decode whose token was taken but did not make it into the batch
        // has no token left to go on with.
        slots.extend_from_slice(&self.plan.decodes);
        slots.extend(
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, seq)| seq.as_ref().is_some_and(Sequence::is_prefilling))
                .map(|(slot, _)| slot),
        );
        slots.sort_unstable();
        slots.dedup();
        self.drop_all_preps()?;
        for slot in slots {
            if let Some(seq) = self.slots.get_mut(slot).and_then(Option::as_mut) {
                seq.outbox.deliver(
                    StreamEvent::Error {
                        message: message.to_owned(),
                    },
                    Instant::now(),
                );
            }
            self.free_slot(slot, false)?;
        }
        Ok(())
    }
}

/// The live sequence in `slot`; the plan naming an empty slot fails the
/// batch.
fn live_mut(slots: &mut [Option<Sequence>], slot: usize) -> Result<&mut Sequence, BatchFault> {
    slots
        .get_mut(slot)
        .and_then(Option::as_mut)
        .ok_or_else(|| BatchFault::Inconsistent(format!("the step plan names empty slot {slot}")))
}

/// The batch was sized for the largest step the planner makes.
fn no_room(err: impl std::fmt::Display) -> BatchFault {
    BatchFault::Inconsistent(format!("the step plan overflows the batch: {err}"))
}

/// Turns a sampled token into text and events; returns the finish reason
/// when the stream ends here.
fn accept_token(
    seq: &mut Sequence,
    token: LlamaToken,
    model: &LoadedModel,
    context_limit: usize,
    piece: &mut Vec<u8>,
    now: Instant,
) -> Option<FinishReason> {
    let vocab = model.model.vocab();
    seq.generated += 1;
    seq.first_token_at.get_or_insert(now);
    if vocab.is_eog(token) && !seq.ignore_eos {
        return Some(FinishReason::Stop);
    }
    piece.clear();
    vocab.token_to_piece_into(token, piece, false, None);
    let text = seq.utf8.push(piece);
    seq.pending_token_ids.push(token.0);
    let (text, stopped) = match seq.stop.push(&text) {
        StopOutcome::Continue(text) => (text, false),
        StopOutcome::Stopped(text) => (text, true),
    };
    if !text.is_empty() {
        let token_ids = std::mem::take(&mut seq.pending_token_ids);
        if let Delivery::ClientGone = seq
            .outbox
            .deliver(StreamEvent::Token { text, token_ids }, now)
        {
            // Freed on the next step's check for clients gone.
            return None;
        }
    }
    if stopped {
        return Some(FinishReason::Stop);
    }
    if seq.generated >= seq.max_tokens || seq.kv_tokens.len() + 1 >= context_limit {
        return Some(FinishReason::Length);
    }
    seq.next_token = Some(token.0);
    None
}

pub(super) fn build_sampler(params: &SamplingParams, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::new();
    if params.repetition_penalty != 1.0
        || params.presence_penalty != 0.0
        || params.frequency_penalty != 0.0
    {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_WINDOW,
            params.repetition_penalty,
            params.frequency_penalty,
            params.presence_penalty,
        ));
    }
    if params.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
        return LlamaSampler::chain_simple(chain);
    }
    if params.top_k > 0 {
        chain.push(LlamaSampler::top_k(params.top_k));
    }
    if params.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(params.top_p, 1));
    }
    if params.min_p > 0.0 {
        chain.push(LlamaSampler::min_p(params.min_p, 1));
    }
    chain.push(LlamaSampler::temp(params.temperature));
    let seed = params.seed.unwrap_or_else(random_seed);
    // llama.cpp seeds are 32-bit; fold the high half in so distinct u64 seeds
    // rarely collide.
    chain.push(LlamaSampler::dist((seed ^ (seed >> 32)) as u32));
    LlamaSampler::chain_simple(chain)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
