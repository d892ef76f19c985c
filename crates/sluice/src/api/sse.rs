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

pub struct ChunkFramer {
    endpoint: Endpoint,
    /// `{"id":…,"object":…,"created":…,"model":…`
    envelope: String,
    /// `data: ` + envelope + `,"choices":[{"index":0,`
    choice_head: String,
    /// Closes a choice chunk: `}]}` or `}],"usage":null}` plus the blank line.
    choice_tail: &'static str,
}

const DONE: &[u8] = b"data: [DONE]\n\n";

impl ChunkFramer {
    pub fn new(
        endpoint: Endpoint,
        id: &str,
        created: u64,
        model: &str,
        include_usage: bool,
    ) -> Self {
        let envelope = format!(
            "{{\"id\":{},\"object\":\"{}\",\"created\":{created},\"model\":{}",
            json_string(id),
            endpoint.object(true),
            json_string(model)
        );
        let choice_head = format!("data: {envelope},\"choices\":[{{\"index\":0,");
        let choice_tail = if include_usage {
            "}],\"usage\":null}\n\n"
        } else {
            "}]}\n\n"
        };
        Self {
            endpoint,
            envelope,
            choice_head,
            choice_tail,
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

    /// The last choice chunk, then the usage chunk if asked for, then `[DONE]`.
    pub fn finish(&self, reason: FinishReason, usage: Option<Usage>, out: &mut BytesMut) {
        out.put_slice(self.choice_head.as_bytes());
        out.put_slice(match self.endpoint {
            Endpoint::Chat => br#""delta":{},"logprobs":null,"finish_reason":""#.as_slice(),
            Endpoint::Completion => br#""text":"","logprobs":null,"finish_reason":""#.as_slice(),
        });
        out.put_slice(reason.as_str().as_bytes());
        out.put_u8(b'"');
        out.put_slice(self.choice_tail.as_bytes());
        if let Some(usage) = usage {
            out.put_slice(b"data: ");
            out.put_slice(self.envelope.as_bytes());
            out.put_slice(b",\"choices\":[],\"usage\":");
            out.put_slice(usage_json(usage).to_string().as_bytes());
            out.put_slice(b"}\n\n");
        }
        out.put_slice(DONE);
    }

    /// An error after the stream started: an error payload, then `[DONE]`.
    pub fn error(&self, error: &ApiError, out: &mut BytesMut) {
        out.put_slice(b"data: ");
        out.put_slice(error.to_json().as_bytes());
        out.put_slice(b"\n\n");
        out.put_slice(DONE);
    }
}

pub fn usage_json(usage: Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
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
        let framer = ChunkFramer::new(Endpoint::Chat, "chatcmpl-1", 7, "m\"x", true);
        let mut out = BytesMut::new();
        framer.role(&mut out);
        framer.text("a \"quote\"\n\u{1}é", &mut out);
        framer.finish(
            FinishReason::Length,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
            }),
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
        assert_eq!(events[4], "[DONE]");
    }

    #[test]
    fn completion_chunks_carry_text() {
        let framer = ChunkFramer::new(Endpoint::Completion, "cmpl-1", 7, "m", false);
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
