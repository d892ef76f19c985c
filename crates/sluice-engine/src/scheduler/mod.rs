//! The engine thread: one llama.cpp context with many sequences, driven by a
//! continuous-batching loop. Each step decodes one token for every running
//! stream and spends the rest of the step's token budget on prefill chunks of
//! new streams, so a long prompt never freezes running streams.
//!
//! In the request path it sits behind `EngineHandle`: a request comes in
//! through the [`inbox`], waits there for a sequence, is prefilled and
//! decoded step by step, and its events go back through its [`outbox`].
//! This module holds the engine's state and the order of a step; each job
//! has its own module:
//! - [`inbox`]: commands from handles; the queue of requests and admission.
//! - [`sequence`]: one stream's state; starting, finishing, freeing a slot.
//! - [`outbox`]: events back to a client, parking, slow consumers.
//! - [`prefix_cache`]: the KV free slots still hold, and reusing it.
//! - [`kv_prep`]: prefilling prompts of requests still queued for admission.
//! - [`planner`]: who decodes, who sits out, which chunks (pure).
//! - [`executor`]: the plan into a llama.cpp batch, decode, sample.
//! - [`exit_gate`]: keeps process exit from tearing llama.cpp down mid-step.

// The engine thread must not panic: errors fail a batch or the engine. A
// panic all the same (a bug, or inside llama.cpp's bindings) is caught in
// `Scheduler::run` and fails the engine like an `EngineFault`.
#![cfg_attr(not(test), deny(clippy::expect_used, clippy::unwrap_used))]

mod executor;
mod exit_gate;
mod inbox;
mod kv_prep;
mod outbox;
mod planner;
mod prefix_cache;
mod sequence;

use std::any::Any;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use sluice_core::config::EngineConfig;
use tokio::sync::watch;

use crate::heartbeat::Heartbeat;
use crate::model::{LoadedModel, backend};
use crate::request::StreamEvent;
use crate::{EngineError, EngineStats, EngineStatus};

use exit_gate::{close_exit_gate_at_process_exit, exit_gate};
pub(crate) use inbox::{Command, PrepJob, Submission};
use outbox::Outbox;
use planner::{StepInput, StepPlan};
use prefix_cache::CachedPrefix;
use sequence::Sequence;

/// How long the loop waits for commands while every stream is parked.
const PARKED_POLL: Duration = Duration::from_millis(2);

/// llama.cpp refused an operation the engine's KV bookkeeping relies on, so
/// what a sequence's cells hold is no longer known: the engine stops, its
/// status becomes `Failed` and every stream ends with an error.
#[derive(Debug)]
struct EngineFault(String);

/// Why a step's batch could not be built or sampled.
#[derive(Debug)]
enum BatchFault {
    /// The plan and the engine's state disagree: the streams in the batch
    /// end with an error, the engine goes on.
    Inconsistent(String),
    Engine(EngineFault),
}

impl From<EngineFault> for BatchFault {
    fn from(fault: EngineFault) -> Self {
        Self::Engine(fault)
    }
}

pub(crate) struct Scheduler {
    model: Arc<LoadedModel>,
    ctx: LlamaContext<'static>,
    batch: LlamaBatch<'static>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    /// Tokens per step, set at run time by the governor (within
    /// `min_prefill_chunk..=step_budget_ceiling()`); read once per step.
    step_budget: Arc<AtomicU32>,
    heartbeat: Arc<Heartbeat>,
    /// Fault injection: panic at the start of the next step.
    panic_at_next_step: bool,
    slots: Vec<Option<Sequence>>,
    /// Per slot, what its KV holds while the slot is free.
    cached: Vec<CachedPrefix>,
    frees: u64,
    waiting: VecDeque<Submission>,
    /// KV preps not yet given a slot, oldest first.
    preps: VecDeque<PrepJob>,
    preps_started: u64,
    /// Finished streams whose last events still wait for room.
    draining: Vec<Outbox>,
    next_admission: u64,
    /// (slot, batch index) of every token whose logits the step samples.
    sample_at: Vec<(usize, i32)>,
    /// The planner's input and plan; kept to reuse their allocations.
    step_input: StepInput,
    plan: StepPlan,
    /// Whether the last step had sequences of more than one tenant.
    mixed_last_step: bool,
    piece: Vec<u8>,
}

