//! Per-request accounting: latency histograms as tokens are written, and one
//! log line when the request ends, however it ends. The request's stream
//! handle (`sluice_core::registry`) holds its lifecycle and telemetry; the
//! observer feeds them to metrics and the log.

use std::sync::Arc;
use std::time::Instant;

use sluice_core::admission::{Priority, TokenCharge};
use sluice_core::flags::Cohort;
use sluice_core::registry::{EndReason, Stage, StreamHandle};
use sluice_engine::{EngineTimings, FinishReason, Usage};

use super::latency::{AwaitingFirstToken, LatencyWindows};
use super::metrics::Metrics;
use super::qos_window::QosTags;

/// How a request ended, as metrics and the request log count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The engine finished it: `stop` or `length`.
    Finished(FinishReason),
    /// Its client left.
    Cancelled,
    /// Its client stopped reading and the server ended it.
    SlowConsumer,
    /// The engine failed it.
    EngineError,
    /// The shutdown grace period ended it.
    Shutdown,
    /// It ran past `server.limits.max_stream_seconds`.
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finished(reason) => reason.as_str(),
            Self::Cancelled => "cancelled",
            Self::SlowConsumer => "slow_consumer",
            Self::EngineError => "engine_error",
            Self::Shutdown => "shutdown",
            Self::Expired => "expired",
        }
    }

    /// The server failed the request (an SLO error).
    pub fn is_server_error(self) -> bool {
        self == Self::EngineError
    }

    /// The server, not the client, cut the request short.
    pub fn is_infrastructure_cancellation(self) -> bool {
        matches!(self, Self::EngineError | Self::Shutdown)
    }
}

