//! Prometheus metrics on `/metrics`, named as vLLM names them (`sluice:`
//! prefix). Fed by the request observer and the control loops; every
//! observation that the QoS evaluator also needs goes on to its window
//! (`qos_window`) in the same call.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::flags::Cohort;
use sluice_core::policy::ScopedWindows;
use sluice_core::registry::StreamCounts;
use sluice_core::sync::lock;
use sluice_engine::EngineStats;

use super::groups::{
    AlertMetrics, ConnectionMetrics, FloatGauge, GovernorMetrics, Labels, PrefixCacheMetrics,
    StreamMetrics, advance_to,
};
use super::observer::Outcome;
use super::qos_window::{QosTags, QosWindows};

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Tokens per KV block as routers count them. llama.cpp's cache is per
/// cell, not paged; this is the unit the cache-config info reports blocks in.
pub const KV_BLOCK_TOKENS: u64 = 16;

/// What `/metrics` reads from the engine at scrape time.
pub struct EngineView<'a> {
    pub stats: &'a EngineStats,
    /// KV cells of every sequence pool; None while the model loads.
    pub kv_cells: Option<u64>,
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
    /// How far the admission wait deadline shedding predicted was from the
    /// wait that followed, by direction (`over`: predicted longer).
    pub wait_prediction_error: HistogramFamily,
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
    kv_usage: FloatGauge,
    /// One series, value 1, whose labels give the KV cache's block size and
    /// block count (as `vllm:cache_config_info`): routers read the labels.
    cache_config: Family<Vec<(&'static str, String)>, Gauge>,
    pub streams: StreamMetrics,
    /// Policy actions taken, by action and the rule that took them.
    pub policy_actions: Family<Vec<(&'static str, String)>, Counter>,
    pub alerts: AlertMetrics,
    pub connections: ConnectionMetrics,
    /// Where tenants' token rates are counted: one series per
    /// [`QuotaMode`], 1 on the active one.
    quota_mode: Family<Vec<(&'static str, &'static str)>, Gauge>,
    /// The QoS evaluator's current window, fed by the same observations.
    qos: QosWindows,
    /// Serialises scrapes: engine totals are copied into counters by delta.
    scrape: Mutex<()>,
}

/// Where tenants' token rates are counted when nodes share them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    /// In Redis, shared by every node.
    Shared,
    /// Redis unreachable: on this node's own buckets (fail open).
    Local,
    /// Redis unreachable: requests with a token rate get 503 (fail closed).
    Reject,
}

