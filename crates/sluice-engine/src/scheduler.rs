//! The engine thread: one llama.cpp context with many sequences, driven by a
//! continuous-batching loop. Each step decodes one token for every running
//! stream and spends the rest of the step's token budget on prefill chunks of
//! new streams, so a long prompt never freezes running streams.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use sluice_core::config::EngineConfig;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use crate::detokenizer::Utf8Assembler;
use crate::model::{LoadedModel, backend};
use crate::request::{
    EngineTimings, FinishReason, GenerationRequest, SamplingParams, SlowConsumerHook, StreamEvent,
    Usage,
};
use crate::stop::{StopMatcher, StopOutcome};
use crate::{EngineError, EngineStats, PrepHandle};

/// Penalties look back this many tokens (llama.cpp's default window).
const PENALTY_WINDOW: i32 = 64;
/// How long the loop waits for commands while every stream is parked.
const PARKED_POLL: Duration = Duration::from_millis(2);
/// Shorter cached prefixes are not worth keeping a slot's other tokens for:
/// a slot matching less is treated as no match.
const MIN_PREFIX_REUSE: usize = 16;

pub(crate) enum Command {
    Generate(Submission),
    Prepare(PrepJob),
    /// Fault injection: the engine thread sleeps this long before its next
    /// step, as a stuck kernel would hold it.
    Stall(Duration),
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
    /// Closed when the `PrepHandle` is dropped.
    pub alive: oneshot::Sender<()>,
}

/// One stream's state inside the engine.
struct Sequence {
    seq_id: i32,
    admission_order: u64,
    tenant: String,
    prompt: Vec<i32>,
    /// Prompt tokens already in the KV cache (reused ones included).
    prefilled: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    reused: usize,
    /// Sampled token whose KV is not computed yet.
    next_token: Option<i32>,
    /// The tokens in this sequence's KV cells, by position: prompt tokens
    /// prefilled, then decoded tokens. What the slot caches when it ends.
    kv_tokens: Vec<i32>,
    /// A running sequence whose prompt starts like this one's: this one
    /// copies that prefix's KV once the source has it, instead of
    /// prefilling it too. Skipped in the batch until then.
    copy_from: Option<PrefixSource>,
    sampler: LlamaSampler,
    utf8: Utf8Assembler,
    stop: StopMatcher,
    generated: u32,
    max_tokens: u32,
    ignore_eos: bool,
    pending_token_ids: Vec<i32>,
    /// The way back to the client; while events wait in it the sequence is
    /// parked (skipped in the batch).
    outbox: Outbox,
    arrived_at: Instant,
    admitted_at: Instant,
    first_token_at: Option<Instant>,
    /// Steps taken while its prompt was prefilling, waiting ones included.
    prefill_steps: u32,
    /// Steps in a row its decode sat out for other tenants' prompts; at
    /// [`MAX_STEPS_SITTING_OUT`] it runs in the next.
    steps_sat_out: u8,
}

/// Most steps in a row a stream's decode sits out for the prompts of
/// tenants below their share: two lets prompts a little over one step
/// through without the flood's decodes, and still bounds a flood stream's
/// gap to three steps.
const MAX_STEPS_SITTING_OUT: u8 = 2;

enum Delivery {
    Sent,
    Parked,
    ClientGone,
}

impl Sequence {
    fn is_prefilling(&self) -> bool {
        self.prefilled < self.prompt.len()
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
}

/// Places in a stream's channel only the event that ends the stream may
/// take (the channel has one more than `engine.stream_buffer_events`), so
/// a stream ended while parked can still tell its client why.
const LAST_EVENT_PLACES: usize = 1;

/// One stream's way back to its client: its bounded channel, the events the
/// channel had no room for, and since when the client has not made room.
struct Outbox {
    events: Sender<StreamEvent>,
    undelivered: VecDeque<StreamEvent>,
    /// Set while events wait: when the client last made room (or, if it
    /// never did since, when the first event had to wait).
    stalled_since: Option<Instant>,
    on_slow_consumer: Option<SlowConsumerHook>,
}

impl Outbox {
    fn new(events: Sender<StreamEvent>, on_slow_consumer: Option<SlowConsumerHook>) -> Self {
        Self {
            events,
            undelivered: VecDeque::new(),
            stalled_since: None,
            on_slow_consumer,
        }
    }

    fn is_parked(&self) -> bool {
        !self.undelivered.is_empty()
    }

    fn is_closed(&self) -> bool {
        self.events.is_closed()
    }

    fn deliver(&mut self, event: StreamEvent, now: Instant) -> Delivery {
        self.undelivered.push_back(event);
        self.flush(now)
    }

    /// Sends what the channel has room for. A client that took any event
    /// since the last flush restarts the stall clock.
    fn flush(&mut self, now: Instant) -> Delivery {
        let waiting = self.undelivered.len();
        let delivery = self.send_waiting();
        match delivery {
            Delivery::Parked => {
                if self.undelivered.len() < waiting || self.stalled_since.is_none() {
                    self.stalled_since = Some(now);
                }
            }
            Delivery::Sent | Delivery::ClientGone => self.stalled_since = None,
        }
        delivery
    }

