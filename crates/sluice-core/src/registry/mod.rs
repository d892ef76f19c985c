//! The stream registry: one record per stream, from arrival to its end.
//!
//! A stream moves forward through [`Stage`]s (registered, queued for
//! admission, admitted, prefilling, streaming) and ends exactly once with an
//! [`EndReason`]. Each stage is stamped once; a transition backwards, to the
//! same stage, or after the end is ignored.
//!
//! The [`StreamHandle`] belongs to whatever drives the stream and carries its
//! telemetry as plain fields. The registry shares a small record of each live
//! stream (state, token count) for counts and the admin listing, and forgets
//! it at the end, so it holds only live streams.
//!
//! The end is one compare-and-swap on the record's state, so it happens once
//! whoever gets there first: the handle's owner (completion, engine error),
//! the registry (shutdown, a client's cancel), or the handle's `Drop` (client
//! gone). Whoever wins releases what the stream holds: the admission
//! [`Permit`] moves into the record at admission and is dropped by the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::admission::{Admission, Permit, Rejection, Urgency};
use crate::sync::lock;

mod stages;

use stages::{END_REASONS, STAGES};
pub use stages::{EndReason, Protocol, Stage, StreamState};

/// Who a new stream is, for [`StreamRegistry::register`].
pub struct NewStream {
    pub request_id: String,
    pub tenant: String,
    pub protocol: Protocol,
    /// Stamped as the stream's `Registered` instant.
    pub arrived_at: Instant,
}

/// Live streams by stage and ended streams by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamCounts {
    /// Indexed like [`Stage::ALL`].
    pub live: [usize; STAGES],
    /// Since the registry was made; indexed like [`EndReason::ALL`].
    pub ended: [u64; END_REASONS],
}

impl StreamCounts {
    pub fn active(&self) -> usize {
        self.live.iter().sum()
    }

    pub fn in_stage(&self, stage: Stage) -> usize {
        self.live[stage as usize]
    }

    pub fn ended_with(&self, reason: EndReason) -> u64 {
        self.ended[reason as usize]
    }
}

/// One live stream, as the admin listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveStream {
    pub id: u64,
    pub request_id: String,
    pub tenant: String,
    pub protocol: Protocol,
    pub stage: Stage,
    pub age: Duration,
    pub tokens: u64,
}

pub struct StreamRegistry {
    records: Mutex<Records>,
    /// Signed: an end may subtract before a racing advance has added.
    live: [AtomicIsize; STAGES],
    ended: [AtomicU64; END_REASONS],
    closed: watch::Sender<bool>,
}

#[derive(Default)]
struct Records {
    closed: bool,
    next_id: u64,
    by_id: HashMap<u64, Arc<Record>>,
}

/// What the registry shares with a stream's handle.
struct Record {
    id: u64,
    request_id: String,
    tenant: String,
    protocol: Protocol,
    arrived_at: Instant,
    state: AtomicU8,
    tokens: AtomicU64,
    /// The admission permit, once admitted. Locked only at admission, at
    /// the first token and at the end, never per token.
    permit: Mutex<Option<Permit>>,
    /// Wakes the stream's admission wait when it ends (a cancel, shutdown),
    /// so it leaves the queue at once.
    ended: Notify,
}

impl Record {
    fn state(&self) -> StreamState {
        StreamState::decode(self.state.load(Ordering::Acquire))
    }

    fn permit(&self) -> MutexGuard<'_, Option<Permit>> {
        lock(&self.permit)
    }
}

