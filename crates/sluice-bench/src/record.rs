//! What one request looked like from the client.

use serde::Serialize;
use serde_json::Value;

use crate::behaviour::ClientBehaviour;

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200, no error, `[DONE]`.
    Clean,
    /// The client hung up on purpose (a disconnecting client).
    ClientDisconnected,
    /// Turned away for load: 429 or 503.
    Rejected,
    /// No response: the connection or the request failed.
    NoResponse,
    /// Another status than 200, 429 or 503.
    HttpError,
    /// 200, but the body ended before `[DONE]` (reset, cut, server gone).
    Truncated,
    /// 200 and `[DONE]`, but an error event or a malformed chunk on the way.
    StreamError,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestRecord {
    pub index: usize,
    /// Seconds from the start of the run until the request was sent.
    pub start_seconds: f64,
    /// Sent during warm-up: kept in the JSON, left out of the summary.
    pub warmup: bool,
    pub status: u16,
    pub ttft_seconds: Option<f64>,
    /// Every gap between consecutive chunks that carried text.
    pub itl_seconds: Vec<f64>,
    pub e2e_seconds: f64,
    /// Chunks that carried text.
    pub content_chunks: u64,
    pub usage_prompt_tokens: Option<u64>,
    pub usage_completion_tokens: Option<u64>,
    /// Response body bytes (SSE payloads and framing).
    pub body_bytes: u64,
    /// Set when this request opened the connection it used.
    pub connect_seconds: Option<f64>,
    pub retry_after_seconds: Option<f64>,
    pub error: Option<String>,
    /// The stream ended with `[DONE]`.
    pub done: bool,
    /// How this client treated its stream.
    pub behaviour: ClientBehaviour,
    /// The client hung up before the end, as its behaviour asked.
    pub disconnected: bool,
    /// The same request sent again after a 429's Retry-After, when the
    /// client follows it (`--follow-retry-after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Box<RequestRecord>>,
    #[serde(skip)]
    last_token_seconds: Option<f64>,
}

impl RequestRecord {
    pub fn new(index: usize, start_seconds: f64, warmup: bool) -> Self {
        Self {
            index,
            start_seconds,
            warmup,
            ..Self::default()
        }
    }

    pub fn fail(&mut self, error: String, elapsed: f64) {
        self.error = Some(error);
        self.e2e_seconds = elapsed;
    }

    /// A text-bearing chunk arrived `now` seconds after the request was sent.
    pub fn on_token(&mut self, now: f64) {
        match self.last_token_seconds {
            None => self.ttft_seconds = Some(now),
            Some(last) => self.itl_seconds.push(now - last),
        }
        self.last_token_seconds = Some(now);
        self.content_chunks += 1;
    }

    /// Reads one SSE payload of an OpenAI stream.
    pub fn on_sse_event(&mut self, payload: &str, now: f64) {
        if payload == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(payload) else {
            self.error = Some(format!("chunk is not JSON: {payload}"));
            return;
        };
        if let Some(message) = chunk["error"]["message"].as_str() {
            self.error = Some(format!("stream error: {message}"));
            return;
        }
        if let Some(choice) = chunk["choices"].get(0) {
            let text = choice["delta"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
                .unwrap_or_default();
            if !text.is_empty() {
                self.on_token(now);
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            self.usage_prompt_tokens = usage["prompt_tokens"].as_u64();
            self.usage_completion_tokens = usage["completion_tokens"].as_u64();
        }
    }

    /// Output tokens: the server's usage when it gave one, else chunks seen.
    pub fn output_tokens(&self) -> u64 {
        self.usage_completion_tokens.unwrap_or(self.content_chunks)
    }

    pub fn succeeded(&self) -> bool {
        self.status == 200 && self.error.is_none() && self.done
    }

    /// Turned away for load (429, 503) rather than failed.
    pub fn rejected(&self) -> bool {
        matches!(self.status, 429 | 503)
    }

    pub fn outcome(&self) -> Outcome {
        if self.succeeded() {
            Outcome::Clean
        } else if self.disconnected {
            Outcome::ClientDisconnected
        } else if self.status == 0 {
            Outcome::NoResponse
        } else if self.rejected() {
            Outcome::Rejected
        } else if self.status != 200 {
            Outcome::HttpError
        } else if !self.done {
            Outcome::Truncated
        } else {
            Outcome::StreamError
        }
    }

    /// Mean gap between tokens of this request (time per output token).
    pub fn mean_itl(&self) -> Option<f64> {
        (!self.itl_seconds.is_empty())
            .then(|| self.itl_seconds.iter().sum::<f64>() / self.itl_seconds.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_events_fill_the_record() {
        let mut record = RequestRecord::new(0, 0.0, false);
        record.status = 200;
        record.on_sse_event(
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            0.1,
        );
        assert_eq!(record.ttft_seconds, None, "the role chunk is not a token");
        record.on_sse_event(r#"{"choices":[{"delta":{"content":"a"}}]}"#, 0.5);
        record.on_sse_event(r#"{"choices":[{"text":"b"}]}"#, 0.75);
        record.on_sse_event(
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#,
            0.8,
        );
        assert!(!record.succeeded(), "not done before [DONE]");
        record.on_sse_event("[DONE]", 0.8);
        assert!(record.succeeded());
        assert_eq!(record.ttft_seconds, Some(0.5));
        assert_eq!(record.itl_seconds, vec![0.25]);
        assert_eq!(record.output_tokens(), 3);
        assert_eq!(record.content_chunks, 2);
    }

    #[test]
    fn outcomes_name_what_ended_the_request() {
        let mut record = RequestRecord::new(0, 0.0, false);
        record.fail("connect: refused".into(), 0.1);
        assert_eq!(record.outcome(), Outcome::NoResponse);
        record.status = 429;
        assert_eq!(record.outcome(), Outcome::Rejected);
        record.status = 500;
        assert_eq!(record.outcome(), Outcome::HttpError);
        record.status = 200;
        record.error = Some("body: connection reset".into());
        assert_eq!(record.outcome(), Outcome::Truncated);
        record.done = true;
        assert_eq!(record.outcome(), Outcome::StreamError);
        record.error = None;
        assert_eq!(record.outcome(), Outcome::Clean);
        record.done = false;
        record.disconnected = true;
        assert_eq!(record.outcome(), Outcome::ClientDisconnected);
    }

    #[test]
    fn error_payloads_fail_the_request() {
        let mut record = RequestRecord::new(0, 0.0, false);
        record.status = 200;
        record.on_sse_event(r#"{"error":{"message":"boom"}}"#, 0.1);
        record.on_sse_event("[DONE]", 0.1);
        assert!(!record.succeeded());
        assert!(record.error.unwrap().contains("boom"));
    }
}
