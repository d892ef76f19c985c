//! Behaviour of the OpenAI endpoints through the real server and model.

mod common;

use std::time::{Duration, Instant};

use common::{ENGINE_EXCLUSIVE, metric, parse_stream, post, server};
use futures::StreamExt;
use serde_json::{Value, json};

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": server().model,
        "messages": [{"role": "user", "content": content}],
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn completion(prompt: &str, extra: Value) -> Value {
    let mut body = json!({"model": server().model, "prompt": prompt});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn streaming_chat_is_well_formed_sse_ending_in_done() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let response = post(
        "/v1/chat/completions",
        chat(
            "Name three colors.",
            json!({"stream": true, "max_tokens": 12, "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let stream = parse_stream(&response.text().await.unwrap());
    let id = stream.chunks[0]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(stream.chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for chunk in &stream.chunks {
        assert_eq!(chunk["id"], id.as_str());
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], server().model.as_str());
    }
    let usage_chunk = stream.chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);
    assert!(stream.finish_reason.is_some());
    assert!(!stream.text.is_empty());
}

#[tokio::test]
async fn non_streaming_chat_returns_message_and_usage() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let response = post(
        "/v1/chat/completions",
        chat("Say hi.", json!({"max_tokens": 8})),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["choices"][0]["message"]["content"].is_string());
    let usage = &body["usage"];
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(prompt > 0 && (1..=8).contains(&completion));
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
}

#[tokio::test]
async fn max_tokens_ends_with_length() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let body = completion(
        "Once upon a time, in a land far away, there lived",
        json!({"max_tokens": 5, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let stream = parse_stream(&post("/v1/completions", body).await.text().await.unwrap());
    assert_eq!(stream.finish_reason.as_deref(), Some("length"));
    let usage = &stream.chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(stream.chunks[0]["object"], "text_completion");
}

#[tokio::test]
async fn stop_string_ends_the_stream_and_is_not_emitted() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    let prompt = "List the days of the week: Monday, Tuesday,";
    let params = json!({"max_tokens": 24, "temperature": 0});
    let free: Value = post("/v1/completions", completion(prompt, params))
        .await
        .json()
        .await
        .unwrap();
    let free_text = free["choices"][0]["text"].as_str().unwrap().to_owned();
    // Stop on a piece from the middle of what the model writes unconstrained.
    let words: Vec<&str> = free_text.split_whitespace().collect();
    assert!(
        words.len() >= 4,
        "model wrote enough to pick a stop from: {free_text:?}"
    );
    let stop = words[2];
    let expected = &free_text[..free_text.find(stop).unwrap()];

    let body = completion(
        prompt,
        json!({"max_tokens": 24, "temperature": 0, "stop": [stop], "stream": true}),
    );
    let stopped = parse_stream(&post("/v1/completions", body).await.text().await.unwrap());
    assert_eq!(stopped.finish_reason.as_deref(), Some("stop"));
    assert!(
        !stopped.text.contains(stop),
        "{:?} contains {stop:?}",
        stopped.text
    );
    assert_eq!(stopped.text, expected);
}

#[tokio::test]
async fn temperature_zero_is_deterministic_when_alone() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    let body = chat(
        "Write a sentence about the sea.",
        json!({"max_tokens": 24, "temperature": 0}),
    );
    let mut texts = Vec::new();
    for _ in 0..2 {
        let response: Value = post("/v1/chat/completions", body.clone())
            .await
            .json()
            .await
            .unwrap();
        texts.push(
            response["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(!texts[0].is_empty());
    assert_eq!(texts[0], texts[1]);
}

/// Each stream asks the model to continue a run of one distinct word; a
/// stream that received another stream's tokens would show that word.
#[tokio::test]
async fn sixteen_concurrent_streams_complete_without_crosstalk() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    const WORDS: [&str; 16] = [
        "apple", "river", "tiger", "violin", "castle", "rocket", "pepper", "garden", "silver",
        "window", "dragon", "pencil", "island", "button", "forest", "candle",
    ];
    let requests = WORDS.iter().map(|word| {
        let prompt = format!("{},", [*word; 8].join(", "));
        let body = completion(
            &prompt,
            json!({"max_tokens": 16, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
        );
        async move {
            let text = post("/v1/completions", body).await.text().await.unwrap();
            (*word, parse_stream(&text))
        }
    });
    let results = futures::future::join_all(requests).await;
    assert_eq!(results.len(), 16);
    for (word, stream) in &results {
        assert!(stream.finish_reason.is_some(), "{word} finished");
        assert!(
            stream.text.contains(word),
            "{word} stream continued its word: {:?}",
            stream.text
        );
        for other in WORDS.iter().filter(|other| *other != word) {
            assert!(
                !stream.text.contains(other),
                "{word} stream got {other}: {:?}",
                stream.text
            );
        }
        let id = stream.chunks[0]["id"].as_str().unwrap();
        assert!(stream.chunks.iter().all(|chunk| chunk["id"] == id));
    }
    let ids: std::collections::HashSet<_> = results
        .iter()
        .map(|(_, stream)| stream.chunks[0]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 16);
}

#[tokio::test]
async fn client_disconnect_frees_its_sequence() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    let cancellations_before = metric("sluice:engine_cancellations_total").await;
    let response = post(
        "/v1/completions",
        completion(
            "Tell a very long story about a ship.",
            json!({"max_tokens": 400, "ignore_eos": true, "stream": true}),
        ),
    )
    .await;
    let mut body = response.bytes_stream();
    let mut received = Vec::new();
    while received.len() < 3 {
        received.push(body.next().await.unwrap().unwrap());
    }
    assert_eq!(metric("sluice:num_requests_running").await, 1.0);
    drop(body);
    // The engine frees the sequence within a step; allow a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("sluice:num_requests_running").await != 0.0 {
        assert!(Instant::now() < deadline, "sequence was not freed");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        metric("sluice:engine_cancellations_total").await,
        cancellations_before + 1.0
    );
}

#[tokio::test]
async fn prompt_longer_than_the_context_is_rejected_before_queueing() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let long_prompt = "word ".repeat(600);
    let response = post(
        "/v1/completions",
        completion(&long_prompt, json!({"max_tokens": 4})),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert_eq!(body["error"]["param"], "prompt");
    // The test server has no long pool: its limit is below the model's, and
    // the message says so and what raises it.
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "This server serves at most 512 tokens per request (the model was trained for 8192;"
        ) && message.contains("engine.long_sequences"),
        "{message}"
    );
}

#[tokio::test]
async fn health_models_and_metrics_answer() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let base = &server().base;
    let client = common::client();
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], server().model.as_str());
    assert_eq!(models["data"][0]["max_model_len"], 512);
    let metrics = common::metrics_text().await;
    for name in [
        "sluice:time_to_first_token_seconds",
        "sluice:inter_token_latency_seconds",
        "sluice:e2e_request_latency_seconds",
        "sluice:request_queue_time_seconds",
        "sluice:num_requests_running",
        "sluice:num_requests_waiting",
        "sluice:prompt_tokens_total",
        "sluice:generation_tokens_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_streams_on_the_same_port() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(format!("{}/v1/chat/completions", server().base))
        .json(&chat("Hello!", json!({"stream": true, "max_tokens": 6})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let stream = parse_stream(&response.text().await.unwrap());
    assert!(stream.finish_reason.is_some());
}

#[tokio::test]
async fn responses_say_where_time_went_and_carry_a_prefix_hint() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    // Longer than the hint's leading blocks (64 tokens), as system prompts are.
    let system = "You are the harbour master's assistant. Answer questions about \
        berths, tides, pilots and fees briefly and politely, in plain words. The \
        harbour has twelve berths, a fuel dock and a slipway; pilots are required \
        for vessels over forty metres; fees are charged per metre per night and \
        paid at the office by the north gate, which opens at seven.";
    let ask = |question: &str, stream: bool| {
        json!({
            "model": server().model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "max_tokens": 2,
            "stream": stream,
        })
    };
    let streamed = post("/v1/chat/completions", ask("When is high tide?", true)).await;
    let timing = streamed.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        timing.contains("tokenize;dur=") && timing.contains("queue;dur="),
        "{timing}"
    );
    let hint = streamed.headers()["x-sluice-prefix-hint"].clone();
    streamed.text().await.unwrap();

    let whole = post("/v1/chat/completions", ask("Where is berth 4?", false)).await;
    let timing = whole.headers()["server-timing"].to_str().unwrap();
    assert!(
        timing.contains("first_token;dur=") && timing.contains("generate;dur="),
        "{timing}"
    );
    assert_eq!(
        whole.headers()["x-sluice-prefix-hint"],
        hint,
        "same system prompt, same hint"
    );
    let other = post(
        "/v1/chat/completions",
        json!({
            "model": server().model,
            "messages": [{"role": "user", "content": "A different conversation entirely, \
                about mountains, snow, glaciers and the people who climb them."}],
            "max_tokens": 2,
        }),
    )
    .await;
    assert_ne!(other.headers()["x-sluice-prefix-hint"], hint);
}
