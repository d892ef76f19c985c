//! KV prep: while a request still waits for admission upstream (in the
//! server's queue, before the engine's inbox), the engine may prefill its
//! prompt into an idle slot pinned to it, in budget the step leaves spare,
//! so the request finds its prompt in the prefix cache once admitted. The
//! planner decides the chunks; this module pins slots, adds the chunks to
//! the batch and drops preps whose request went away.

use std::sync::atomic::Ordering;

use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use super::planner::{PrepChunk, PrepSlot, RunningPrep};
use super::{BatchFault, EngineFault, Pool};

/// A KV prep holding a free slot.
pub(super) struct Prep {
    pub id: u64,
    /// The prompt minus its last token, which the request decodes itself.
    pub target: Vec<i32>,
    pub alive: oneshot::Sender<()>,
    /// Start order: the oldest prep prefills first, as admission is FIFO.
    pub started: u64,
}

impl Pool {
    /// The preps as the planner sees them: those holding a slot, those
    /// queued, and whether a new one may take a slot.
    pub(super) fn fill_prep_input(&mut self) {
        let input = &mut self.step_input.preps;
        input.running.clear();
        input
            .running
            .extend(self.cached.iter().enumerate().filter_map(|(slot, cached)| {
                let prep = cached.prep.as_ref()?;
                Some(RunningPrep {
                    slot,
                    started: prep.started,
                    prefilled: cached.tokens.len(),
                    target_len: prep.target.len(),
                })
            }));
        input.queued.clear();
        input
            .queued
            .extend(self.preps.iter().map(|job| job.prompt_tokens.len()));
        input.unpinned_free_slots = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].is_none() && self.cached[slot].prep.is_none())
            .count();
        input.requests_waiting = !self.waiting.is_empty();
    }

    /// Adds a planned prep chunk to the batch, first giving the oldest queued
    /// prep a free slot if the plan starts one.
    pub(super) fn add_prep_chunk(&mut self, chunk: &PrepChunk) -> Result<(), BatchFault> {
        let slot = match chunk.prep {
            PrepSlot::Running(slot) => slot,
            PrepSlot::Next => self.start_prep()?,
        };
        let inconsistent = || {
            BatchFault::Inconsistent(format!(
                "the step plan prefills prep tokens {:?} of slot {slot}, which holds no such prep",
                chunk.tokens
            ))
        };
        let cached = self.cached.get_mut(slot).ok_or_else(inconsistent)?;
        let tokens = match cached.prep.as_ref() {
            Some(prep) if chunk.tokens.start == cached.tokens.len() => prep
                .target
                .get(chunk.tokens.clone())
                .ok_or_else(inconsistent)?,
            _ => return Err(inconsistent()),
        };
        for (offset, &token) in tokens.iter().enumerate() {
            let pos = (chunk.tokens.start + offset) as i32;
            self.batch
                .add(LlamaToken(token), pos, &[slot as i32], false)
                .map_err(|err| {
                    BatchFault::Inconsistent(format!("no room in the batch for a prep: {err}"))
                })?;
        }
        cached.tokens.extend_from_slice(tokens);
        for total in [
            &self.stats.kv_prep_tokens_total,
            &self.stats.prompt_tokens_processed_total,
        ] {
            total.fetch_add(tokens.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Gives the oldest queued prep a free slot (the planner checked that no
    /// request waits for one and that another free slot stays for the next
    /// request).
    fn start_prep(&mut self) -> Result<usize, BatchFault> {
        let inconsistent = |what: &str| {
            BatchFault::Inconsistent(format!("the step plan starts a prep but {what}"))
        };
        if self.preps.is_empty() {
            return Err(inconsistent("none is queued"));
        }
        let slot = self
            .evict_least_recently_used()?
            .ok_or_else(|| inconsistent("no slot is free"))?;
        let job = self
            .preps
            .pop_front()
            .ok_or_else(|| inconsistent("none is queued"))?;
        self.cached[slot].namespace = job.cache_namespace;
        self.cached[slot].prep = Some(Prep {
            id: job.id,
            target: job.prompt_tokens,
            alive: job.alive,
            started: self.preps_started,
        });
        self.preps_started += 1;
        self.stats
            .kv_prep_started_total
            .fetch_add(1, Ordering::Relaxed);
        Ok(slot)
    }

    /// Frees the slots of preps whose request went away, within one step.
    pub(super) fn drop_abandoned_preps(&mut self) -> Result<(), EngineFault> {
        for slot in 0..self.cached.len() {
            let abandoned = self.cached[slot]
                .prep
                .as_ref()
                .is_some_and(|prep| prep.alive.is_closed());
            if abandoned {
                self.drop_prep(slot)?;
            }
        }
        Ok(())
    }

    /// Preps are only a head start: after a failed batch they all go rather
    /// than tracking which were in it.
    pub(super) fn drop_all_preps(&mut self) -> Result<(), EngineFault> {
        for slot in 0..self.cached.len() {
            if self.cached[slot].prep.is_some() {
                self.drop_prep(slot)?;
            }
        }
        Ok(())
    }

    fn drop_prep(&mut self, slot: usize) -> Result<(), EngineFault> {
        self.cached[slot].prep = None;
        self.clear_kv(slot)?;
        self.stats
            .kv_prep_cancelled_total
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
