//! A supervised engine on the real model: a panic on the engine thread
//! (injected with `POST /admin/fault/panic`) fails the engine with a reason
//! that `/health`, `/health/live`, `/health/ready`, running streams and new
//! requests all see, and the binary exits non-zero on its own once drained;
//! an engine with work that stops finishing steps is reported not live.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sluice::app::RunningServer;

const ADMIN_KEY: &str = "admin-key-for-engine-failure-tests";
const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

async fn start(fault_injection: bool, step_stall_timeout_ms: u64) -> (RunningServer, String) {
    let mut config = common::test_config();
    config.engine.max_sequences = 2;
    config.governor.max_streams = 2;
    config.engine.step_stall_timeout_ms = step_stall_timeout_ms;
    config.server.admin_api_key = Some(ADMIN_KEY.to_owned());
    config.server.fault_injection = fault_injection;
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let base = format!("http://{}", server.local_addr);
    (server, base)
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = common::client()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn post_fault(base: &str, fault: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = common::client()
        .post(format!("{base}/admin/fault/{fault}"))
        .json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

type Body = futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>;

/// Starts a long stream; returns its first chunk's text and the rest.
async fn long_stream(base: &str) -> (String, Body) {
    let response = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({
            "model": MODEL,
            "prompt": "Write a long essay about rivers.",
            "max_tokens": 64,
            "ignore_eos": true,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream().boxed();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "a token chunk came first");
    (String::from_utf8(first.to_vec()).unwrap(), body)
}

/// The rest of a stream, within three minutes (a hang fails the test; a
/// machine busy with other work decodes slowly).
async fn rest_of(body: Body) -> String {
    let collect = body
        .map(|chunk| String::from_utf8(chunk.unwrap().to_vec()).unwrap())
        .collect::<Vec<_>>();
    tokio::time::timeout(Duration::from_secs(180), collect)
        .await
        .expect("the stream ended")
        .concat()
}

/// Polls `path` until its status is `status`, for at most a minute.
async fn wait_for_status(base: &str, path: &str, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (now, body) = get(base, path).await;
        if now == status {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} stayed {now}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_hook_exists_only_with_fault_injection_and_the_admin_key() {
    let (server, base) = start(false, 30_000).await;
    let (status, _) = post_fault(&base, "panic", Some(ADMIN_KEY), json!({})).await;
    assert_eq!(status, 404);
    server.shutdown();
    server.wait().await.unwrap();
    let (server, base) = start(true, 30_000).await;
    let (status, _) = post_fault(&base, "panic", None, json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(get(&base, "/health/live").await.0, 200);
    assert_eq!(get(&base, "/health/ready").await.0, 200);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_health_ends_streams_and_refuses_requests() {
    let (server, base) = start(true, 30_000).await;
    let (first, body) = long_stream(&base).await;
    let (status, reply) = post_fault(&base, "panic", Some(ADMIN_KEY), json!({})).await;
    assert_eq!(status, 200, "{reply}");

    let payloads = common::sse_payloads(&(first + &rest_of(body).await));
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("panicked"), "an error event: {error}");

    for path in ["/health", "/health/live", "/health/ready"] {
        let (status, body) = get(&base, path).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["status"], "failed", "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("panicked"),
            "{path}: {body}"
        );
    }

    let response = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": "Hi", "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("panicked"), "{error}");
    assert!(!message.contains("load"), "the reason is true: {error}");
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_stops_finishing_steps_is_not_live_until_it_steps_again() {
    let (server, base) = start(true, 1_000).await;
    let (first, body) = long_stream(&base).await;
    let (status, reply) = post_fault(&base, "stall", Some(ADMIN_KEY), json!({"ms": 8_000})).await;
    assert_eq!(status, 200, "{reply}");

    // Each probe is polled: on a busy machine a probe may land just after
    // the stall ended.
    for path in ["/health/live", "/health/ready", "/health"] {
        let stalled = wait_for_status(&base, path, 503).await;
        assert_eq!(stalled["status"], "stalled", "{path}: {stalled}");
    }

    wait_for_status(&base, "/health/live", 200).await;
    let streamed = common::parse_stream(&(first + &rest_of(body).await));
    assert_eq!(streamed.finish_reason.as_deref(), Some("length"));
    assert_eq!(get(&base, "/health/ready").await.0, 200);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_non_zero_on_its_own_after_an_engine_panic() {
    let dir = std::env::temp_dir().join(format!("sluice-engine-failure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("runtime.yaml");
    let port = common::free_port();
    std::fs::write(
        &config_path,
        format!(
            "server:\n  port: {port}\n  admin_api_key: {ADMIN_KEY}\n  fault_injection: true\n  \
             shutdown_grace_seconds: 2\n\
             model:\n  path: {}\n\
             engine:\n  max_sequences: 4\n  context_per_sequence: 512\n\
             governor:\n  max_streams: 4\n",
            common::model_path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (loaded_tx, loaded) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("model loaded") {
                let _ = loaded_tx.send(());
            }
        }
    });
    loaded
        .recv_timeout(Duration::from_secs(120))
        .expect("the model loaded");
    let base = format!("http://127.0.0.1:{port}");
    let (_, body) = long_stream(&base).await;
    let (status, reply) = post_fault(&base, "panic", Some(ADMIN_KEY), json!({})).await;
    assert_eq!(status, 200, "{reply}");
    assert!(rest_of(body).await.contains("panicked"), "an error event");

    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit on its own");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(1), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
