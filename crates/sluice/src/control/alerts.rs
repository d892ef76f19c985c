//! Alert hooks. The QoS loop raises an [`Alert`] for each SLO breach, policy
//! action and breaker opening; [`Alerter::notify`] logs it (target
//! `sluice::alert`) and, when webhooks are configured, queues it for a
//! worker task that POSTs its JSON to every webhook with a timeout, retrying
//! connect errors, timeouts and 5xx answers with exponential backoff (never
//! a 4xx). An alert's key is raised at most once per dedup window, so a
//! breach that lasts many windows alerts once. `notify` never blocks or
//! waits: when the queue is full the alert is dropped and counted.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sluice_core::clock::unix_millis;
use sluice_core::config::{AlertsConfig, WebhookConfig};
use sluice_core::policy::{Indicator, Scope};
use sluice_core::sync::lock;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;

use crate::telemetry::AlertMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    SloBreach,
    PolicyAction,
    BreakerOpen,
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::SloBreach => "slo_breach",
            AlertKind::PolicyAction => "policy_action",
            AlertKind::BreakerOpen => "breaker_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Something broke and automation may be handling it.
    Warning,
    /// Automation has stopped acting: a person is needed.
    Critical,
}

/// The measurement behind an alert.
#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    /// The traffic the window covered: `global`, `tenant:<name>`,
    /// `flag:<name>`.
    pub scope: String,
    pub indicator: Indicator,
    pub value: f64,
    pub threshold: f64,
    pub window_seconds: f64,
}

impl Evidence {
    /// An indicator of the global window.
    pub fn global(indicator: Indicator, value: f64, threshold: f64, window_seconds: f64) -> Self {
        Self {
            scope: Scope::Global.to_string(),
            indicator,
            value,
            threshold,
            window_seconds,
        }
    }
}

/// What the policy engine did (or stopped doing).
#[derive(Debug, Clone, Serialize)]
pub struct ActionTaken {
    pub rule: String,
    pub action: String,
    pub result: String,
}

/// One alert, as logged and as POSTed (JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    /// Alerts with the same key are the same condition: deduplicated.
    pub key: String,
    pub severity: Severity,
    pub summary: String,
    pub evidence: Option<Evidence>,
    pub action: Option<ActionTaken>,
    pub timestamp_unix_ms: u64,
}

impl Alert {
    pub fn slo_breach(evidence: Evidence) -> Self {
        let indicator = indicator_name(evidence.indicator);
        Self {
            kind: AlertKind::SloBreach,
            key: format!("slo_breach:{indicator}:{}", evidence.scope),
            severity: Severity::Warning,
            summary: format!(
                "SLO breached: {indicator} = {:.6} over the target {} ({}, {:.1} s window)",
                evidence.value, evidence.threshold, evidence.scope, evidence.window_seconds
            ),
            evidence: Some(evidence),
            action: None,
            timestamp_unix_ms: unix_millis(),
        }
    }

    pub fn policy_action(rule: &str, action: &str, result: &str, evidence: Evidence) -> Self {
        Self {
            kind: AlertKind::PolicyAction,
            key: format!("policy_action:{rule}:{action}"),
            severity: Severity::Warning,
            summary: format!("policy rule {rule} took {action}: {result}"),
            evidence: Some(evidence),
            action: Some(ActionTaken {
                rule: rule.to_owned(),
                action: action.to_owned(),
                result: result.to_owned(),
            }),
            timestamp_unix_ms: unix_millis(),
        }
    }

    /// `action` kept being undone, so the policy engine stopped acting.
    pub fn breaker_open(rule: &str, action: &str) -> Self {
        Self {
            kind: AlertKind::BreakerOpen,
            key: format!("breaker_open:{rule}"),
            severity: Severity::Critical,
            summary: format!(
                "policy breaker opened: {action} of rule {rule} kept being undone; \
                 no more actions until the budget period passes"
            ),
            evidence: None,
            action: Some(ActionTaken {
                rule: rule.to_owned(),
                action: action.to_owned(),
                result: "breaker open".to_owned(),
            }),
            timestamp_unix_ms: unix_millis(),
        }
    }
}

