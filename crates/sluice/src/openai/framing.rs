//! OpenAI's streaming chunks, framed for SSE or a WebSocket: what every
//! writer puts on the wire. The JSON around the token text is serialised
//! once per stream; per token only the text is escaped into the output
//! buffer.

use bytes::{BufMut, BytesMut};
use sluice_engine::{FinishReason, Usage};

use super::error::ApiError;
use crate::pipeline::Endpoint;

/// The OpenAI `object` name of a response or chunk.
pub fn object_name(endpoint: Endpoint, streaming: bool) -> &'static str {
    match (endpoint, streaming) {
        (Endpoint::Chat, true) => "chat.completion.chunk",
        (Endpoint::Chat, false) => "chat.completion",
        (Endpoint::Completion, _) => "text_completion",
    }
}

/// How chunks are wrapped on the wire: the JSON payloads are the same.
#[derive(Debug, Clone)]
pub enum Framing {
    /// `data: {chunk}\n\n`, ending with `data: [DONE]\n\n`.
    Sse,
    /// One WebSocket message per chunk, `{"type":"chunk","id":…,"data":{chunk}}`,
    /// tagged with the client's stream id; ends with `{"type":"done",…}`.
    WebSocket { stream_id: String },
}

pub struct ChunkFramer {
    endpoint: Endpoint,
    /// `{"id":…,"object":…,"created":…,"model":…`
    envelope: String,
    /// Framing prefix + envelope + `,"choices":[{"index":0,`
    choice_head: String,
    /// Closes a choice chunk (`}]}` or `}],"usage":null}`) and the frame.
    choice_tail: String,
    /// Opens any other payload: `data: ` or the WebSocket message head.
    frame_head: String,
    frame_tail: &'static str,
    done: String,
    /// The client's stream id, for WebSocket framing's error messages.
    ws_stream_id: Option<String>,
    /// `stream_options.include_usage`: a usage chunk before the end.
    include_usage: bool,
}

impl ChunkFramer {
    pub fn new(
        endpoint: Endpoint,
        id: &str,
        created: u64,
        model: &str,
        include_usage: bool,
        framing: Framing,
    ) -> Self {
        let envelope = format!(
            "{{\"id\":{},\"object\":\"{}\",\"created\":{created},\"model\":{}",
            json_string(id),
            object_name(endpoint, true),
            json_string(model)
        );
        let (frame_head, frame_tail, done, ws_stream_id): (String, &str, String, Option<String>) =
            match &framing {
                Framing::Sse => (
                    "data: ".to_owned(),
                    "\n\n",
                    "data: [DONE]\n\n".to_owned(),
                    None,
                ),
                Framing::WebSocket { stream_id } => {
                    let quoted_id = json_string(stream_id);
                    (
                        format!("{{\"type\":\"chunk\",\"id\":{quoted_id},\"data\":"),
                        "}",
                        format!("{{\"type\":\"done\",\"id\":{quoted_id}}}"),
                        Some(stream_id.clone()),
                    )
                }
            };
        let choice_head = format!("{frame_head}{envelope},\"choices\":[{{\"index\":0,");
        let choice_tail = format!(
            "{}{}",
            if include_usage {
                "}],\"usage\":null}"
            } else {
                "}]}"
            },
            frame_tail
        );
        Self {
            endpoint,
            envelope,
            choice_head,
            choice_tail,
            frame_head,
            frame_tail,
            done,
            ws_stream_id,
            include_usage,
        }
    }

    /// The chat stream's opening chunk announcing the assistant role.
    pub fn role(&self, out: &mut BytesMut) {
        if self.endpoint == Endpoint::Chat {
            out.put_slice(self.choice_head.as_bytes());
            out.put_slice(
                br#""delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null"#,
            );
            out.put_slice(self.choice_tail.as_bytes());
        }
    }