    fn send_waiting(&mut self) -> Delivery {
        while let Some(event) = self.undelivered.pop_front() {
            // A closed channel is left to `try_send` to report.
            if matches!(event, StreamEvent::Token { .. })
                && self.events.capacity() <= LAST_EVENT_PLACES
                && !self.events.is_closed()
            {
                self.undelivered.push_front(event);
                return Delivery::Parked;
            }
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.undelivered.push_front(event);
                    return Delivery::Parked;
                }
                Err(TrySendError::Closed(_)) => return Delivery::ClientGone,
            }
        }
        Delivery::Sent
    }

    /// Whether events have waited for the client longer than `limit`.
    fn stalled_past(&self, limit: Duration, now: Instant) -> bool {
        self.stalled_since
            .is_some_and(|since| now.saturating_duration_since(since) > limit)
    }

    /// Ends the stream for a client that stopped reading: drops the events
    /// it had no room for and sends the slow-consumer error in the place
    /// kept for the last event (free: nothing that ends a stream was sent).
    fn end_stalled(&mut self, limit: Duration) {
        self.undelivered.clear();
        self.stalled_since = None;
        // A client gone meanwhile needs no reason.
        let _ = self.events.try_send(StreamEvent::SlowConsumer { limit });
        if let Some(hook) = self.on_slow_consumer.take() {
            (hook.0)();
        }
    }
}

/// The first `len` prompt tokens of the sequence admitted `admission_order`th,
/// in `slot`.
#[derive(Clone, Copy)]
struct PrefixSource {
    slot: usize,
    admission_order: u64,
    len: usize,
}

/// What a free slot's KV cells still hold, for the prefix cache.
#[derive(Default)]
struct CachedPrefix {
    /// The tokens at positions `0..len` of the slot's KV; empty when the
    /// slot is in use or its KV was cleared.
    tokens: Vec<i32>,
    /// When the slot was last freed (a counter), for least-recently-used
    /// eviction.
    freed_at: u64,
    /// The KV prep this slot is pinned to: `tokens` is a prefix of its
    /// target, and only the prep's own request takes the slot (other
    /// requests evict it only when no other slot is free).
    prep: Option<Prep>,
}

struct Prep {
    id: u64,
    /// The prompt minus its last token, which the request decodes itself.
    target: Vec<i32>,
    alive: oneshot::Sender<()>,
    /// Start order: the oldest prep prefills first, as admission is FIFO.
    started: u64,
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
    /// This step's decoding slots; kept to reuse its allocation.
    decoding: Vec<usize>,
    /// Whether the last step had sequences of more than one tenant.
    mixed_last_step: bool,
    piece: Vec<u8>,
}

/// Held by the engine thread while it is inside llama.cpp. At process exit
/// llama.cpp's static state (ggml's backend registry and buffers) is torn
/// down by exit handlers; an engine thread still decoding then reads freed
/// memory and the process dies with SIGSEGV instead of exiting. So an exit
/// handler takes this gate and never gives it back: exit waits for the step
/// in progress, and the engine thread never enters llama.cpp again.
static EXIT_GATE: Mutex<()> = Mutex::new(());

fn exit_gate() -> MutexGuard<'static, ()> {
    EXIT_GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn close_exit_gate() {
    std::mem::forget(exit_gate());
}

/// Registered once, after the model and context exist: exit handlers run in
/// reverse order of registration, so this one runs before the teardown of
/// any llama.cpp state created while loading.
fn close_exit_gate_at_process_exit() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `close_exit_gate` is a plain `extern "C" fn()` that only
        // locks a static mutex; registering it has no other precondition.
        let failed = unsafe { atexit(close_exit_gate) } != 0;
        if failed {
            tracing::warn!("could not register the engine's exit handler");
        }
    });
}