fn indicator_name(indicator: Indicator) -> String {
    serde_json::to_value(indicator)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{indicator:?}"))
}

/// Raises alerts: logs them, deduplicates by key, queues them for the
/// webhook worker.
pub struct Alerter {
    /// None without webhooks: alerts are only logged.
    queue: Option<mpsc::Sender<Alert>>,
    dedup_window: Duration,
    /// When each key was last raised (within the dedup window).
    raised: Mutex<HashMap<String, Instant>>,
    metrics: AlertMetrics,
}

impl Alerter {
    /// Starts the webhook worker when webhooks are configured (needs a
    /// tokio runtime then).
    pub fn start(config: &AlertsConfig, metrics: AlertMetrics) -> io::Result<Self> {
        Self::with_transport(config, metrics, HttpTransport::new())
    }

    fn with_transport<T: Transport>(
        config: &AlertsConfig,
        metrics: AlertMetrics,
        transport: T,
    ) -> io::Result<Self> {
        let webhooks = config
            .webhooks
            .iter()
            .map(Webhook::from_config)
            .collect::<io::Result<Vec<_>>>()?;
        let queue = (!webhooks.is_empty()).then(|| {
            let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
            let retry = RetryPolicy {
                timeout: Duration::from_millis(config.timeout_ms),
                max_retries: config.max_retries,
                initial_backoff: Duration::from_millis(config.initial_backoff_ms),
                max_backoff: Duration::from_millis(config.max_backoff_ms),
            };
            tokio::spawn(deliver_alerts(
                transport,
                webhooks,
                retry,
                metrics.clone(),
                receiver,
            ));
            sender
        });
        Ok(Self {
            queue,
            dedup_window: Duration::from_millis(config.dedup_window_ms),
            raised: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Raises `alert` unless its key was raised within the dedup window.
    /// Never blocks: a full delivery queue drops the alert (counted), and
    /// its key stays free so the next window raises it again.
    pub fn notify(&self, alert: Alert) {
        let now = Instant::now();
        let mut raised = lock(&self.raised);
        raised.retain(|_, at| now.duration_since(*at) < self.dedup_window);
        if raised.contains_key(&alert.key) {
            self.metrics.deduplicated.inc();
            tracing::debug!(target: "sluice::alert", key = %alert.key, "alert deduplicated");
            return;
        }
        log_alert(&alert);
        let key = alert.key.clone();
        let queued = match &self.queue {
            None => true,
            Some(queue) => match queue.try_send(alert) {
                Ok(()) => true,
                Err(TrySendError::Full(alert) | TrySendError::Closed(alert)) => {
                    self.metrics.dropped.inc();
                    tracing::warn!(
                        target: "sluice::alert",
                        key = %alert.key,
                        "alert delivery queue full: alert dropped"
                    );
                    false
                }
            },
        };
        if queued {
            raised.insert(key, now);
        }
    }
}

/// The structured line every raised alert gets, webhooks or not.
fn log_alert(alert: &Alert) {
    macro_rules! at_level {
        ($level:expr) => {
            tracing::event!(
                target: "sluice::alert",
                $level,
                kind = alert.kind.name(),
                key = %alert.key,
                severity = ?alert.severity,
                indicator = alert.evidence.as_ref().map(|e| indicator_name(e.indicator)),
                value = alert.evidence.as_ref().map(|e| e.value),
                threshold = alert.evidence.as_ref().map(|e| e.threshold),
                window_seconds = alert.evidence.as_ref().map(|e| e.window_seconds),
                scope = alert.evidence.as_ref().map(|e| e.scope.as_str()),
                rule = alert.action.as_ref().map(|a| a.rule.as_str()),
                action = alert.action.as_ref().map(|a| a.action.as_str()),
                result = alert.action.as_ref().map(|a| a.result.as_str()),
                "{}",
                alert.summary
            )
        };
    }
    match alert.severity {
        Severity::Warning => at_level!(tracing::Level::WARN),
        Severity::Critical => at_level!(tracing::Level::ERROR),
    }
}

/// A configured webhook, ready to send to.
#[derive(Debug, Clone)]
struct Webhook {
    uri: Uri,
    authorization: Option<HeaderValue>,
}

impl Webhook {
    fn from_config(config: &WebhookConfig) -> io::Result<Self> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let uri = config
            .url
            .parse::<Uri>()
            .map_err(|err| invalid(format!("alert webhook {:?}: {err}", config.url)))?;
        let authorization = config
            .bearer_token
            .as_ref()
            .map(|token| {
                let mut value = HeaderValue::try_from(format!("Bearer {}", token.trim()))
                    .map_err(|err| invalid(format!("alert webhook bearer token: {err}")))?;
                value.set_sensitive(true);
                Ok::<_, io::Error>(value)
            })
            .transpose()?;
        Ok(Self { uri, authorization })
    }
}

/// Sends one POST; the worker adds the timeout and the retries.
trait Transport: Send + Sync + 'static {
    /// The answer's status, or why there was none.
    fn post(
        &self,
        webhook: &Webhook,
        body: Bytes,
    ) -> impl Future<Output = Result<StatusCode, String>> + Send;
}

/// HTTP/1.1 through hyper-util's pooled client (already in the tree for
/// the server).
struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpTransport {
    fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

impl Transport for HttpTransport {
    fn post(
        &self,
        webhook: &Webhook,
        body: Bytes,
    ) -> impl Future<Output = Result<StatusCode, String>> + Send {
        let mut request = Request::post(webhook.uri.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")));
        if let Some(authorization) = &webhook.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = request.body(Full::new(body));
        let client = self.client.clone();
        async move {
            let request = request.map_err(|err| err.to_string())?;
            // Only the status matters; the unread body just costs the pool
            // this connection.
            let response = client
                .request(request)
                .await
                .map_err(|err| error_chain(&err))?;
            Ok(response.status())
        }
    }
}

/// `err: its source: ...`: hyper-util's own message ("client error
/// (Connect)") hides the cause.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Debug, Clone, Copy)]
struct RetryPolicy {
    timeout: Duration,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("rejected with {0}; not retried")]
    Rejected(StatusCode),
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
}

/// The worker: each alert goes to every webhook at once; the next alert
/// waits until all have answered or given up.
async fn deliver_alerts<T: Transport>(
    transport: T,
    webhooks: Vec<Webhook>,
    retry: RetryPolicy,
    metrics: AlertMetrics,
    mut queue: mpsc::Receiver<Alert>,
) {
    while let Some(alert) = queue.recv().await {
        let body = match serde_json::to_vec(&alert) {
            Ok(body) => Bytes::from(body),
            Err(err) => {
                metrics.failed.inc();
                tracing::error!(target: "sluice::alert", key = %alert.key, %err, "alert not serialisable");
                continue;
            }
        };
        // Each outcome is counted as it comes, not when the slowest
        // webhook is done.
        let deliveries = webhooks.iter().map(|webhook| async {
            match deliver(&transport, webhook, &body, retry).await {
                Ok(()) => {
                    metrics
                        .sent
                        .get_or_create(&vec![("kind", alert.kind.name())])
                        .inc();
                }
                Err(err) => {
                    metrics.failed.inc();
                    tracing::warn!(
                        target: "sluice::alert",
                        key = %alert.key,
                        webhook = %webhook.uri,
                        %err,
                        "alert delivery failed"
                    );
                }
            }
        });
        futures::future::join_all(deliveries).await;
    }
}

/// POSTs `body` until the webhook answers 2xx or 4xx, or the retries run
/// out: connect errors, timeouts and 5xx are retried after a backoff that
/// doubles up to its cap.
async fn deliver<T: Transport>(
    transport: &T,
    webhook: &Webhook,
    body: &Bytes,
    retry: RetryPolicy,
) -> Result<(), DeliveryError> {
    let mut backoff = retry.initial_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let failure = match tokio::time::timeout(
            retry.timeout,
            transport.post(webhook, body.clone()),
        )
        .await
        {
            Ok(Ok(status)) if status.is_success() => return Ok(()),
            Ok(Ok(status)) if status.is_server_error() => status.to_string(),
            Ok(Ok(status)) => return Err(DeliveryError::Rejected(status)),
            Ok(Err(err)) => err,
            Err(_) => format!("no answer within {} ms", retry.timeout.as_millis()),
        };
        if attempts > retry.max_retries {
            return Err(DeliveryError::GaveUp {
                attempts,
                last: failure,
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(retry.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use serde_json::Value;

    use super::*;

    /// What the fake webhook does with one attempt.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        Status(u16),
        ConnectError,
        NeverAnswer,
    }

    /// Records each attempt (when, what) and answers from a script per
    /// webhook path, then with 200.
    #[derive(Clone, Default)]
    struct FakeWebhook {
        attempts: Arc<Mutex<Vec<(Instant, Value)>>>,
        scripts: Arc<Mutex<HashMap<String, VecDeque<Reply>>>>,
    }

    impl FakeWebhook {
        /// Scripts the webhook of `config()`.
        fn scripted(replies: &[Reply]) -> Self {
            Self::default().with_script("/hook", replies)
        }

        fn with_script(self, path: &str, replies: &[Reply]) -> Self {
            self.scripts
                .lock()
                .unwrap()
                .insert(path.to_owned(), replies.iter().copied().collect());
            self
        }

        fn attempts(&self) -> Vec<(Instant, Value)> {
            self.attempts.lock().unwrap().clone()
        }
    }

    impl Transport for FakeWebhook {
        fn post(
            &self,
            webhook: &Webhook,
            body: Bytes,
        ) -> impl Future<Output = Result<StatusCode, String>> + Send {
            let json = serde_json::from_slice(&body).unwrap();
            self.attempts.lock().unwrap().push((Instant::now(), json));
            let reply = self
                .scripts
                .lock()
                .unwrap()
                .get_mut(webhook.uri.path())
                .and_then(VecDeque::pop_front)
                .unwrap_or(Reply::Status(200));
            async move {
                match reply {
                    Reply::Status(code) => Ok(StatusCode::from_u16(code).unwrap()),
                    Reply::ConnectError => Err("connection refused".to_owned()),
                    Reply::NeverAnswer => std::future::pending().await,
                }
            }
        }
    }

    fn config() -> AlertsConfig {
        AlertsConfig {
            webhooks: vec![WebhookConfig {
                url: "http://127.0.0.1:9/hook".to_owned(),
                bearer_token: None,
            }],
            ..AlertsConfig::default()
        }
    }

    fn breach(indicator: Indicator) -> Alert {
        Alert::slo_breach(Evidence::global(indicator, 0.25, 0.1, 10.0))
    }

    /// Lets the worker run everything it can: with the clock paused, time
    /// only moves once every task is idle.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    fn sent(metrics: &AlertMetrics, kind: &'static str) -> u64 {
        metrics.sent.get_or_create(&vec![("kind", kind)]).get()
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_sent_once_per_dedup_window() {
        let config = AlertsConfig {
            dedup_window_ms: 60_000,
            ..config()
        };
        let fake = FakeWebhook::default();
        let metrics = AlertMetrics::default();
        let alerter = Alerter::with_transport(&config, metrics.clone(), fake.clone()).unwrap();

        alerter.notify(breach(Indicator::TtftP95Seconds));
        settle().await;
        tokio::time::sleep(Duration::from_millis(30_000)).await;
        alerter.notify(breach(Indicator::TtftP95Seconds));
        alerter.notify(breach(Indicator::ItlP95Seconds));
        settle().await;
        let keys: Vec<_> = fake
            .attempts()
            .iter()
            .map(|(_, a)| a["key"].clone())
            .collect();
        assert_eq!(
            keys,
            [
                "slo_breach:ttft_p95_seconds:global",
                "slo_breach:itl_p95_seconds:global"
            ]
        );
        assert_eq!(metrics.deduplicated.get(), 1);

        tokio::time::sleep(Duration::from_millis(30_000)).await;
        alerter.notify(breach(Indicator::TtftP95Seconds));
        settle().await;
        assert_eq!(fake.attempts().len(), 3, "sent again after the window");
        assert_eq!(sent(&metrics, "slo_breach"), 3);
        assert_eq!(metrics.failed.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_carries_kind_key_severity_and_evidence() {
        let fake = FakeWebhook::default();
        let alerter =
            Alerter::with_transport(&config(), AlertMetrics::default(), fake.clone()).unwrap();
        alerter.notify(breach(Indicator::TtftP95Seconds));
        alerter.notify(Alert::policy_action(
            "slow-first-tokens",
            "tighten_limit",
            "limit bound 8 -> 4",
            Evidence::global(Indicator::TtftP95Seconds, 0.25, 0.1, 10.0),
        ));
        alerter.notify(Alert::breaker_open("slow-first-tokens", "tighten_limit"));
        settle().await;
        let bodies: Vec<Value> = fake.attempts().into_iter().map(|(_, body)| body).collect();
        assert_eq!(bodies.len(), 3);
        let breach = &bodies[0];
        assert_eq!(breach["kind"], "slo_breach");
        assert_eq!(breach["severity"], "warning");
        assert_eq!(breach["evidence"]["indicator"], "ttft_p95_seconds");
        assert_eq!(breach["evidence"]["value"], 0.25);
        assert_eq!(breach["evidence"]["threshold"], 0.1);
        assert_eq!(breach["evidence"]["window_seconds"], 10.0);
        assert_eq!(breach["evidence"]["scope"], "global");
        assert_eq!(breach["action"], Value::Null);
        assert!(breach["timestamp_unix_ms"].as_u64().unwrap() > 0);
        let action = &bodies[1];
        assert_eq!(action["kind"], "policy_action");
        assert_eq!(
            action["key"],
            "policy_action:slow-first-tokens:tighten_limit"
        );
        assert_eq!(action["action"]["result"], "limit bound 8 -> 4");
        let breaker = &bodies[2];
        assert_eq!(breaker["kind"], "breaker_open");
        assert_eq!(breaker["severity"], "critical");
        assert_eq!(breaker["key"], "breaker_open:slow-first-tokens");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_doubling_capped_backoff() {
        let config = AlertsConfig {
            timeout_ms: 2_000,
            max_retries: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 2_000,
            ..config()
        };
        let fake = FakeWebhook::scripted(&[
            Reply::Status(503),
            Reply::ConnectError,
            Reply::NeverAnswer,
            Reply::Status(500),
        ]);
        let metrics = AlertMetrics::default();
        let alerter = Alerter::with_transport(&config, metrics.clone(), fake.clone()).unwrap();
        let start = Instant::now();
        alerter.notify(breach(Indicator::TtftP95Seconds));
        tokio::time::sleep(Duration::from_secs(60)).await;

        let offsets_ms: Vec<u128> = fake
            .attempts()
            .iter()
            .map(|(at, _)| (*at - start).as_millis())
            .collect();
        // 503, wait 500; refused, wait 1000; 2000 without an answer, wait
        // 2000 (capped); 500, wait 2000; then 200.
        assert_eq!(offsets_ms, [0, 500, 1_500, 5_500, 7_500]);
        assert_eq!(sent(&metrics, "slo_breach"), 1);
        assert_eq!(metrics.failed.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn delivery_gives_up_after_max_retries() {
        let config = AlertsConfig {
            max_retries: 2,
            ..config()
        };
        let fake = FakeWebhook::scripted(&[Reply::Status(502); 5]);
        let metrics = AlertMetrics::default();
        let alerter = Alerter::with_transport(&config, metrics.clone(), fake.clone()).unwrap();
        alerter.notify(breach(Indicator::TtftP95Seconds));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.attempts().len(), 3, "one attempt and two retries");
        assert_eq!(metrics.failed.get(), 1);
        assert_eq!(sent(&metrics, "slo_breach"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_error_is_not_retried() {
        let fake = FakeWebhook::scripted(&[Reply::Status(401)]);
        let metrics = AlertMetrics::default();
        let alerter = Alerter::with_transport(&config(), metrics.clone(), fake.clone()).unwrap();
        alerter.notify(breach(Indicator::TtftP95Seconds));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.attempts().len(), 1);
        assert_eq!(metrics.failed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_webhook_does_not_delay_the_others() {
        let mut config = AlertsConfig {
            timeout_ms: 600_000,
            ..config()
        };
        for path in ["/silent", "/refusing", "/working"] {
            config.webhooks.push(WebhookConfig {
                url: format!("http://127.0.0.1:9{path}"),
                bearer_token: None,
            });
        }
        let fake = FakeWebhook::default()
            .with_script("/silent", &[Reply::NeverAnswer])
            .with_script("/refusing", &[Reply::Status(404)]);
        let metrics = AlertMetrics::default();
        let alerter = Alerter::with_transport(&config, metrics.clone(), fake.clone()).unwrap();
        alerter.notify(breach(Indicator::TtftP95Seconds));
        settle().await;
        assert_eq!(fake.attempts().len(), 4, "one POST to each webhook");
        assert_eq!(sent(&metrics, "slo_breach"), 2);
        assert_eq!(metrics.failed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_alerts_without_waiting() {
        let config = AlertsConfig {
            queue_capacity: 1,
            timeout_ms: 600_000,
            ..config()
        };
        let fake = FakeWebhook::scripted(&[Reply::NeverAnswer]);
        let metrics = AlertMetrics::default();
        let alerter = Alerter::with_transport(&config, metrics.clone(), fake.clone()).unwrap();
        alerter.notify(breach(Indicator::TtftP95Seconds));
        settle().await;
        assert_eq!(fake.attempts().len(), 1, "the worker is stuck on the first");
        alerter.notify(breach(Indicator::TtftP50Seconds));
        alerter.notify(breach(Indicator::ItlP95Seconds));
        assert_eq!(metrics.dropped.get(), 1);
        // A dropped alert's key is not remembered: the next window retries.
        alerter.notify(breach(Indicator::ItlP95Seconds));
        assert_eq!(metrics.dropped.get(), 2);
        assert_eq!(metrics.deduplicated.get(), 0);
    }

    #[test]
    fn every_alert_is_logged_without_webhooks_or_a_runtime() {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let metrics = AlertMetrics::default();
        let alerter = Alerter::start(&AlertsConfig::default(), metrics.clone()).unwrap();
        // tracing caches each callsite's interest for the process, and while
        // one dispatcher exists it asks only the registering thread's: a
        // test thread without a subscriber reaching these callsites first
        // would cache "never" and blind this capture. With a second,
        // always-interested dispatcher alive, registration asks them all.
        let _anchor = tracing::Dispatch::new(tracing_subscriber::registry());
        tracing::subscriber::with_default(subscriber, || {
            alerter.notify(breach(Indicator::TtftP95Seconds));
            alerter.notify(breach(Indicator::TtftP95Seconds));
            alerter.notify(Alert::breaker_open("flappy", "relax_limit"));
        });
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(lines[0].contains("WARN sluice::alert"), "{log}");
        assert!(
            lines[0].contains("key=slo_breach:ttft_p95_seconds:global")
                && lines[0].contains("indicator=\"ttft_p95_seconds\"")
                && lines[0].contains("value=0.25"),
            "{log}"
        );
        assert!(lines[1].contains("ERROR sluice::alert"), "{log}");
        assert!(lines[1].contains("rule=\"flappy\""), "{log}");
        assert_eq!(metrics.deduplicated.get(), 1);
        assert_eq!(metrics.dropped.get(), 0);
    }

    #[test]
    fn a_bearer_token_becomes_a_sensitive_authorization_header() {
        let webhook = Webhook::from_config(&WebhookConfig {
            url: "http://[::1]:8080/a?b=c".to_owned(),
            bearer_token: Some("s3cret".to_owned()),
        })
        .unwrap();
        assert_eq!(webhook.uri.port_u16(), Some(8080));
        let authorization = webhook.authorization.unwrap();
        assert_eq!(authorization, "Bearer s3cret");
        assert!(authorization.is_sensitive());
    }
}
