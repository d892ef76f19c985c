//! Per-request accounting: latency histograms as tokens are written, and one
//! log line when the request ends, however it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::flags::Cohort;
use sluice_engine::{EngineTimings, FinishReason, Usage};

use crate::api::sse::Endpoint;
use crate::governor::{AwaitingFirstToken, LatencyWindows};
use crate::metrics::Metrics;

/// Who a request is and when it got where, for its observer.
pub struct RequestInfo {
    pub id: String,
    pub tenant: String,
    pub endpoint: Endpoint,
    pub arrived_at: Instant,
    /// When admission granted the stream its permit.
    pub admitted_at: Instant,
    pub prompt_tokens: usize,
    /// The feature-flag cohorts the request is in, by flag name.
    pub cohorts: Vec<(&'static str, Cohort)>,
}

pub struct RequestObserver {
    metrics: Arc<Metrics>,
    latency: Arc<LatencyWindows>,
    id: String,
    tenant: String,
    endpoint: Endpoint,
    arrived_at: Instant,
    /// When admission granted the stream its permit.
    admitted_at: Instant,
    prompt_tokens: usize,
    cohorts: Vec<(&'static str, Cohort)>,
    first_token_at: Option<Instant>,
    /// Released at the first token, or when the request ends without one.
    awaiting_first_token: Option<AwaitingFirstToken>,
    last_token_at: Option<Instant>,
    completion_tokens: u32,
    queue_time: Option<Duration>,
    /// How the request ended; `None` until it has.
    outcome: Option<&'static str>,
}

impl RequestObserver {
    pub fn new(metrics: Arc<Metrics>, latency: Arc<LatencyWindows>, request: RequestInfo) -> Self {
        let awaiting_first_token = Some(latency.await_first_token());
        Self {
            metrics,
            latency,
            id: request.id,
            tenant: request.tenant,
            endpoint: request.endpoint,
            arrived_at: request.arrived_at,
            admitted_at: request.admitted_at,
            prompt_tokens: request.prompt_tokens,
            cohorts: request.cohorts,
            first_token_at: None,
            awaiting_first_token,
            last_token_at: None,
            completion_tokens: 0,
            queue_time: None,
            outcome: None,
        }
    }

    pub fn token_written(&mut self, now: Instant) {
        match self.last_token_at {
            None => {
                let ttft = now - self.arrived_at;
                self.first_token_at = Some(now);
                self.awaiting_first_token = None;
                self.metrics.observe_ttft(ttft);
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
                self.latency
                    .record_ttft(now, (now - self.admitted_at).as_secs_f64());
            }
            Some(last) => {
                let gap = (now - last).as_secs_f64();
                self.metrics.observe_itl(gap);
                self.latency.record_itl(now, gap);
            }
        }
        self.last_token_at = Some(now);
    }

    pub fn finished(&mut self, reason: FinishReason, usage: Usage, timings: EngineTimings) {
        self.completion_tokens = usage.completion_tokens;
        self.queue_time = Some(timings.queue);
        self.metrics
            .request_queue_time
            .observe(timings.queue.as_secs_f64());
        self.metrics.observe_stage("engine_queue", timings.queue);
        self.metrics.observe_stage("prefill", timings.prefill);
        self.metrics
            .prompt_tokens
            .inc_by(u64::from(usage.prompt_tokens));
        self.metrics.count_output_tokens(usage.completion_tokens);
        self.outcome = Some(reason.as_str());
    }

    pub fn fail(&mut self, outcome: &'static str) {
        self.outcome = Some(outcome);
    }
}

impl Drop for RequestObserver {
    fn drop(&mut self) {
        // A request dropped before it ended was abandoned by its client.
        let outcome = self.outcome.unwrap_or("cancelled");
        let e2e = self.arrived_at.elapsed();
        self.metrics.e2e_request_latency.observe(e2e.as_secs_f64());
        self.metrics.count_finished(outcome);
        let ttft_ms = self
            .first_token_at
            .map(|first| (first - self.arrived_at).as_millis());
        tracing::info!(
            id = %self.id,
            tenant = %self.tenant,
            endpoint = self.endpoint.as_str(),
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            ttft_ms,
            queue_ms = self.queue_time.map(|queue| queue.as_millis()),
            e2e_ms = e2e.as_millis(),
            outcome,
            "request"
        );
    }
}
