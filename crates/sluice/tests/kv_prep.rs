//! KV prep on the real model: a request queued for admission gets its prompt
//! prefilled meanwhile and reuses it once admitted; one whose client leaves
//! while queued has its cells freed; preps never take a sequence a real
//! request waits for.

mod common;

use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_engine::{EngineHandle, EngineOptions, GenerationRequest, SamplingParams};
use tokio::sync::Mutex;

/// One server admitting a single stream, so a second request queues; the
/// tests take turns so counters and the engine are theirs alone.
static TURN: Mutex<()> = Mutex::const_new(());

const STARTED: &str = "sluice:kv_prep_started_total";
const TOKENS: &str = "sluice:kv_prep_tokens_total";
const USED: &str = "sluice:kv_prep_used_total";
const CANCELLED: &str = "sluice:kv_prep_cancelled_total";
const CACHED: &str = "sluice:kv_cached_tokens";

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut config = common::test_config();
        config.engine.max_sequences = 4;
        config.governor.max_streams = 1;
        config.flags.kv_prep.enabled = true;
        common::spawn_server(config)
    })
}

async fn metric(name: &str) -> f64 {
    common::metric_at(base(), name).await
}

/// Polls until `done` holds for the metric's value, for at most a minute.
async fn wait_for(name: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = metric(name).await;
        if done(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {value}");
        tokio::task::yield_now().await;
    }
}

async fn complete(prompt: &str, max_tokens: u32) -> Value {
    let response = common::client()
        .post(format!("{}/v1/completions", base()))
        .json(&json!({
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Starts a long stream and returns once it runs, holding the only
/// admission permit until the returned response is dropped.
async fn occupy_admission() -> reqwest::Response {
    let mut response = common::client()
        .post(format!("{}/v1/completions", base()))
        .json(&json!({
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "prompt": "Tell a very long story about a ship.",
            "max_tokens": 450,
            "ignore_eos": true,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().expect("a first chunk");
    response
}

/// Sends `prompt` once alone and returns its token count.
async fn prompt_tokens(prompt: &str) -> f64 {
    complete(prompt, 1).await["usage"]["prompt_tokens"]
        .as_f64()
        .unwrap()
}

#[tokio::test]
async fn a_queued_request_is_prepped_and_reuses_the_prep_once_admitted() {
    let _turn = TURN.lock().await;
    let prompt = "The harbour master keeps a ledger of every ship that enters the \
        port: its name, its flag, its cargo, the hour it docked and the berth it was \
        given. Today the ledger lists a grain carrier, two ferries and a yacht.";
    let tokens = prompt_tokens(prompt).await;
    let (started, prepped, used) = (
        metric(STARTED).await,
        metric(TOKENS).await,
        metric(USED).await,
    );
    let running = occupy_admission().await;
    let queued = tokio::spawn(complete(prompt, 8));
    wait_for(TOKENS, |value| value >= prepped + tokens - 1.0).await;
    assert_eq!(metric(STARTED).await, started + 1.0);
    assert_eq!(
        metric(TOKENS).await,
        prepped + tokens - 1.0,
        "the prep prefills all but the last prompt token"
    );
    drop(running);
    let body = queued.await.unwrap();
    assert_eq!(metric(USED).await, used + 1.0);
    assert_eq!(body["usage"]["prompt_tokens"].as_f64().unwrap(), tokens);
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_f64()
            .unwrap(),
        tokens - 1.0,
        "only the last prompt token was left to decode"
    );
    assert_eq!(body["usage"]["completion_tokens"], 8);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(!body["choices"][0]["text"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn a_prepped_request_cancelled_while_queued_frees_its_cells() {
    let _turn = TURN.lock().await;
    let prompt = "A lighthouse keeper writes down the weather every evening: the \
        wind's direction and strength, the height of the waves, whether fog rolled in \
        from the sea, and which lamps needed new wicks before the night began.";
    let tokens = prompt_tokens(prompt).await;
    let (prepped, cancelled) = (metric(TOKENS).await, metric(CANCELLED).await);
    let running = occupy_admission().await;
    let queued = tokio::spawn(complete(prompt, 8));
    wait_for(TOKENS, |value| value >= prepped + tokens - 1.0).await;
    // The running stream is not idle, so only the prep changes this gauge.
    let held = metric(CACHED).await;
    queued.abort();
    assert!(queued.await.unwrap_err().is_cancelled());
    wait_for(CANCELLED, |value| value >= cancelled + 1.0).await;
    assert_eq!(metric(CANCELLED).await, cancelled + 1.0);
    wait_for(CACHED, |value| value <= held - (tokens - 1.0)).await;
    assert_eq!(metric(CACHED).await, held - (tokens - 1.0));
    drop(running);
}

#[tokio::test]
async fn preps_never_take_a_sequence_a_request_waits_for() {
    let _turn = TURN.lock().await;
    let mut config = common::test_config().engine;
    config.max_sequences = 2;
    let engine = EngineHandle::spawn(EngineOptions {
        model_path: common::model_path(),
        chat_template: None,
        config,
    });
    let model = engine.wait_ready().await.unwrap();
    let long_request = |prompt: &str| GenerationRequest {
        prompt_tokens: model.tokenize(prompt, true),
        sampling: SamplingParams::default(),
        max_tokens: 400,
        stop: Vec::new(),
        ignore_eos: true,
        arrived_at: Instant::now(),
        use_prefix_cache: true,
        on_slow_consumer: None,
        tenant: "default".to_owned(),
        priority: Default::default(),
        cache_namespace: "default".to_owned(),
    };
    // Both sequences run and a third request waits for one.
    let mut streams: Vec<_> = ["A story about a ship.", "A story about a train."]
        .into_iter()
        .chain(["A story about a plane."])
        .map(|prompt| engine.submit(long_request(prompt)).unwrap())
        .collect();
    for stream in &mut streams[..2] {
        stream.next().await.unwrap();
    }
    let prompt = model.tokenize(
        "A prompt long enough to be worth preparing, about harbours, ships, \
         cargo, tides and the people who work on the docks every day.",
        true,
    );
    let prep = engine.prepare(prompt.clone(), 16, "default");
    let stats = engine.stats();
    let steps = stats.steps_total.load(Ordering::Relaxed);
    // Some steps ran after the prep arrived, none of them started it.
    while stats.steps_total.load(Ordering::Relaxed) < steps + 8 {
        tokio::task::yield_now().await;
    }
    let started = || stats.kv_prep_started_total.load(Ordering::Relaxed);
    assert_eq!(started(), 0, "no sequence is free for a prep");
    // The waiting request takes the freed sequence; the prep still waits.
    drop(streams.remove(0));
    streams[1].next().await.unwrap();
    let steps = stats.steps_total.load(Ordering::Relaxed);
    while stats.steps_total.load(Ordering::Relaxed) < steps + 8 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        started(),
        0,
        "the freed sequence went to the waiting request"
    );
    // With every request gone both sequences are free: the prep starts.
    streams.clear();
    let deadline = Instant::now() + Duration::from_secs(60);
    while started() == 0 {
        assert!(Instant::now() < deadline, "the prep never started");
        tokio::task::yield_now().await;
    }
    drop(prep);
}
