//! Metric groups registered beside the request metrics: the governor's
//! inputs and terms, alert delivery, the stream registry's counts and the
//! engine's prefix cache. Each registers its own series.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::governor::{Decision, Signals};
use sluice_core::registry::{EndReason, Stage, StreamCounts};
use sluice_engine::EngineStats;

pub(super) type Labels = Vec<(&'static str, &'static str)>;
pub(super) type FloatGauge = Gauge<f64, AtomicU64>;

/// The governor's inputs, PID terms and output.
#[derive(Default)]
pub struct GovernorMetrics {
    pub limit: Gauge,
    step_budget: Gauge,
    ttft_p95: FloatGauge,
    itl_p95: FloatGauge,
    step_seconds: FloatGauge,
    step_tokens_per_second: FloatGauge,
    error: FloatGauge,
    p: FloatGauge,
    i: FloatGauge,
    d: FloatGauge,
    pressure: FloatGauge,
}

impl GovernorMetrics {
    pub fn observe(&self, signals: &Signals, decision: &Decision) {
        self.limit.set(i64::from(decision.limit));
        self.step_budget.set(i64::from(decision.step_budget));
        self.ttft_p95.set(signals.ttft_p95.unwrap_or(0.0));
        self.itl_p95.set(signals.itl_p95.unwrap_or(0.0));
        // A tick without a finished step keeps the last step's numbers.
        if let Some(steps) = signals.steps {
            self.step_seconds.set(steps.seconds);
            self.step_tokens_per_second.set(steps.tokens_per_second);
        }
        self.error.set(decision.error);
        self.p.set(decision.p);
        self.i.set(decision.i);
        self.d.set(decision.d);
        self.pressure.set(decision.pressure);
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, &FloatGauge); 9] = [
            (
                "sluice:governor_ttft_p95_seconds",
                "Windowed TTFT p95 the governor sees",
                &self.ttft_p95,
            ),
            (
                "sluice:governor_itl_p95_seconds",
                "Windowed inter-token gap p95 the governor sees",
                &self.itl_p95,
            ),
            (
                "sluice:governor_step_seconds",
                "Mean engine step time in the governor's last tick with steps",
                &self.step_seconds,
            ),
            (
                "sluice:governor_step_tokens_per_second",
                "Tokens per second of engine stepping in that tick",
                &self.step_tokens_per_second,
            ),
            (
                "sluice:governor_error",
                "Normalised latency error (positive: too slow)",
                &self.error,
            ),
            ("sluice:governor_p", "Proportional term", &self.p),
            ("sluice:governor_i", "Integral term", &self.i),
            ("sluice:governor_d", "Derivative term", &self.d),
            (
                "sluice:governor_pressure",
                "Controller output in [0, 1]",
                &self.pressure,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "sluice:governor_active_limit",
            "Streams admission lets run at once",
            self.limit.clone(),
        );
        registry.register(
            "sluice:governor_step_token_budget",
            "Tokens per engine step (decodes plus prefill chunks) the governor set",
            self.step_budget.clone(),
        );
    }
}

/// Connections and the transport limits that closed them
/// (`transport.rs`). Clones share the series.
#[derive(Default, Clone)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    /// Connections closed at accept because `max_connections` were open.
    pub refused: Counter,
    /// Connections closed by a limit, by which: first_byte, header, idle,
    /// max_age.
    closed_by_limit: Family<Labels, Counter>,
}

impl ConnectionMetrics {
    pub fn closed(&self, limit: &'static str) {
        self.closed_by_limit
            .get_or_create(&vec![("limit", limit)])
            .inc();
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "sluice:connections_open",
            "Open client connections (WebSockets count from their upgrade on)",
            self.open.clone(),
        );
        registry.register(
            "sluice:connections_refused",
            "Connections closed at accept because server.limits.max_connections were open",
            self.refused.clone(),
        );
        registry.register(
            "sluice:connections_closed_by_limit",
            "Connections closed by a transport limit (first_byte, header, idle, max_age)",
            self.closed_by_limit.clone(),
        );
        for limit in ["first_byte", "header", "idle", "max_age"] {
            drop(self.closed_by_limit.get_or_create(&vec![("limit", limit)]));
        }
    }
}

/// What became of alerts (`alerts.rs`). Clones share the counters, so the
/// alert worker holds its own.
#[derive(Default, Clone)]
pub struct AlertMetrics {
    /// Alerts a webhook accepted (2xx), by alert kind: one per webhook.
    pub sent: Family<Labels, Counter>,
    /// Deliveries given up: a 4xx, or every retry failed.
    pub failed: Counter,
    /// Alerts not queued for delivery because the queue was full.
    pub dropped: Counter,
    /// Alerts not raised because their key was raised within the dedup window.
    pub deduplicated: Counter,
}

