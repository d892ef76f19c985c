//! The test-only fault hook: `POST /admin/fault/stall` exists only with
//! `server.fault_injection` on; a stalled engine blocks neither the HTTP
//! side nor the streams running through the stall.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sluice::app::RunningServer;

const ADMIN_KEY: &str = "admin-key-for-fault-tests";
const STALL: Duration = Duration::from_secs(3);

async fn start(fault_injection: bool) -> (RunningServer, String) {
    let mut config = common::test_config();
    config.engine.max_sequences = 2;
    config.governor.max_streams = 2;
    config.server.admin_api_key = Some(ADMIN_KEY.to_owned());
    config.server.fault_injection = fault_injection;
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let base = format!("http://{}", server.local_addr);
    (server, base)
}

async fn post_stall(base: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = common::client()
        .post(format!("{base}/admin/fault/stall"))
        .json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_endpoint_does_not_exist_without_fault_injection() {
    let (server, base) = start(false).await;
    let (status, body) = post_stall(&base, Some(ADMIN_KEY), json!({"ms": 10})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_requests_are_authorized_and_validated() {
    let (server, base) = start(true).await;
    let (status, _) = post_stall(&base, None, json!({"ms": 10})).await;
    assert_eq!(status, 401);
    for (body, expected_param) in [
        (json!({"ms": 60_001}), "ms"),
        (json!({"ms": 0}), "ms"),
        (json!({"ms": "soon"}), "ms"),
        (json!({}), "ms"),
    ] {
        let (status, error) = post_stall(&base, Some(ADMIN_KEY), body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["error"]["param"], expected_param, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_engine_blocks_neither_metrics_nor_the_running_stream() {
    let (server, base) = start(true).await;
    let response = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "prompt": "Write a long essay about rivers.",
            "max_tokens": 96,
            "ignore_eos": true,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "a token chunk came first");

    // The reader runs on its own so each chunk's arrival time is its own.
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        let mut last = Instant::now();
        let mut longest_gap = Duration::ZERO;
        while let Some(chunk) = body.next().await {
            longest_gap = longest_gap.max(last.elapsed());
            last = Instant::now();
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
        (text, longest_gap)
    });

    let (status, reply) = post_stall(
        &base,
        Some(ADMIN_KEY),
        json!({"ms": STALL.as_millis() as u64}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"fault": "stall", "ms": 3000}));

    let asked = Instant::now();
    let metrics = common::metrics_text_at(&base).await;
    assert!(
        asked.elapsed() < STALL / 2,
        "/metrics answered while the engine slept ({:?})",
        asked.elapsed()
    );
    assert!(
        metrics.contains("sluice:num_requests_running 1"),
        "{metrics}"
    );

    let (text, longest_gap) = reader.await.unwrap();
    let streamed = common::parse_stream(&format!("{}{text}", std::str::from_utf8(&first).unwrap()));
    assert_eq!(streamed.finish_reason.as_deref(), Some("length"));
    assert!(
        longest_gap >= STALL - Duration::from_millis(500),
        "the stream lived through the stall: longest gap {longest_gap:?}"
    );
    server.shutdown();
    server.wait().await.unwrap();
}