/// What a request is, for its observer; who it is and when it got where
/// are in its stream handle.
pub struct RequestInfo {
    /// `chat` or `completion`, for the log line.
    pub endpoint: &'static str,
    pub prompt_tokens: usize,
    /// The feature-flag cohorts the request is in, by flag name.
    pub cohorts: Vec<(&'static str, Cohort)>,
    /// Its cohorts of the flags in partial rollout, which the QoS window
    /// compares.
    pub canaries: Vec<(&'static str, Cohort)>,
    /// Tokens taken from the tenant's token bucket, settled at the end.
    pub token_charge: Option<TokenCharge>,
    /// Its class, for the log line.
    pub priority: Priority,
}

pub struct RequestObserver {
    metrics: Arc<Metrics>,
    /// The governor's latency windows; None for a request outside it.
    latency: Option<Arc<LatencyWindows>>,
    stream: StreamHandle,
    endpoint: &'static str,
    /// When admission granted the stream its permit (or, for an answer that
    /// needed none, when it started).
    admitted_at: Instant,
    priority: Priority,
    prompt_tokens: usize,
    cohorts: Vec<(&'static str, Cohort)>,
    qos: QosTags,
    token_charge: Option<TokenCharge>,
    /// Released at the first token, or when the request ends without one.
    awaiting_first_token: Option<AwaitingFirstToken>,
    completion_tokens: u32,
    /// The engine's account, once the request finished there.
    engine_timings: Option<EngineTimings>,
    /// How the request ended; `None` until it has.
    outcome: Option<Outcome>,
}

impl RequestObserver {
    pub fn new(
        metrics: Arc<Metrics>,
        latency: Option<Arc<LatencyWindows>>,
        stream: StreamHandle,
        request: RequestInfo,
    ) -> Self {
        let awaiting_first_token = latency.as_ref().map(LatencyWindows::await_first_token);
        let qos = metrics.qos_tags(stream.tenant(), request.canaries);
        let admitted_at = stream.stamp(Stage::Admitted).unwrap_or_else(Instant::now);
        Self {
            metrics,
            latency,
            stream,
            endpoint: request.endpoint,
            admitted_at,
            priority: request.priority,
            prompt_tokens: request.prompt_tokens,
            cohorts: request.cohorts,
            qos,
            token_charge: request.token_charge,
            awaiting_first_token,
            completion_tokens: 0,
            engine_timings: None,
            outcome: None,
        }
    }

    /// The stream, to stamp its stages and account what it writes.
    pub fn stream(&mut self) -> &mut StreamHandle {
        &mut self.stream
    }

    /// A piece of `tokens` tokens was written at `now`.
    pub fn token_written(&mut self, now: Instant, tokens: u32) {
        match self.stream.token_written(now, tokens) {
            None => {
                let ttft = now - self.stream.arrived_at();
                self.awaiting_first_token = None;
                self.metrics.observe_ttft(ttft, &self.qos);
                for (flag, cohort) in &self.cohorts {
                    self.metrics
                        .cohort_ttft
                        .get_or_create(&vec![("flag", *flag), ("cohort", cohort.as_str())])
                        .observe(ttft.as_secs_f64());
                }
                self.metrics
                    .observe_stage("first_token_after_admission", now - self.admitted_at);
                // The governor sees TTFT from admission: the wait it imposes
                // itself must not feed back into its own input, or overload
                // would drive the limit to its floor.
                if let Some(latency) = &self.latency {
                    latency.record_ttft(now, (now - self.admitted_at).as_secs_f64());
                }
            }
            Some(gap) => {
                let gap = gap.as_secs_f64();
                self.metrics.observe_itl(gap, &self.qos);
                if let Some(latency) = &self.latency {
                    latency.record_itl(now, gap);
                }
            }
        }
    }

    pub fn finished(&mut self, reason: FinishReason, usage: Usage, timings: EngineTimings) {
        self.completion_tokens = usage.completion_tokens;
        self.engine_timings = Some(timings);
        self.metrics
            .request_queue_time
            .observe(timings.queue.as_secs_f64());
        self.metrics.observe_stage("engine_queue", timings.queue);
        self.metrics.observe_stage("prefill", timings.prefill);
        self.metrics
            .prompt_tokens
            .inc_by(u64::from(usage.prompt_tokens));
        self.metrics
            .count_output_tokens(usage.completion_tokens, &self.qos);
        self.outcome = Some(Outcome::Finished(reason));
        self.stream.end(EndReason::Completed);
    }

    /// The request ended without finishing: `Failed` (engine), `Shutdown`,
    /// `SlowConsumer` or `Expired`.
    pub fn fail(&mut self, reason: EndReason) {
        self.outcome = Some(match reason {
            EndReason::Shutdown => Outcome::Shutdown,
            EndReason::SlowConsumer => Outcome::SlowConsumer,
            EndReason::Expired => Outcome::Expired,
            _ => Outcome::EngineError,
        });
        self.stream.end(reason);
    }
}

/// Flag cohorts as `flag=cohort` pairs, for the log line.
struct CohortList<'a>(&'a [(&'static str, Cohort)]);

impl std::fmt::Display for CohortList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (flag, cohort)) in self.0.iter().enumerate() {
            let separator = if i == 0 { "" } else { "," };
            write!(f, "{separator}{flag}={}", cohort.as_str())?;
        }
        Ok(())
    }
}

impl Drop for RequestObserver {
    fn drop(&mut self) {
        // A request dropped before it ended was abandoned by its client.
        let outcome = self.outcome.unwrap_or(Outcome::Cancelled);
        self.stream.end(EndReason::Disconnected);
        let end = self.stream.end_reason().unwrap_or(EndReason::Disconnected);
        let e2e = self.stream.arrived_at().elapsed();
        self.metrics.e2e_request_latency.observe(e2e.as_secs_f64());
        self.metrics.count_finished(outcome, &self.qos);
        let telemetry = *self.stream.telemetry();
        if let Some(charge) = &mut self.token_charge {
            // Without usage (client gone, engine error) the tokens written so
            // far are what the request used.
            let completion = u64::from(self.completion_tokens).max(telemetry.tokens);
            charge.record_use(self.prompt_tokens as u64 + completion);
        }
        self.metrics
            .streams
            .blocked
            .observe(telemetry.blocked.as_secs_f64());
        let ttft_ms = telemetry
            .first_token_at
            .map(|first| (first - self.stream.arrived_at()).as_millis());
        tracing::info!(
            id = %self.stream.request_id(),
            tenant = %self.stream.tenant(),
            protocol = self.stream.protocol().as_str(),
            endpoint = self.endpoint,
            priority = self.priority.as_str(),
            cohorts = %CohortList(&self.cohorts),
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            tokens_written = telemetry.tokens,
            bytes_written = telemetry.bytes,
            blocked_ms = telemetry.blocked.as_millis(),
            admission_ms = self
                .admitted_at
                .saturating_duration_since(self.stream.arrived_at())
                .as_millis(),
            ttft_ms,
            gap_mean_ms = telemetry.gap_mean().map(|gap| gap.as_millis()),
            gap_max_ms = telemetry.gap_max.as_millis(),
            queue_ms = self.engine_timings.map(|engine| engine.queue.as_millis()),
            prefill_steps = self.engine_timings.map(|engine| engine.prefill_steps),
            e2e_ms = e2e.as_millis(),
            outcome = outcome.as_str(),
            end = end.as_str(),
            "request"
        );
    }
}