    pub fn text(&self, text: &str, out: &mut BytesMut) {
        out.put_slice(self.choice_head.as_bytes());
        match self.endpoint {
            Endpoint::Chat => {
                out.put_slice(br#""delta":{"content":"#);
                write_json_string(text, out);
                out.put_slice(br#"},"logprobs":null,"finish_reason":null"#);
            }
            Endpoint::Completion => {
                out.put_slice(br#""text":"#);
                write_json_string(text, out);
                out.put_slice(br#","logprobs":null,"finish_reason":null"#);
            }
        }
        out.put_slice(self.choice_tail.as_bytes());
    }

    /// The last choice chunk, carrying the finish reason.
    pub fn finish_chunk(&self, reason: FinishReason, out: &mut BytesMut) {
        out.put_slice(self.choice_head.as_bytes());
        out.put_slice(match self.endpoint {
            Endpoint::Chat => br#""delta":{},"logprobs":null,"finish_reason":""#.as_slice(),
            Endpoint::Completion => br#""text":"","logprobs":null,"finish_reason":""#.as_slice(),
        });
        out.put_slice(reason.as_str().as_bytes());
        out.put_u8(b'"');
        out.put_slice(self.choice_tail.as_bytes());
    }

    /// The usage chunk of `stream_options.include_usage`: no choices.
    pub fn usage_chunk(&self, usage: Usage, out: &mut BytesMut) {
        out.put_slice(self.frame_head.as_bytes());
        out.put_slice(self.envelope.as_bytes());
        out.put_slice(b",\"choices\":[],\"usage\":");
        out.put_slice(usage_json(usage).to_string().as_bytes());
        out.put_u8(b'}');
        out.put_slice(self.frame_tail.as_bytes());
    }

    pub fn done(&self, out: &mut BytesMut) {
        out.put_slice(self.done.as_bytes());
    }

    /// The frames that end a finished stream, each whole: the last choice
    /// chunk, the usage chunk if asked for, then the end marker (`[DONE]`
    /// or the WebSocket `done` message).
    pub fn finish_frames(&self, reason: FinishReason, usage: Usage) -> Vec<BytesMut> {
        let mut frames = vec![BytesMut::new()];
        self.finish_chunk(reason, &mut frames[0]);
        if self.include_usage {
            let mut usage_frame = BytesMut::new();
            self.usage_chunk(usage, &mut usage_frame);
            frames.push(usage_frame);
        }
        let mut done = BytesMut::new();
        self.done(&mut done);
        frames.push(done);
        frames
    }

    /// [`Self::finish_frames`] written one after another into `out`.
    pub fn finish(&self, reason: FinishReason, usage: Usage, out: &mut BytesMut) {
        for frame in self.finish_frames(reason, usage) {
            out.extend_from_slice(&frame);
        }
    }

    /// An error that ends the stream: over SSE an error payload, then
    /// `[DONE]`; over a WebSocket one error message for the stream.
    pub fn error(&self, error: &ApiError, out: &mut BytesMut) {
        match &self.ws_stream_id {
            None => {
                out.put_slice(b"data: ");
                out.put_slice(error.to_json().as_bytes());
                out.put_slice(b"\n\n");
                out.put_slice(self.done.as_bytes());
            }
            Some(stream_id) => out.put_slice(ws_error(Some(stream_id), error).as_bytes()),
        }
    }
}

/// The OpenAI `usage` object. The total is summed in `u64`: two `u32`
/// counts may not fit one.
pub fn usage_json(usage: Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens),
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

/// A WebSocket error message for stream `id` (null: the message that
/// failed named no stream, or no valid one).
pub fn ws_error(id: Option<&str>, error: &ApiError) -> String {
    let id = id.map_or_else(|| "null".to_owned(), json_string);
    format!(
        "{{\"type\":\"error\",\"id\":{id},\"error\":{}}}",
        error.object_json()
    )
}

/// A string as a JSON string literal. Serializing a `str` cannot fail.
pub fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn write_json_string(text: &str, out: &mut BytesMut) {
    // Writing a `str` into memory cannot fail.
    let _ = serde_json::to_writer(out.writer(), text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn events(bytes: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(text.ends_with("\n\n"));
        text.trim_end()
            .split("\n\n")
            .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    #[test]
    fn chat_chunks_are_openai_shaped_json() {
        let framer = ChunkFramer::new(Endpoint::Chat, "chatcmpl-1", 7, "m\"x", true, Framing::Sse);
        let mut out = BytesMut::new();
        framer.role(&mut out);
        framer.text("a \"quote\"\n\u{1}é", &mut out);
        framer.finish(
            FinishReason::Length,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                cached_tokens: 1,
            },
            &mut out,
        );
        let events = events(&out);
        assert_eq!(events.len(), 5);
        let role: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(role["model"], "m\"x");
        assert_eq!(role["usage"], Value::Null);
        let token: Value = serde_json::from_str(&events[1]).unwrap();
        assert_eq!(token["object"], "chat.completion.chunk");
        assert_eq!(
            token["choices"][0]["delta"]["content"],
            "a \"quote\"\n\u{1}é"
        );
        let last: Value = serde_json::from_str(&events[2]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let usage: Value = serde_json::from_str(&events[3]).unwrap();
        assert_eq!(usage["choices"], serde_json::json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
        assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        assert_eq!(events[4], "[DONE]");
    }

    #[test]
    fn completion_chunks_carry_text() {
        let framer = ChunkFramer::new(Endpoint::Completion, "cmpl-1", 7, "m", false, Framing::Sse);
        let mut out = BytesMut::new();
        framer.role(&mut out);
        framer.text("hi", &mut out);
        let events = events(&out);
        assert_eq!(events.len(), 1);
        let chunk: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["choices"][0]["text"], "hi");
        assert!(chunk.get("usage").is_none());
    }

    /// Found by the `chunk_framer` fuzz target: the total overflowed `u32`.
    #[test]
    fn usage_total_does_not_overflow() {
        let usage = Usage {
            prompt_tokens: u32::MAX,
            completion_tokens: 2,
            cached_tokens: 0,
        };
        assert_eq!(usage_json(usage)["total_tokens"], u64::from(u32::MAX) + 2);
    }
}