impl Scheduler {
    pub(crate) fn new(
        model: Arc<LoadedModel>,
        config: EngineConfig,
        stats: Arc<EngineStats>,
        step_budget: Arc<AtomicU32>,
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
            .new_context(backend(), params)
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
            slots,
            cached,
            frees: 0,
            waiting: VecDeque::new(),
            preps: VecDeque::new(),
            preps_started: 0,
            draining: Vec::new(),
            next_admission: 0,
            sample_at: Vec::new(),
            decoding: Vec::new(),
            mixed_last_step: false,
            piece: Vec::with_capacity(64),
        })
    }

    /// Runs until every handle is dropped and the remaining work is done.
    /// Every step, and freeing the context at the end, happens inside the
    /// exit gate (see [`exit_gate`]).
    pub(crate) fn run(mut self, commands: Receiver<Command>) {
        close_exit_gate_at_process_exit();
        self.run_steps(commands);
        let _gate = exit_gate();
        drop(self);
    }

    fn run_steps(&mut self, commands: Receiver<Command>) {
        let mut handles_alive = true;
        loop {
            if !self.has_work() {
                if !handles_alive {
                    return;
                }
                // The last step may have finished sequences after it
                // published: publish the idle state before blocking.
                self.publish_stats();
                match commands.recv() {
                    Ok(command) => self.enqueue(command),
                    Err(_) => return,
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
                self.step()
            };
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

    fn enqueue(&mut self, command: Command) {
        match command {
            Command::Generate(submission) => self.waiting.push_back(submission),
            Command::Prepare(mut job) => {
                // A prep shorter than the least reusable prefix would never
                // be taken.
                let worth_it = job.prompt_tokens.len() > MIN_PREFIX_REUSE;
                if self.config.prefix_cache && self.config.prep_tokens_per_step > 0 && worth_it {
                    job.prompt_tokens.pop();
                    self.preps.push_back(job);
                }
            }
            Command::Stall(duration) => std::thread::sleep(duration),
        }
    }

    /// One engine step. Returns whether the model ran.
    fn step(&mut self) -> bool {
        let now = Instant::now();
        self.flush_draining(now);
        self.release_abandoned(now);
        self.end_slow_consumers(now);
        self.admit_waiting();
        self.copy_prefixes();
        self.build_batch();
        self.publish_stats();
        let tokens = self.batch.n_tokens();
        if tokens == 0 {
            return false;
        }
        let started = Instant::now();
        if let Err(err) = self.ctx.decode(&mut self.batch) {
            self.fail_batch(&format!("llama.cpp decode failed: {err}"));
            return true;
        }
        let outputs = self.sample_at.len();
        self.sample_batch();
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
        true
    }

    fn flush_draining(&mut self, now: Instant) {
        self.draining
            .retain_mut(|drain| matches!(drain.flush(now), Delivery::Parked));
    }

    /// Ends the streams whose client has not read for `engine.max_park_ms`:
    /// a parked sequence frees its slot (its KV stays as a cached prefix, as
    /// for any ended stream), a draining stream is dropped. Each client gets
    /// a slow-consumer error after the events it already has.
    fn end_slow_consumers(&mut self, now: Instant) {
        if self.config.max_park_ms == 0 {
            return;
        }
        let limit = Duration::from_millis(self.config.max_park_ms);
        let mut ended = 0;
        for slot in 0..self.slots.len() {
            let Some(seq) = self.slots[slot].as_mut() else {
                continue;
            };
            if seq.outbox.stalled_past(limit, now) {
                seq.outbox.end_stalled(limit);
                self.free_slot(slot, true);
                ended += 1;
            }
        }
        self.draining.retain_mut(|drain| {
            let stalled = drain.stalled_past(limit, now);
            if stalled {
                drain.end_stalled(limit);
                ended += 1;
            }
            !stalled
        });
        if ended > 0 {
            tracing::info!(
                streams = ended,
                max_park_ms = self.config.max_park_ms,
                "ended streams whose clients stopped reading"
            );
        }
    }

    /// Frees sequences whose client went away and drops cancelled requests
    /// from the queue, within one step.
    fn release_abandoned(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let gone = self.slots[slot].as_mut().is_some_and(|seq| {
                seq.outbox.is_closed() || matches!(seq.outbox.flush(now), Delivery::ClientGone)
            });
            if gone {
                self.free_slot(slot, true);
                self.stats.cancelled_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        let before = self.waiting.len();
        self.waiting
            .retain(|submission| !submission.events.is_closed());
        let cancelled = before - self.waiting.len();
        self.stats.waiting.fetch_sub(cancelled, Ordering::Relaxed);
        self.stats
            .cancelled_total
            .fetch_add(cancelled as u64, Ordering::Relaxed);
        self.preps.retain(|job| !job.alive.is_closed());
        for slot in 0..self.cached.len() {
            let abandoned = self.cached[slot]
                .prep
                .as_ref()
                .is_some_and(|prep| prep.alive.is_closed());
            if abandoned {
                self.cached[slot].prep = None;
                self.clear_kv(slot);
                self.stats
                    .kv_prep_cancelled_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn admit_waiting(&mut self) {
        while !self.waiting.is_empty() && self.slots.iter().any(Option::is_none) {
            let submission = self.waiting.pop_front().expect("checked non-empty");
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            let (slot, kv_tokens, copy_from) = self.take_slot(
                &submission.request.prompt_tokens,
                submission.request.use_prefix_cache,
                submission.prep.as_ref().map(|prep| prep.id),
            );
            let mut sequence = self.start_sequence(slot, kv_tokens, submission);
            sequence.copy_from = copy_from;
            self.slots[slot] = Some(sequence);
        }
    }

    /// Picks a free slot (there must be one) for `prompt` and readies its
    /// KV: the slot with the longest cached prefix of the prompt keeps that
    /// prefix, else the least recently used free slot is cleared, and it may
    /// wait to copy a running sequence's prefix. Returns the slot, the prompt
    /// tokens its KV already holds and the prefix to copy. Only free slots
    /// are taken: the KV of a running stream is never evicted or truncated.
    /// A slot pinned to a KV prep is a match only for the prep's request
    /// (`prep`).
    fn take_slot(
        &mut self,
        prompt: &[i32],
        use_prefix_cache: bool,
        prep: Option<u64>,
    ) -> (usize, Vec<i32>, Option<PrefixSource>) {
        let free = (0..self.slots.len()).filter(|&slot| self.slots[slot].is_none());
        if !self.config.prefix_cache {
            // Freed slots were cleared, so any one starts empty.
            let slot = free.min().expect("caller checked for a free slot");
            return (slot, Vec::new(), None);
        }
        if !use_prefix_cache {
            return (self.evict_least_recently_used(), Vec::new(), None);
        }
        // At least one prompt token is decoded, for the logits of the first
        // sampled token.
        let usable = prompt.len().saturating_sub(1);
        let own_prep = |cached: &CachedPrefix| {
            cached
                .prep
                .as_ref()
                .is_some_and(|pinned| Some(pinned.id) == prep)
        };
        // Longest usable match first, then the request's own prep; among
        // equal matches the least recently used, whose other tokens are the
        // least likely to be asked for again.
        let best = free
            .filter(|&slot| self.cached[slot].prep.is_none() || own_prep(&self.cached[slot]))
            .map(|slot| {
                let common = common_prefix(&self.cached[slot].tokens, prompt);
                (slot, common.min(usable))
            })
            .max_by_key(|&(slot, reuse)| {
                let cached = &self.cached[slot];
                (reuse, own_prep(cached), Reverse(cached.freed_at))
            });
        self.stats
            .prefix_cache_queries_total
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .prefix_cache_query_tokens_total
            .fetch_add(prompt.len() as u64, Ordering::Relaxed);
        let reuse = best.map_or(0, |(_, reuse)| reuse);
        // A copy moves a whole KV stream; it must save more than reuse does.
        let copy_from = self
            .busy_prefix(prompt)
            .map(|source| PrefixSource {
                len: source.len.min(usable),
                ..source
            })
            .filter(|source| source.len >= reuse + MIN_PREFIX_REUSE);
        if let Some((slot, reuse)) = best
            && copy_from.is_none()
            && reuse >= MIN_PREFIX_REUSE
            && self.truncate_kv(slot, reuse)
        {
            if self.cached[slot].prep.take().is_some() {
                self.stats
                    .kv_prep_used_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            let mut tokens = std::mem::take(&mut self.cached[slot].tokens);
            tokens.truncate(reuse);
            self.stats
                .prefix_cache_hits_total
                .fetch_add(1, Ordering::Relaxed);
            self.stats
                .prefix_cache_hit_tokens_total
                .fetch_add(reuse as u64, Ordering::Relaxed);
            return (slot, tokens, None);
        }
        (self.evict_least_recently_used(), Vec::new(), copy_from)
    }

    /// An empty free slot if there is one, else the free slot whose cached
    /// prefix was used least recently, cleared. A slot pinned to a KV prep
    /// goes last: a real request never waits for a prep.
    fn evict_least_recently_used(&mut self) -> usize {
        let victim = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].is_none())
            .min_by_key(|&slot| {
                let cached = &self.cached[slot];
                (
                    cached.prep.is_some(),
                    !cached.tokens.is_empty(),
                    cached.freed_at,
                )
            })
            .expect("caller checked for a free slot");
        if self.cached[victim].prep.take().is_some() {
            self.stats
                .kv_prep_cancelled_total
                .fetch_add(1, Ordering::Relaxed);
        }
        if !self.cached[victim].tokens.is_empty() {
            self.stats
                .prefix_cache_evictions_total
                .fetch_add(1, Ordering::Relaxed);
        }
        self.clear_kv(victim);
        victim
    }

    /// The running sequence whose prompt shares the longest prefix with
    /// `prompt`, if that prefix is worth copying; but one whose KV holds
    /// its shared prefix already when that is nearly as long. Many share a
    /// chat template's opening, and one still prefilling it may be another
    /// tenant's, prefilled after this one (tenant-fair order): waiting for
    /// it costs at least a step.
    fn busy_prefix(&self, prompt: &[i32]) -> Option<PrefixSource> {
        let mut longest: Option<PrefixSource> = None;
        let mut longest_held: Option<PrefixSource> = None;
        for (slot, seq) in self.slots.iter().enumerate() {
            let Some(seq) = seq else { continue };
            let source = PrefixSource {
                slot,
                admission_order: seq.admission_order,
                len: common_prefix(&seq.prompt, prompt),
            };
            if longest.is_none_or(|best| source.len > best.len) {
                longest = Some(source);
            }
            let held = seq.kv_tokens.len() >= source.len;
            if held && longest_held.is_none_or(|best| source.len > best.len) {
                longest_held = Some(source);
            }
        }
        match (longest_held, longest) {
            (Some(held), Some(longest)) if longest.len < held.len + MIN_PREFIX_REUSE => Some(held),
            (_, longest) => longest,
        }
        .filter(|source| source.len >= MIN_PREFIX_REUSE)
    }

    /// Starts the copies whose source now holds the prefix. A source admitted
    /// earlier prefills first, so waiting for it is never slower than
    /// prefilling the prefix again. llama.cpp copies the cell metadata now
    /// and the buffer at the start of the next decode, before that decode
    /// writes any cell, so the data matches the metadata whatever the source
    /// slot does next.
    fn copy_prefixes(&mut self) {
        for slot in 0..self.slots.len() {
            let Some(source) = self.slots[slot].as_ref().and_then(|seq| seq.copy_from) else {
                continue;
            };
            let held = match &self.slots[source.slot] {
                Some(seq) if seq.admission_order == source.admission_order => {
                    if seq.kv_tokens.len() < source.len {
                        continue;
                    }
                    source.len
                }
                // The source ended (a one-token answer, a client gone): its
                // KV may still be cached in its free slot.
                None => {
                    let prompt = &self.slots[slot].as_ref().expect("listed above").prompt;
                    common_prefix(&self.cached[source.slot].tokens, prompt)
                }
                Some(_) => 0,
            };
            // Otherwise this sequence prefills the prefix itself.
            let copied = held >= source.len && self.copy_kv(source.slot, slot, source.len);
            let seq = self.slots[slot].as_mut().expect("slot listed above");
            seq.copy_from = None;
            if copied {
                seq.kv_tokens = seq.prompt[..source.len].to_vec();
                seq.prefilled = source.len;
                seq.reused = source.len;
                self.stats
                    .prefix_cache_hits_total
                    .fetch_add(1, Ordering::Relaxed);
                self.stats
                    .prefix_cache_hit_tokens_total
                    .fetch_add(source.len as u64, Ordering::Relaxed);
            }
        }
    }

    /// Replaces `to`'s KV by the first `len` positions of `from`'s; false
    /// (with `to` cleared) when the cache cannot cut the copy there.
    fn copy_kv(&mut self, from: usize, to: usize, len: usize) -> bool {
        self.ctx
            .kv_cache_seq_cp(from as i32, to as i32, None, None)
            .expect("whole-sequence copy has no positions to convert");
        self.truncate_kv(to, len)
    }

    /// Drops a free slot's KV from position `keep` on; false when the cache
    /// cannot keep that prefix (the slot is then cleared).
    fn truncate_kv(&mut self, slot: usize, keep: usize) -> bool {
        let seq_id = slot as i32;
        // Recurrent state cannot be cut at a position, and a sliding-window
        // cache may have pruned the prefix's early positions already.
        let kept = self
            .ctx
            .kv_cache_seq_rm(seq_id, Some(keep as u32), None)
            .is_ok()
            && self.ctx.kv_cache_seq_pos_min(seq_id) == 0;
        if !kept {
            self.clear_kv(slot);
        }
        kept
    }

    fn clear_kv(&mut self, slot: usize) {
        self.ctx
            .clear_kv_cache_seq(Some(slot as u32), None, None)
            .expect("sequence id fits i32");
        self.cached[slot].tokens.clear();
    }

    fn start_sequence(
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
            tenant: request.tenant,
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

    /// This step's token budget, clamped to what the batch was sized for.
    fn step_budget(&self) -> u32 {
        self.step_budget.load(Ordering::Relaxed).clamp(
            self.config.min_prefill_chunk,
            self.config.step_budget_ceiling(),
        )
    }

    /// Decode tokens first (every unparked running stream), then prefill
    /// chunks, tenant-fair, with what is left of the budget. While a
    /// prompt of a tenant below its fair share of the engine's sequences
    /// waits, the decodes of tenants above theirs sit out the step (at most
    /// [`MAX_STEPS_SITTING_OUT`] in a row) and only below-share prompts
    /// are prefilled in it: the step is short and mostly those prompts, so
    /// a light tenant's first token does not wait behind a flood's decodes
    /// or prefill, and a flood's stream loses steps only then.
    fn build_batch(&mut self) {
        self.batch.clear();
        self.sample_at.clear();
        let mut decoding = std::mem::take(&mut self.decoding);
        decoding.clear();
        let mut prefilling = Vec::new();
        for (slot, seq) in self.slots.iter_mut().enumerate() {
            let Some(seq) = seq else { continue };
            if seq.outbox.is_parked() {
                continue;
            }
            if seq.next_token.is_some() {
                decoding.push(slot);
            } else if seq.is_prefilling() {
                seq.prefill_steps += 1;
                if seq.copy_from.is_none() {
                    prefilling.push((seq.admission_order, slot));
                }
            }
        }
        // Shares are counted only when a prompt waits (an empty map does
        // not allocate), so decode-only steps pay nothing.
        let shares = if prefilling.is_empty() {
            TenantShares::default()
        } else {
            TenantShares::count(self.slots.iter().flatten().map(|seq| seq.tenant.as_str()))
        };
        let tenant_of = |slot: usize| {
            self.slots[slot]
                .as_ref()
                .map_or("", |seq| seq.tenant.as_str())
        };
        let prompt_below_share = prefilling
            .iter()
            .any(|&(_, slot)| shares.is_below_share(tenant_of(slot)));
        let sitting_out: Vec<bool> = if prompt_below_share {
            decoding
                .iter()
                .map(|&slot| {
                    shares.is_above_share(tenant_of(slot))
                        && self.slots[slot]
                            .as_ref()
                            .is_some_and(|seq| seq.steps_sat_out < MAX_STEPS_SITTING_OUT)
                })
                .collect()
        } else {
            Vec::new()
        };
        // Fewest sequences in the engine first, then admission order.
        let mut prefilling: Vec<(usize, u64, usize, bool)> = prefilling
            .into_iter()
            .map(|(order, slot)| {
                let tenant = tenant_of(slot);
                let below_share = shares.is_below_share(tenant);
                (shares.sequences(tenant), order, slot, below_share)
            })
            .collect();
        let mut sat_out = 0;
        for (index, &slot) in decoding.iter().enumerate() {
            let seq = self.slots[slot].as_mut().expect("slot listed as decoding");
            if sitting_out.get(index).copied().unwrap_or(false) {
                seq.steps_sat_out += 1;
                sat_out += 1;
                continue;
            }
            seq.steps_sat_out = 0;
            let token = seq.next_token.take().expect("a decoding slot has a token");
            let index = self.batch.n_tokens();
            self.batch
                .add(
                    LlamaToken(token),
                    seq.kv_tokens.len() as i32,
                    &[seq.seq_id],
                    true,
                )
                .expect("batch holds a decode token per sequence");
            seq.kv_tokens.push(token);
            self.sample_at.push((slot, index));
        }
        // The places of decodes that sit out go to the prompts they made
        // way for, and only to those: the step is never larger than with
        // every decode in it (the batch is sized for that), a pair of light
        // prompts arriving together is prefilled in one step, not two, and
        // the step is no longer than those prompts (measured: filled up with
        // the flood's own prefill it took three times as long).
        self.decoding = decoding;
        let step_budget = self.tenant_capped_budget();
        let decodes = self.batch.n_tokens() as u32;
        let mut budget = (step_budget + sat_out)
            .saturating_sub(decodes)
            .max(self.config.min_prefill_chunk) as usize;
        prefilling.sort_unstable();
        for (_, _, slot, below_share) in prefilling {
            if budget == 0 {
                break;
            }
            if sat_out > 0 && !below_share {
                continue;
            }
            let seq = self.slots[slot]
                .as_mut()
                .expect("slot listed as prefilling");
            let end = (seq.prefilled + budget).min(seq.prompt.len());
            for (pos, &token) in seq.prompt[seq.prefilled..end].iter().enumerate() {
                let is_last_prompt_token = seq.prefilled + pos + 1 == seq.prompt.len();
                let index = self.batch.n_tokens();
                self.batch
                    .add(
                        LlamaToken(token),
                        (seq.prefilled + pos) as i32,
                        &[seq.seq_id],
                        is_last_prompt_token,
                    )
                    .expect("batch sized for the step budget");
                if is_last_prompt_token {
                    self.sample_at.push((slot, index));
                }
            }
            budget -= end - seq.prefilled;
            self.stats
                .prompt_tokens_processed_total
                .fetch_add((end - seq.prefilled) as u64, Ordering::Relaxed);
            seq.kv_tokens
                .extend_from_slice(&seq.prompt[seq.prefilled..end]);
            seq.prefilled = end;
        }
        self.add_prep_chunks(step_budget);
    }

    /// The step budget, capped at `mixed_step_token_budget` while more than
    /// one tenant has sequences in the engine, in this step or the last
    /// one (a tenant whose streams just ended may send its next prompt at
    /// once, into the step being built now).
    fn tenant_capped_budget(&mut self) -> u32 {
        let mut tenants = self.slots.iter().flatten().map(|seq| seq.tenant.as_str());
        let mixed = tenants
            .next()
            .is_some_and(|first| tenants.any(|tenant| tenant != first));
        let capped = mixed || self.mixed_last_step;
        self.mixed_last_step = mixed;
        let cap = self.config.mixed_step_token_budget;
        if capped && cap > 0 {
            self.step_budget().min(cap)
        } else {
            self.step_budget()
        }
    }

    /// Spends what the step leaves of its budget, at most
    /// `prep_tokens_per_step`, on KV preps: those already prefilling first,
    /// then new ones, oldest first. The step thus never grows past a normal
    /// step, and running streams lose nothing.
    fn add_prep_chunks(&mut self, step_budget: u32) {
        let spare = (step_budget as usize).saturating_sub(self.batch.n_tokens() as usize);
        let mut budget = spare.min(self.config.prep_tokens_per_step as usize);
        let mut prepping: Vec<(u64, usize)> = self
            .cached
            .iter()
            .enumerate()
            .filter_map(|(slot, cached)| {
                let prep = cached.prep.as_ref()?;
                (cached.tokens.len() < prep.target.len()).then_some((prep.started, slot))
            })
            .collect();
        prepping.sort_unstable();
        let mut prepping = prepping.into_iter().map(|(_, slot)| slot);
        while budget > 0 {
            let Some(slot) = prepping.next().or_else(|| self.start_prep()) else {
                break;
            };
            let cached = &mut self.cached[slot];
            let target = &cached.prep.as_ref().expect("slot is prepping").target;
            let start = cached.tokens.len();
            let end = (start + budget).min(target.len());
            for (pos, &token) in target[start..end].iter().enumerate() {
                self.batch
                    .add(
                        LlamaToken(token),
                        (start + pos) as i32,
                        &[slot as i32],
                        false,
                    )
                    .expect("prep chunks fit in the step budget");
            }
            cached.tokens.extend_from_slice(&target[start..end]);
            budget -= end - start;
            for total in [
                &self.stats.kv_prep_tokens_total,
                &self.stats.prompt_tokens_processed_total,
            ] {
                total.fetch_add((end - start) as u64, Ordering::Relaxed);
            }
        }
    }

    /// Gives the oldest waiting prep a free slot, only while no request
    /// waits for one and another free slot stays for the next request.
    fn start_prep(&mut self) -> Option<usize> {
        let unpinned_free = (0..self.slots.len())
            .filter(|&slot| self.slots[slot].is_none() && self.cached[slot].prep.is_none())
            .count();
        if !self.waiting.is_empty() || unpinned_free < 2 {
            return None;
        }
        let job = self.preps.pop_front()?;
        let slot = self.evict_least_recently_used();
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
        Some(slot)
    }

    fn sample_batch(&mut self) {
        let now = Instant::now();
        let sample_at = std::mem::take(&mut self.sample_at);
        for &(slot, index) in &sample_at {
            let seq = self.slots[slot].as_mut().expect("sampled slot is live");
            let token = seq.sampler.sample(&self.ctx, index);
            self.stats
                .generated_tokens_total
                .fetch_add(1, Ordering::Relaxed);
            if let Some(ended) = self.accept_token(slot, token, now) {
                self.finish(slot, ended, now);
            }
        }
        self.sample_at = sample_at;
    }

    /// Turns a sampled token into text and events; returns the finish reason
    /// when the stream ends here.
    fn accept_token(
        &mut self,
        slot: usize,
        token: LlamaToken,
        now: Instant,
    ) -> Option<FinishReason> {
        let vocab = self.model.model.vocab();
        let context_limit = self.model.context_per_sequence as usize;
        let seq = self.slots[slot]
            .as_mut()
            .expect("accepting for a live slot");
        seq.generated += 1;
        seq.first_token_at.get_or_insert(now);
        if vocab.is_eog(token) && !seq.ignore_eos {
            return Some(FinishReason::Stop);
        }
        self.piece.clear();
        vocab.token_to_piece_into(token, &mut self.piece, false, None);
        let text = seq.utf8.push(&self.piece);
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
                // Freed on the next step's abandoned check.
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

    /// Ends a stream: flushes held text, sends usage and frees its slot.
    fn finish(&mut self, slot: usize, reason: FinishReason, now: Instant) {
        let seq = self.slots[slot].as_mut().expect("finishing a live slot");
        // After a stop string matched, the matcher holds nothing; otherwise
        // what it held back is ordinary text.
        let tail = seq.stop.finish() + &seq.utf8.finish();
        if !tail.is_empty() {
            let token_ids = std::mem::take(&mut seq.pending_token_ids);
            seq.outbox.deliver(
                StreamEvent::Token {
                    text: tail,
                    token_ids,
                },
                now,
            );
        }
        let timings = seq.timings();
        let usage = Usage {
            prompt_tokens: seq.prompt.len() as u32,
            completion_tokens: seq.generated,
            cached_tokens: timings.cached_tokens,
        };
        seq.outbox.deliver(
            StreamEvent::Finished {
                reason,
                usage,
                timings,
            },
            now,
        );
        self.stats.finished_total.fetch_add(1, Ordering::Relaxed);
        self.free_slot(slot, true);
    }

    /// Frees a slot. With the prefix cache on and `keep_kv`, its KV stays
    /// and is remembered as a cached prefix; otherwise it is cleared.
    fn free_slot(&mut self, slot: usize, keep_kv: bool) {
        let Some(seq) = self.slots[slot].take() else {
            return;
        };
        self.frees += 1;
        self.cached[slot].freed_at = self.frees;
        if keep_kv && self.config.prefix_cache {
            self.cached[slot].tokens = seq.kv_tokens;
        } else {
            self.clear_kv(slot);
        }
        // The stall clock carries over: the client has not read since then.
        if seq.outbox.is_parked() && !seq.outbox.is_closed() {
            self.draining.push(seq.outbox);
        }
    }

    fn fail_batch(&mut self, message: &str) {
        tracing::error!(message, "engine step failed; ending the streams in it");
        let mut slots: Vec<usize> = self.sample_at.iter().map(|&(slot, _)| slot).collect();
        slots.extend(
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, seq)| seq.as_ref().is_some_and(Sequence::is_prefilling))
                .map(|(slot, _)| slot),
        );
        slots.sort_unstable();
        slots.dedup();
        // Preps are only a head start: drop them all rather than track
        // which were in the failed batch.
        for slot in 0..self.cached.len() {
            if self.cached[slot].prep.take().is_some() {
                self.clear_kv(slot);
                self.stats
                    .kv_prep_cancelled_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        for slot in slots {
            if let Some(seq) = self.slots[slot].as_mut() {
                seq.outbox.deliver(
                    StreamEvent::Error {
                        message: message.to_owned(),
                    },
                    Instant::now(),
                );
            }
            // What a failed decode left in these cells is unknown.
            self.free_slot(slot, false);
        }
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

/// How many of the engine's sequences each tenant holds, to judge who is
/// below or above an equal share (the engine knows no weights: admission
/// already applied them when it let the streams in).
#[derive(Default)]
struct TenantShares<'a> {
    sequences: HashMap<&'a str, usize>,
    total: usize,
}

impl<'a> TenantShares<'a> {
    fn count(tenants: impl Iterator<Item = &'a str>) -> Self {
        let mut shares = Self::default();
        for tenant in tenants {
            *shares.sequences.entry(tenant).or_insert(0) += 1;
            shares.total += 1;
        }
        shares
    }

    fn sequences(&self, tenant: &str) -> usize {
        self.sequences.get(tenant).copied().unwrap_or(0)
    }

    fn is_below_share(&self, tenant: &str) -> bool {
        self.sequences(tenant) * self.sequences.len() < self.total
    }

    fn is_above_share(&self, tenant: &str) -> bool {
        self.sequences(tenant) * self.sequences.len() > self.total
    }
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn build_sampler(params: &SamplingParams, n_vocab: i32) -> LlamaSampler {
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

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{self, Receiver};

    use super::*;

    const LIMIT: Duration = Duration::from_millis(1500);
    const BUFFER_EVENTS: usize = 2;

    fn token(text: &str) -> StreamEvent {
        StreamEvent::Token {
            text: text.to_owned(),
            token_ids: vec![1],
        }
    }

    /// An outbox whose channel is sized as `EngineHandle::submit` sizes it.
    fn outbox() -> (Outbox, Receiver<StreamEvent>) {
        let (events, receiver) = mpsc::channel(BUFFER_EVENTS + LAST_EVENT_PLACES);
        (Outbox::new(events, None), receiver)
    }

    /// Fills the buffer, then parks one more token at `at`.
    fn park(outbox: &mut Outbox, at: Instant) {
        for _ in 0..BUFFER_EVENTS {
            assert!(matches!(outbox.deliver(token("a"), at), Delivery::Sent));
        }
        assert!(matches!(outbox.deliver(token("b"), at), Delivery::Parked));
    }

    #[test]
    fn a_client_that_stops_reading_is_stalled_past_the_limit_only_after_it() {
        let (mut outbox, _receiver) = outbox();
        let parked_at = Instant::now();
        assert!(!outbox.stalled_past(LIMIT, parked_at + LIMIT));
        park(&mut outbox, parked_at);
        assert!(outbox.is_parked());
        // Flushes that move nothing keep the clock running.
        let later = parked_at + LIMIT / 2;
        assert!(matches!(outbox.flush(later), Delivery::Parked));
        assert!(!outbox.stalled_past(LIMIT, parked_at + LIMIT));
        assert!(outbox.stalled_past(LIMIT, parked_at + LIMIT + Duration::from_millis(1)));
    }

    #[test]
    fn every_event_the_client_takes_restarts_the_clock() {
        let (mut outbox, mut receiver) = outbox();
        let parked_at = Instant::now();
        park(&mut outbox, parked_at);
        outbox.undelivered.push_back(token("c"));
        // The client takes one event: one waiting event moves, one still waits.
        receiver.try_recv().unwrap();
        let read_at = parked_at + LIMIT;
        assert!(matches!(outbox.flush(read_at), Delivery::Parked));
        assert!(!outbox.stalled_past(LIMIT, parked_at + LIMIT * 2));
        assert!(outbox.stalled_past(LIMIT, read_at + LIMIT + Duration::from_millis(1)));
        // It takes the rest: nothing waits, nothing is stalled.
        receiver.try_recv().unwrap();
        assert!(matches!(outbox.flush(read_at), Delivery::Sent));
        assert!(!outbox.is_parked());
        assert!(!outbox.stalled_past(LIMIT, read_at + LIMIT * 10));
    }

    #[test]
    fn the_event_that_ends_a_stream_takes_the_place_tokens_may_not() {
        let (mut outbox, mut receiver) = outbox();
        let now = Instant::now();
        for _ in 0..BUFFER_EVENTS {
            outbox.deliver(token("a"), now);
        }
        let finished = StreamEvent::Finished {
            reason: FinishReason::Length,
            usage: Usage::default(),
            timings: EngineTimings::default(),
        };
        assert!(matches!(
            outbox.deliver(finished.clone(), now),
            Delivery::Sent
        ));
        for _ in 0..BUFFER_EVENTS {
            assert!(matches!(receiver.try_recv(), Ok(StreamEvent::Token { .. })));
        }
        assert_eq!(receiver.try_recv().unwrap(), finished);
    }

    #[test]
    fn a_stalled_stream_ends_with_a_slow_consumer_error_after_what_the_client_has() {
        let (mut outbox, mut receiver) = outbox();
        park(&mut outbox, Instant::now());
        outbox.end_stalled(LIMIT);
        assert!(!outbox.is_parked());
        drop(outbox);
        let mut received = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            received.push(event);
        }
        let mut expected = vec![token("a"); BUFFER_EVENTS];
        expected.push(StreamEvent::SlowConsumer { limit: LIMIT });
        assert_eq!(received, expected, "the parked token is dropped");
        assert!(receiver.is_closed());
    }

    #[test]
    fn a_client_gone_is_reported_even_while_parked() {
        let (mut outbox, receiver) = outbox();
        let now = Instant::now();
        park(&mut outbox, now);
        drop(receiver);
        assert!(matches!(outbox.flush(now), Delivery::ClientGone));
        assert!(!outbox.stalled_past(LIMIT, now + LIMIT * 2));
    }

    #[test]
    fn shares_are_judged_against_an_equal_split_of_the_sequences() {
        let shares = TenantShares::count(
            std::iter::repeat_n("flood", 48).chain(std::iter::repeat_n("light", 2)),
        );
        assert!(shares.is_below_share("light") && !shares.is_above_share("light"));
        assert!(shares.is_above_share("flood") && !shares.is_below_share("flood"));
        assert_eq!(shares.sequences("light"), 2);
        assert_eq!(shares.sequences("absent"), 0);
        let alone = TenantShares::count(std::iter::repeat_n("only", 5));
        assert!(!alone.is_below_share("only") && !alone.is_above_share("only"));
        let even = TenantShares::count(["a", "b", "a", "b"].into_iter());
        assert!(!even.is_below_share("a") && !even.is_above_share("b"));
    }
}
