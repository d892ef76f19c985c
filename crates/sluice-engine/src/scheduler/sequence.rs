//! One stream's state inside the engine, from admission to its end: its
//! prompt and KV bookkeeping, sampler, stop matching and outbox, and the
//! slot it lives in. Starting a sequence (after the inbox admits it),
//! finishing it, freeing its slot, and freeing those whose client left.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use llama_cpp_2::sampling::LlamaSampler;
use sluice_core::admission::Priority;

use super::executor::build_sampler;
use super::inbox::Submission;
use super::outbox::{Delivery, Outbox};
use super::planner::Phase;
use super::prefix_cache::PrefixSource;
use super::{EngineFault, Pool};
use crate::detokenizer::Utf8Assembler;
use crate::request::{EngineTimings, FinishReason, StreamEvent, Usage};
use crate::stop::StopMatcher;

/// One stream's state inside the engine.
pub(super) struct Sequence {
    pub seq_id: i32,
    pub admission_order: u64,
    /// Shared with the planner's input, which is rebuilt every step.
    pub tenant: Arc<str>,
    pub priority: Priority,
    /// Only sequences and cached prefixes of this namespace share KV with it.
    pub cache_namespace: Arc<str>,
    pub prompt: Vec<i32>,
    /// Prompt tokens already in the KV cache (reused ones included).
    pub prefilled: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub reused: usize,
    /// Sampled token whose KV is not computed yet.
    pub next_token: Option<i32>,
    /// The tokens in this sequence's KV cells, by position: prompt tokens
    /// prefilled, then decoded tokens. What the slot caches when it ends.
    pub kv_tokens: Vec<i32>,
    /// A running sequence whose prompt starts like this one's: this one
    /// copies that prefix's KV once the source has it, instead of
    /// prefilling it too. Skipped in the batch until then.
    pub copy_from: Option<PrefixSource>,
    pub sampler: LlamaSampler,
    pub utf8: Utf8Assembler,
    pub stop: StopMatcher,
    pub generated: u32,
    pub max_tokens: u32,
    pub ignore_eos: bool,
    pub pending_token_ids: Vec<i32>,
    /// The way back to the client; while events wait in it the sequence is
    /// parked (skipped in the batch).
    pub outbox: Outbox,
    pub arrived_at: Instant,
    pub admitted_at: Instant,
    pub first_token_at: Option<Instant>,
    /// Steps taken while its prompt was prefilling, waiting ones included.
    pub prefill_steps: u32,
    /// Steps in a row its decode sat out for other tenants' prompts; at
    /// [`super::planner::MAX_STEPS_SITTING_OUT`] it runs in the next.
    pub steps_sat_out: u8,
}

impl Sequence {
    pub fn is_prefilling(&self) -> bool {
        self.prefilled < self.prompt.len()
    }

    /// What this step may do with the sequence, as the planner sees it.
    pub fn phase(&self) -> Phase {
        if self.outbox.is_parked() {
            Phase::Parked
        } else if self.next_token.is_some() {
            Phase::Decoding
        } else if self.is_prefilling() {
            Phase::Prefilling {
                prefilled: self.prefilled,
                prompt_len: self.prompt.len(),
                awaiting_copy: self.copy_from.is_some(),
            }
        } else {
            Phase::Idle
        }
    }

    fn timings(&self) -> EngineTimings {
        EngineTimings {
            queue: self.admitted_at - self.arrived_at,
            prefill: self
                .first_token_at
                .map_or(Duration::ZERO, |first| first - self.admitted_at),
            cached_tokens: self.reused as u32,
            prefill_steps: self.prefill_steps,
        }
    }

    /// Sends the text still held back, then the finish event with usage.
    fn deliver_end(&mut self, reason: FinishReason, now: Instant) {
        // After a stop string matched, the matcher holds nothing; otherwise
        // what it held back is ordinary text.
        let tail = self.stop.finish() + &self.utf8.finish();
        if !tail.is_empty() {
            let token_ids = std::mem::take(&mut self.pending_token_ids);
            self.outbox.deliver(
                StreamEvent::Token {
                    text: tail,
                    token_ids,
                },
                now,
            );
        }
        let timings = self.timings();
        let usage = Usage {
            prompt_tokens: self.prompt.len() as u32,
            completion_tokens: self.generated,
            cached_tokens: timings.cached_tokens,
        };
        self.outbox.deliver(
            StreamEvent::Finished {
                reason,
                usage,
                timings,
            },
            now,
        );
    }
}

impl Pool {
    pub(super) fn start_sequence(
        &mut self,
        slot: usize,
        kv_tokens: Vec<i32>,
        submission: Submission,
    ) -> Sequence {
        let Submission {
            request, events, ..
        } = submission;
        let sampler = build_sampler(&request.sampling, self.model.model.n_vocab());
        let admission_order = self.next_admission;
        self.next_admission += 1;
        Sequence {
            seq_id: slot as i32,
            admission_order,
            tenant: Arc::from(request.tenant),
            priority: request.priority,
            cache_namespace: Arc::from(request.cache_namespace),
            prompt: request.prompt_tokens,
            prefilled: kv_tokens.len(),
            reused: kv_tokens.len(),
            next_token: None,
            kv_tokens,
            copy_from: None,
            sampler,
            utf8: Utf8Assembler::default(),
            stop: StopMatcher::new(request.stop),
            generated: 0,
            max_tokens: request.max_tokens,
            ignore_eos: request.ignore_eos,
            pending_token_ids: Vec::new(),
            outbox: Outbox::new(events, request.on_slow_consumer),
            arrived_at: request.arrived_at,
            admitted_at: Instant::now(),
            first_token_at: None,
            prefill_steps: 0,
            steps_sat_out: 0,
        }
    }

    /// Ends a stream: flushes held text, sends usage and frees its slot.
    pub(super) fn finish(
        &mut self,
        slot: usize,
        reason: FinishReason,
        now: Instant,
    ) -> Result<(), EngineFault> {
        if let Some(seq) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            seq.deliver_end(reason, now);
            self.stats.finished_total.fetch_add(1, Ordering::Relaxed);
        }
        self.free_slot(slot, true)
    }

    /// Frees a slot. With the prefix cache on and `keep_kv`, its KV stays
    /// and is remembered as a cached prefix; otherwise it is cleared.
    pub(super) fn free_slot(&mut self, slot: usize, keep_kv: bool) -> Result<(), EngineFault> {
        let Some(seq) = self.slots.get_mut(slot).and_then(Option::take) else {
            return Ok(());
        };
        self.frees += 1;
        self.cached[slot].freed_at = self.frees;
        if keep_kv && self.config.prefix_cache {
            self.cached[slot].tokens = seq.kv_tokens;
            self.cached[slot].namespace = seq.cache_namespace;
        } else {
            self.clear_kv(slot)?;
        }
        // The stall clock carries over: the client has not read since then.
        if seq.outbox.is_parked() && !seq.outbox.is_closed() {
            self.draining.push(seq.outbox);
        }
        Ok(())
    }

    /// Frees sequences whose client went away, within one step.
    pub(super) fn release_gone_clients(&mut self, now: Instant) -> Result<(), EngineFault> {
        for slot in 0..self.slots.len() {
            let gone = self.slots[slot].as_mut().is_some_and(|seq| {
                seq.outbox.is_closed() || matches!(seq.outbox.flush(now), Delivery::ClientGone)
            });
            if gone {
                self.free_slot(slot, true)?;
                self.stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