impl AlertMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "sluice:alerts_sent",
            "Alerts delivered to a webhook, by kind (one per webhook)",
            self.sent.clone(),
        );
        let counters = [
            (
                "sluice:alerts_failed",
                "Alert deliveries given up: a 4xx answer or every retry failed",
                &self.failed,
            ),
            (
                "sluice:alerts_dropped",
                "Alerts dropped because the delivery queue was full",
                &self.dropped,
            ),
            (
                "sluice:alerts_deduplicated",
                "Alerts not raised again because their key was raised within the dedup window",
                &self.deduplicated,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }
}

/// The stream registry's counts, and how long writers waited on clients.
pub struct StreamMetrics {
    /// Per stream, the time its writer waited for the client to take what
    /// was written (write backpressure).
    pub blocked: Histogram,
    by_state: Family<Labels, Gauge>,
    ended: Family<Labels, Counter>,
}

/// Most streams never wait on their client; those that do may wait long.
const BLOCKED_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Default for StreamMetrics {
    fn default() -> Self {
        Self {
            blocked: Histogram::new(BLOCKED_BUCKETS.iter().copied()),
            by_state: Family::default(),
            ended: Family::default(),
        }
    }
}

impl StreamMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "sluice:stream_blocked_seconds",
            "Time a stream's writer waited for its client to read, per stream",
            self.blocked.clone(),
        );
        registry.register(
            "sluice:streams",
            "Live streams by lifecycle state",
            self.by_state.clone(),
        );
        registry.register(
            "sluice:streams_ended",
            "Streams that ended, by reason",
            self.ended.clone(),
        );
    }

    /// Copies the registry's counts; every state and reason is exported,
    /// zero included, so rates exist before the first event.
    pub(super) fn advance(&self, counts: &StreamCounts) {
        for stage in Stage::ALL {
            self.by_state
                .get_or_create(&vec![("state", stage.as_str())])
                .set(counts.in_stage(stage) as i64);
        }
        for reason in EndReason::ALL {
            advance_to(
                &self.ended.get_or_create(&vec![("reason", reason.as_str())]),
                counts.ended_with(reason),
            );
        }
    }
}

/// The engine's prefix cache and KV prep counters.
#[derive(Default)]
pub(super) struct PrefixCacheMetrics {
    queries: Counter,
    query_tokens: Counter,
    hits: Counter,
    hit_tokens: Counter,
    evictions: Counter,
    prep_started: Counter,
    prep_tokens: Counter,
    prep_used: Counter,
    prep_cancelled: Counter,
}

impl PrefixCacheMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "sluice:prefix_cache_queries",
                "Requests looked up in the prefix cache",
                &self.queries,
            ),
            (
                "sluice:prefix_cache_query_tokens",
                "Prompt tokens of requests looked up in the prefix cache",
                &self.query_tokens,
            ),
            (
                "sluice:prefix_cache_hits",
                "Requests that reused a cached prompt prefix",
                &self.hits,
            ),
            (
                "sluice:prefix_cache_hit_tokens",
                "Prompt tokens reused from the prefix cache instead of prefilled",
                &self.hit_tokens,
            ),
            (
                "sluice:prefix_cache_evictions",
                "Cached prefixes dropped to make room for a new request",
                &self.evictions,
            ),
            (
                "sluice:kv_prep_started",
                "KV preps that began prefilling the prompt of a request queued for admission",
                &self.prep_started,
            ),
            (
                "sluice:kv_prep_tokens",
                "Prompt tokens prefilled by KV preps",
                &self.prep_tokens,
            ),
            (
                "sluice:kv_prep_used",
                "KV preps whose request reused the prefilled sequence",
                &self.prep_used,
            ),
            (
                "sluice:kv_prep_cancelled",
                "KV preps dropped unused (client gone, evicted or not taken); their cells were freed",
                &self.prep_cancelled,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }

    pub(super) fn advance(&self, engine: &EngineStats) {
        for (counter, total) in [
            (&self.queries, &engine.prefix_cache_queries_total),
            (&self.query_tokens, &engine.prefix_cache_query_tokens_total),
            (&self.hits, &engine.prefix_cache_hits_total),
            (&self.hit_tokens, &engine.prefix_cache_hit_tokens_total),
            (&self.evictions, &engine.prefix_cache_evictions_total),
            (&self.prep_started, &engine.kv_prep_started_total),
            (&self.prep_tokens, &engine.kv_prep_tokens_total),
            (&self.prep_used, &engine.kv_prep_used_total),
            (&self.prep_cancelled, &engine.kv_prep_cancelled_total),
        ] {
            advance_to(counter, total.load(Ordering::Relaxed));
        }
    }
}

pub(super) fn advance_to(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}