impl QuotaMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Local => "local",
            Self::Reject => "reject",
        }
    }
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
    /// Metrics whose QoS window tracks only the default tenant (and the
    /// catch-all).
    pub fn new() -> Self {
        Self::with_tenants(Vec::new())
    }

    /// Metrics whose QoS window tracks `tenants` (the configured ones), the
    /// default tenant and the catch-all: a bounded set, fixed at start.
    pub fn with_tenants(tenants: Vec<String>) -> Self {
        Self::for_server(tenants, false)
    }

    /// As [`Self::with_tenants`]; `vllm_names` also exposes the Model
    /// Server Protocol gauges (queue, running, KV use, cache config) under
    /// vLLM's `vllm:` names, for routers that hard-code them.
    pub fn for_server(tenants: Vec<String>, vllm_names: bool) -> Self {
        let histogram = |buckets: &[f64]| Histogram::new(buckets.iter().copied());
        let mut metrics = Self {
            time_to_first_token: histogram(&LATENCY_BUCKETS),
            inter_token_latency: histogram(&ITL_BUCKETS),
            e2e_request_latency: histogram(&E2E_BUCKETS),
            request_queue_time: histogram(&LATENCY_BUCKETS),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            requests_finished: Family::default(),
            requests_rejected: Family::default(),
            ttft_stage: Family::new_with_constructor(stage_histogram),
            wait_prediction_error: Family::new_with_constructor(stage_histogram),
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
            kv_usage: FloatGauge::default(),
            cache_config: Family::default(),
            streams: StreamMetrics::default(),
            policy_actions: Family::default(),
            alerts: AlertMetrics::default(),
            connections: ConnectionMetrics::default(),
            quota_mode: Family::default(),
            qos: QosWindows::new(tenants),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        let mut registry = Registry::default();
        metrics.register_requests(&mut registry);
        metrics.register_engine_and_control(&mut registry);
        metrics.register_protocol("sluice", &mut registry);
        if vllm_names {
            metrics.register_protocol("vllm", &mut registry);
        }
        metrics.registry = registry;
        metrics
    }

    /// The series each request feeds.
    fn register_requests(&self, registry: &mut Registry) {
        registry.register(
            "sluice:time_to_first_token_seconds",
            "Time from request arrival to the first token written",
            self.time_to_first_token.clone(),
        );
        registry.register(
            "sluice:inter_token_latency_seconds",
            "Gap between consecutive token writes of one stream",
            self.inter_token_latency.clone(),
        );
        registry.register(
            "sluice:e2e_request_latency_seconds",
            "Time from request arrival to its last byte",
            self.e2e_request_latency.clone(),
        );
        registry.register(
            "sluice:request_queue_time_seconds",
            "Time a request waited for an engine sequence",
            self.request_queue_time.clone(),
        );
        registry.register(
            "sluice:prompt_tokens",
            "Prompt tokens of finished requests",
            self.prompt_tokens.clone(),
        );
        registry.register(
            "sluice:generation_tokens",
            "Generated tokens of finished requests",
            self.generation_tokens.clone(),
        );
        registry.register(
            "sluice:request_finished",
            "Requests that ended, by how they ended",
            self.requests_finished.clone(),
        );
        registry.register(
            "sluice:request_rejected",
            "Requests turned away by admission, by reason",
            self.requests_rejected.clone(),
        );
        registry.register(
            "sluice:ttft_stage_seconds",
            "Time to first token by stage",
            self.ttft_stage.clone(),
        );
        registry.register(
            "sluice:admission_wait_prediction_error_seconds",
            "Predicted admission wait minus the wait that followed, by direction (over: predicted longer)",
            self.wait_prediction_error.clone(),
        );
        self.governor.register(registry);
        registry.register(
            "sluice:speculation_hits",
            "Requests given a cached opening (first-token speculation)",
            self.speculation_hits.clone(),
        );
        registry.register(
            "sluice:speculation_tokens_served",
            "Tokens sent from cached openings instead of generated",
            self.speculation_tokens.clone(),
        );
        registry.register(
            "sluice:speculation_cache_entries",
            "Cached openings held",
            self.speculation_entries.clone(),
        );
        registry.register(
            "sluice:speculation_cache_bytes",
            "Bytes held by cached openings",
            self.speculation_bytes.clone(),
        );
        registry.register(
            "sluice:cohort_time_to_first_token_seconds",
            "Time to first token by feature flag and cohort (canary or baseline)",
            self.cohort_ttft.clone(),
        );
    }

    /// The series read from the engine at scrape time, and the control
    /// loops' own.
    fn register_engine_and_control(&self, registry: &mut Registry) {
        registry.register(
            "sluice:num_requests_parked",
            "Running sequences skipped because their client is not reading",
            self.parked.clone(),
        );
        registry.register(
            "sluice:kv_tokens_in_use",
            "KV cache cells held by running sequences",
            self.kv_tokens_in_use.clone(),
        );
        registry.register(
            "sluice:engine_steps",
            "Engine batch steps run",
            self.engine_steps.clone(),
        );
        registry.register(
            "sluice:engine_cancellations",
            "Sequences freed because their client went away",
            self.engine_cancellations.clone(),
        );
        self.prefix_cache.register(registry);
        self.streams.register(registry);
        registry.register(
            "sluice:policy_actions",
            "Actions the QoS policy engine took, by action and rule",
            self.policy_actions.clone(),
        );
        self.alerts.register(registry);
        self.connections.register(registry);
        registry.register(
            "sluice:quota_store_mode",
            "Where token rates are counted (admission.shared_quota): shared (Redis), local (Redis unreachable, this node's buckets), reject (Redis unreachable, 503)",
            self.quota_mode.clone(),
        );
        registry.register(
            "sluice:kv_cached_tokens",
            "KV cache cells held by idle sequences: cached prefixes and KV preps",
            self.kv_cached_tokens.clone(),
        );
    }

    /// The gauges the inference gateway's endpoint picker scrapes (the
    /// Model Server Protocol), under `prefix:` names.
    fn register_protocol(&self, prefix: &str, registry: &mut Registry) {
        registry.register(
            format!("{prefix}:num_requests_running"),
            "Sequences in the engine's running batch",
            self.running.clone(),
        );
        registry.register(
            format!("{prefix}:num_requests_waiting"),
            "Requests waiting for admission or for an engine sequence",
            self.waiting.clone(),
        );
        registry.register(
            format!("{prefix}:kv_cache_usage_perc"),
            "Fraction (0-1) of the KV cache's cells held by running sequences",
            self.kv_usage.clone(),
        );
        registry.register(
            format!("{prefix}:cache_config_info"),
            "KV cache configuration in labels: block_size (tokens) and num_gpu_blocks",
            self.cache_config.clone(),
        );
    }

    /// A request's place in the QoS window: its tenant (an untracked one
    /// counts in the catch-all) and its cohorts of flags in partial rollout.
    pub fn qos_tags(&self, tenant: &str, canaries: Vec<(&'static str, Cohort)>) -> QosTags {
        self.qos.tags(tenant, canaries)
    }

    pub fn observe_ttft(&self, ttft: Duration, tags: &QosTags) {
        let seconds = ttft.as_secs_f64();
        self.time_to_first_token.observe(seconds);
        self.qos.record_ttft(seconds, tags);
    }

    /// Per token: one lock for every scope the gap counts in.
    pub fn observe_itl(&self, seconds: f64, tags: &QosTags) {
        self.inter_token_latency.observe(seconds);
        self.qos.record_itl(seconds, tags);
    }

    pub fn count_output_tokens(&self, tokens: u32, tags: &QosTags) {
        self.generation_tokens.inc_by(u64::from(tokens));
        self.qos.count_output_tokens(tokens, tags);
    }

    /// Ends the QoS window: returns every scope of it (covering `seconds`)
    /// and starts anew.
    pub fn take_qos_window(&self, seconds: f64) -> ScopedWindows {
        self.qos.take(seconds)
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
        self.qos.count_rejected(tenant, by == RejectedBy::Server);
        self.requests_rejected
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    pub fn set_quota_mode(&self, mode: QuotaMode) {
        for each in [QuotaMode::Shared, QuotaMode::Local, QuotaMode::Reject] {
            self.quota_mode
                .get_or_create(&vec![("mode", each.as_str())])
                .set(i64::from(each == mode));
        }
    }

    /// A wait admission predicted, against the one that followed.
    pub fn observe_wait_prediction(&self, predicted: Duration, actual: Duration) {
        let (direction, error) = if predicted >= actual {
            ("over", predicted - actual)
        } else {
            ("under", actual - predicted)
        };
        self.wait_prediction_error
            .get_or_create(&vec![("direction", direction)])
            .observe(error.as_secs_f64());
    }

    /// A request ended, however it ended.
    pub fn count_finished(&self, outcome: Outcome, tags: &QosTags) {
        self.qos.count_finished(outcome, tags);
        self.requests_finished
            .get_or_create(&vec![("outcome", outcome.as_str())])
            .inc();
    }

    /// Prometheus text exposition, with the engine's live counters.
    pub fn render(
        &self,
        engine: EngineView<'_>,
        admission_queued: usize,
        streams: &StreamCounts,
    ) -> String {
        let _serial = lock(&self.scrape);
        let EngineView {
            stats: engine,
            kv_cells,
        } = engine;
        let in_use = engine.kv_tokens_in_use.load(Ordering::Relaxed) as u64;
        if let Some(cells) = kv_cells.filter(|&cells| cells > 0) {
            self.kv_usage.set((in_use as f64 / cells as f64).min(1.0));
            // The same labels every scrape: the pools are fixed at load.
            self.cache_config
                .get_or_create(&vec![
                    ("block_size", KV_BLOCK_TOKENS.to_string()),
                    ("num_gpu_blocks", (cells / KV_BLOCK_TOKENS).to_string()),
                ])
                .set(1);
        }
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
        // Encoding into a String has no I/O to fail; an empty scrape is the
        // worst a formatter error could cause.
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::admission::DEFAULT_TENANT;

    use super::*;
    use crate::telemetry::qos_window::OTHER_TENANTS;

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
        metrics.count_finished(Outcome::EngineError, &acme);
        metrics.count_finished(
            Outcome::Finished(sluice_engine::FinishReason::Stop),
            &stranger,
        );
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

    #[test]
    fn the_protocol_gauges_read_the_kv_use_and_take_vllm_names_when_asked() {
        let stats = EngineStats::default();
        stats.kv_tokens_in_use.store(4_096, Ordering::Relaxed);
        let view = || EngineView {
            stats: &stats,
            kv_cells: Some(16_384),
        };
        let streams = StreamCounts::default();
        let plain = Metrics::new().render(view(), 0, &streams);
        assert!(plain.contains("sluice:kv_cache_usage_perc 0.25"), "{plain}");
        assert!(
            plain.contains("sluice:cache_config_info{block_size=\"16\",num_gpu_blocks=\"1024\"} 1")
        );
        assert!(!plain.contains("vllm:"));
        let aliased = Metrics::for_server(Vec::new(), true).render(view(), 3, &streams);
        assert!(aliased.contains("vllm:kv_cache_usage_perc 0.25"));
        assert!(aliased.contains("vllm:num_requests_waiting 3"));
        assert!(aliased.contains("vllm:cache_config_info{"));
    }
}
