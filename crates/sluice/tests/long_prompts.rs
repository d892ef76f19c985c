//! Long prompts through the real server and model with the default
//! config: a prompt of about 7,900 tokens is served by the long pool beside
//! many short streams, a repeated document comes from the long pool's prefix
//! cache with the cold run's output, a long prompt does not wait for the
//! governor's admission, and a prompt over the model's trained context gets
//! an error that names the limits.

mod common;

use std::sync::OnceLock;

use serde_json::{Value, json};
use sluice_core::config::{PoolSize, RuntimeConfig};
use sluice_engine::{EngineHandle, EngineOptions};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut config = RuntimeConfig::default();
        config.server.port = 0;
        config.server.shutdown_grace_seconds = 2;
        config.model.path = common::model_path();
        common::spawn_server(config)
    })
}

/// A document of `words` words, about two tokens each with the default
/// model's tokenizer: numbered harbour log entries, so no two stretches of
/// it repeat.
fn document(words: usize) -> String {
    let mut text = String::from("Harbour master's log, spring season.\n");
    let mut entry = 0;
    while text.split_whitespace().count() < words {
        entry += 1;
        text.push_str(&format!(
            "Entry {entry}: the ship number {} berthed at quay {} with {} crates of cargo.\n",
            entry * 7 % 113,
            entry % 9,
            entry * 13 % 97
        ));
    }
    text
}

struct Completion {
    text: String,
    prompt_tokens: u64,
    cached_tokens: u64,
    finish_reason: String,
}

async fn complete(prompt: &str, max_tokens: u32) -> Completion {
    complete_at(base(), prompt, max_tokens).await
}

/// A greedy completion from the server at `base`, which must answer 200.
async fn complete_at(base: &str, prompt: &str, max_tokens: u32) -> Completion {
    let response = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
        }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    Completion {
        text: body["choices"][0]["text"].as_str().unwrap().to_owned(),
        prompt_tokens: body["usage"]["prompt_tokens"].as_u64().unwrap(),
        cached_tokens: body["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        finish_reason: body["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

#[tokio::test]
async fn long_prompts_are_served_beside_short_streams_and_their_document_is_cached() {
    let doc = document(4_000);
    let question = |n: u32| format!("{doc}\nQuestion {n}: which quay did entry {n} use? Answer:");
    let cold = complete(&question(5), 8).await;
    assert!(
        cold.prompt_tokens > 6_000,
        "a prompt of over 6,000 tokens ({} tokens)",
        cold.prompt_tokens
    );
    assert_eq!(cold.cached_tokens, 0, "the first run prefills it all");
    assert!(!cold.text.is_empty());

    // 64 short streams and two long prompts at once: the same question
    // again and another question about the same document.
    let shorts = (0..64).map(|n| {
        let prompt = format!("Short question {n}: name a colour and a number.");
        async move { complete(&prompt, 8).await }
    });
    let (same_question, other_question) = (question(5), question(11));
    let (again, other, shorts) = tokio::join!(
        complete(&same_question, 8),
        complete(&other_question, 8),
        futures::future::join_all(shorts),
    );
    for short in &shorts {
        assert!(
            ["stop", "length"].contains(&short.finish_reason.as_str()),
            "a short stream ended with {:?}",
            short.finish_reason
        );
    }
    // The repeated document comes from the long pool's prefix cache (the
    // RAG case), and greedy output matches the cold run (the tolerance of
    // tests/prefix_cache.rs: eight tokens).
    assert!(
        again.cached_tokens > 5_000,
        "cached {}",
        again.cached_tokens
    );
    assert_eq!(again.text, cold.text);
    assert!(
        other.cached_tokens > 5_000,
        "cached {}",
        other.cached_tokens
    );
}

/// A long prompt waits in the long pool's own queue, not for the
/// governor's admission: with the one permit held by a streaming chat and a
/// 200 ms wait limit, it is served all the same (through admission it got
/// 429 after 200 ms).
#[tokio::test]
async fn a_long_prompt_does_not_wait_for_the_governors_admission() {
    let mut config = RuntimeConfig::default();
    config.server.port = 0;
    config.server.shutdown_grace_seconds = 2;
    config.model.path = common::model_path();
    config.engine.max_sequences = 4;
    config.engine.long_sequences = 1;
    config.governor.enabled = false;
    config.governor.min_streams = 1;
    config.governor.max_streams = 1;
    config.admission.max_wait_ms = 200;
    let base = common::spawn_server(config);
    let mut chat = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({
            "model": MODEL,
            "prompt": "Count slowly:",
            "max_tokens": 400,
            "ignore_eos": true,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 200);
    // Its first bytes: the chat holds the permit.
    assert!(chat.chunk().await.unwrap().is_some());
    let long = complete_at(&base, &document(1_300), 2).await;
    assert!(
        long.prompt_tokens > 1_024,
        "a prompt for the long pool ({} tokens)",
        long.prompt_tokens
    );
    drop(chat);
}

#[tokio::test]
async fn a_prompt_over_the_models_context_names_the_limit() {
    let response = common::client()
        .post(format!("{}/v1/completions", base()))
        .json(&json!({
            "model": MODEL,
            "prompt": "word ".repeat(9_000),
            "max_tokens": 4,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("This model's maximum context length is 8192 tokens."),
        "{message}"
    );
    let models: Value = common::client()
        .get(format!("{}/v1/models", base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["max_model_len"], 8192);
}

#[tokio::test]
async fn the_kv_budget_sizes_the_pools() {
    let mut config = RuntimeConfig::default().engine;
    // SmolLM2-135M at f16 takes 23,040 bytes per cell: room for the long
    // pool's 4 x 8192 cells and 10 short sequences of 1,024.
    let cell = 23_040;
    config.kv_cache_bytes = (4 * 8192 + 10 * 1024) * cell + 1;
    let engine = EngineHandle::spawn(EngineOptions {
        model_path: common::model_path(),
        chat_template: None,
        config,
    });
    let model = engine.wait_ready().await.unwrap();
    assert_eq!(model.kv_bytes_per_cell, cell as f64);
    assert_eq!(model.kv_budget_source, "engine.kv_cache_bytes");
    let pool = |sequences, context| PoolSize { sequences, context };
    assert_eq!(model.pools, vec![pool(10, 1024), pool(4, 8192)]);
    assert_eq!(model.served_context(), 8192);
}
