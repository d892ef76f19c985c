//! Alert webhooks on a real server whose TTFT SLO cannot be met: a loopback
//! receiver gets one deduplicated `slo_breach` alert per key however many
//! windows breach, and dead webhooks (refusing, or never answering) cost requests
//! nothing while the failed and dropped counters move.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};
use sluice::app::RunningServer;
use sluice_core::config::{RuntimeConfig, WebhookConfig};
use tokio::net::TcpListener;

const HOOK_TOKEN: &str = "hook-token-for-tests";
const BREACH_KEY: &str = "slo_breach:ttft_p95_seconds:global";

/// A config whose TTFT p95 target no request can meet, evaluated often.
fn breaching_config(webhooks: Vec<WebhookConfig>) -> RuntimeConfig {
    let mut config = common::test_config();
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    config.qos.evaluation_interval_ms = 200;
    config.qos.slo.ttft_p95_seconds = Some(0.000_001);
    config.alerts.webhooks = webhooks;
    config
}

fn webhook(url: String) -> WebhookConfig {
    WebhookConfig {
        url,
        bearer_token: Some(HOOK_TOKEN.to_owned()),
    }
}

/// Received alert bodies, with the `Authorization` header each came with.
type Received = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// A webhook receiver on a loopback port that answers 204.
async fn spawn_receiver() -> (String, Received) {
    let received = Received::default();
    let app =
        axum::Router::new()
            .route(
                "/hook",
                post(
                    |State(received): State<Received>,
                     headers: HeaderMap,
                     Json(body): Json<Value>| async move {
                        let authorization = headers
                            .get("authorization")
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_owned);
                        received.lock().unwrap().push((authorization, body));
                        axum::http::StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(Arc::clone(&received));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// One short completion; it must succeed.
async fn complete(base: &str, model: &str) {
    let response = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"].as_array().unwrap().len(), 1, "{body}");
}

/// The value of the sample line starting with `series` (labels included).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_lasting_breach_sends_one_alert_with_its_evidence() {
    let (url, received) = spawn_receiver().await;
    let config = breaching_config(vec![webhook(url)]);
    let model = config.model.served_name();
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let base = format!("http://{}", server.local_addr);

    // Keep TTFT samples coming until the breach has been raised and then
    // deduplicated in at least three more windows. The window breaches in
    // every scope it covers (global, and the default tenant's): one key each.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        complete(&base, &model).await;
        let metrics = common::metrics_text_at(&base).await;
        let repeated = sample(&metrics, "sluice:alerts_deduplicated_total");
        let keys = received.lock().unwrap().len() as f64;
        if keys >= 1.0 && repeated >= 3.0 * keys {
            break;
        }
        assert!(Instant::now() < deadline, "no lasting breach:\n{metrics}");
    }

    let received = received.lock().unwrap().clone();
    let mut keys: Vec<&str> = received
        .iter()
        .map(|(_, alert)| alert["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    let distinct = {
        let mut keys = keys.clone();
        keys.dedup();
        keys
    };
    assert_eq!(keys, distinct, "each key is sent once: {received:?}");
    let (authorization, alert) = received
        .iter()
        .find(|(_, alert)| alert["key"] == BREACH_KEY)
        .unwrap_or_else(|| panic!("a global TTFT breach alert: {received:?}"));
    assert_eq!(
        authorization.as_deref(),
        Some(format!("Bearer {HOOK_TOKEN}").as_str())
    );
    assert_eq!(alert["kind"], "slo_breach");
    assert_eq!(alert["key"], BREACH_KEY);
    assert_eq!(alert["severity"], "warning");
    let evidence = &alert["evidence"];
    assert_eq!(evidence["indicator"], "ttft_p95_seconds");
    assert_eq!(evidence["scope"], "global");
    assert_eq!(evidence["threshold"], 0.000_001);
    assert!(evidence["value"].as_f64().unwrap() > 0.000_001, "{alert}");
    assert!(
        evidence["window_seconds"].as_f64().unwrap() > 0.0,
        "{alert}"
    );

    let metrics = common::metrics_text_at(&base).await;
    assert_eq!(
        sample(&metrics, r#"sluice:alerts_sent_total{kind="slo_breach"}"#),
        received.len() as f64,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "sluice:alerts_failed_total"), 0.0);
    assert_eq!(sample(&metrics, "sluice:alerts_dropped_total"), 0.0);
    server.shutdown();
    server.wait().await.unwrap();
}

/// A port that refuses connections: bound, then closed.
async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}/hook", listener.local_addr().unwrap())
}

/// A receiver that accepts connections and never answers; counts them.
async fn spawn_silent_receiver() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            held.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn dead_webhooks_do_not_hold_up_requests() {
    let refused = refused_url().await;
    let (silent, accepted) = spawn_silent_receiver().await;
    let mut config = breaching_config(vec![webhook(refused), webhook(silent)]);
    // Every window raises again, the worker hangs on the silent receiver,
    // and one alert fits in the queue: later ones must be dropped.
    config.alerts.dedup_window_ms = 0;
    config.alerts.queue_capacity = 1;
    config.alerts.timeout_ms = 600_000;
    config.alerts.max_retries = 1;
    config.alerts.initial_backoff_ms = 10;
    config.alerts.max_backoff_ms = 10;
    let model = config.model.served_name();
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let base = format!("http://{}", server.local_addr);

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut completed = 0;
    loop {
        complete(&base, &model).await;
        completed += 1;
        let metrics = common::metrics_text_at(&base).await;
        let failed = sample(&metrics, "sluice:alerts_failed_total");
        let dropped = sample(&metrics, "sluice:alerts_dropped_total");
        if failed >= 1.0 && dropped >= 1.0 {
            assert_eq!(
                sample(&metrics, r#"sluice:alerts_sent_total{kind="slo_breach"}"#),
                0.0,
                "{metrics}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters did not move after {completed} requests:\n{metrics}"
        );
    }
    assert!(
        accepted.load(Ordering::Relaxed) >= 1,
        "the alert reached the silent receiver"
    );
    server.shutdown();
    server.wait().await.unwrap();
}
