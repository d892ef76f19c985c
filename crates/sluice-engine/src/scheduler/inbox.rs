//! The engine's inbox, where a request enters the engine thread: the
//! commands handles send (generations, KV preps, fault injection), a pool's
//! queue of requests waiting for a sequence, and admitting them into free
//! slots at the start of each step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio::sync::oneshot;

use super::prefix_cache::{MIN_PREFIX_REUSE, TakenSlot};
use super::{EngineFault, Pool};
use crate::PrepHandle;
use crate::request::{GenerationRequest, StreamEvent};

pub(crate) enum Command {
    Generate(Submission),
    Prepare(PrepJob),
    /// Fault injection: the engine thread sleeps this long before its next
    /// step, as a stuck kernel would hold it.
    Stall(Duration),
    /// Fault injection: the engine thread panics at its next step.
    Panic,
}

pub(crate) struct Submission {
    pub request: GenerationRequest,
    pub events: Sender<StreamEvent>,
    /// Held until the request has a sequence, so its prep stays pinned
    /// until then.
    pub prep: Option<PrepHandle>,
}

/// A KV prep waiting for spare budget and a free slot.
pub(crate) struct PrepJob {
    pub id: u64,
    pub prompt_tokens: Vec<i32>,
    /// Prompt plus completion tokens of its request: it goes to the pool its
    /// request will.
    pub sequence_tokens: usize,
    pub cache_namespace: Arc<str>,
    /// Closed when the `PrepHandle` is dropped.
    pub alive: oneshot::Sender<()>,
}

impl Pool {
    pub(super) fn enqueue_generation(&mut self, submission: Submission) {
        self.waiting.push_back(submission);
    }

    pub(super) fn enqueue_prep(&mut self, mut job: PrepJob) {
        // A prep shorter than the least reusable prefix would never be taken.
        let worth_it = job.prompt_tokens.len() > MIN_PREFIX_REUSE;
        if self.config.prefix_cache && self.config.prep_tokens_per_step > 0 && worth_it {
            job.prompt_tokens.pop();
            self.preps.push_back(job);
        }
    }

    /// Drops queued requests and queued preps whose client went away, within
    /// one step.
    pub(super) fn drop_cancelled_requests(&mut self) {
        let before = self.waiting.len();
        self.waiting
            .retain(|submission| !submission.events.is_closed());
        let cancelled = before - self.waiting.len();
        self.stats.waiting.fetch_sub(cancelled, Ordering::Relaxed);
        self.stats
            .cancelled_total
            .fetch_add(cancelled as u64, Ordering::Relaxed);
        self.preps.retain(|job| !job.alive.is_closed());
    }

    /// Gives waiting requests free slots, in arrival order.
    pub(super) fn admit_waiting(&mut self) -> Result<(), EngineFault> {
        while self.slots.iter().any(Option::is_none) {
            let Some(submission) = self.waiting.pop_front() else {
                break;
            };
            let taken = self.take_slot(
                &submission.request.prompt_tokens,
                &submission.request.cache_namespace,
                submission.request.use_prefix_cache,
                submission.prep.as_ref().map(|prep| prep.id),
            )?;
            // None only if no slot is free after all: the request keeps its
            // place for the next step.
            let Some(TakenSlot {
                slot,
                kv_tokens,
                copy_from,
            }) = taken
            else {
                self.waiting.push_front(submission);
                break;
            };
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            let mut sequence = self.start_sequence(slot, kv_tokens, submission);
            sequence.copy_from = copy_from;
            self.slots[slot] = Some(sequence);
        }
        Ok(())
    }
}
