//! Tenant isolation of the caches on the real model (the class of vLLM's
//! CVE-2025-46570): a request reuses cached prompt KV, copies a running
//! sequence's KV, or gets a cached opening only from its own tenant under
//! the same `cache_salt`, so `cached_tokens` never reveals another tenant's
//! prompt.

mod common;

use std::time::Instant;

use serde_json::{Value, json};
use sluice_core::config::TenantConfig;
use sluice_engine::{
    EngineHandle, EngineOptions, GenerationRequest, SamplingParams, StreamEvent, Usage,
};
use tokio::sync::Mutex;

/// The tests take turns: each runs its own engine.
static TURN: Mutex<()> = Mutex::const_new(());

/// About 60 tokens, well over the prefix cache's 16-token minimum.
const PROMPT: &str = "You are the night clerk of a small observatory. Visitors ask \
    about the telescope, the dome, the star charts, the weather on the ridge, the \
    last bus down to the village and the hot chocolate machine. Answer briefly.";

const SPECULATION_HITS: &str = "sluice:speculation_hits_total";

fn tenant(name: &str, key: &str) -> TenantConfig {
    TenantConfig {
        name: name.to_owned(),
        api_keys: vec![key.to_owned()],
        weight: 1.0,
        max_concurrent: None,
        tokens_per_minute: None,
        priority: Default::default(),
    }
}

/// A deterministic chat request as the tenant owning `key`; returns the
/// response's `cached_tokens`.
async fn cached_tokens(base: &str, key: &str, cache_salt: Option<&str>) -> u64 {
    let mut body = json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8,
        "ignore_eos": true,
        "temperature": 0,
    });
    if let Some(salt) = cache_salt {
        body["cache_salt"] = json!(salt);
    }
    let response = common::client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("usage has cached_tokens: {body}"))
}

#[tokio::test]
async fn cached_prompts_and_openings_are_shared_only_within_a_tenant_and_salt() {
    let _turn = TURN.lock().await;
    let mut config = common::test_config();
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    config.admission.tenants = vec![tenant("alpha", "sk-alpha"), tenant("beta", "sk-beta")];
    config.flags.first_token_speculation.enabled = true;
    config.speculation.first_tokens = 4;
    let base = common::spawn_server(config);
    let hits = || common::metric_at(&base, SPECULATION_HITS);

    assert_eq!(cached_tokens(&base, "sk-alpha", None).await, 0, "cold");
    let hits_before = hits().await;
    assert_eq!(
        cached_tokens(&base, "sk-beta", None).await,
        0,
        "beta reuses nothing of alpha's identical prompt"
    );
    assert_eq!(hits().await, hits_before, "nor alpha's cached opening");
    assert!(
        cached_tokens(&base, "sk-alpha", None).await > 0,
        "alpha reuses its own prompt"
    );
    assert_eq!(hits().await, hits_before + 1.0, "and its own opening");
    assert_eq!(
        cached_tokens(&base, "sk-alpha", Some("another-salt")).await,
        0,
        "another salt is another namespace"
    );
    let body = json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": "hi"}],
        "cache_salt": "",
    });
    let response = common::client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("sk-alpha")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "cache_salt", "{error}");
}

fn request(prompt: Vec<i32>, namespace: &str, max_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        prompt_tokens: prompt,
        sampling: SamplingParams::default(),
        max_tokens,
        stop: Vec::new(),
        ignore_eos: true,
        arrived_at: Instant::now(),
        use_prefix_cache: true,
        on_slow_consumer: None,
        tenant: namespace.to_owned(),
        priority: Default::default(),
        cache_namespace: namespace.to_owned(),
    }
}

/// Reads a stream to its end; its usage.
async fn usage(stream: &mut sluice_engine::GenerationStream) -> Usage {
    loop {
        match stream.next().await.expect("the stream ends with an event") {
            StreamEvent::Token { .. } => {}
            StreamEvent::Finished { usage, .. } => return usage,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_running_sequences_kv_is_copied_only_within_its_namespace() {
    let _turn = TURN.lock().await;
    let mut config = common::test_config().engine;
    config.max_sequences = 4;
    let engine = EngineHandle::spawn(EngineOptions {
        model_path: common::model_path(),
        chat_template: None,
        config,
    });
    let model = engine.wait_ready().await.unwrap();
    let prompt = model.tokenize(PROMPT, true);
    // Alpha's stream runs (its first token means its prompt is in its KV)
    // while the others arrive, so the only KV to share is a running copy.
    let mut running = engine
        .submit(request(prompt.clone(), "alpha", 400))
        .unwrap();
    assert!(matches!(
        running.next().await,
        Some(StreamEvent::Token { .. })
    ));
    let mut other = engine.submit(request(prompt.clone(), "beta", 2)).unwrap();
    assert_eq!(
        usage(&mut other).await.cached_tokens,
        0,
        "beta copies nothing"
    );
    let mut own = engine.submit(request(prompt.clone(), "alpha", 2)).unwrap();
    assert_eq!(
        usage(&mut own).await.cached_tokens as usize,
        prompt.len() - 1,
        "alpha copies its running prompt"
    );
    drop(running);
}
