//! The engine's prefix KV cache through the real server and model: a request
//! reuses the KV a finished request left in its sequence, and outputs stay
//! those of a cold prefill.

mod common;

use common::{ENGINE_EXCLUSIVE, metric, post, server};
use serde_json::{Value, json};

const HIT_TOKENS: &str = "sluice:prefix_cache_hit_tokens_total";
const HITS: &str = "sluice:prefix_cache_hits_total";
const EVICTIONS: &str = "sluice:prefix_cache_evictions_total";

/// About 100 tokens, used by no other test in this binary.
const SYSTEM_PROMPT: &str = "You are the front desk assistant of the Harbor View \
    Hotel. Guests ask about breakfast hours, parking, late checkout, the rooftop \
    pool, shuttle buses to the airport and the old town, and restaurants nearby. \
    Answer in one or two short sentences, politely, and never invent prices. \
    Breakfast is served from seven to ten in the garden room. Parking is in the \
    garage under the building. Late checkout until two is free for members.";

/// A generation's text, its prompt's token count and how many of those
/// the response says came from the cache.
struct Generated {
    text: String,
    prompt_tokens: u64,
    cached_tokens: u64,
}

async fn generate(path: &str, body: Value) -> Generated {
    let response = post(path, body).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let choice = &body["choices"][0];
    let text = choice["message"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .expect("choice has text");
    Generated {
        text: text.to_owned(),
        prompt_tokens: body["usage"]["prompt_tokens"].as_u64().unwrap(),
        cached_tokens: body["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
    }
}

async fn chat(messages: Value, max_tokens: u32) -> Generated {
    let body = json!({
        "model": server().model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    generate("/v1/chat/completions", body).await
}

async fn complete(prompt: &str, max_tokens: u32) -> Generated {
    let body = json!({
        "model": server().model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    generate("/v1/completions", body).await
}

/// How much a counter grew while `work` ran.
async fn delta<T>(name: &str, work: impl Future<Output = T>) -> (f64, T) {
    let before = metric(name).await;
    let out = work.await;
    (metric(name).await - before, out)
}

#[tokio::test]
async fn repeated_system_prompt_is_reused() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    // In the chat template the system text sits between special tokens, so
    // it tokenizes as it does alone.
    let system_tokens = complete(SYSTEM_PROMPT, 1).await.prompt_tokens;
    assert!(
        system_tokens >= 70,
        "system prompt is long: {system_tokens}"
    );
    let conversation = |user: &str| {
        json!([
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
        ])
    };
    chat(conversation("When is breakfast?"), 4).await;
    let before_hits = metric(HITS).await;
    let (hit_tokens, second) = delta(
        HIT_TOKENS,
        chat(conversation("Where can I park my car?"), 4),
    )
    .await;
    assert_eq!(metric(HITS).await - before_hits, 1.0);
    assert!(
        hit_tokens >= system_tokens as f64,
        "reused {hit_tokens} tokens, the system prompt alone is {system_tokens}"
    );
    assert!(hit_tokens < second.prompt_tokens as f64);
}

#[tokio::test]
async fn second_turn_reuses_the_first() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    let question = json!({"role": "user", "content": "Name a planet of the solar system."});
    let first = chat(json!([question]), 12).await;
    let turn_two = json!([
        question,
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "How far is it from the sun?"},
    ]);
    let (hit_tokens, second) = delta(HIT_TOKENS, chat(turn_two, 4)).await;
    assert!(
        hit_tokens >= first.prompt_tokens as f64,
        "reused {hit_tokens} tokens of turn two's {}, turn one's prompt is {}",
        second.prompt_tokens,
        first.prompt_tokens
    );
}

#[tokio::test]
async fn warm_greedy_output_matches_cold() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    // A prompt no other request has sent, so the first run prefills it all.
    let prompt = "Logbook of the lighthouse on Skerry 41, written by its keeper \
        during the long winter storms:";
    let (cold_hits, cold) = delta(HIT_TOKENS, complete(prompt, 8)).await;
    assert_eq!(cold_hits, 0.0, "the first run is a miss");
    let (warm_hits, warm) = delta(HIT_TOKENS, complete(prompt, 8)).await;
    // Everything but the last prompt token, which is decoded for logits.
    assert_eq!(warm_hits, (cold.prompt_tokens - 1) as f64);
    assert_eq!(cold.cached_tokens, 0);
    assert_eq!(
        warm.cached_tokens,
        cold.prompt_tokens - 1,
        "usage reports it"
    );
    // The warm run decodes one token on top of the cached KV where the cold
    // run prefilled the whole prompt in one batch. llama.cpp's CPU kernels
    // may accumulate in another order for another batch shape, so logits can
    // differ in the last bits, and greedy outputs can part at a near-tie and
    // drift from there; over a long output that is expected, not a bug. A
    // wrong prefix (cells of another sequence, a wrong position, a missing
    // token) changes the distribution itself and shows in the first tokens.
    // Eight tokens catch that while leaving near-ties unlikely.
    assert!(!cold.text.is_empty());
    assert_eq!(warm.text, cold.text);
}

#[tokio::test]
async fn concurrent_requests_share_a_prefix_still_being_prefilled() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    // A system prompt no other test sends: nothing holds it yet, so the
    // first request to arrive prefills it and the others copy its KV.
    let system = SYSTEM_PROMPT.replace("Harbor View", "Cliffside");
    let users = [
        "When is breakfast?",
        "Is there a pool?",
        "Can I check out late?",
        "Where do I park?",
    ];
    let conversation = |user: &str| {
        json!([
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ])
    };
    let system_tokens = complete(&system, 1).await.prompt_tokens;
    let before_hits = metric(HITS).await;
    let (hit_tokens, together) = delta(
        HIT_TOKENS,
        futures::future::join_all(users.iter().map(|user| chat(conversation(user), 8))),
    )
    .await;
    let sharing = (users.len() - 1) as f64;
    assert!(metric(HITS).await - before_hits >= sharing);
    assert!(
        hit_tokens >= sharing * system_tokens as f64,
        "{hit_tokens} tokens reused, the system prompt is {system_tokens}"
    );
    // Each alone again (reusing the cached prefix in place, which
    // `warm_greedy_output_matches_cold` checks against a cold prefill): a
    // copied prefix holding the wrong cells would change the first tokens.
    // Eight greedy tokens, for the reasons given there.
    for (user, together) in users.iter().zip(&together) {
        let alone = chat(conversation(user), 8).await;
        assert_eq!(together.text, alone.text, "answer to {user:?}");
    }
}

/// Each prompt repeats one distinct word; its stream continuing with
/// another word would mean it read another sequence's (or evicted) KV.
#[tokio::test]
async fn eviction_under_pressure_never_corrupts_a_running_stream() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    // More prompts than the test server's 32 sequences can cache.
    const WORDS: [&str; 40] = [
        "apple", "river", "tiger", "violin", "castle", "rocket", "pepper", "garden", "silver",
        "window", "dragon", "pencil", "island", "button", "forest", "candle", "mirror", "ladder",
        "turtle", "banana", "helmet", "jacket", "kettle", "lemon", "magnet", "needle", "orange",
        "parrot", "quartz", "saddle", "tomato", "velvet", "walnut", "yogurt", "zebra", "anchor",
        "bucket", "cactus", "donkey", "feather",
    ];
    let prompt = |word: &str| format!("{},", [word; 8].join(", "));
    let mut solo = Vec::new();
    for word in WORDS {
        solo.push(complete(&prompt(word), 6).await.text);
    }
    let before_evictions = metric(EVICTIONS).await;
    let concurrent =
        futures::future::join_all(WORDS.iter().map(|word| complete_owned(prompt(word)))).await;
    assert!(
        metric(EVICTIONS).await > before_evictions,
        "running more prompts than sequences evicted cached prefixes"
    );
    for ((word, solo), together) in WORDS.iter().zip(&solo).zip(&concurrent) {
        assert!(
            together.text.contains(word),
            "{word} stream continued its word: {:?}",
            together.text
        );
        for other in WORDS.iter().filter(|other| *other != word) {
            assert!(
                !together.text.contains(other),
                "{word} stream got {other}: {:?}",
                together.text
            );
        }
        // Six greedy tokens of a prompt this repetitive have no near-ties:
        // batch shape cannot change them, a corrupted KV would.
        assert_eq!(&together.text, solo, "{word} stream matches its solo run");
    }
}

async fn complete_owned(prompt: String) -> Generated {
    complete(&prompt, 6).await
}
