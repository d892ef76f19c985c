//! Tenant-fair prefill in the engine: a light tenant's prompt arriving
//! behind a flood of another tenant's long prompts is prefilled first, so
//! its first token does not wait for the flood's prefills.

mod common;

use std::time::Instant;

use sluice_engine::{EngineHandle, EngineOptions, GenerationRequest, SamplingParams, StreamEvent};

#[tokio::test]
async fn a_light_tenant_is_prefilled_before_a_floods_backlog() {
    let mut config = common::test_config().engine;
    config.max_sequences = 12;
    config.context_per_sequence = 512;
    // A small budget: each flood prompt takes many steps to prefill.
    config.step_token_budget = 32;
    config.min_prefill_chunk = 16;
    let engine = EngineHandle::spawn(EngineOptions {
        model_path: common::model_path(),
        chat_template: None,
        config,
    });
    let model = engine.wait_ready().await.unwrap();
    let request = |tenant: &str, prompt: String| GenerationRequest {
        prompt_tokens: model.tokenize(&prompt, true),
        sampling: SamplingParams::default(),
        max_tokens: 2,
        stop: Vec::new(),
        ignore_eos: true,
        arrived_at: Instant::now(),
        use_prefix_cache: false,
        on_slow_consumer: None,
        tenant: tenant.to_owned(),
    };
    let flood: Vec<_> = (0..8)
        .map(|i| {
            let prompt = format!("Flood report {i}: ").repeat(40);
            engine.submit(request("flood", prompt)).unwrap()
        })
        .collect();
    let light = engine
        .submit(request("light", "Hello there, how are you?".to_owned()))
        .unwrap();

    // Each stream reports when its first token came; the order is the
    // engine's step order, not wall-clock luck: a FIFO prefill would give
    // the light request its turn only after every flood prompt.
    let first_token = |mut stream: sluice_engine::GenerationStream| async move {
        match stream.next().await {
            Some(StreamEvent::Token { .. }) => Instant::now(),
            other => panic!("stream ended before its first token: {other:?}"),
        }
    };
    let light_at = tokio::spawn(first_token(light));
    let flood_at: Vec<_> = flood
        .into_iter()
        .map(|stream| tokio::spawn(first_token(stream)))
        .collect();
    let light_at = light_at.await.unwrap();
    let mut before_light = 0;
    for at in flood_at {
        if at.await.unwrap() < light_at {
            before_light += 1;
        }
    }
    assert!(
        before_light <= 1,
        "{before_light} of 8 flood streams got their first token before the light tenant"
    );
}
