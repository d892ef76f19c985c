//! Load shapes: a closed loop of C streams, Poisson arrivals at a rate, or a
//! step profile of concurrency over time. The same driver feeds HTTP clients
//! and the in-process engine.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::client::HttpClient;
use crate::record::RequestRecord;
use crate::workload::SplitMix64;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadShape {
    /// C streams, each sending its next request when the last one ends.
    Closed { concurrency: usize },
    /// Arrivals at `rate` per second (exponential gaps), at most
    /// `max_in_flight` at once.
    Poisson { rate: f64, max_in_flight: usize },
    /// Closed loop whose concurrency changes at the given times.
    Steps { steps: Vec<Step> },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Step {
    pub at_seconds: f64,
    pub concurrency: usize,
}

impl LoadShape {
    /// Parses `10@0,75@60,5@120` (concurrency@seconds).
    pub fn parse_steps(text: &str) -> Result<Self, String> {
        let mut steps = text
            .split(',')
            .map(|part| {
                let (concurrency, at) = part
                    .split_once('@')
                    .ok_or_else(|| format!("step '{part}' is not concurrency@seconds"))?;
                Ok(Step {
                    at_seconds: at
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad time in '{part}'"))?,
                    concurrency: concurrency
                        .trim()
                        .parse()
                        .map_err(|_| format!("bad concurrency in '{part}'"))?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        steps.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
        if steps.first().is_none_or(|first| first.at_seconds > 0.0) {
            return Err("the first step must start at 0".into());
        }
        Ok(Self::Steps { steps })
    }

    fn max_concurrency(&self) -> usize {
        match self {
            Self::Closed { concurrency } => *concurrency,
            Self::Poisson { max_in_flight, .. } => *max_in_flight,
            Self::Steps { steps } => steps.iter().map(|s| s.concurrency).max().unwrap_or(0),
        }
    }

    /// Streams the shape asks for at `t` seconds.
    pub fn target_at(&self, t: f64) -> usize {
        match self {
            Self::Closed { concurrency } => *concurrency,
            Self::Poisson { max_in_flight, .. } => *max_in_flight,
            Self::Steps { steps } => steps
                .iter()
                .take_while(|step| step.at_seconds <= t)
                .last()
                .map_or(0, |step| step.concurrency),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPlan {
    pub shape: LoadShape,
    /// Stop sending after this many seconds.
    pub duration_seconds: Option<f64>,
    /// Stop after sending this many requests (warm-up included).
    pub requests: Option<usize>,
    /// Requests sent before this are left out of the summary.
    pub warmup_seconds: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimelinePoint {
    pub t: f64,
    pub in_flight: usize,
    pub target: usize,
    pub completed: usize,
    /// The server gauge read at this sample, when one is scraped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_gauge: Option<f64>,
}

/// A Prometheus gauge of the server read at every timeline sample, e.g.
/// `sluice:governor_active_limit` to see the governor follow the load.
#[derive(Clone)]
pub struct ServerGauge {
    pub client: Arc<HttpClient>,
    pub name: String,
}

impl ServerGauge {
    async fn read(&self) -> Option<f64> {
        let text = self.client.get_text("/metrics").await.ok()?;
        prometheus_sample(&text, &self.name)
    }
}

/// One unlabelled sample from a Prometheus text exposition.
pub fn prometheus_sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// Server gauges that must read 0 once a run is over (running, parked and
/// waiting requests, KV in use): anything left is a leaked sequence or
/// permit. `None` is a gauge the server did not report.
#[derive(Debug, Clone, Serialize)]
pub struct AtRest {
    pub before: BTreeMap<String, Option<f64>>,
    pub after: BTreeMap<String, Option<f64>>,
    /// Every gauge read 0 after the run, within the wait.
    pub at_rest: bool,
    /// From the end of the run until they did, or until the wait ran out.
    pub settle_seconds: f64,
}

const REST_POLL: Duration = Duration::from_millis(250);

/// Reads `names` from the server's `/metrics` (all `None` when it cannot be
/// read).
pub async fn read_gauges(client: &HttpClient, names: &[String]) -> BTreeMap<String, Option<f64>> {
    let text = client.get_text("/metrics").await.unwrap_or_default();
    names
        .iter()
        .map(|name| (name.clone(), prometheus_sample(&text, name)))
        .collect()
}

/// Reads the gauges until all are 0 or `timeout` passed: the server frees a
/// disconnected client's sequence within an engine step, not at once.
pub async fn wait_for_rest<F, Fut>(
    before: BTreeMap<String, Option<f64>>,
    timeout: Duration,
    mut read: F,
) -> AtRest
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BTreeMap<String, Option<f64>>>,
{
    let started = tokio::time::Instant::now();
    loop {
        let after = read().await;
        let at_rest = after.values().all(|value| *value == Some(0.0));
        if at_rest || started.elapsed() >= timeout {
            return AtRest {
                before,
                after,
                at_rest,
                settle_seconds: started.elapsed().as_secs_f64(),
            };
        }
        tokio::time::sleep(REST_POLL).await;
    }
}

pub struct RunOutput {
    pub records: Vec<RequestRecord>,
    pub wall_seconds: f64,
    pub timeline: Vec<TimelinePoint>,
}

const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const IDLE_WORKER_POLL: Duration = Duration::from_millis(50);

struct Shared {
    started: Instant,
    issued: AtomicUsize,
    in_flight: AtomicUsize,
    stop: AtomicBool,
    records: Mutex<Vec<RequestRecord>>,
}

impl Shared {
    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The next request index, or None when the plan says stop.
    fn next_index(&self, plan: &RunPlan) -> Option<usize> {
        if self.stop.load(Ordering::Relaxed)
            || plan.duration_seconds.is_some_and(|d| self.elapsed() >= d)
        {
            return None;
        }
        let index = self.issued.fetch_add(1, Ordering::Relaxed);
        match plan.requests {
            Some(limit) if index >= limit => None,
            _ => Some(index),
        }
    }
}

/// Runs `plan`, calling `run_one(index, record)` for each request.
pub async fn drive<F, Fut>(
    plan: &RunPlan,
    server_gauge: Option<ServerGauge>,
    run_one: F,
) -> RunOutput
where
    F: Fn(usize, RequestRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RequestRecord> + Send + 'static,
{
    let run_one = Arc::new(run_one);
    let shared = Arc::new(Shared {
        started: Instant::now(),
        issued: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        records: Mutex::new(Vec::new()),
    });
    let progress = ProgressBar::new_spinner();
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("static template"),
    );
    let sampler = tokio::spawn(sample_timeline(
        Arc::clone(&shared),
        plan.clone(),
        server_gauge,
        progress.clone(),
    ));

    let request_task = {
        let shared = Arc::clone(&shared);
        let warmup_seconds = plan.warmup_seconds;
        move |index: usize| {
            let shared = Arc::clone(&shared);
            let run_one = Arc::clone(&run_one);
            async move {
                let start = shared.elapsed();
                let record = RequestRecord::new(index, start, start < warmup_seconds);
                shared.in_flight.fetch_add(1, Ordering::Relaxed);
                let record = run_one(index, record).await;
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                shared.records.lock().expect("records lock").push(record);
            }
        }
    };

    match &plan.shape {
        LoadShape::Poisson {
            rate,
            max_in_flight,
        } => {
            let mut rng = SplitMix64::new(plan.seed);
            let mut tasks = Vec::new();
            let mut next_at = 0.0;
            while let Some(index) = shared.next_index(plan) {
                next_at += -(1.0 - rng.next_f64()).ln() / rate;
                let wait = next_at - shared.elapsed();
                if wait > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                }
                while shared.in_flight.load(Ordering::Relaxed) >= *max_in_flight {
                    tokio::time::sleep(IDLE_WORKER_POLL).await;
                }
                tasks.push(tokio::spawn(request_task(index)));
            }
            futures::future::join_all(tasks).await;
        }
        shape => {
            let workers = (0..shape.max_concurrency()).map(|worker| {
                let shared = Arc::clone(&shared);
                let plan = plan.clone();
                let request_task = request_task.clone();
                tokio::spawn(async move {
                    loop {
                        if worker >= plan.shape.target_at(shared.elapsed()) {
                            if shared.stop.load(Ordering::Relaxed)
                                || plan.duration_seconds.is_some_and(|d| shared.elapsed() >= d)
                            {
                                return;
                            }
                            tokio::time::sleep(IDLE_WORKER_POLL).await;
                            continue;
                        }
                        let Some(index) = shared.next_index(&plan) else {
                            return;
                        };
                        request_task(index).await;
                    }
                })
            });
            futures::future::join_all(workers.collect::<Vec<_>>()).await;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    let timeline = sampler.await.expect("timeline sampler");
    progress.finish_and_clear();
    let wall_seconds = shared.elapsed();
    let mut records = std::mem::take(&mut *shared.records.lock().expect("records lock"));
    records.sort_by_key(|record| record.index);
    RunOutput {
        records,
        wall_seconds,
        timeline,
    }
}

async fn sample_timeline(
    shared: Arc<Shared>,
    plan: RunPlan,
    server_gauge: Option<ServerGauge>,
    progress: ProgressBar,
) -> Vec<TimelinePoint> {
    let mut timeline = Vec::new();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    while !shared.stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let t = shared.elapsed();
        let (completed, tokens) = {
            let records = shared.records.lock().expect("records lock");
            (
                records.len(),
                records
                    .iter()
                    .map(RequestRecord::output_tokens)
                    .sum::<u64>(),
            )
        };
        let point = TimelinePoint {
            t,
            in_flight: shared.in_flight.load(Ordering::Relaxed),
            target: plan.shape.target_at(t),
            completed,
            server_gauge: match &server_gauge {
                Some(gauge) => gauge.read().await,
                None => None,
            },
        };
        progress.set_message(format!(
            "in flight {} / target {}, completed {completed}, {:.1} output tok/s",
            point.in_flight,
            point.target,
            tokens as f64 / t.max(1e-9)
        ));
        progress.tick();
        timeline.push(point);
    }
    timeline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_profiles_parse_and_pick_the_current_step() {
        let shape = LoadShape::parse_steps("10@0,75@60,5@120").unwrap();
        assert_eq!(shape.target_at(0.0), 10);
        assert_eq!(shape.target_at(59.9), 10);
        assert_eq!(shape.target_at(60.0), 75);
        assert_eq!(shape.target_at(500.0), 5);
        assert_eq!(shape.max_concurrency(), 75);
        assert!(LoadShape::parse_steps("10@5").is_err());
        assert!(LoadShape::parse_steps("x@0").is_err());
    }

    fn gauges(values: &[(&str, Option<f64>)]) -> BTreeMap<String, Option<f64>> {
        values
            .iter()
            .map(|(name, value)| ((*name).to_owned(), *value))
            .collect()
    }

    #[test]
    fn prometheus_samples_are_read_by_exact_name() {
        let text =
            "# HELP a x\nsluice:num_requests_running 3\nsluice:num_requests_running_total 9\n";
        assert_eq!(
            prometheus_sample(text, "sluice:num_requests_running"),
            Some(3.0)
        );
        assert_eq!(prometheus_sample(text, "sluice:num_requests"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn rest_waits_until_every_gauge_reads_zero() {
        let mut reads = 0;
        let rest = wait_for_rest(
            gauges(&[("running", Some(0.0))]),
            Duration::from_secs(60),
            || {
                reads += 1;
                let running = if reads < 4 { 2.0 } else { 0.0 };
                async move { gauges(&[("running", Some(running)), ("parked", Some(0.0))]) }
            },
        )
        .await;
        assert!(rest.at_rest);
        assert_eq!(reads, 4);
        assert_eq!(rest.settle_seconds, 0.75);
        assert_eq!(rest.after["running"], Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leak_or_a_missing_gauge_is_not_rest() {
        let leaked = wait_for_rest(BTreeMap::new(), Duration::from_secs(5), || async {
            gauges(&[("running", Some(1.0))])
        })
        .await;
        assert!(!leaked.at_rest);
        assert!(leaked.settle_seconds >= 5.0);
        let missing = wait_for_rest(BTreeMap::new(), Duration::from_secs(1), || async {
            gauges(&[("running", None)])
        })
        .await;
        assert!(!missing.at_rest);
    }

    #[tokio::test]
    async fn closed_loop_sends_exactly_the_requested_count() {
        let plan = RunPlan {
            shape: LoadShape::Closed { concurrency: 4 },
            duration_seconds: None,
            requests: Some(10),
            warmup_seconds: 0.0,
            seed: 1,
        };
        let output = drive(&plan, None, |_, mut record| async move {
            record.status = 200;
            record
        })
        .await;
        let indices: Vec<usize> = output.records.iter().map(|r| r.index).collect();
        assert_eq!(indices, (0..10).collect::<Vec<_>>());
    }
}
