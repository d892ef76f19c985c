//! A real Sluice server on the real model, shared by the tests of one test
//! binary. It runs on its own runtime thread so it outlives each test's
//! runtime.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sluice::app::RunningServer;
use sluice_core::config::RuntimeConfig;
use tokio::sync::RwLock;

pub struct TestServer {
    pub base: String,
    pub model: String,
}

/// Tests that need the engine to themselves (determinism, running counts)
/// take this for writing; all others take it for reading.
pub static ENGINE_EXCLUSIVE: RwLock<()> = RwLock::const_new(());

/// A loopback port nothing listens on: bound, then closed.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn model_path() -> PathBuf {
    std::env::var_os("SLUICE_TEST_MODEL").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    )
}

pub fn test_config() -> RuntimeConfig {
    let mut config = RuntimeConfig::default();
    config.server.port = 0;
    config.server.shutdown_grace_seconds = 2;
    config.model.path = model_path();
    config.engine.max_sequences = 32;
    config.engine.context_per_sequence = 512;
    // The long pool has its own tests (long_prompts.rs); without it each
    // test server holds 750 MB less.
    config.engine.long_sequences = 0;
    config.governor.max_streams = 32;
    // These tests are about the engine and the stream path: many requests
    // at once must all run, not be gated or shed by timing. Overload
    // control has its own paused-clock tests (sluice-core) and benchmarks
    // (benchmarks/overload/); long_prompts.rs runs the default config.
    config.governor.enabled = false;
    config.admission.deadline_shedding = false;
    config
}

/// Starts a server with `config` on its own runtime thread, so it outlives
/// each test's runtime, and returns its base URL once the model is loaded.
pub fn spawn_server(config: RuntimeConfig) -> String {
    assert!(
        config.model.path.is_file(),
        "model missing at {} (run scripts/setup.sh)",
        config.model.path.display()
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let server = RunningServer::start(&config, None).await.unwrap();
            server.engine().wait_ready().await.unwrap();
            ready_tx.send(server.local_addr).unwrap();
            server.wait().await.unwrap();
        });
    });
    let addr = ready_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("server became ready");
    format!("http://{addr}")
}

/// Starts the shared server once and waits until the model is loaded.
pub fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer {
        base: spawn_server(test_config()),
        model: "SmolLM2-135M-Instruct.Q4_1".to_owned(),
    })
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// Splits an SSE body into its `data:` payloads, checking the framing.
pub fn sse_payloads(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body ends with a blank line: {body:?}"
    );
    body.trim_end_matches('\n')
        .split("\n\n")
        // Comment lines are keep-alives.
        .filter(|event| !event.starts_with(':'))
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event is a data line: {event:?}"))
                .to_owned()
        })
        .collect()
}

/// A finished stream: its JSON chunks (before `[DONE]`) and joined text.
pub struct Streamed {
    pub chunks: Vec<Value>,
    pub text: String,
    pub finish_reason: Option<String>,
}

pub fn parse_stream(body: &str) -> Streamed {
    let payloads = sse_payloads(body);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "ends in [DONE]"
    );
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|payload| serde_json::from_str(payload).expect("chunk is JSON"))
        .collect();
    let mut text = String::new();
    let mut finish_reason = None;
    for chunk in &chunks {
        if let Some(choice) = chunk["choices"].get(0) {
            if let Some(piece) = choice["delta"]["content"].as_str() {
                text.push_str(piece);
            }
            if let Some(piece) = choice["text"].as_str() {
                text.push_str(piece);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish_reason = Some(reason.to_owned());
            }
        }
    }
    Streamed {
        chunks,
        text,
        finish_reason,
    }
}

pub async fn post(path: &str, body: Value) -> reqwest::Response {
    let server = server();
    client()
        .post(format!("{}{path}", server.base))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The shared server's `/metrics` text.
pub async fn metrics_text() -> String {
    metrics_text_at(&server().base).await
}

/// The `/metrics` text of the server at `base`.
pub async fn metrics_text_at(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Reads one Prometheus sample (no labels) from the shared server.
pub async fn metric(name: &str) -> f64 {
    metric_at(&server().base, name).await
}

/// Reads one Prometheus sample (no labels) from the server at `base`.
pub async fn metric_at(base: &str, name: &str) -> f64 {
    let text = metrics_text_at(base).await;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("metric {name} in:\n{text}"))
}
