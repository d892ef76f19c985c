//! Prometheus metrics, named as vLLM names them (`sluice:` prefix).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::governor::{Decision, Signals};
use sluice_core::policy::Window;
use sluice_engine::EngineStats;

type Labels = Vec<(&'static str, &'static str)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The governor's inputs, PID terms and output.
#[derive(Default)]
pub struct GovernorMetrics {
    pub limit: Gauge,
    ttft_p95: FloatGauge,
    itl_p95: FloatGauge,
    error: FloatGauge,
    p: FloatGauge,
    i: FloatGauge,
    d: FloatGauge,
    pressure: FloatGauge,
}

impl GovernorMetrics {
    pub fn observe(&self, signals: &Signals, decision: &Decision) {
        self.limit.set(i64::from(decision.limit));
        self.ttft_p95.set(signals.ttft_p95.unwrap_or(0.0));
        self.itl_p95.set(signals.itl_p95.unwrap_or(0.0));
        self.error.set(decision.error);
        self.p.set(decision.p);
        self.i.set(decision.i);
        self.d.set(decision.d);
        self.pressure.set(decision.pressure);
    }

    fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, &FloatGauge); 7] = [
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
    }
}

fn stage_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

pub struct Metrics {
    registry: Registry,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_request_latency: Histogram,
    pub request_queue_time: Histogram,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub requests_finished: Family<Labels, Counter>,
    pub requests_rejected: Family<Labels, Counter>,
    /// Where first tokens' time went: admission, tokenize, engine queue,
    /// prefill, first write.
    pub ttft_stage: HistogramFamily,
    pub governor: GovernorMetrics,
    pub speculation_hits: Counter,
    pub speculation_tokens: Counter,
    pub speculation_entries: Gauge,
    pub speculation_bytes: Gauge,
    /// TTFT by feature-flag cohort, to compare a canary with its baseline.
    pub cohort_ttft: HistogramFamily,
    running: Gauge,
    waiting: Gauge,
    parked: Gauge,
    kv_tokens_in_use: Gauge,
    engine_steps: Counter,
    engine_cancellations: Counter,
    prefix_cache: PrefixCacheMetrics,
    kv_cached_tokens: Gauge,
    /// Policy actions taken, by action and the rule that took them.
    pub policy_actions: Family<Vec<(&'static str, String)>, Counter>,
    /// The QoS evaluator's current window, fed by the same observations.
    qos_window: Mutex<Window>,
    /// Serialises scrapes: engine totals are copied into counters by delta.
    scrape: Mutex<()>,
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
];
const ITL_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
];
const E2E_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let histogram = |buckets: &[f64]| Histogram::new(buckets.iter().copied());
        let metrics = Self {
            time_to_first_token: histogram(&LATENCY_BUCKETS),
            inter_token_latency: histogram(&ITL_BUCKETS),
            e2e_request_latency: histogram(&E2E_BUCKETS),
            request_queue_time: histogram(&LATENCY_BUCKETS),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            requests_finished: Family::default(),
            requests_rejected: Family::default(),
            ttft_stage: Family::new_with_constructor(stage_histogram),
            governor: GovernorMetrics::default(),
            speculation_hits: Counter::default(),
            speculation_tokens: Counter::default(),
            speculation_entries: Gauge::default(),
            speculation_bytes: Gauge::default(),
            cohort_ttft: Family::new_with_constructor(stage_histogram),
            running: Gauge::default(),
            waiting: Gauge::default(),
            parked: Gauge::default(),
            kv_tokens_in_use: Gauge::default(),
            engine_steps: Counter::default(),
            engine_cancellations: Counter::default(),
            prefix_cache: PrefixCacheMetrics::default(),
            kv_cached_tokens: Gauge::default(),
            policy_actions: Family::default(),
            qos_window: Mutex::new(Window::new()),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "sluice:time_to_first_token_seconds",
            "Time from request arrival to the first token written",
            metrics.time_to_first_token.clone(),
        );
        registry.register(
            "sluice:inter_token_latency_seconds",
            "Gap between consecutive token writes of one stream",
            metrics.inter_token_latency.clone(),
        );
        registry.register(
            "sluice:e2e_request_latency_seconds",
            "Time from request arrival to its last byte",
            metrics.e2e_request_latency.clone(),
        );
        registry.register(
            "sluice:request_queue_time_seconds",
            "Time a request waited for an engine sequence",
            metrics.request_queue_time.clone(),
        );
        registry.register(
            "sluice:prompt_tokens",
            "Prompt tokens of finished requests",
            metrics.prompt_tokens.clone(),
        );
        registry.register(
            "sluice:generation_tokens",
            "Generated tokens of finished requests",
            metrics.generation_tokens.clone(),
        );
        registry.register(
            "sluice:request_finished",
            "Requests that ended, by how they ended",
            metrics.requests_finished.clone(),
        );
        registry.register(
            "sluice:request_rejected",
            "Requests turned away by admission, by reason",
            metrics.requests_rejected.clone(),
        );
        registry.register(
            "sluice:ttft_stage_seconds",
            "Time to first token by stage",
            metrics.ttft_stage.clone(),
        );
        metrics.governor.register(&mut registry);
        registry.register(
            "sluice:speculation_hits",
            "Requests given a cached opening (first-token speculation)",
            metrics.speculation_hits.clone(),
        );
        registry.register(
            "sluice:speculation_tokens_served",
            "Tokens sent from cached openings instead of generated",
            metrics.speculation_tokens.clone(),
        );
        registry.register(
            "sluice:speculation_cache_entries",
            "Cached openings held",
            metrics.speculation_entries.clone(),
        );
        registry.register(
            "sluice:speculation_cache_bytes",
            "Bytes held by cached openings",
            metrics.speculation_bytes.clone(),
        );
        registry.register(
            "sluice:cohort_time_to_first_token_seconds",
            "Time to first token by feature flag and cohort (canary or baseline)",
            metrics.cohort_ttft.clone(),
        );
        registry.register(
            "sluice:num_requests_running",
            "Sequences in the engine's running batch",
            metrics.running.clone(),
        );
        registry.register(
            "sluice:num_requests_waiting",
            "Requests waiting for admission or for an engine sequence",
            metrics.waiting.clone(),
        );
        registry.register(
            "sluice:num_requests_parked",
            "Running sequences skipped because their client is not reading",
            metrics.parked.clone(),
        );
        registry.register(
            "sluice:kv_tokens_in_use",
            "KV cache cells held by running sequences",
            metrics.kv_tokens_in_use.clone(),
        );
        registry.register(
            "sluice:engine_steps",
            "Engine batch steps run",
            metrics.engine_steps.clone(),
        );
        registry.register(
            "sluice:engine_cancellations",
            "Sequences freed because their client went away",
            metrics.engine_cancellations.clone(),
        );
        metrics.prefix_cache.register(&mut registry);
        registry.register(
            "sluice:policy_actions",
            "Actions the QoS policy engine took, by action and rule",
            metrics.policy_actions.clone(),
        );
        registry.register(
            "sluice:kv_cached_tokens",
            "KV cache cells held by idle sequences: cached prefixes and KV preps",
            metrics.kv_cached_tokens.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub fn observe_ttft(&self, ttft: Duration) {
        self.time_to_first_token.observe(ttft.as_secs_f64());
        self.qos(|window| window.ttft.record(ttft.as_secs_f64()));
    }

    pub fn observe_itl(&self, seconds: f64) {
        self.inter_token_latency.observe(seconds);
        self.qos(|window| window.itl.record(seconds));
    }

    pub fn count_output_tokens(&self, tokens: u32) {
        self.generation_tokens.inc_by(u64::from(tokens));
        self.qos(|window| window.output_tokens += u64::from(tokens));
    }

    fn qos(&self, update: impl FnOnce(&mut Window)) {
        update(
            &mut self
                .qos_window
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    /// Ends the QoS window: returns it (covering `seconds`) and starts anew.
    pub fn take_qos_window(&self, seconds: f64) -> Window {
        let mut window = std::mem::take(
            &mut *self
                .qos_window
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        window.seconds = seconds;
        window
    }

    pub fn observe_stage(&self, stage: &'static str, seconds: Duration) {
        self.ttft_stage
            .get_or_create(&vec![("stage", stage)])
            .observe(seconds.as_secs_f64());
    }

    pub fn count_rejected(&self, reason: &'static str) {
        self.qos(|window| window.rejections += 1);
        self.requests_rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// A request ended: `stop`/`length`, `cancelled` (its client left),
    /// or the server's doing: `engine_error`, `shutdown`.
    pub fn count_finished(&self, outcome: &'static str) {
        self.qos(|window| {
            window.requests += 1;
            match outcome {
                "engine_error" => {
                    window.errors += 1;
                    window.infra_cancellations += 1;
                }
                "shutdown" => window.infra_cancellations += 1,
                _ => {}
            }
        });
        self.requests_finished
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// Prometheus text exposition, with the engine's live counters.
    pub fn render(&self, engine: &EngineStats, admission_queued: usize) -> String {
        let _serial = self
            .scrape
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.running
            .set(engine.running.load(Ordering::Relaxed) as i64);
        self.waiting
            .set((engine.waiting.load(Ordering::Relaxed) + admission_queued) as i64);
        self.parked
            .set(engine.parked.load(Ordering::Relaxed) as i64);
        self.kv_tokens_in_use
            .set(engine.kv_tokens_in_use.load(Ordering::Relaxed) as i64);
        advance_to(
            &self.engine_steps,
            engine.steps_total.load(Ordering::Relaxed),
        );
        advance_to(
            &self.engine_cancellations,
            engine.cancelled_total.load(Ordering::Relaxed),
        );
        self.prefix_cache.advance(engine);
        self.kv_cached_tokens
            .set(engine.kv_cached_tokens.load(Ordering::Relaxed) as i64);
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// The engine's prefix cache and KV prep counters.
#[derive(Default)]
struct PrefixCacheMetrics {
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
    fn register(&self, registry: &mut Registry) {
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

    fn advance(&self, engine: &EngineStats) {
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

fn advance_to(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}
