//! The pipeline's output: a running generation that yields chunks. It owns
//! the stream's registry handle (inside its observer), which holds the
//! admission permit: dropping it (client gone, stream cancelled) ends the
//! stream, releasing the permit, and drops the engine stream, which frees
//! the sequence. The writers pull chunks from here and frame them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::config::LimitsConfig;
use sluice_core::registry::{EndReason, StreamRegistry};
use sluice_engine::{EngineTimings, FinishReason, GenerationStream, StreamEvent, Usage};

use super::speculation::OpeningState;
use super::{Endpoint, PipelineError, PreEngineTimes};
use crate::telemetry::RequestObserver;

/// What a stream delivers next, before framing.
#[derive(Debug)]
pub enum Chunk {
    Text(String),
    Finish {
        reason: FinishReason,
        usage: Usage,
    },
    /// The stream ends with this error.
    Error(PipelineError),
}

/// A started generation and what the writers need to frame it.
pub struct Generation {
    pub id: String,
    pub endpoint: Endpoint,
    /// The model name the client is shown.
    pub model: String,
    /// Whether the client asked for a stream (a WebSocket always streams).
    pub stream: bool,
    pub include_usage: bool,
    /// Stable hash of the model and the prompt's leading blocks, for
    /// routing by cached prefix.
    pub prefix_hint: u64,
    pub times: PreEngineTimes,
    pub(super) driver: Driver,
}

impl Generation {
    /// The next chunk, waiting for it; `None` after the stream ended.
    /// Cancel-safe: nothing is consumed unless a chunk is returned.
    pub async fn next(&mut self) -> Option<Chunk> {
        self.driver.next().await
    }

    /// A chunk that is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Chunk> {
        self.driver.try_next()
    }

    /// `bytes` reached the transport.
    pub fn wrote(&mut self, bytes: usize) {
        self.driver.observer.stream().bytes_written(bytes);
        self.driver.pace.bytes += bytes as u64;
    }

    /// The writer waited `waited` for the client to take what it wrote.
    pub fn blocked(&mut self, waited: Duration) {
        self.driver.observer.stream().blocked(waited);
        self.driver.pace.blocked += waited;
    }
}

/// Bounds on one stream's life, from `server.limits`.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// From arrival to the last event; `None`: no limit.
    pub max_duration: Option<Duration>,
    /// Bytes per second of the time the writer waited on the client, once
    /// it waited `slow_reader_grace`; 0: no limit.
    pub min_read_bytes_per_second: u64,
    pub slow_reader_grace: Duration,
}

impl StreamLimits {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            max_duration: (limits.max_stream_seconds > 0)
                .then(|| Duration::from_secs(limits.max_stream_seconds)),
            min_read_bytes_per_second: limits.min_read_bytes_per_second,
            slow_reader_grace: Duration::from_millis(limits.slow_reader_grace_ms),
        }
    }

    /// No bounds, for tests of other behaviour.
    #[cfg(test)]
    pub fn none() -> Self {
        Self {
            max_duration: None,
            min_read_bytes_per_second: 0,
            slow_reader_grace: Duration::ZERO,
        }
    }
}

/// How fast the client takes what the writer hands it.
#[derive(Debug, Default)]
struct ReaderPace {
    bytes: u64,
    /// Time the writer waited on the client.
    blocked: Duration,
}

impl ReaderPace {
    /// A client that, after the grace period of waiting on it, reads slower
    /// than the minimum: it holds a sequence while taking almost nothing.
    fn too_slow(&self, limits: &StreamLimits) -> bool {
        limits.min_read_bytes_per_second > 0
            && self.blocked > limits.slow_reader_grace
            && (self.bytes as f64 / self.blocked.as_secs_f64())
                < limits.min_read_bytes_per_second as f64
    }
}

