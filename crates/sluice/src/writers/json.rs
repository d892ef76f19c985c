//! The JSON writer: a non-streaming request's chunks collected into one
//! OpenAI completion body.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_core::clock::unix_seconds;

use super::{PREFIX_HINT, SERVER_TIMING, millis, server_timing};
use crate::openai::framing::{object_name, usage_json};
use crate::pipeline::{Chunk, Endpoint, Generation, PipelineError};

/// A finished answer: its body and headers.
pub struct JsonAnswer {
    pub body: Vec<u8>,
    pub headers: [(&'static str, String); 2],
}

/// Waits for the whole answer; an error before the end is the request's
/// error (nothing was sent yet).
pub async fn collect(mut generation: Generation) -> Result<JsonAnswer, PipelineError> {
    let started_at = Instant::now();
    let mut text = String::new();
    let mut first_token_at = None;
    loop {
        match generation.next().await {
            Some(Chunk::Text(piece)) => {
                first_token_at.get_or_insert_with(Instant::now);
                text.push_str(&piece);
            }
            Some(Chunk::Finish { reason, usage }) => {
                let choice = match generation.endpoint {
                    Endpoint::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": reason.as_str(),
                    }),
                    Endpoint::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": null,
                        "finish_reason": reason.as_str(),
                    }),
                };
                let body = json!({
                    "id": generation.id,
                    "object": object_name(generation.endpoint, false),
                    "created": unix_seconds(),
                    "model": generation.model,
                    "choices": [choice],
                    "usage": usage_json(usage),
                })
                .to_string()
                .into_bytes();
                let first_token = first_token_at.map_or(Duration::ZERO, |at| at - started_at);
                let timing = format!(
                    "{}, first_token;dur={:.3}, generate;dur={:.3}",
                    server_timing(&generation.times),
                    millis(first_token),
                    millis(started_at.elapsed())
                );
                generation.wrote(body.len());
                return Ok(JsonAnswer {
                    body,
                    headers: [
                        (SERVER_TIMING, timing),
                        (PREFIX_HINT, format!("{:016x}", generation.prefix_hint)),
                    ],
                });
            }
            Some(Chunk::Error(error)) => return Err(error),
            None => return Err(PipelineError::EndedUnexpectedly),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use sluice_engine::{EngineTimings, FinishReason, StreamEvent, Usage};

    use super::*;
    use crate::pipeline::{script, scripted};

    #[tokio::test]
    async fn the_pieces_become_one_chat_completion_with_usage() {
        let (events, generation, _streams) = scripted(Endpoint::Chat, false);
        for piece in ["Hel", "lo"] {
            events.send(script::token(piece)).await.unwrap();
        }
        events
            .send(StreamEvent::Finished {
                reason: FinishReason::Stop,
                usage: Usage {
                    prompt_tokens: 4,
                    completion_tokens: 2,
                    cached_tokens: 1,
                },
                timings: EngineTimings::default(),
            })
            .await
            .unwrap();
        let answer = collect(generation).await.unwrap();
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["total_tokens"], 6);
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        assert!(answer.headers[0].1.contains("first_token;dur="));
    }

    #[tokio::test]
    async fn an_error_before_the_end_is_the_answer() {
        let (events, generation, _streams) = scripted(Endpoint::Completion, false);
        events.send(script::token("partial")).await.unwrap();
        drop(events);
        assert!(matches!(
            collect(generation).await,
            Err(PipelineError::EndedUnexpectedly)
        ));
    }
}
