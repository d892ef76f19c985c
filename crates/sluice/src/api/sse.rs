//! Frames engine events as OpenAI streaming chunks. The JSON around the
//! token text is serialised once per stream; per token only the text is
//! escaped into the output buffer.

use bytes::{BufMut, BytesMut};
use sluice_engine::{FinishReason, Usage};

use super::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    pub fn object(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Self::Chat, true) => "chat.completion.chunk",
            (Self::Chat, false) => "chat.completion",
            (Self::Completion, _) => "text_completion",
        }
    }

    pub fn id_prefix(self) -> &'static str {
        match self {
            Self::Chat => "chatcmpl-",
            Self::Completion => "cmpl-",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completion => "completion",
        }
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
    frame_tail: &'static [u8],
    done: String,
    /// `{"type":"error","id":…,"error":` for WebSocket framing.
    error_head: Option<String>,
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
            endpoint.object(true),
            json_string(model)
        );
        let (frame_head, frame_tail, done, error_head): (String, &[u8], String, _) = match &framing
        {
            Framing::Sse => (
                "data: ".to_owned(),
                b"\n\n",
                "data: [DONE]\n\n".to_owned(),
                None,
            ),
            Framing::WebSocket { stream_id } => {
                let stream_id = json_string(stream_id);
                (
                    format!("{{\"type\":\"chunk\",\"id\":{stream_id},\"data\":"),
                    b"}",
                    format!("{{\"type\":\"done\",\"id\":{stream_id}}}"),
                    Some(format!(
                        "{{\"type\":\"error\",\"id\":{stream_id},\"error\":"
                    )),
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
            std::str::from_utf8(frame_tail).expect("frame tails are ASCII")
        );
        Self {
            endpoint,
            envelope,
            choice_head,
            choice_tail,
            frame_head,
            frame_tail,
            done,
            error_head,
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
        out.put_slice(self.frame_tail);
    }

    pub fn done(&self, out: &mut BytesMut) {
        out.put_slice(self.done.as_bytes());
    }

    /// The last choice chunk, then the usage chunk if asked for, then `[DONE]`.
    pub fn finish(&self, reason: FinishReason, usage: Usage, out: &mut BytesMut) {
        self.finish_chunk(reason, out);
        if self.include_usage {
            self.usage_chunk(usage, out);
        }
        self.done(out);
    }

    /// An error that ends the stream: over SSE an error payload, then
    /// `[DONE]`; over a WebSocket one error message for the stream.
    pub fn error(&self, error: &ApiError, out: &mut BytesMut) {
        match &self.error_head {
            None => {
                out.put_slice(b"data: ");
                out.put_slice(error.to_json().as_bytes());
                out.put_slice(b"\n\n");
                out.put_slice(self.done.as_bytes());
            }
            Some(head) => {
                out.put_slice(head.as_bytes());
                out.put_slice(error.object_json().as_bytes());
                out.put_u8(b'}');
            }
        }
    }
}

pub fn usage_json(usage: Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

fn write_json_string(text: &str, out: &mut BytesMut) {
    serde_json::to_writer(out.writer(), text).expect("writing to memory cannot fail");
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
}
