//! Slow consumers on the real server: a client that stops reading has its
//! sequence parked while other streams run on, and once it has not read for
//! `engine.max_park_ms` its stream is ended and its sequence freed; when it
//! reads again it finds a slow-consumer error, not a clean finish.

mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

const MAX_PARK_MS: u64 = 1500;
const PARKED: &str = "sluice:num_requests_parked";
const RUNNING: &str = "sluice:num_requests_running";
const SLOW_CONSUMER_ENDS: &str = r#"sluice:streams_ended_total{reason="slow_consumer"}"#;
const SLOW_CONSUMER_FINISHED: &str = "sluice:request_finished_total{outcome=\"slow_consumer\"}";
/// Gap between metric polls, leaving the two cores to the engine.
const POLL: Duration = Duration::from_millis(20);

/// One sample of `/metrics`; a labelled counter not yet incremented is
/// absent, which reads as 0.
async fn metric(base: &str, name: &str) -> f64 {
    let text = common::metrics_text_at(base).await;
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Polls the metric until `done` holds for its value, for at most `within`.
async fn wait_for(base: &str, name: &str, within: Duration, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(base, name).await;
        if done(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {value}");
        tokio::time::sleep(POLL).await;
    }
}

fn completion(max_tokens: u32) -> Value {
    json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "prompt": "Write a long story about a lighthouse keeper.",
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "temperature": 0,
        "stream": true,
    })
}

/// A client whose streams the server may send only 4 KiB ahead of what it
/// has read: an HTTP/2 stream window it never widens until the body is
/// read. (A small TCP receive buffer would not do: on loopback the server's
/// send buffer grows to megabytes, enough for the whole stream.)
fn stalling_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(4096)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn stream_to_end(base: String) -> common::Streamed {
    let response = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&completion(8))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    common::parse_stream(&response.text().await.unwrap())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_ended_with_an_error_and_its_sequence_freed() {
    let mut config = common::test_config();
    config.engine.max_sequences = 8;
    config.governor.max_streams = 8;
    config.engine.stream_buffer_events = 4;
    config.engine.max_park_ms = MAX_PARK_MS;
    // One compute thread: two spin-waiting ones crawl on a busy 2-core box.
    config.engine.threads = 1;
    let base = common::spawn_server(config);

    // Headers arrive once the request is admitted; its body is not read
    // until the end of the test.
    let stalled = stalling_client()
        .post(format!("{base}/v1/completions"))
        .json(&completion(400))
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    let others: Vec<_> = (0..4)
        .map(|_| tokio::spawn(stream_to_end(base.clone())))
        .collect();

    wait_for(&base, PARKED, Duration::from_secs(60), |parked| {
        parked == 1.0
    })
    .await;
    let parked_seen = Instant::now();
    for other in others {
        let streamed = other.await.unwrap();
        assert_eq!(
            streamed.finish_reason.as_deref(),
            Some("length"),
            "a stream beside the parked one finished normally"
        );
    }
    wait_for(&base, SLOW_CONSUMER_ENDS, Duration::from_secs(30), |ends| {
        ends == 1.0
    })
    .await;
    assert!(
        parked_seen.elapsed() < Duration::from_millis(MAX_PARK_MS) + Duration::from_secs(10),
        "ended within the limit (plus slack for a busy machine)"
    );
    wait_for(&base, RUNNING, Duration::from_secs(10), |running| {
        running == 0.0
    })
    .await;
    assert_eq!(metric(&base, PARKED).await, 0.0);
    // Its record ended (above) and its admission permit came back while the
    // client still has not read a byte: a stalled client holds no
    // concurrency.
    assert_eq!(
        metric(&base, r#"sluice:streams{state="streaming"}"#).await,
        0.0
    );

    let body = stalled.text().await.unwrap();
    let payloads = common::sse_payloads(&body);
    let (done, rest) = payloads.split_last().unwrap();
    let (error, chunks) = rest.split_last().unwrap();
    assert_eq!(done, "[DONE]");
    let error: Value = serde_json::from_str(error).unwrap();
    assert_eq!(error["error"]["type"], "slow_consumer", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("{MAX_PARK_MS} ms")), "{message}");
    assert!(!chunks.is_empty(), "the client got what was sent before");
    for chunk in chunks {
        let chunk: Value = serde_json::from_str(chunk).unwrap();
        assert!(
            chunk["choices"][0]["finish_reason"].is_null(),
            "no clean finish before the error: {chunk}"
        );
    }

    // Counted as the client's doing once the request ends, never as an
    // engine error.
    wait_for(
        &base,
        SLOW_CONSUMER_FINISHED,
        Duration::from_secs(10),
        |count| count == 1.0,
    )
    .await;
    let metrics = common::metrics_text_at(&base).await;
    assert!(!metrics.contains("outcome=\"engine_error\""), "{metrics}");
}
