//! What an inference gateway's endpoint picker reads from a pod, through
//! the real server and model: the Model Server Protocol gauges on
//! `/metrics` and the render endpoints' prompt token ids.

mod common;

use common::{ENGINE_EXCLUSIVE, metrics_text, post, server};
use serde_json::{Value, json};

#[tokio::test]
async fn metrics_carry_the_model_server_protocol_gauges() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let metrics = metrics_text().await;
    let usage = metrics
        .lines()
        .find_map(|line| line.strip_prefix("sluice:kv_cache_usage_perc "))
        .expect("sluice:kv_cache_usage_perc in /metrics")
        .parse::<f64>()
        .unwrap();
    assert!((0.0..=1.0).contains(&usage), "a fraction: {usage}");
    let info = metrics
        .lines()
        .find(|line| line.starts_with("sluice:cache_config_info{"))
        .expect("sluice:cache_config_info in /metrics");
    assert!(info.contains("block_size=\"16\""), "{info}");
    assert!(info.contains("num_gpu_blocks=\""), "{info}");
    assert!(info.ends_with(" 1"), "{info}");
    assert!(
        !metrics.contains("vllm:"),
        "vLLM names only when configured"
    );
}

#[tokio::test]
async fn render_gives_the_token_ids_generation_counts() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let messages = json!([{"role": "user", "content": "Name three colors."}]);
    let rendered: Value = post(
        "/v1/chat/completions/render",
        json!({"model": server().model, "messages": messages}),
    )
    .await
    .json()
    .await
    .unwrap();
    let chat_ids = rendered["token_ids"].as_array().expect("token_ids").len();
    let generated: Value = post(
        "/v1/chat/completions",
        json!({"model": server().model, "messages": messages, "max_tokens": 1}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        generated["usage"]["prompt_tokens"].as_u64(),
        Some(chat_ids as u64),
        "the chat template applied as generation applies it"
    );

    let rendered: Value = post(
        "/v1/completions/render",
        json!({"model": server().model, "prompt": "The capital of France is"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let ids = rendered[0]["token_ids"].as_array().expect("[{token_ids}]");
    assert!(!ids.is_empty() && ids.len() < chat_ids, "{rendered}");

    let invalid = post(
        "/v1/chat/completions/render",
        json!({"model": server().model, "messages": []}),
    )
    .await;
    assert_eq!(invalid.status(), 400, "validated as a completion is");
}
