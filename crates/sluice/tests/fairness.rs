//! Tenant-fair steps in the engine: a light tenant's prompt arriving
//! behind a flood of another tenant's long prompts is prefilled first, and
//! one arriving beside a flood's decodes has them sit out its step, a step
//! that holds its prompt and not the flood's, so its first token waits
//! neither for the flood's prefills nor for its decodes.

mod common;

use std::sync::atomic::Ordering;
use std::time::Instant;

use sluice_core::config::EngineConfig;
use sluice_engine::{
    EngineHandle, EngineOptions, EngineTimings, GenerationRequest, GenerationStream, LoadedModel,
    SamplingParams, StreamEvent,
};
use tokio::task::JoinHandle;

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
        priority: Default::default(),
        cache_namespace: tenant.to_owned(),
    }
}

/// An engine on the test model with the test config, adjusted by `adjust`.
fn spawn_engine(adjust: impl FnOnce(&mut EngineConfig)) -> EngineHandle {
    let mut config = common::test_config().engine;
    adjust(&mut config);
    EngineHandle::spawn(EngineOptions {
        model_path: common::model_path(),
        chat_template: None,
        config,
    })
}

#[tokio::test]
async fn a_light_tenant_is_prefilled_before_a_floods_backlog() {
    let engine = spawn_engine(|config| {
        config.max_sequences = 12;
        config.context_per_sequence = 512;
        // A small budget: each flood prompt takes many steps to prefill.
        config.step_token_budget = 32;
        config.min_prefill_chunk = 16;
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

/// The engine of the sit-out tests: a 32-token step budget, so beside 20
/// decodes a step leaves 12 tokens for prefill.
const BUDGET: usize = 32;
const FLOOD: usize = 20;
const FLOOD_TOKENS: u32 = 120;

fn sit_out_engine() -> EngineHandle {
    spawn_engine(|config| {
        config.max_sequences = 24;
        config.context_per_sequence = 512;
        config.step_token_budget = BUDGET as u32;
        config.min_prefill_chunk = 8;
        config.prefix_cache = false;
    })
}

/// Starts the flood's streams and returns, once every one of them decodes,
/// readers that yield each stream's completion tokens.
async fn decoding_flood(engine: &EngineHandle, model: &LoadedModel) -> Vec<JoinHandle<u32>> {
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let prompt = model.tokenize(&format!("Flood {i}:"), true);
        flood.push(
            engine
                .submit(request("flood", prompt, FLOOD_TOKENS))
                .unwrap(),
        );
    }
    for stream in &mut flood {
        assert!(matches!(
            stream.next().await,
            Some(StreamEvent::Token { .. })
        ));
    }
    flood
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
        .collect()
}

/// A light prompt that fits one step with the flood's places, not without.
fn light_prompt(model: &LoadedModel) -> Vec<i32> {
    let prompt = model.tokenize(
        "Please tell me a short story about a small red fox who lives in the forest.",
        true,
    );
    assert!(
        prompt.len() > BUDGET - FLOOD && prompt.len() <= BUDGET,
        "prompt of {} tokens does not test the rule",
        prompt.len()
    );
    prompt
}

async fn timings(mut stream: GenerationStream) -> EngineTimings {
    loop {
        match stream.next().await {
            Some(StreamEvent::Token { .. }) => {}
            Some(StreamEvent::Finished { timings, .. }) => return timings,
            other => panic!("stream ended with {other:?}"),
        }
    }
}

async fn assert_flood_finishes(readers: Vec<JoinHandle<u32>>) {
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            FLOOD_TOKENS,
            "a flood stream that made room still finishes"
        );
    }
}

#[tokio::test]
async fn a_light_tenants_prompt_is_prefilled_in_one_step_beside_a_floods_decodes() {
    let engine = sit_out_engine();
    let model = engine.wait_ready().await.unwrap();
    let readers = decoding_flood(&engine, &model).await;
    // Beside 20 decodes a 32-token step leaves 12 for prefill: this prompt
    // needs two steps unless the flood's decodes sit out, one if they do.
    let light = engine
        .submit(request("light", light_prompt(&model), 1))
        .unwrap();
    assert_eq!(
        timings(light).await.prefill_steps,
        1,
        "the light prompt's prefill steps"
    );
    assert_flood_finishes(readers).await;
}

#[tokio::test]
async fn a_floods_prompt_waits_out_the_step_its_decodes_sit_out() {
    let engine = sit_out_engine();
    let model = engine.wait_ready().await.unwrap();
    let readers = decoding_flood(&engine, &model).await;
    // A long flood prompt takes 12 tokens a step beside the decodes. The
    // light prompt, sent after it, arrives while it prefills (or with it).
    let long_prompt = model.tokenize(&"Flood report: ".repeat(60), true);
    let chunk = BUDGET - FLOOD;
    let long = engine
        .submit(request("flood", long_prompt.clone(), 1))
        .unwrap();
    let light = engine
        .submit(request("light", light_prompt(&model), 1))
        .unwrap();
    assert_eq!(timings(light).await.prefill_steps, 1);
    // The light prompt's step is its prompt alone: the places the flood's
    // decodes gave up are not refilled with the flood's prefill, so the
    // long prompt spends exactly one step more than its 12-token chunks.
    assert_eq!(
        timings(long).await.prefill_steps as usize,
        long_prompt.len().div_ceil(chunk) + 1,
        "steps to prefill {} tokens in {chunk}-token chunks, plus the light prompt's",
        long_prompt.len()
    );
    assert_flood_finishes(readers).await;
}

/// Mean tokens per engine step while `tenant`'s four long prompts prefill
/// beside a light tenant's stream that decodes throughout.
async fn tokens_per_step_beside(tenant: &str) -> f64 {
    let engine = spawn_engine(|config| {
        config.max_sequences = 8;
        config.context_per_sequence = 512;
        config.step_token_budget = 64;
        config.mixed_step_token_budget = 24;
        config.min_prefill_chunk = 8;
        config.prefix_cache = false;
    });
    let model = engine.wait_ready().await.unwrap();
    let mut light = engine
        .submit(request("light", model.tokenize("Count to ten:", true), 200))
        .unwrap();
    assert!(matches!(
        light.next().await,
        Some(StreamEvent::Token { .. })
    ));
    let stats = engine.stats();
    let before = (
        stats.steps_total.load(Ordering::Relaxed),
        stats.step_tokens_total.load(Ordering::Relaxed),
    );
    let mut prompts = Vec::new();
    for i in 0..4 {
        let prompt = model.tokenize(&format!("Report {i}: ").repeat(40), true);
        prompts.push(engine.submit(request(tenant, prompt, 1)).unwrap());
    }
    for prompt in prompts {
        timings(prompt).await;
    }
    let steps = stats.steps_total.load(Ordering::Relaxed) - before.0;
    let tokens = stats.step_tokens_total.load(Ordering::Relaxed) - before.1;
    tokens as f64 / steps as f64
}

#[tokio::test]
async fn steps_shrink_to_the_mixed_budget_while_two_tenants_share_the_engine() {
    // The light stream keeps the light tenant in the engine: another
    // tenant's prompts prefill in steps of at most 24 tokens, so a new
    // light prompt never waits behind a long step. Prompts of the light
    // tenant's own get the whole 64-token budget.
    let mixed = tokens_per_step_beside("flood").await;
    assert!(mixed <= 24.0, "{mixed} tokens per step with two tenants");
    let single = tokens_per_step_beside("light").await;
    assert!(single > 48.0, "{single} tokens per step with one tenant");
}