impl Scheduler {
    pub(crate) fn new(
        model: Arc<LoadedModel>,
        config: EngineConfig,
        stats: Arc<EngineStats>,
        step_budget: Arc<AtomicU32>,
        heartbeat: Arc<Heartbeat>,
    ) -> Result<Self, EngineError> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        } as i32;
        let n_ctx = model
            .context_per_sequence
            .checked_mul(config.max_sequences)
            .ok_or_else(|| EngineError::Load("context size overflows u32".into()))?;
        let batch_tokens = config.step_budget_ceiling() + config.max_sequences;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(batch_tokens)
            .with_n_ubatch(batch_tokens.min(512))
            .with_n_seq_max(config.max_sequences)
            .with_kv_unified(config.kv_unified)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .model
            .new_context(backend()?, params)
            .map_err(|err| EngineError::Load(format!("creating the llama.cpp context: {err}")))?;
        let batch = LlamaBatch::new(batch_tokens as usize, 1);
        let slots = (0..config.max_sequences).map(|_| None).collect();
        let cached = (0..config.max_sequences)
            .map(|_| CachedPrefix::default())
            .collect();
        Ok(Self {
            model,
            ctx,
            batch,
            config,
            stats,
            step_budget,
            heartbeat,
            panic_at_next_step: false,
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

    /// Runs until every handle is dropped and the remaining work is done, or
    /// until an [`EngineFault`] or a panic: then `status` becomes `Failed`
    /// first (so no new request is accepted) and every stream ends with the
    /// error. Every step, and freeing the context at the end, happens inside
    /// the exit gate (see the `exit_gate` module).
    pub(crate) fn run(mut self, commands: Receiver<Command>, status: &watch::Sender<EngineStatus>) {
        close_exit_gate_at_process_exit();
        // After a panic the engine's state is not trusted: nothing is read
        // from it but the streams' outboxes, to tell each client.
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_steps(&commands))).unwrap_or_else(
            |payload| {
                Err(EngineFault(format!(
                    "the engine thread panicked: {}",
                    panic_message(payload.as_ref())
                )))
            },
        );
        self.heartbeat.idle();
        if let Err(EngineFault(fault)) = outcome {
            let message = format!("the engine failed: {fault}");
            tracing::error!(%message, "engine stopped; ending every stream");
            status.send_replace(EngineStatus::Failed(message.clone()));
            self.end_every_stream(&message, &commands);
        }
        drop(commands);
        let _gate = exit_gate();
        drop(self);
    }

    fn run_steps(&mut self, commands: &Receiver<Command>) -> Result<(), EngineFault> {
        let mut handles_alive = true;
        loop {
            if !self.has_work() {
                if !handles_alive {
                    return Ok(());
                }
                // The last step may have finished sequences after it
                // published: publish the idle state before blocking.
                self.publish_stats();
                self.heartbeat.idle();
                let command = commands.recv();
                self.heartbeat.working();
                match command {
                    Ok(command) => self.enqueue(command),
                    Err(_) => return Ok(()),
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(command) => self.enqueue(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        handles_alive = false;
                        break;
                    }
                }
            }
            let progressed = {
                let _gate = exit_gate();
                self.step()?
            };
            self.heartbeat.beat();
            if !progressed && handles_alive && self.has_work() {
                // Every stream is parked or draining: wait briefly for clients.
                match commands.recv_timeout(PARKED_POLL) {
                    Ok(command) => self.enqueue(command),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => handles_alive = false,
                }
            }
        }
    }

    /// Pinned preps count: the loop must keep stepping to prefill them and
    /// to notice when their handle drops.
    fn has_work(&self) -> bool {
        !self.waiting.is_empty()
            || !self.draining.is_empty()
            || !self.preps.is_empty()
            || self.slots.iter().any(Option::is_some)
            || self.cached.iter().any(|cached| cached.prep.is_some())
    }

    /// One engine step. Returns whether it made progress (the model ran, or
    /// a failed batch ended its streams).
    fn step(&mut self) -> Result<bool, EngineFault> {
        if self.panic_at_next_step {
            panic!("injected by POST /admin/fault/panic");
        }
        let now = Instant::now();
        self.flush_draining(now);
        self.release_gone_clients(now)?;
        self.drop_cancelled_requests();
        self.drop_abandoned_preps()?;
        self.end_slow_consumers(now)?;
        self.admit_waiting()?;
        self.copy_prefixes()?;
        let built = self.build_batch();
        self.publish_stats();
        if let Err(fault) = built {
            self.fail_batch_for(fault)?;
            return Ok(true);
        }
        let tokens = self.batch.n_tokens();
        if tokens == 0 {
            return Ok(false);
        }
        let started = Instant::now();
        if let Err(err) = self.ctx.decode(&mut self.batch) {
            self.fail_batch(&format!("llama.cpp decode failed: {err}"))?;
            return Ok(true);
        }
        let outputs = self.sample_at.len();
        if let Err(fault) = self.sample_batch() {
            self.fail_batch_for(fault)?;
            return Ok(true);
        }
        let micros = started.elapsed().as_micros() as u64;
        tracing::debug!(tokens, outputs, micros, "engine step");
        // The step's count last, so a reader that sees it also sees its
        // time and tokens.
        let stats = &self.stats;
        stats.step_micros_total.fetch_add(micros, Ordering::Relaxed);
        stats
            .step_tokens_total
            .fetch_add(tokens as u64, Ordering::Relaxed);
        stats.steps_total.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    /// Ends the streams of a batch the engine could not build or sample; an
    /// engine fault goes on up.
    fn fail_batch_for(&mut self, fault: BatchFault) -> Result<(), EngineFault> {
        match fault {
            BatchFault::Inconsistent(message) => self.fail_batch(&message),
            BatchFault::Engine(fault) => Err(fault),
        }
    }

    /// After an [`EngineFault`]: every stream (running, finished with events
    /// still waiting, queued, or still in the command channel) ends with
    /// `message`. Touches no llama.cpp state.
    fn end_every_stream(&mut self, message: &str, commands: &Receiver<Command>) {
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
        let queued = std::mem::take(&mut self.waiting);
        let in_channel = commands.try_iter().filter_map(|command| match command {
            Command::Generate(submission) => Some(submission),
            Command::Prepare(_) | Command::Stall(_) | Command::Panic => None,
        });
        for submission in queued.into_iter().chain(in_channel) {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            // A client gone meanwhile needs no reason.
            let _ = submission.events.try_send(error());
        }
        self.publish_stats();
    }

    fn publish_stats(&self) {
        let mut running = 0;
        let mut parked = 0;
        let mut kv_tokens = 0;
        for seq in self.slots.iter().flatten() {
            running += 1;
            parked += usize::from(seq.outbox.is_parked());
            kv_tokens += seq.kv_tokens.len();
        }
        self.stats.running.store(running, Ordering::Relaxed);
        self.stats.parked.store(parked, Ordering::Relaxed);
        self.stats
            .kv_tokens_in_use
            .store(kv_tokens, Ordering::Relaxed);
        let cached: usize = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].is_none())
            .map(|slot| self.cached[slot].tokens.len())
            .sum();
        self.stats.kv_cached_tokens.store(cached, Ordering::Relaxed);
    }
}

/// The message a panic was raised with, for the engine's failure reason.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}