impl StreamRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            records: Mutex::default(),
            live: Default::default(),
            ended: Default::default(),
            closed: watch::Sender::new(false),
        })
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        lock(&self.records)
    }

    /// Registers a stream. After [`close`](Self::close) it is born ended
    /// (`Shutdown`), so nothing it does later holds resources.
    pub fn register(self: &Arc<Self>, stream: NewStream) -> StreamHandle {
        let mut records = self.records();
        let id = records.next_id;
        records.next_id += 1;
        let closed = records.closed;
        let state = if closed {
            StreamState::Ended(EndReason::Shutdown)
        } else {
            StreamState::Live(Stage::Registered)
        };
        let record = Arc::new(Record {
            id,
            request_id: stream.request_id,
            tenant: stream.tenant,
            protocol: stream.protocol,
            arrived_at: stream.arrived_at,
            state: AtomicU8::new(state.encode()),
            tokens: AtomicU64::new(0),
            permit: Mutex::new(None),
            ended: Notify::new(),
        });
        if closed {
            self.ended[EndReason::Shutdown as usize].fetch_add(1, Ordering::Relaxed);
        } else {
            records.by_id.insert(id, Arc::clone(&record));
            self.live[Stage::Registered as usize].fetch_add(1, Ordering::Relaxed);
        }
        drop(records);
        let mut stamps = [None; STAGES];
        stamps[Stage::Registered as usize] = Some(stream.arrived_at);
        StreamHandle {
            registry: Arc::clone(self),
            record,
            stamps,
            telemetry: StreamTelemetry::default(),
        }
    }

    /// Ends a live stream from outside its handle (a client's cancel); false
    /// when it has already ended or never existed.
    pub fn end(&self, id: u64, reason: EndReason) -> bool {
        let record = self.records().by_id.get(&id).cloned();
        record.is_some_and(|record| self.finish(&record, reason))
    }

    /// Ends every live stream as `Shutdown` (releasing their permits at
    /// once), refuses new ones, and wakes [`closed`](Self::closed).
    pub fn close(&self) {
        let live: Vec<Arc<Record>> = {
            let mut records = self.records();
            records.closed = true;
            records.by_id.values().cloned().collect()
        };
        for record in &live {
            self.finish(record, EndReason::Shutdown);
        }
        self.closed.send_replace(true);
    }

    /// Resolves once the registry is closed.
    pub async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        // The sender lives as long as `self`, so this only returns closed.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    pub fn counts(&self) -> StreamCounts {
        StreamCounts {
            live: std::array::from_fn(|stage| {
                usize::try_from(self.live[stage].load(Ordering::Relaxed)).unwrap_or(0)
            }),
            ended: std::array::from_fn(|reason| self.ended[reason].load(Ordering::Relaxed)),
        }
    }

    /// The live streams, oldest first.
    pub fn snapshot(&self) -> Vec<ActiveStream> {
        let now = Instant::now();
        let mut streams: Vec<ActiveStream> = self
            .records()
            .by_id
            .values()
            .filter_map(|record| match record.state() {
                StreamState::Live(stage) => Some(ActiveStream {
                    id: record.id,
                    request_id: record.request_id.clone(),
                    tenant: record.tenant.clone(),
                    protocol: record.protocol,
                    stage,
                    age: now.saturating_duration_since(record.arrived_at),
                    tokens: record.tokens.load(Ordering::Relaxed),
                }),
                StreamState::Ended(_) => None,
            })
            .collect();
        streams.sort_unstable_by_key(|stream| stream.id);
        streams
    }

    /// Moves a live stream forward to `stage`; false if it is there or past
    /// it already, or has ended.
    fn advance(&self, record: &Record, stage: Stage) -> bool {
        let to = StreamState::Live(stage).encode();
        let moved = record
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current < to).then_some(to)
            });
        let Ok(current) = moved else {
            return false;
        };
        self.live[usize::from(current)].fetch_sub(1, Ordering::Relaxed);
        self.live[stage as usize].fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The end: once per stream, whoever calls first. Forgets the record and
    /// releases the permit.
    fn finish(&self, record: &Record, reason: EndReason) -> bool {
        let to = StreamState::Ended(reason).encode();
        let ended = record
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (usize::from(current) < STAGES).then_some(to)
            });
        let Ok(current) = ended else {
            return false;
        };
        self.live[usize::from(current)].fetch_sub(1, Ordering::Relaxed);
        self.ended[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.records().by_id.remove(&record.id);
        record.ended.notify_waiters();
        let permit = record.permit().take();
        // Released outside the lock: admission may hand it on at once.
        drop(permit);
        true
    }
}

/// A stream's own account of itself, kept by its handle: plain fields,
/// updated without locks on the per-token path.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamTelemetry {
    /// Tokens written to the client.
    pub tokens: u64,
    /// Bytes written to the client, framing included.
    pub bytes: u64,
    /// Time the writer waited for the client to take what was written.
    pub blocked: Duration,
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
    /// Gaps between consecutive token writes: how many, their sum, the
    /// longest.
    pub gaps: u32,
    pub gap_total: Duration,
    pub gap_max: Duration,
}

impl StreamTelemetry {
    pub fn gap_mean(&self) -> Option<Duration> {
        (self.gaps > 0).then(|| self.gap_total / self.gaps)
    }
}

/// The stream's driver's side of its record. Dropping a live handle ends the
/// stream as `Disconnected`: the only way a handle goes away without an end
/// is that whatever drove it (the client's connection) is gone.
pub struct StreamHandle {
    registry: Arc<StreamRegistry>,
    record: Arc<Record>,
    stamps: [Option<Instant>; STAGES],
    telemetry: StreamTelemetry,
}

