//! Tenant-fair steps in the engine: a light tenant's prompt arriving
//! behind a flood of another tenant's long prompts is prefilled first, and
//! one arriving beside a flood's decodes has them sit out its step, so its first
//! token waits neither for the flood's prefills nor for its decodes.

mod common;

use std::time::Instant;

use sluice_engine::{EngineHandle, EngineOptions, GenerationRequest, SamplingParams, StreamEvent};

/// A request with default sampling that ignores end-of-text, without the
/// prefix cache.
fn request(tenant: &str, prompt_tokens: Vec<i32>, max_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        prompt_tokens,
        sampling: SamplingParams::default(),
        max_tokens,
        stop: Vec::new(),
        ignore_eos: true,
        arrived_at: Instant::now(),
        use_prefix_cache: false,
        on_slow_consumer: None,
        tenant: tenant.to_owned(),
    }
}

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
    let request = |tenant: &str, prompt: String| request(tenant, model.tokenize(&prompt, true), 2);
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

#[tokio::test]
async fn a_light_tenants_prompt_is_prefilled_in_one_step_beside_a_floods_decodes() {
    const BUDGET: usize = 32;
    const FLOOD: usize = 20;
    const FLOOD_TOKENS: u32 = 120;
    let mut config = common::test_config().engine;
    config.max_sequences = 24;
    config.context_per_sequence = 256;
    config.step_token_budget = BUDGET as u32;
    config.min_prefill_chunk = 8;
    config.prefix_cache = false;
    let engine = EngineHandle::spawn(EngineOptions {
        model_path: common::model_path(),
        chat_template: None,
        config,
    });
    let model = engine.wait_ready().await.unwrap();
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let prompt = model.tokenize(&format!("Flood {i}:"), true);
        flood.push(
            engine
                .submit(request("flood", prompt, FLOOD_TOKENS))
                .unwrap(),
        );
    }
    // Every flood stream decodes before the light prompt arrives.
    for stream in &mut flood {
        assert!(matches!(
            stream.next().await,
            Some(StreamEvent::Token { .. })
        ));
    }
    let readers: Vec<_> = flood
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                loop {
                    match stream.next().await {
                        Some(StreamEvent::Token { .. }) => {}
                        Some(StreamEvent::Finished { usage, .. }) => {
                            return usage.completion_tokens;
                        }
                        other => panic!("flood stream ended with {other:?}"),
                    }
                }
            })
        })
        .collect();

    let light_prompt = model.tokenize(
        "Please tell me a short story about a small red fox who lives in the forest.",
        true,
    );
    // Beside 20 decodes a 32-token step leaves 12 for prefill: this prompt
    // needs two steps unless the flood's decodes sit out, one if they do.
    assert!(
        light_prompt.len() > BUDGET - FLOOD && light_prompt.len() <= BUDGET,
        "prompt of {} tokens does not test the rule",
        light_prompt.len()
    );
    let mut light = engine.submit(request("light", light_prompt, 1)).unwrap();
    let timings = loop {
        match light.next().await {
            Some(StreamEvent::Token { .. }) => {}
            Some(StreamEvent::Finished { timings, .. }) => break timings,
            other => panic!("light stream ended with {other:?}"),
        }
    };
    assert_eq!(timings.prefill_steps, 1, "the light prompt's prefill steps");
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            FLOOD_TOKENS,
            "a flood stream that made room still finishes"
        );
    }
}