/// Pulls a generation's events, accounts for them and ends however the
/// generation ends (finish, engine error, server shutdown).
pub(super) struct Driver {
    /// None when the opening cache serves the whole answer.
    engine: Option<GenerationStream>,
    opening: OpeningState,
    observer: RequestObserver,
    /// Closed when the shutdown grace period ends.
    streams: Arc<StreamRegistry>,
    limits: StreamLimits,
    deadline: Option<tokio::time::Instant>,
    pace: ReaderPace,
    done: bool,
}

impl Driver {
    pub fn new(
        engine: Option<GenerationStream>,
        opening: OpeningState,
        mut observer: RequestObserver,
        streams: Arc<StreamRegistry>,
        limits: StreamLimits,
    ) -> Self {
        let arrived_at = tokio::time::Instant::from_std(observer.stream().arrived_at());
        Self {
            engine,
            opening,
            observer,
            streams,
            deadline: limits.max_duration.map(|limit| arrived_at + limit),
            limits,
            pace: ReaderPace::default(),
            done: false,
        }
    }

    async fn next(&mut self) -> Option<Chunk> {
        if let Some(chunk) = self.ready_without_engine() {
            return chunk;
        }
        let engine = self.engine.as_mut()?;
        let deadline = self.deadline;
        let event = tokio::select! {
            event = engine.next() => event,
            () = self.streams.closed() => {
                return Some(self.end(EndReason::Shutdown, PipelineError::ShuttingDown));
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                let limit = self.limits.max_duration.unwrap_or_default();
                return Some(self.end(EndReason::Expired, PipelineError::Expired(limit)));
            }
        };
        Some(self.chunk(event))
    }

    fn end(&mut self, reason: EndReason, error: PipelineError) -> Chunk {
        self.done = true;
        self.observer.fail(reason);
        Chunk::Error(error)
    }

    fn try_next(&mut self) -> Option<Chunk> {
        if let Some(chunk) = self.ready_without_engine() {
            return chunk;
        }
        let event = self.engine.as_mut()?.try_next()?;
        Some(self.chunk(Some(event)))
    }

    /// What comes before (or instead of) the engine: the end once done,
    /// cached opening pieces, the finish of an answer served from the cache.
    fn ready_without_engine(&mut self) -> Option<Option<Chunk>> {
        if self.done {
            return Some(None);
        }
        if self.pace.too_slow(&self.limits) {
            let rate = self.limits.min_read_bytes_per_second;
            return Some(Some(
                self.end(EndReason::SlowConsumer, PipelineError::SlowReader(rate)),
            ));
        }
        if let Some((text, tokens)) = self.opening.pending.pop_front() {
            self.observer.token_written(Instant::now(), tokens);
            return Some(Some(Chunk::Text(text)));
        }
        if self.engine.is_some() {
            return None;
        }
        self.done = true;
        let reason = self.opening.whole.unwrap_or(FinishReason::Length);
        let usage = self.opening.client_usage(Usage::default());
        self.observer
            .finished(reason, usage, EngineTimings::default());
        Some(Some(Chunk::Finish { reason, usage }))
    }

    fn chunk(&mut self, event: Option<StreamEvent>) -> Chunk {
        let Some(event) = event else {
            self.done = true;
            self.observer.fail(EndReason::Failed);
            return Chunk::Error(PipelineError::EndedUnexpectedly);
        };
        match event {
            StreamEvent::Token { text, token_ids } => {
                self.observer
                    .token_written(Instant::now(), token_ids.len() as u32);
                let long_enough = self
                    .opening
                    .recorder
                    .as_mut()
                    .is_some_and(|recorder| recorder.push(&text, &token_ids));
                if long_enough && let Some(recorder) = self.opening.recorder.take() {
                    recorder.store();
                }
                Chunk::Text(text)
            }
            StreamEvent::Finished {
                reason,
                usage,
                timings,
            } => {
                self.done = true;
                // An answer that ended within the opening is cached whole;
                // one cut by `max_tokens` is still a valid opening.
                if let Some(mut recorder) = self.opening.recorder.take() {
                    recorder.opening.complete = reason == FinishReason::Stop;
                    recorder.store();
                }
                let usage = self.opening.client_usage(usage);
                self.observer.finished(reason, usage, timings);
                Chunk::Finish { reason, usage }
            }
            StreamEvent::Error { message } => {
                self.done = true;
                self.observer.fail(EndReason::Failed);
                Chunk::Error(PipelineError::EngineFailed(message))
            }
            StreamEvent::SlowConsumer { limit } => {
                self.done = true;
                self.observer.fail(EndReason::SlowConsumer);
                Chunk::Error(PipelineError::SlowConsumer(limit))
            }
        }
    }
}