impl std::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandle")
            .field("id", &self.record.id)
            .field("request_id", &self.record.request_id)
            .field("state", &self.record.state())
            .finish()
    }
}

impl StreamHandle {
    /// The registry's id, for [`StreamRegistry::end`].
    pub fn id(&self) -> u64 {
        self.record.id
    }

    pub fn request_id(&self) -> &str {
        &self.record.request_id
    }

    pub fn tenant(&self) -> &str {
        &self.record.tenant
    }

    pub fn protocol(&self) -> Protocol {
        self.record.protocol
    }

    pub fn state(&self) -> StreamState {
        self.record.state()
    }

    pub fn end_reason(&self) -> Option<EndReason> {
        match self.state() {
            StreamState::Ended(reason) => Some(reason),
            StreamState::Live(_) => None,
        }
    }

    /// When the stream reached `stage`; `None` if it never did.
    pub fn stamp(&self, stage: Stage) -> Option<Instant> {
        self.stamps[stage as usize]
    }

    pub fn arrived_at(&self) -> Instant {
        self.record.arrived_at
    }

    pub fn telemetry(&self) -> &StreamTelemetry {
        &self.telemetry
    }

    /// Moves forward to `stage` and stamps it; false (nothing changes) when
    /// the stream is at or past `stage`, or has ended.
    pub fn advance(&mut self, stage: Stage) -> bool {
        self.advance_at(stage, Instant::now())
    }

    fn advance_at(&mut self, stage: Stage, now: Instant) -> bool {
        let advanced = self.registry.advance(&self.record, stage);
        if advanced {
            self.stamps[stage as usize] = Some(now);
        }
        advanced
    }

    /// Ends the stream; false when it had ended already (the first end
    /// stands).
    pub fn end(&mut self, reason: EndReason) -> bool {
        self.registry.finish(&self.record, reason)
    }

    /// Waits for an admission permit and moves it into the record (`Queued`
    /// stamped only if it waits); returns the wait admission predicted. A
    /// rejection ends the stream (`TimedOut` past the wait limit, else
    /// `Rejected`); an end while waiting (shutdown, cancel) leaves the queue
    /// at once with `Closed`; a permit granted as it ended is released.
    pub async fn admit(
        &mut self,
        admission: &Arc<Admission>,
        urgency: Urgency,
    ) -> Result<Option<Duration>, Rejection> {
        let record = Arc::clone(&self.record);
        let mut ended = std::pin::pin!(record.ended.notified());
        // Listening before the state is read: an end after it wakes this.
        ended.as_mut().enable();
        match self.state() {
            StreamState::Live(Stage::Registered) => {}
            StreamState::Live(_) => return Ok(None),
            StreamState::Ended(_) => return Err(Rejection::Closed),
        }
        let mut acquire = std::pin::pin!(admission.acquire_with(&record.tenant, urgency));
        let outcome = std::future::poll_fn(|cx| {
            if ended.as_mut().poll(cx).is_ready() {
                // Ended while waiting: dropping the wait gives its queue
                // place back, and the end below finds the stream ended.
                return Poll::Ready(Err(Rejection::Closed));
            }
            let poll = acquire.as_mut().poll(cx);
            if poll.is_pending() {
                self.advance(Stage::Queued);
            }
            poll
        })
        .await;
        match outcome {
            Ok(permit) => {
                let predicted_wait = permit.predicted_wait();
                let admitted = self.admitted(permit);
                admitted.then_some(predicted_wait).ok_or(Rejection::Closed)
            }
            Err(rejection) => {
                let ended_by_rejection = self.end(match rejection {
                    Rejection::WaitTimedOut { .. } => EndReason::TimedOut,
                    _ => EndReason::Rejected,
                });
                // An end while it waited came first and stands.
                if ended_by_rejection {
                    Err(rejection)
                } else {
                    Err(Rejection::Closed)
                }
            }
        }
    }

    /// Moves the permit in; false (and the permit released) when the stream
    /// has ended meanwhile.
    fn admitted(&mut self, permit: Permit) -> bool {
        *self.record.permit() = Some(permit);
        if self.advance(Stage::Admitted) {
            return true;
        }
        // The end came first and may have found no permit to release: the
        // end's state change precedes its lock, so one of the two sees it.
        let late = self.record.permit().take();
        drop(late);
        false
    }

