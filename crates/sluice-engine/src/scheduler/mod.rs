//! The engine thread: llama.cpp sequences in pools (one llama.cpp context
//! each, over the one loaded model), driven by a continuous-batching loop.
//! Each step decodes one token for every running stream and spends the rest
//! of the step's token budget on prefill chunks of new streams, so a long
//! prompt never freezes running streams.
//!
//! In the request path it sits behind `EngineHandle`: a request comes in
//! through the [`inbox`], goes to the smallest [`pool`] whose sequences hold
//! its prompt and completion, waits there for a sequence, is prefilled and
//! decoded step by step, and its events go back through its [`outbox`].
//! Why pools: llama.cpp splits a context's KV evenly between its sequences
//! and sizes a step's attention by the longest sequence in it, so serving
//! the model's whole context to every sequence would cost memory for all
//! and attention time for every short stream beside a long one. A few long
//! sequences in a context of their own cost neither.
//!
//! This module holds the loop: commands in, one step per pool per round
//! (the round shares one token budget), stats and the engine fault. Each
//! job has its own module:
//! - [`pool`]: one pool's state and step.
//! - [`round_budget`]: what each pool's step takes of the round's budget.
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
mod kv_blocks;
mod kv_prep;
mod outbox;
mod planner;
mod pool;
mod prefix_cache;
mod round_budget;
mod sequence;

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use sluice_core::config::EngineConfig;
use tokio::sync::watch;

use crate::heartbeat::Heartbeat;
use crate::kv_events::KvEventSender;
use crate::model::LoadedModel;
use crate::request::StreamEvent;
use crate::{EngineError, EngineStats, EngineStatus};

use exit_gate::{close_exit_gate_at_process_exit, exit_gate};
pub(crate) use inbox::{Command, PrepJob, Submission};
use kv_blocks::BlockLedger;
use pool::{Pool, PoolCounts};

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
    /// Smallest context first.
    pools: Vec<Pool>,
    stats: Arc<EngineStats>,
    heartbeat: Arc<Heartbeat>,
    step_budget: Arc<AtomicU32>,
    /// Budget units the long pools took last round beyond the round's
    /// budget (their decodes and prefill floor are never cut): the next
    /// round starts with them spent, so rounds average the budget.
    overdraft: u32,
    /// Long pools' share of rounds with short work.
    long_share: round_budget::LongShare,
    /// Fault injection: panic at the start of the next step.
    panic_at_next_step: bool,
    /// With KV-cache events on: what was published of the pools' blocks.
    kv_blocks: Option<BlockLedger>,
}

