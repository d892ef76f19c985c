//! Prometheus metrics, named as vLLM names them (`sluice:` prefix).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::admission::DEFAULT_TENANT;
use sluice_core::flags::Cohort;
use sluice_core::governor::{Decision, Signals};
use sluice_core::policy::{CohortWindows, ScopedWindows, Window};
use sluice_core::registry::{EndReason, Stage, StreamCounts};
use sluice_engine::EngineStats;

type Labels = Vec<(&'static str, &'static str)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

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

    fn register(&self, registry: &mut Registry) {
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

fn stage_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// Who refused a request: the server (queue full, wait too long, draining)
/// or the tenant's own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedBy {
    Server,
    TenantLimit,
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
    pub streams: StreamMetrics,
    /// Policy actions taken, by action and the rule that took them.
    pub policy_actions: Family<Vec<(&'static str, String)>, Counter>,
    pub alerts: AlertMetrics,
    /// The QoS evaluator's current window, fed by the same observations.
    qos_window: Mutex<QosWindow>,
    /// Tenant name → its slot in the QoS window; fixed at start.
    tenant_slots: HashMap<String, usize>,
    /// Slot → tenant name; the last slot is `OTHER_TENANTS`.
    tenant_names: Vec<String>,
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

/// The QoS window's bucket for tenants it does not track. Tenants come
/// from configured API keys, so none lands here today; the bucket is what
/// keeps a new source of tenant names from growing the window.
pub const OTHER_TENANTS: &str = "_other";

/// Where one request's observations go in the QoS window: its tenant's
/// slot, and its cohort in each flag in partial rollout. Resolved once per
/// request, so a token costs no lookup.
#[derive(Debug, Clone)]
pub struct QosTags {
    tenant: usize,
    canaries: Vec<(&'static str, Cohort)>,
}

/// The QoS window being filled: global, per tenant slot, per compared flag.
struct QosWindow {
    global: Window,
    tenants: Vec<Window>,
    flags: Vec<(&'static str, CohortWindows)>,
}

impl QosWindow {
    fn new(tenant_slots: usize) -> Self {
        Self {
            global: Window::new(),
            tenants: vec![Window::new(); tenant_slots],
            flags: Vec::new(),
        }
    }

    /// The global window and the request's tenant window.
    fn scopes(&mut self, tags: &QosTags) -> [&mut Window; 2] {
        [&mut self.global, &mut self.tenants[tags.tenant]]
    }

    /// Each cohort the request is in: a handful of flags, found by a short
    /// scan.
    fn record_cohorts(&mut self, tags: &QosTags, record: impl Fn(&mut CohortWindows, Cohort)) {
        for &(flag, cohort) in &tags.canaries {
            let index = match self.flags.iter().position(|(name, _)| *name == flag) {
                Some(index) => index,
                None => {
                    self.flags.push((flag, CohortWindows::default()));
                    self.flags.len() - 1
                }
            };
            record(&mut self.flags[index].1, cohort);
        }
    }
}

fn count_outcome(window: &mut Window, outcome: &str) {
    window.requests += 1;
    match outcome {
        "engine_error" => {
            window.errors += 1;
            window.infra_cancellations += 1;
        }
        "shutdown" => window.infra_cancellations += 1,
        _ => {}
    }
}

impl Metrics {
    /// Metrics whose QoS window tracks only the default tenant (and the
    /// catch-all).
    pub fn new() -> Self {
        Self::with_tenants(Vec::new())
    }

    /// Metrics whose QoS window tracks `tenants` (the configured ones), the
    /// default tenant and `OTHER_TENANTS`: a bounded set, fixed at start.
    pub fn with_tenants(tenants: Vec<String>) -> Self {
        let mut tenant_names = vec![DEFAULT_TENANT.to_owned()];
        for tenant in tenants {
            if !tenant_names.contains(&tenant) {
                tenant_names.push(tenant);
            }
        }
        tenant_names.push(OTHER_TENANTS.to_owned());
        let tenant_slots = tenant_names
            .iter()
            .enumerate()
            .map(|(slot, name)| (name.clone(), slot))
            .collect();
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
            streams: StreamMetrics::default(),
            policy_actions: Family::default(),
            alerts: AlertMetrics::default(),
            qos_window: Mutex::new(QosWindow::new(tenant_names.len())),
            tenant_slots,
            tenant_names,
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
        metrics.streams.register(&mut registry);
        registry.register(
            "sluice:policy_actions",
            "Actions the QoS policy engine took, by action and rule",
            metrics.policy_actions.clone(),
        );
        metrics.alerts.register(&mut registry);
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

    /// A request's place in the QoS window: its tenant (an untracked one
    /// counts as `OTHER_TENANTS`) and its cohorts of flags in partial
    /// rollout.
    pub fn qos_tags(&self, tenant: &str, canaries: Vec<(&'static str, Cohort)>) -> QosTags {
        QosTags {
            tenant: self.tenant_slot(tenant),
            canaries,
        }
    }

    fn tenant_slot(&self, tenant: &str) -> usize {
        self.tenant_slots
            .get(tenant)
            .copied()
            .unwrap_or(self.tenant_names.len() - 1)
    }

    pub fn observe_ttft(&self, ttft: Duration, tags: &QosTags) {
        let seconds = ttft.as_secs_f64();
        self.time_to_first_token.observe(seconds);
        self.qos(|window| {
            for scope in window.scopes(tags) {
                scope.ttft.record(seconds);
            }
            window.record_cohorts(tags, |flag, cohort| {
                flag.cohort_mut(cohort).ttft.record(seconds);
            });
        });
    }

    /// Per token: one lock for every scope the gap counts in.
    pub fn observe_itl(&self, seconds: f64, tags: &QosTags) {
        self.inter_token_latency.observe(seconds);
        self.qos(|window| {
            for scope in window.scopes(tags) {
                scope.itl.record(seconds);
            }
            window.record_cohorts(tags, |flag, cohort| {
                flag.cohort_mut(cohort).itl.record(seconds);
            });
        });
    }

    pub fn count_output_tokens(&self, tokens: u32, tags: &QosTags) {
        self.generation_tokens.inc_by(u64::from(tokens));
        self.qos(|window| {
            for scope in window.scopes(tags) {
                scope.output_tokens += u64::from(tokens);
            }
        });
    }

    fn qos(&self, update: impl FnOnce(&mut QosWindow)) {
        update(
            &mut self
                .qos_window
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    /// Ends the QoS window: returns every scope of it (covering `seconds`)
    /// and starts anew.
    pub fn take_qos_window(&self, seconds: f64) -> ScopedWindows {
        let fresh = QosWindow::new(self.tenant_names.len());
        let window = std::mem::replace(
            &mut *self
                .qos_window
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            fresh,
        );
        let with_seconds = |mut window: Window| {
            window.seconds = seconds;
            window
        };
        ScopedWindows {
            global: with_seconds(window.global),
            tenants: self
                .tenant_names
                .iter()
                .cloned()
                .zip(window.tenants.into_iter().map(with_seconds))
                .collect(),
            flags: window
                .flags
                .into_iter()
                .map(|(flag, cohorts)| (flag.to_owned(), cohorts))
                .collect(),
        }
    }

    pub fn observe_stage(&self, stage: &'static str, seconds: Duration) {
        self.ttft_stage
            .get_or_create(&vec![("stage", stage)])
            .observe(seconds.as_secs_f64());
    }

    /// A request refused before it ran. One refused by its tenant's own
    /// limit (concurrency cap, token rate) counts against that tenant's SLO
    /// window only: the limit working is not the server failing everyone.
    pub fn count_rejected(&self, reason: &'static str, tenant: &str, by: RejectedBy) {
        let slot = self.tenant_slot(tenant);
        self.qos(|window| {
            if by == RejectedBy::Server {
                window.global.rejections += 1;
            }
            window.tenants[slot].rejections += 1;
        });
        self.requests_rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// A request ended: `stop`/`length`, `cancelled` (its client left),
    /// `slow_consumer` (its client stopped reading), or the server's doing:
    /// `engine_error`, `shutdown`.
    pub fn count_finished(&self, outcome: &'static str, tags: &QosTags) {
        self.qos(|window| {
            for scope in window.scopes(tags) {
                count_outcome(scope, outcome);
            }
        });
        self.requests_finished
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// Prometheus text exposition, with the engine's live counters.
    pub fn render(
        &self,
        engine: &EngineStats,
        admission_queued: usize,
        streams: &StreamCounts,
    ) -> String {
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
        self.streams.advance(streams);
        self.kv_cached_tokens
            .set(engine.kv_cached_tokens.load(Ordering::Relaxed) as i64);
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
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
    fn register(&self, registry: &mut Registry) {
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
    fn register(&self, registry: &mut Registry) {
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
    fn advance(&self, counts: &StreamCounts) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qos_window_splits_by_tenant_and_cohort_within_a_fixed_set() {
        let metrics = Metrics::with_tenants(vec!["acme".to_owned(), DEFAULT_TENANT.to_owned()]);
        let acme = metrics.qos_tags("acme", vec![("prefix_cache", Cohort::Canary)]);
        let stranger = metrics.qos_tags("stranger", vec![("prefix_cache", Cohort::Baseline)]);
        let plain = metrics.qos_tags(DEFAULT_TENANT, Vec::new());
        metrics.observe_ttft(Duration::from_millis(500), &acme);
        metrics.observe_itl(0.05, &acme);
        metrics.observe_ttft(Duration::from_millis(900), &stranger);
        metrics.observe_ttft(Duration::from_millis(100), &plain);
        metrics.count_finished("engine_error", &acme);
        metrics.count_finished("stop", &stranger);
        metrics.count_rejected("queue_full", "acme", RejectedBy::Server);
        metrics.count_rejected("queue_full", "another-stranger", RejectedBy::Server);
        metrics.count_rejected("tenant_limit", "acme", RejectedBy::TenantLimit);

        let window = metrics.take_qos_window(10.0);
        assert_eq!(window.global.ttft.count(), 3);
        assert_eq!(
            (window.global.requests, window.global.rejections),
            (2, 2),
            "a tenant's own limit is not a server rejection"
        );
        let tenants: Vec<&str> = window
            .tenants
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(tenants, [DEFAULT_TENANT, "acme", OTHER_TENANTS]);
        let [(_, default), (_, acme), (_, other)] = &window.tenants[..] else {
            panic!("three tenant slots");
        };
        assert_eq!(default.ttft.count(), 1);
        assert_eq!((acme.ttft.count(), acme.itl.count()), (1, 1));
        assert_eq!((acme.requests, acme.errors, acme.rejections), (1, 1, 2));
        assert_eq!(
            (other.ttft.count(), other.requests, other.rejections),
            (1, 1, 1)
        );
        assert_eq!(acme.seconds, 10.0);
        let [(flag, cohorts)] = &window.flags[..] else {
            panic!("one compared flag: {:?}", window.flags);
        };
        assert_eq!(flag, "prefix_cache");
        assert_eq!(cohorts.canary.ttft.count(), 1);
        assert_eq!(cohorts.canary.itl.count(), 1);
        assert_eq!(cohorts.baseline.ttft.count(), 1);

        let next = metrics.take_qos_window(10.0);
        assert_eq!(next.global.ttft.count(), 0);
        assert_eq!(next.tenants.len(), 3);
        assert!(next.flags.is_empty());
    }
}