    /// Accounts `tokens` written at `now`; the first write moves the stream
    /// to `Streaming`. Returns the gap since the previous write, `None` for
    /// the first.
    pub fn token_written(&mut self, now: Instant, tokens: u32) -> Option<Duration> {
        self.telemetry.tokens += u64::from(tokens);
        self.record
            .tokens
            .store(self.telemetry.tokens, Ordering::Relaxed);
        match self.telemetry.last_token_at.replace(now) {
            None => {
                self.telemetry.first_token_at = Some(now);
                self.advance_at(Stage::Streaming, now);
                if let Some(permit) = self.record.permit().as_mut() {
                    permit.first_token();
                }
                None
            }
            Some(last) => {
                let gap = now.saturating_duration_since(last);
                self.telemetry.gaps += 1;
                self.telemetry.gap_total += gap;
                self.telemetry.gap_max = self.telemetry.gap_max.max(gap);
                Some(gap)
            }
        }
    }

    pub fn bytes_written(&mut self, bytes: usize) {
        self.telemetry.bytes += bytes as u64;
    }

    /// Adds time the writer waited on the client.
    pub fn blocked(&mut self, waited: Duration) {
        self.telemetry.blocked += waited;
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.registry.finish(&self.record, EndReason::Disconnected);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::admission::{AdmissionLimits, Urgency};

    fn admission(limit: u32, max_queue: usize) -> Arc<Admission> {
        Admission::new(
            limit,
            AdmissionLimits {
                max_queue,
                max_wait: Duration::from_secs(10),
                interactive_reserve: 0,
            },
            HashMap::new(),
        )
    }

    fn new_stream(tenant: &str) -> NewStream {
        NewStream {
            request_id: format!("req-{tenant}"),
            tenant: tenant.to_owned(),
            protocol: Protocol::Http1,
            arrived_at: Instant::now(),
        }
    }

    /// Lets spawned tasks run up to their next await.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn stages_move_forward_once_and_later_attempts_change_nothing() {
        let registry = StreamRegistry::new();
        let mut stream = registry.register(new_stream("a"));
        assert_eq!(stream.state(), StreamState::Live(Stage::Registered));
        assert!(stream.advance(Stage::Admitted), "stages may be skipped");
        let admitted_at = stream.stamp(Stage::Admitted).unwrap();
        assert!(!stream.advance(Stage::Admitted), "same stage twice");
        assert!(!stream.advance(Stage::Queued), "backwards");
        assert_eq!(stream.stamp(Stage::Admitted), Some(admitted_at));
        assert_eq!(stream.stamp(Stage::Queued), None);
        assert_eq!(registry.counts().in_stage(Stage::Admitted), 1);
        assert_eq!(registry.counts().active(), 1);

        assert!(stream.end(EndReason::Completed));
        assert!(!stream.end(EndReason::Failed), "the first end stands");
        assert!(!stream.advance(Stage::Streaming), "nothing after the end");
        assert_eq!(stream.end_reason(), Some(EndReason::Completed));
        let counts = registry.counts();
        assert_eq!(counts.active(), 0);
        assert_eq!(counts.ended_with(EndReason::Completed), 1);
        assert_eq!(counts.ended_with(EndReason::Failed), 0);
        drop(stream);
        assert_eq!(registry.counts().ended.iter().sum::<u64>(), 1);
    }

    #[test]
    fn dropping_a_live_handle_ends_it_as_disconnected() {
        let registry = StreamRegistry::new();
        let stream = registry.register(new_stream("a"));
        assert_eq!(registry.snapshot().len(), 1);
        drop(stream);
        assert_eq!(registry.counts().ended_with(EndReason::Disconnected), 1);
        assert!(registry.snapshot().is_empty(), "records leave at the end");
    }