/// Sleeps until `deadline`; never resolves without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A generation fed by a script instead of the engine, for unit tests of
/// the pipeline's driver and of the writers: send events on the returned
/// sender, drop it to end the engine's side. The registry is returned so
/// a test can close it (shutdown) and read how the stream ended.
#[cfg(test)]
pub(crate) fn scripted(
    endpoint: Endpoint,
    include_usage: bool,
) -> (
    tokio::sync::mpsc::Sender<StreamEvent>,
    Generation,
    Arc<StreamRegistry>,
) {
    scripted_with_limits(endpoint, include_usage, StreamLimits::none())
}

/// [`scripted`] with bounds on the stream's life.
#[cfg(test)]
pub(crate) fn scripted_with_limits(
    endpoint: Endpoint,
    include_usage: bool,
    limits: StreamLimits,
) -> (
    tokio::sync::mpsc::Sender<StreamEvent>,
    Generation,
    Arc<StreamRegistry>,
) {
    use sluice_core::registry::{NewStream, Protocol};

    use crate::telemetry::{LatencyWindows, Metrics, RequestInfo};

    let (events, engine) = GenerationStream::scripted(16);
    let streams = StreamRegistry::new();
    let stream = streams.register(NewStream {
        request_id: "scripted-1".to_owned(),
        tenant: "default".to_owned(),
        protocol: Protocol::Http1,
        arrived_at: Instant::now(),
    });
    let observer = RequestObserver::new(
        Arc::new(Metrics::new()),
        Some(Arc::new(LatencyWindows::new(Duration::from_secs(10)))),
        stream,
        RequestInfo {
            endpoint: endpoint.as_str(),
            prompt_tokens: 3,
            cohorts: Vec::new(),
            canaries: Vec::new(),
            token_charge: None,
            priority: sluice_core::admission::Priority::Interactive,
        },
    );
    let generation = Generation {
        id: "scripted-1".to_owned(),
        endpoint,
        model: "scripted-model".to_owned(),
        stream: true,
        include_usage,
        prefix_hint: 0,
        times: PreEngineTimes {
            tokenize: Duration::ZERO,
            queue: Duration::ZERO,
        },
        driver: Driver::new(
            Some(engine),
            OpeningState::default(),
            observer,
            Arc::clone(&streams),
            limits,
        ),
    };
    (events, generation, streams)
}

/// Engine events for scripted generations.
#[cfg(test)]
pub(crate) mod script {
    use sluice_engine::{EngineTimings, FinishReason, StreamEvent, Usage};

    /// A piece of text that is one token.
    pub fn token(text: &str) -> StreamEvent {
        StreamEvent::Token {
            text: text.to_owned(),
            token_ids: vec![1],
        }
    }

