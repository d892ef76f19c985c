//! The SSE writer: a generation's chunks as `data:` events, coalescing the
//! chunks that are ready when a client is behind, with keep-alive comments
//! while the engine is quiet.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::Stream;

use crate::openai::ApiError;
use crate::openai::framing::{ChunkFramer, Framing};
use crate::pipeline::{Chunk, Generation};

/// Most ready events written together when a client is behind.
const MAX_COALESCED_EVENTS: usize = 16;

/// An SSE comment: ignored by clients, keeps proxies from timing out.
const SSE_KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// Room reserved per write; a frame rarely exceeds it, and reserving the
/// same amount each time lets the buffer reclaim its own allocation once
/// the transport has dropped the previous frame.
const FRAME_RESERVE: usize = 4096;

/// The SSE body of `generation`: one item per write to the transport.
pub fn sse_body(generation: Generation, keepalive: Duration) -> impl Stream<Item = Bytes> + Send {
    let framer = super::framer(&generation, Framing::Sse);
    let writer = SseWriter {
        generation,
        framer,
        buffer: BytesMut::with_capacity(FRAME_RESERVE),
        keepalive: keepalive.max(Duration::from_millis(1)),
        opened: false,
        handed_over_at: None,
    };
    futures::stream::unfold(writer, |mut writer| async move {
        writer.next_frame().await.map(|frame| (frame, writer))
    })
}

/// Frames chunks as SSE into one reused buffer.
struct SseWriter {
    generation: Generation,
    framer: ChunkFramer,
    buffer: BytesMut,
    keepalive: Duration,
    opened: bool,
    /// When the last frame went to the transport. The transport asks for
    /// the next frame once it has room, so the time until then is time the
    /// client held the stream up.
    handed_over_at: Option<Instant>,
}

impl SseWriter {
    async fn next_frame(&mut self) -> Option<Bytes> {
        if let Some(handed_over_at) = self.handed_over_at.take() {
            self.generation.blocked(handed_over_at.elapsed());
        }
        let frame = self.frame().await?;
        self.generation.wrote(frame.len());
        self.handed_over_at = Some(Instant::now());
        Some(frame)
    }

    async fn frame(&mut self) -> Option<Bytes> {
        self.buffer.reserve(FRAME_RESERVE);
        if !self.opened {
            self.opened = true;
            self.framer.role(&mut self.buffer);
            if !self.buffer.is_empty() {
                return Some(self.buffer.split().freeze());
            }
        }
        let Ok(chunk) = tokio::time::timeout(self.keepalive, self.generation.next()).await else {
            self.buffer.extend_from_slice(SSE_KEEPALIVE);
            return Some(self.buffer.split().freeze());
        };
        frame_chunk(&self.framer, chunk?, &mut self.buffer);
        // A client that is behind gets the ready chunks in one write.
        for _ in 1..MAX_COALESCED_EVENTS {
            match self.generation.try_next() {
                Some(chunk) => frame_chunk(&self.framer, chunk, &mut self.buffer),
                None => break,
            }
        }
        Some(self.buffer.split().freeze())
    }
}

fn frame_chunk(framer: &ChunkFramer, chunk: Chunk, out: &mut BytesMut) {
    match chunk {
        Chunk::Text(text) => framer.text(&text, out),
        Chunk::Finish { reason, usage } => framer.finish(reason, usage, out),
        Chunk::Error(error) => framer.error(&ApiError::from(error), out),
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use serde_json::Value;
    use sluice_engine::{FinishReason, StreamEvent};

    use super::*;
    use crate::pipeline::{Endpoint, script, scripted};

    /// Every `data:` payload of a finished SSE body, in order.
    async fn events(body: impl Stream<Item = Bytes>) -> Vec<String> {
        let frames: Vec<Bytes> = body.collect().await;
        let text = String::from_utf8(frames.concat()).unwrap();
        text.split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn a_chat_stream_is_role_text_finish_usage_done() {
        let (events_tx, generation, _streams) = scripted(Endpoint::Chat, true);
        events_tx
            .send(StreamEvent::Token {
                text: "Hi \"there\"".to_owned(),
                token_ids: vec![1, 2],
            })
            .await
            .unwrap();
        events_tx
            .send(script::finished(FinishReason::Length, 3, 2))
            .await
            .unwrap();
        let events = events(sse_body(generation, Duration::from_secs(60))).await;
        assert_eq!(events.len(), 5, "{events:?}");
        let chunks: Vec<Value> = events[..4]
            .iter()
            .map(|event| serde_json::from_str(event).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi \"there\"");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[3]["usage"]["completion_tokens"], 2);
        assert_eq!(events[4], "[DONE]");
    }

    #[tokio::test]
    async fn an_engine_error_mid_stream_is_an_error_event_then_done() {
        let (events_tx, generation, _streams) = scripted(Endpoint::Completion, false);
        events_tx
            .send(StreamEvent::Error {
                message: "decode failed".to_owned(),
            })
            .await
            .unwrap();
        let events = events(sse_body(generation, Duration::from_secs(60))).await;
        let error: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(error["error"]["type"], "internal_error");
        assert_eq!(error["error"]["message"], "decode failed");
        assert_eq!(events[1..], ["[DONE]"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_engine_gets_keepalive_comments_not_silence() {
        let (events_tx, generation, _streams) = scripted(Endpoint::Completion, false);
        let mut body = Box::pin(sse_body(generation, Duration::from_secs(5)));
        assert_eq!(body.next().await.unwrap(), SSE_KEEPALIVE);
        drop(events_tx);
        let last = body.next().await.unwrap();
        assert!(last.starts_with(b"data: {\"error\""), "{last:?}");
    }

    #[tokio::test]
    async fn ready_chunks_are_coalesced_into_one_write() {
        let (events_tx, generation, _streams) = scripted(Endpoint::Completion, false);
        for piece in ["a", "b", "c"] {
            events_tx.send(script::token(piece)).await.unwrap();
        }
        let mut body = Box::pin(sse_body(generation, Duration::from_secs(60)));
        let first = body.next().await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&first).matches("data: ").count(),
            3,
            "three ready tokens in one write"
        );
    }
}