    #[test]
    fn tokens_move_the_stream_to_streaming_and_gaps_are_kept() {
        let registry = StreamRegistry::new();
        let mut stream = registry.register(new_stream("a"));
        let start = Instant::now();
        assert_eq!(stream.token_written(start, 1), None);
        assert_eq!(stream.stamp(Stage::Streaming), Some(start));
        let gaps = [30, 10, 20].map(Duration::from_millis);
        let mut at = start;
        for gap in gaps {
            at += gap;
            assert_eq!(stream.token_written(at, 2), Some(gap));
        }
        stream.bytes_written(100);
        stream.blocked(Duration::from_millis(5));
        let telemetry = stream.telemetry();
        assert_eq!(telemetry.tokens, 7);
        assert_eq!(telemetry.bytes, 100);
        assert_eq!(telemetry.blocked, Duration::from_millis(5));
        assert_eq!(telemetry.gaps, 3);
        assert_eq!(telemetry.gap_max, Duration::from_millis(30));
        assert_eq!(telemetry.gap_mean(), Some(Duration::from_millis(20)));
        let listed = registry.snapshot();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].stage, Stage::Streaming);
        assert_eq!(listed[0].tokens, 7);
        assert_eq!(listed[0].tenant, "a");
        assert_eq!(listed[0].request_id, "req-a");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_is_stamped_only_when_the_stream_waits() {
        let admission = admission(1, 4);
        let registry = StreamRegistry::new();
        let mut first = registry.register(new_stream("a"));
        first.admit(&admission, Urgency::default()).await.unwrap();
        assert_eq!(first.stamp(Stage::Queued), None);
        assert_eq!(first.state(), StreamState::Live(Stage::Admitted));

        let mut second = registry.register(new_stream("a"));
        let waiting = tokio::spawn(async move {
            let outcome = second.admit(&admission, Urgency::default()).await;
            (second, outcome)
        });
        settle().await;
        assert_eq!(registry.counts().in_stage(Stage::Queued), 1);
        drop(first);
        let (second, outcome) = waiting.await.unwrap();
        outcome.unwrap();
        assert!(second.stamp(Stage::Queued).is_some());
        assert_eq!(second.state(), StreamState::Live(Stage::Admitted));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_limit_ends_the_stream_as_timed_out() {
        let admission = admission(1, 4);
        let registry = StreamRegistry::new();
        let mut running = registry.register(new_stream("a"));
        running.admit(&admission, Urgency::default()).await.unwrap();
        let mut late = registry.register(new_stream("a"));
        let rejection = late
            .admit(&admission, Urgency::default())
            .await
            .unwrap_err();
        assert!(matches!(rejection, Rejection::WaitTimedOut { .. }));
        assert_eq!(late.end_reason(), Some(EndReason::TimedOut));
        assert_eq!(admission.snapshot().active, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn close_ends_every_live_stream_releases_permits_and_wakes_waiters() {
        let admission = admission(2, 4);
        let registry = StreamRegistry::new();
        let mut admitted = registry.register(new_stream("a"));
        admitted
            .admit(&admission, Urgency::default())
            .await
            .unwrap();
        let registered = registry.register(new_stream("b"));
        let woken = {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move { registry.closed().await })
        };
        settle().await;
        assert!(!woken.is_finished());

        registry.close();
        woken.await.unwrap();
        assert_eq!(admitted.end_reason(), Some(EndReason::Shutdown));
        assert_eq!(registered.end_reason(), Some(EndReason::Shutdown));
        assert_eq!(admission.snapshot().active, 0, "permit released at close");
        assert!(!admitted.end(EndReason::Completed));

        let mut after = registry.register(new_stream("c"));
        assert_eq!(after.end_reason(), Some(EndReason::Shutdown));
        assert_eq!(
            after.admit(&admission, Urgency::default()).await,
            Err(Rejection::Closed)
        );
        assert_eq!(admission.snapshot().active, 0);
        assert_eq!(registry.counts().ended_with(EndReason::Shutdown), 3);
    }

    /// A stream waiting for admission (limit 1) behind a running one, and
    /// the task that waits: it returns the handle and how the wait ended.
    struct QueuedBehindOne {
        admission: Arc<Admission>,
        registry: Arc<StreamRegistry>,
        running: StreamHandle,
        id: u64,
        waiting: tokio::task::JoinHandle<(StreamHandle, Result<(), Rejection>)>,
    }

    async fn queued_behind_one() -> QueuedBehindOne {
        let admission = admission(1, 4);
        let registry = StreamRegistry::new();
        let mut running = registry.register(new_stream("a"));
        running.admit(&admission, Urgency::default()).await.unwrap();
        let mut queued = registry.register(new_stream("a"));
        let id = queued.id();
        let waiting = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move {
                let outcome = queued.admit(&admission, Urgency::default()).await.map(drop);
                (queued, outcome)
            })
        };
        settle().await;
        QueuedBehindOne {
            admission,
            registry,
            running,
            id,
            waiting,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_granted_after_the_stream_ended_is_released_at_once() {
        let QueuedBehindOne {
            admission,
            registry,
            running,
            id,
            waiting,
        } = queued_behind_one().await;
        assert!(registry.end(id, EndReason::Cancelled));
        assert!(!registry.end(id, EndReason::Cancelled), "ends once");
        drop(running);
        let (queued, outcome) = waiting.await.unwrap();
        assert_eq!(outcome, Err(Rejection::Closed));
        assert_eq!(queued.end_reason(), Some(EndReason::Cancelled));
        assert_eq!(admission.snapshot().active, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_cancelled_while_queued_leaves_the_queue_at_once() {
        let QueuedBehindOne {
            admission,
            registry,
            // Holds the one permit to the end.
            running: _running,
            id,
            waiting,
        } = queued_behind_one().await;
        assert_eq!(admission.snapshot().queued, 1);
        assert!(registry.end(id, EndReason::Cancelled));
        settle().await;
        assert!(waiting.is_finished(), "the cancel wakes the wait");
        assert_eq!(admission.snapshot().queued, 0, "its queue place is free");
        let (queued, outcome) = waiting.await.unwrap();
        assert_eq!(outcome, Err(Rejection::Closed));
        assert_eq!(queued.end_reason(), Some(EndReason::Cancelled));
        assert_eq!(
            admission.snapshot().active,
            1,
            "the running stream's permit only"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register(usize),
        Admit(usize),
        Prefill(usize),
        Token(usize),
        /// The driver ends its stream: completed, engine failure, slow reader.
        End(usize, EndReason),
        /// A client's cancel through the registry (held or waiting stream).
        Cancel(usize),
        /// The client goes away: the handle (or its waiting task) is dropped.
        Disconnect(usize),
        /// A transition that must be ignored: backwards, repeated, or late.
        Invalid(usize),
        Advance(u64),
        Shutdown,
    }

    fn op() -> impl Strategy<Value = Op> {
        let owner_end = prop_oneof![
            Just(EndReason::Completed),
            Just(EndReason::Failed),
            Just(EndReason::SlowConsumer),
            Just(EndReason::Expired),
        ];
        prop_oneof![
            6 => (0usize..2).prop_map(Op::Register),
            6 => any::<usize>().prop_map(Op::Admit),
            4 => any::<usize>().prop_map(Op::Prefill),
            6 => any::<usize>().prop_map(Op::Token),
            4 => (any::<usize>(), owner_end).prop_map(|(k, reason)| Op::End(k, reason)),
            2 => any::<usize>().prop_map(Op::Cancel),
            4 => any::<usize>().prop_map(Op::Disconnect),
            2 => any::<usize>().prop_map(Op::Invalid),
            2 => (0u64..15_000).prop_map(Op::Advance),
            1 => Just(Op::Shutdown),
        ]
    }

    const TENANTS: [&str; 2] = ["a", "b"];

    /// A handle the test drives, and the state the model expects of it.
    struct Driven {
        handle: StreamHandle,
        expected: StreamState,
        /// Whether its admission gave it a permit.
        permit: bool,
    }

    type AdmitTask = JoinHandle<(StreamHandle, Result<(), Rejection>)>;

    /// A handle inside a task waiting for admission.
    struct Waiting {
        id: u64,
        task: AdmitTask,
        /// Its state when it asked for admission, and whether it held a
        /// permit then.
        before: StreamState,
        permit: bool,
        /// Set when the test ended it while it waited.
        ended: Option<EndReason>,
    }

    struct Model {
        admission: Arc<Admission>,
        registry: Arc<StreamRegistry>,
        held: Vec<Driven>,
        waiting: Vec<Waiting>,
        /// Ends the model expects the registry to have counted, by reason.
        ended: [u64; END_REASONS],
        registered: u64,
        closed: bool,
    }

    impl Model {
        fn tally(&mut self, reason: EndReason) {
            self.ended[reason as usize] += 1;
        }

        /// Ends `expected` with `reason` if it is live; returns whether it was.
        fn end_expected(
            ended: &mut [u64; END_REASONS],
            expected: &mut StreamState,
            reason: EndReason,
        ) -> bool {
            if matches!(expected, StreamState::Live(_)) {
                *expected = StreamState::Ended(reason);
                ended[reason as usize] += 1;
                true
            } else {
                false
            }
        }

        async fn apply(&mut self, op: Op) {
            match op {
                Op::Register(tenant) => {
                    let handle = self.registry.register(new_stream(TENANTS[tenant]));
                    self.registered += 1;
                    let expected = if self.closed {
                        self.tally(EndReason::Shutdown);
                        StreamState::Ended(EndReason::Shutdown)
                    } else {
                        StreamState::Live(Stage::Registered)
                    };
                    self.held.push(Driven {
                        handle,
                        expected,
                        permit: false,
                    });
                }
                Op::Admit(k) if !self.held.is_empty() => {
                    let Driven {
                        mut handle,
                        expected,
                        permit,
                    } = self.held.swap_remove(k % self.held.len());
                    let admission = Arc::clone(&self.admission);
                    let id = handle.id();
                    let task = tokio::spawn(async move {
                        let outcome = handle.admit(&admission, Urgency::default()).await.map(drop);
                        (handle, outcome)
                    });
                    self.waiting.push(Waiting {
                        id,
                        task,
                        before: expected,
                        permit,
                        ended: None,
                    });
                }
                Op::Prefill(k) if !self.held.is_empty() => {
                    let index = k % self.held.len();
                    let held = &mut self.held[index];
                    let moves = matches!(held.expected, StreamState::Live(stage) if stage < Stage::Prefilling);
                    assert_eq!(held.handle.advance(Stage::Prefilling), moves);
                    if moves {
                        held.expected = StreamState::Live(Stage::Prefilling);
                    }
                }
                Op::Token(k) if !self.held.is_empty() => {
                    let index = k % self.held.len();
                    let held = &mut self.held[index];
                    let first = held.handle.telemetry().tokens == 0;
                    let gap = held.handle.token_written(Instant::now(), 1);
                    assert_eq!(gap.is_none(), first, "only the first write has no gap");
                    if matches!(held.expected, StreamState::Live(_)) {
                        held.expected = StreamState::Live(Stage::Streaming);
                    }
                }
                Op::End(k, reason) if !self.held.is_empty() => {
                    let Driven {
                        mut handle,
                        mut expected,
                        ..
                    } = self.held.swap_remove(k % self.held.len());
                    let live = Self::end_expected(&mut self.ended, &mut expected, reason);
                    assert_eq!(
                        handle.end(reason),
                        live,
                        "an end succeeds once, on a live stream"
                    );
                    assert_eq!(handle.state(), expected);
                }
                Op::Cancel(k) if !self.held.is_empty() || !self.waiting.is_empty() => {
                    let k = k % (self.held.len() + self.waiting.len());
                    if let Some(held) = self.held.get_mut(k) {
                        let live = Self::end_expected(
                            &mut self.ended,
                            &mut held.expected,
                            EndReason::Cancelled,
                        );
                        assert_eq!(
                            self.registry.end(held.handle.id(), EndReason::Cancelled),
                            live
                        );
                    } else {
                        let waiting = &mut self.waiting[k - self.held.len()];
                        let live = waiting.ended.is_none();
                        if live {
                            waiting.ended = Some(EndReason::Cancelled);
                            self.ended[EndReason::Cancelled as usize] += 1;
                        }
                        assert_eq!(self.registry.end(waiting.id, EndReason::Cancelled), live);
                    }
                }
                Op::Disconnect(k) if !self.held.is_empty() || !self.waiting.is_empty() => {
                    let k = k % (self.held.len() + self.waiting.len());
                    if k < self.held.len() {
                        let Driven {
                            handle,
                            mut expected,
                            ..
                        } = self.held.swap_remove(k);
                        Self::end_expected(&mut self.ended, &mut expected, EndReason::Disconnected);
                        drop(handle);
                    } else {
                        let waiting = self.waiting.swap_remove(k - self.held.len());
                        if waiting.ended.is_none() {
                            self.tally(EndReason::Disconnected);
                        }
                        waiting.task.abort();
                    }
                }
                Op::Invalid(k) if !self.held.is_empty() => {
                    let index = k % self.held.len();
                    let held = &mut self.held[index];
                    let stamps = held.handle.stamps;
                    match held.expected {
                        StreamState::Live(stage) => {
                            assert!(!held.handle.advance(stage), "same stage twice");
                            assert!(!held.handle.advance(Stage::Registered), "backwards");
                        }
                        StreamState::Ended(_) => {
                            assert!(!held.handle.advance(Stage::Streaming));
                            assert!(!held.handle.end(EndReason::Completed));
                            assert!(!self.registry.end(held.handle.id(), EndReason::Cancelled));
                        }
                    }
                    assert_eq!(held.handle.stamps, stamps, "stamps are set once");
                }
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Shutdown => {
                    self.registry.close();
                    self.closed = true;
                    for held in &mut self.held {
                        Self::end_expected(
                            &mut self.ended,
                            &mut held.expected,
                            EndReason::Shutdown,
                        );
                    }
                    for waiting in &mut self.waiting {
                        if waiting.ended.is_none() {
                            waiting.ended = Some(EndReason::Shutdown);
                            self.ended[EndReason::Shutdown as usize] += 1;
                        }
                    }
                }
                // An op on an empty collection.
                _ => {}
            }
        }

        /// Takes back the handles whose admission finished, checking how.
        async fn harvest(&mut self) {
            let mut still_waiting = Vec::new();
            for waiting in std::mem::take(&mut self.waiting) {
                if !waiting.task.is_finished() {
                    still_waiting.push(waiting);
                    continue;
                }
                let (handle, outcome) = waiting.task.await.expect("admit task ran");
                let (expected, permit) = match (waiting.before, waiting.ended, &outcome) {
                    (StreamState::Ended(reason), _, _) => {
                        assert_eq!(outcome, Err(Rejection::Closed));
                        (StreamState::Ended(reason), false)
                    }
                    (StreamState::Live(Stage::Registered), Some(reason), _) => {
                        assert_eq!(outcome, Err(Rejection::Closed));
                        (StreamState::Ended(reason), false)
                    }
                    (StreamState::Live(Stage::Registered), None, Ok(())) => {
                        (StreamState::Live(Stage::Admitted), true)
                    }
                    (StreamState::Live(Stage::Registered), None, Err(rejection)) => {
                        let reason = match rejection {
                            Rejection::WaitTimedOut { .. } => EndReason::TimedOut,
                            _ => EndReason::Rejected,
                        };
                        self.tally(reason);
                        (StreamState::Ended(reason), false)
                    }
                    (live, Some(reason), _) => {
                        assert_eq!(outcome, Ok(()), "{live:?} was admitted already");
                        (StreamState::Ended(reason), false)
                    }
                    (live, None, _) => {
                        assert_eq!(outcome, Ok(()), "admit on {live:?} changes nothing");
                        (live, waiting.permit)
                    }
                };
                self.held.push(Driven {
                    handle,
                    expected,
                    permit,
                });
            }
            self.waiting = still_waiting;
        }

        fn check(&self) {
            for held in &self.held {
                assert_eq!(held.handle.state(), held.expected, "{:?}", held.handle);
            }
            let admitted = self
                .held
                .iter()
                .filter(|held| held.permit && matches!(held.expected, StreamState::Live(_)))
                .count();
            let admission = self.admission.snapshot();
            assert_eq!(
                admission.active as usize, admitted,
                "admission's active count equals the admitted live streams"
            );
            assert_eq!(
                admission.queued,
                self.waiting.len(),
                "every waiter is queued"
            );

            let counts = self.registry.counts();
            let mut live = [0usize; STAGES];
            for held in &self.held {
                if let StreamState::Live(stage) = held.expected {
                    live[stage as usize] += 1;
                }
            }
            live[Stage::Queued as usize] +=
                self.waiting.iter().filter(|w| w.ended.is_none()).count();
            assert_eq!(counts.live, live, "live streams by stage");
            assert_eq!(counts.ended, self.ended, "each end counted once");
            let listed: Vec<u64> = self.registry.snapshot().iter().map(|s| s.id).collect();
            assert_eq!(
                listed.len(),
                counts.active(),
                "the listing holds the live streams"
            );
            for held in &self.held {
                let is_live = matches!(held.expected, StreamState::Live(_));
                assert_eq!(listed.contains(&held.handle.id()), is_live);
            }
        }
    }

    fn check_interleaving(ops: Vec<Op>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut model = Model {
                admission: admission(2, 3),
                registry: StreamRegistry::new(),
                held: Vec::new(),
                waiting: Vec::new(),
                ended: [0; END_REASONS],
                registered: 0,
                closed: false,
            };
            for op in ops {
                model.apply(op).await;
                settle().await;
                model.harvest().await;
                model.check();
            }
            for waiting in model.waiting.drain(..) {
                waiting.task.abort();
            }
            settle().await;
            model.held.clear();
            let admission = model.admission.snapshot();
            assert_eq!(
                (admission.active, admission.queued),
                (0, 0),
                "everything released"
            );
            let counts = model.registry.counts();
            assert_eq!(counts.active(), 0);
            assert_eq!(
                counts.ended.iter().sum::<u64>(),
                model.registered,
                "every stream ended exactly once"
            );
            assert!(model.registry.snapshot().is_empty());
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn no_permit_leaks_and_every_stream_ends_once(ops in proptest::collection::vec(op(), 1..80)) {
            check_interleaving(ops);
        }
    }
}