impl Scheduler {
    pub(crate) fn new(
        model: Arc<LoadedModel>,
        config: EngineConfig,
        stats: Arc<EngineStats>,
        step_budget: Arc<AtomicU32>,
        heartbeat: Arc<Heartbeat>,
        kv_events: Option<KvEventSender>,
    ) -> Result<Self, EngineError> {
        let attention_depth = model.attention_depth();
        let pools = model
            .pools
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Pool::new(
                    Arc::clone(&model),
                    size,
                    (index > 0).then_some(attention_depth),
                    config.clone(),
                    Arc::clone(&stats),
                    Arc::clone(&step_budget),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kv_blocks = kv_events.map(|sender| BlockLedger::new(&pools, sender));
        Ok(Self {
            pools,
            kv_blocks,
            stats,
            heartbeat,
            step_budget,
            overdraft: 0,
            long_share: round_budget::LongShare::default(),
            panic_at_next_step: false,
        })
    }

    /// Runs until every handle is dropped and the remaining work is done, or
    /// until an [`EngineFault`] or a panic: then `status` becomes `Failed`
    /// first (so no new request is accepted) and every stream ends with the
    /// error. Every step, and freeing the contexts at the end, happens inside
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

    fn has_work(&self) -> bool {
        self.pools.iter().any(Pool::has_work)
    }

    /// Routes a command: a request (and its KV prep) to the smallest pool
    /// whose sequences hold its prompt and completion.
    fn enqueue(&mut self, command: Command) {
        match command {
            Command::Generate(submission) => {
                let tokens =
                    submission.request.prompt_tokens.len() + submission.request.max_tokens as usize;
                self.pool_for(tokens).enqueue_generation(submission);
            }
            Command::Prepare(job) => {
                let tokens = job.sequence_tokens;
                self.pool_for(tokens).enqueue_prep(job);
            }
            Command::Stall(duration) => std::thread::sleep(duration),
            Command::Panic => self.panic_at_next_step = true,
        }
    }

    /// The smallest pool whose sequences hold `tokens`, else the largest
    /// (the server refuses requests over the largest; one that got here all
    /// the same ends at its sequence's end, `length`).
    fn pool_for(&mut self, tokens: usize) -> &mut Pool {
        let fits = self
            .pools
            .iter()
            .position(|pool| pool.context as usize >= tokens);
        let index = fits.unwrap_or(self.pools.len() - 1);
        &mut self.pools[index]
    }

    /// One round: a step of every pool with work, sharing one token budget
    /// (`round_budget`: the mandatory tokens of long pools that step are
    /// reserved first, then the short pool plans, then the long pools take
    /// their share of what is left).
    /// Returns whether it made progress (the model ran, or a failed batch
    /// ended its streams).
    fn step(&mut self) -> Result<bool, EngineFault> {
        if self.panic_at_next_step {
            panic!("injected by POST /admin/fault/panic");
        }
        let started = Instant::now();
        let mut progressed = false;
        let mut tokens = 0;
        let mut charged = self.overdraft;
        let mut long_charged = 0;
        let budget = self.step_budget.load(Ordering::Relaxed);
        let decoding = self.pools.iter().any(Pool::is_decoding);
        self.mark_long_pools_sitting_out(started, decoding);
        let reserve = |pool: &Pool| {
            if pool.sits_out_round {
                0
            } else {
                pool.reserve(decoding)
            }
        };
        let mut reserved: u32 = self.pools.iter().map(reserve).sum();
        let mut short_charged = 0;
        for pool in &mut self.pools {
            let pool_reserve = reserve(pool);
            reserved = reserved.saturating_sub(pool_reserve);
            if !pool.has_work() || pool.sits_out_round {
                continue;
            }
            let long = pool.attention_depth.is_some();
            let mut spent = charged + reserved;
            if long && short_charged > 0 {
                spent = spent.max(budget.saturating_sub(self.long_share.allowance(pool_reserve)));
            }
            if let Some(built) = pool.build_step(spent, decoding)? {
                progressed = true;
                tokens += built;
                pool.last_stepped = started;
                let cost = pool.charge(built);
                charged += cost;
                if !long {
                    short_charged = cost;
                    continue;
                }
                long_charged += cost;
                if short_charged > 0 {
                    self.long_share.spend(cost);
                }
            }
        }
        self.long_share.earn(short_charged, budget);
        self.overdraft = round_budget::overdraft(charged, long_charged, budget);
        // Published after admission and before any decode, so a client
        // holding its first token sees its sequence counted.
        self.publish_stats();
        // Long pools decode first: a short stream's token then comes at the
        // end of each round, and its gap is one round, which the budget
        // bounds. Short first, a long step and the next round's short step
        // made one gap: 1.3 s at p99 where rounds took at most 0.97 s.
        for pool in self.pools.iter_mut().rev() {
            pool.run_step()?;
        }
        if let Some(ledger) = &mut self.kv_blocks {
            ledger.publish(&self.pools);
        }
        if tokens == 0 {
            return Ok(progressed);
        }
        let micros = started.elapsed().as_micros() as u64;
        tracing::debug!(tokens, micros, "engine step");
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

    /// Beside short work, a long pool steps on its share
    /// (`round_budget::LongShare`). Decided before the short pool plans, so
    /// only the reserves of long pools that step are held back from it.
    fn mark_long_pools_sitting_out(&mut self, now: Instant, decoding: bool) {
        let short_work = self.pools.first().is_some_and(Pool::has_work);
        for pool in self.pools.iter_mut().skip(1) {
            let overdue = now.duration_since(pool.last_stepped) >= round_budget::LONG_POOL_MAX_WAIT;
            pool.sits_out_round =
                short_work && !self.long_share.may_step(pool.reserve(decoding), overdue);
        }
    }

    /// After an [`EngineFault`]: every stream (running, finished with events
    /// still waiting, queued, or still in the command channel) ends with
    /// `message`. Touches no llama.cpp state.
    fn end_every_stream(&mut self, message: &str, commands: &Receiver<Command>) {
        for pool in &mut self.pools {
            pool.end_every_stream(message);
        }
        let in_channel = commands.try_iter().filter_map(|command| match command {
            Command::Generate(submission) => Some(submission),
            Command::Prepare(_) | Command::Stall(_) | Command::Panic => None,
        });
        for submission in in_channel {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            // A client gone meanwhile needs no reason.
            let _ = submission.events.try_send(StreamEvent::Error {
                message: message.to_owned(),
            });
        }
        self.publish_stats();
    }

    fn publish_stats(&self) {
        let mut counts = PoolCounts::default();
        for pool in &self.pools {
            counts += pool.counts();
        }
        self.stats.running.store(counts.running, Ordering::Relaxed);
        self.stats.parked.store(counts.parked, Ordering::Relaxed);
        self.stats
            .kv_tokens_in_use
            .store(counts.kv_tokens, Ordering::Relaxed);
        self.stats
            .kv_cached_tokens
            .store(counts.cached_tokens, Ordering::Relaxed);
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
