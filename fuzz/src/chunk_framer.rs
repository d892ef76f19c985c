//! Target `chunk_framer`: a stream's framer (SSE or WebSocket, chat or
//! completion) with fuzzed ids, model name, token texts, usage and errors.
//! Every SSE write is whole `data: <JSON>\n\n` events (or `data: [DONE]`),
//! every WebSocket frame one JSON message tagged with the stream's id, and
//! the JSON carries the text, id and model exactly.

use bytes::BytesMut;
use serde_json::Value;
use sluice::openai::ApiError;
use sluice::openai::framing::{ChunkFramer, Framing};
use sluice::pipeline::Endpoint;
use sluice_engine::{FinishReason, Usage};

use crate::check;
use crate::input::Input;

struct Stream {
    framer: ChunkFramer,
    endpoint: Endpoint,
    id: String,
    model: String,
    include_usage: bool,
    /// The WebSocket stream id; none for SSE.
    ws_id: Option<String>,
}

/// Input: flags (endpoint, usage, framing), id, model, stream id, creation
/// time, then operations until the bytes run out.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let endpoint = if flags & 1 == 0 {
        Endpoint::Chat
    } else {
        Endpoint::Completion
    };
    let include_usage = flags & 2 != 0;
    let id = input.string(64);
    let model = input.string(64);
    let ws_id = (flags & 4 != 0).then(|| input.string(64));
    let framing = ws_id
        .clone()
        .map_or(Framing::Sse, |stream_id| Framing::WebSocket { stream_id });
    let created = input.u64();
    let stream = Stream {
        framer: ChunkFramer::new(endpoint, &id, created, &model, include_usage, framing),
        endpoint,
        id,
        model,
        include_usage,
        ws_id,
    };
    while !input.is_empty() {
        let mut out = BytesMut::new();
        match input.byte() % 5 {
            0 => {
                stream.framer.role(&mut out);
                if endpoint == Endpoint::Completion {
                    assert!(out.is_empty(), "completion streams announce no role");
                    continue;
                }
                let chunk = stream.chunk(&out);
                assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant");
            }
            1 => {
                let text = input.string(255);
                stream.framer.text(&text, &mut out);
                let chunk = stream.chunk(&out);
                let sent = match endpoint {
                    Endpoint::Chat => &chunk["choices"][0]["delta"]["content"],
                    Endpoint::Completion => &chunk["choices"][0]["text"],
                };
                assert_eq!(sent, text.as_str(), "token text changed on the wire");
                assert_eq!(chunk.get("usage").is_some(), include_usage);
            }
            2 => {
                let reason = if input.byte() & 1 == 0 {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                };
                let usage = Usage {
                    prompt_tokens: input.u32(),
                    completion_tokens: input.u32(),
                    cached_tokens: input.u32(),
                };
                stream.finish(reason, usage);
            }
            3 => {
                let message = input.string(255);
                let error = match input.byte() % 3 {
                    0 => ApiError::invalid(input.string(32), message),
                    1 => ApiError::bad_request(message),
                    _ => ApiError::internal(message),
                };
                stream.framer.error(&error, &mut out);
                stream.error(&out, &error);
            }
            _ => {
                stream.framer.done(&mut out);
                stream.done(&out);
            }
        }
    }
}

impl Stream {
    /// One write that must be exactly one chunk: its JSON, checked against
    /// the stream's envelope.
    fn chunk(&self, out: &[u8]) -> Value {
        let chunk = match &self.ws_id {
            None => {
                let events = sse_events(out);
                assert_eq!(events.len(), 1, "one write, one chunk");
                check::json(events[0])
            }
            Some(stream_id) => {
                let mut message = check::json(out);
                assert_eq!(message["type"], "chunk");
                assert_eq!(
                    message["id"],
                    stream_id.as_str(),
                    "message for another stream"
                );
                message["data"].take()
            }
        };
        assert_eq!(chunk["id"], self.id.as_str());
        assert_eq!(chunk["model"], self.model.as_str());
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        };
        assert_eq!(chunk["object"], object);
        chunk
    }

    fn finish(&self, reason: FinishReason, usage: Usage) {
        let frames = self.framer.finish_frames(reason, usage);
        let mut whole = BytesMut::new();
        self.framer.finish(reason, usage, &mut whole);
        assert_eq!(
            whole,
            frames.concat().as_slice(),
            "finish differs from its frames"
        );
        let (last, chunks) = frames.split_last().expect("finish writes frames");
        let last_choice = self.chunk(&chunks[0]);
        assert_eq!(last_choice["choices"][0]["finish_reason"], reason.as_str());
        if let Some(usage_frame) = chunks.get(1) {
            let totals = &self.chunk(usage_frame)["usage"];
            assert_eq!(totals["prompt_tokens"], usage.prompt_tokens);
            assert_eq!(totals["completion_tokens"], usage.completion_tokens);
            assert_eq!(
                totals["total_tokens"],
                u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens)
            );
        }
        assert_eq!(chunks.len(), 1 + usize::from(self.include_usage));
        self.done(last);
    }

    fn done(&self, out: &[u8]) {
        match &self.ws_id {
            None => assert_eq!(out, b"data: [DONE]\n\n"),
            Some(stream_id) => {
                let message = check::json(out);
                assert_eq!(message["type"], "done");
                assert_eq!(message["id"], stream_id.as_str());
            }
        }
    }

    fn error(&self, out: &[u8], error: &ApiError) {
        match &self.ws_id {
            None => {
                let events = sse_events(out);
                assert_eq!(events.len(), 2, "an error event, then [DONE]");
                let body = check::json(events[0]);
                assert_eq!(body["error"]["message"], error.message.as_str());
                assert_eq!(events[1], b"[DONE]");
            }
            Some(stream_id) => {
                let message = check::json(out);
                assert_eq!(message["type"], "error");
                assert_eq!(message["id"], stream_id.as_str());
                assert_eq!(message["error"]["message"], error.message.as_str());
            }
        }
    }
}

/// Splits SSE output into its events' payloads: each event must be one
/// `data: ` line ended by a blank line, with JSON or `[DONE]` in it.
fn sse_events(out: &[u8]) -> Vec<&[u8]> {
    let text = std::str::from_utf8(out).expect("SSE output is UTF-8");
    assert!(text.ends_with("\n\n"), "unterminated SSE event: {text:?}");
    text[..text.len() - 2]
        .split("\n\n")
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("SSE event without `data: `: {event:?}"));
            assert!(
                !payload.contains('\n'),
                "SSE payload over several lines: {payload:?}"
            );
            if payload != "[DONE]" {
                check::json(payload.as_bytes());
            }
            payload.as_bytes()
        })
        .collect()
}
