//! First-token speculation on the real model: a repeated deterministic
//! request gets its cached opening at once and the engine continues after
//! it with no seam; sampled requests never use it.

mod common;

use std::sync::OnceLock;

use serde_json::{Value, json};
use tokio::sync::Mutex;

/// One server with speculation on, shared by this binary's tests; they take
/// turns so counters and the engine are theirs alone.
static TURN: Mutex<()> = Mutex::const_new(());

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut config = common::test_config();
        config.engine.max_sequences = 4;
        config.governor.max_streams = 4;
        config.flags.first_token_speculation.enabled = true;
        config.speculation.first_tokens = 4;
        common::spawn_server(config)
    })
}

async fn metric(name: &str) -> f64 {
    common::metric_at(base(), name).await
}

/// Streams a chat request; returns its content pieces, finish reason and usage.
async fn chat(content: &str, extra: Value) -> (Vec<String>, String, Value) {
    let mut body = json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": content}],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let response = common::client()
        .post(format!("{}/v1/chat/completions", base()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stream = common::parse_stream(&response.text().await.unwrap());
    let pieces = stream
        .chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .filter(|piece| !piece.is_empty())
        .map(str::to_owned)
        .collect();
    let usage = stream.chunks.last().unwrap()["usage"].clone();
    (pieces, stream.finish_reason.unwrap(), usage)
}

#[tokio::test]
async fn a_repeated_greedy_request_gets_its_opening_and_a_seamless_continuation() {
    let _turn = TURN.lock().await;
    let greedy = json!({"temperature": 0, "max_tokens": 12, "ignore_eos": true});
    let hits = metric("sluice:speculation_hits_total").await;
    let (first, reason, first_usage) = chat("Describe a lighthouse.", greedy.clone()).await;
    assert_eq!(reason, "length");
    assert_eq!(first_usage["completion_tokens"], 12);
    assert_eq!(metric("sluice:speculation_hits_total").await, hits);

    let served = metric("sluice:speculation_tokens_served_total").await;
    let (second, reason, usage) = chat("Describe a lighthouse.", greedy).await;
    assert_eq!(metric("sluice:speculation_hits_total").await, hits + 1.0);
    let tokens_served = metric("sluice:speculation_tokens_served_total").await - served;
    assert!(tokens_served >= 4.0, "the opening's tokens were served");
    assert_eq!(reason, "length");
    assert_eq!(
        usage["completion_tokens"], 12,
        "opening plus continuation is exactly max_tokens: nothing doubled or lost"
    );
    assert_eq!(
        usage["prompt_tokens"], first_usage["prompt_tokens"],
        "the client's own prompt, not the engine's prompt plus opening"
    );
    assert_eq!(
        second[..4],
        first[..4],
        "the cached opening, piece for piece"
    );
    // The continuation decodes the token after the opening with the same
    // cached KV and the same one-token batch as the first run did, so greedy
    // picks the same tokens: the text matches across the seam.
    assert_eq!(second.concat(), first.concat());
}

#[tokio::test]
async fn a_short_repeat_is_served_wholly_from_the_cache() {
    let _turn = TURN.lock().await;
    let greedy = json!({"temperature": 0, "max_tokens": 8, "ignore_eos": true});
    let (first, _, first_usage) = chat("Name three rivers.", greedy).await;
    let steps = metric("sluice:engine_steps_total").await;
    let (second, reason, usage) = chat(
        "Name three rivers.",
        json!({"temperature": 0, "max_tokens": 3, "ignore_eos": true}),
    )
    .await;
    assert_eq!(reason, "length");
    assert_eq!(usage["completion_tokens"], 3);
    assert_eq!(usage["prompt_tokens"], first_usage["prompt_tokens"]);
    assert_eq!(second.concat(), first[..second.len()].concat());
    // The engine counts a step after its tokens have gone out, so the first
    // request's last step may be counted only now. Had the engine served
    // the repeat, its three tokens would have taken three steps or more.
    let steps_since = metric("sluice:engine_steps_total").await - steps;
    assert!(
        steps_since <= 1.0,
        "the engine did no work for the repeat ({steps_since} steps)"
    );
}

#[tokio::test]
async fn sampled_and_stop_string_requests_never_use_it() {
    let _turn = TURN.lock().await;
    let sampled = json!({"temperature": 0.8, "max_tokens": 6});
    chat("Tell me about owls.", sampled.clone()).await;
    let hits = metric("sluice:speculation_hits_total").await;
    chat("Tell me about owls.", sampled).await;
    let with_stop = json!({"temperature": 0, "max_tokens": 6, "stop": ["zzz"]});
    chat("Tell me about owls.", with_stop.clone()).await;
    chat("Tell me about owls.", with_stop).await;
    assert_eq!(metric("sluice:speculation_hits_total").await, hits);
}