    pub fn finished(
        reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
    ) -> StreamEvent {
        StreamEvent::Finished {
            reason,
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                cached_tokens: 0,
            },
            timings: EngineTimings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::registry::EndReason;

    use super::script::{finished, token};
    use super::*;

    #[tokio::test]
    async fn tokens_then_finish_end_the_stream_completed() {
        let (events, mut generation, streams) = scripted(Endpoint::Chat, false);
        events.send(token("Hel")).await.unwrap();
        events.send(token("lo")).await.unwrap();
        events
            .send(finished(FinishReason::Stop, 3, 2))
            .await
            .unwrap();
        assert!(matches!(generation.next().await, Some(Chunk::Text(t)) if t == "Hel"));
        assert!(matches!(generation.next().await, Some(Chunk::Text(t)) if t == "lo"));
        assert!(matches!(
            generation.next().await,
            Some(Chunk::Finish { reason: FinishReason::Stop, usage }) if usage.completion_tokens == 2
        ));
        assert!(generation.next().await.is_none(), "nothing after the end");
        assert_eq!(streams.counts().ended_with(EndReason::Completed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_ends_with_an_error_not_a_hang() {
        let limits = StreamLimits {
            max_duration: Some(Duration::from_secs(5)),
            ..StreamLimits::none()
        };
        let (events, mut generation, streams) = scripted_with_limits(Endpoint::Chat, false, limits);
        events.send(token("a")).await.unwrap();
        assert!(matches!(generation.next().await, Some(Chunk::Text(_))));
        // The engine goes on producing nothing; the paused clock runs to
        // the deadline.
        assert!(matches!(
            generation.next().await,
            Some(Chunk::Error(PipelineError::Expired(limit))) if limit == Duration::from_secs(5)
        ));
        assert!(generation.next().await.is_none());
        assert_eq!(streams.counts().ended_with(EndReason::Expired), 1);
    }

    #[tokio::test]
    async fn a_trickling_reader_is_ended_below_the_minimum_rate() {
        let limits = StreamLimits {
            min_read_bytes_per_second: 100,
            slow_reader_grace: Duration::from_secs(1),
            ..StreamLimits::none()
        };
        let (events, mut generation, streams) = scripted_with_limits(Endpoint::Chat, false, limits);
        events.send(token("a")).await.unwrap();
        events.send(token("b")).await.unwrap();
        // 500 bytes over 2 s of waiting: above the minimum.
        generation.wrote(500);
        generation.blocked(Duration::from_secs(2));
        assert!(matches!(generation.next().await, Some(Chunk::Text(_))));
        // Then 18 s more for 10 bytes: 510 bytes in 20 s, under 100 B/s.
        generation.wrote(10);
        generation.blocked(Duration::from_secs(18));
        assert!(matches!(
            generation.next().await,
            Some(Chunk::Error(PipelineError::SlowReader(100)))
        ));
        assert!(generation.next().await.is_none());
        assert_eq!(streams.counts().ended_with(EndReason::SlowConsumer), 1);
    }

    #[tokio::test]
    async fn an_engine_that_goes_silent_ends_the_stream_failed_not_hung() {
        let (events, mut generation, streams) = scripted(Endpoint::Completion, false);
        drop(events);
        assert!(matches!(
            generation.next().await,
            Some(Chunk::Error(PipelineError::EndedUnexpectedly))
        ));
        assert!(generation.next().await.is_none());
        assert_eq!(streams.counts().ended_with(EndReason::Failed), 1);
    }

    #[tokio::test]
    async fn a_slow_consumer_end_names_its_limit() {
        let (events, mut generation, streams) = scripted(Endpoint::Chat, false);
        let limit = Duration::from_millis(250);
        events
            .send(StreamEvent::SlowConsumer { limit })
            .await
            .unwrap();
        assert!(matches!(
            generation.next().await,
            Some(Chunk::Error(PipelineError::SlowConsumer(l))) if l == limit
        ));
        assert_eq!(streams.counts().ended_with(EndReason::SlowConsumer), 1);
    }

    #[tokio::test]
    async fn closing_the_registry_ends_a_waiting_stream_as_shutdown() {
        let (_events, mut generation, streams) = scripted(Endpoint::Chat, false);
        streams.close();
        assert!(matches!(
            generation.next().await,
            Some(Chunk::Error(PipelineError::ShuttingDown))
        ));
        assert_eq!(streams.counts().ended_with(EndReason::Shutdown), 1);
    }

    #[tokio::test]
    async fn dropping_a_generation_ends_its_stream_as_disconnected() {
        let (_events, generation, streams) = scripted(Endpoint::Chat, false);
        drop(generation);
        assert_eq!(streams.counts().ended_with(EndReason::Disconnected), 1);
        assert_eq!(streams.counts().active(), 0);
    }
}
