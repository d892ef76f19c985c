//! The WebSocket writer: one stream's chunks as messages on a socket
//! shared by many streams. Each message goes through the socket's bounded
//! outbound queue; when the client reads slowly the stream waits there and
//! its engine sequence parks.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::openai::ApiError;
use crate::openai::framing::Framing;
use crate::pipeline::{Chunk, Generation};

/// A stream's internal key, its id in the stream registry: client ids may
/// be reused after a stream ends, keys not.
pub type StreamKey = u64;

/// The socket's outbound queue: text messages (UTF-8, built from `str`s)
/// tagged with the stream they belong to.
pub type Outbound = mpsc::Sender<(StreamKey, Bytes)>;

/// One stream's side of the socket's outbound queue.
pub struct StreamSender {
    key: StreamKey,
    outbound: Outbound,
}

impl StreamSender {
    pub fn new(key: StreamKey, outbound: Outbound) -> Self {
        Self { key, outbound }
    }

    /// Queues a text message, waiting while the queue is full (the client
    /// reads slowly). Returns how long it waited; `None` once the socket is
    /// gone.
    pub async fn send(&self, text: Bytes) -> Option<Duration> {
        match self.outbound.try_send((self.key, text)) {
            Ok(()) => Some(Duration::ZERO),
            Err(TrySendError::Closed(_)) => None,
            Err(TrySendError::Full(queued)) => {
                let waiting_since = Instant::now();
                self.outbound.send(queued).await.ok()?;
                Some(waiting_since.elapsed())
            }
        }
    }
}

/// Writes `generation` to the socket as stream `stream_id`, until it ends
/// or the socket goes away.
pub async fn write_stream(mut generation: Generation, stream_id: &str, sender: &StreamSender) {
    let framer = super::framer(
        &generation,
        Framing::WebSocket {
            stream_id: stream_id.to_owned(),
        },
    );
    let mut out = BytesMut::new();
    framer.role(&mut out);
    let mut open = out.is_empty() || send(sender, &mut out, &mut generation).await;
    while open {
        let Some(chunk) = generation.next().await else {
            break;
        };
        open = match chunk {
            Chunk::Text(text) => {
                framer.text(&text, &mut out);
                send(sender, &mut out, &mut generation).await
            }
            Chunk::Finish { reason, usage } => {
                for mut frame in framer.finish_frames(reason, usage) {
                    if !send(sender, &mut frame, &mut generation).await {
                        break;
                    }
                }
                false
            }
            Chunk::Error(error) => {
                framer.error(&ApiError::from(error), &mut out);
                send(sender, &mut out, &mut generation).await;
                false
            }
        };
    }
}

/// Sends what `out` holds as one message, accounting it to the stream;
/// false once the socket is gone.
async fn send(sender: &StreamSender, out: &mut BytesMut, generation: &mut Generation) -> bool {
    let frame = out.split().freeze();
    generation.wrote(frame.len());
    match sender.send(frame).await {
        Some(waited) => {
            generation.blocked(waited);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use sluice_engine::{FinishReason, StreamEvent};

    use super::*;
    use crate::pipeline::{Endpoint, script, scripted};

    #[tokio::test]
    async fn a_finished_stream_is_chunk_messages_then_usage_then_done() {
        let (events, generation, _streams) = scripted(Endpoint::Completion, true);
        events.send(script::token("ok")).await.unwrap();
        events
            .send(script::finished(FinishReason::Stop, 2, 1))
            .await
            .unwrap();
        let (outbound, mut socket) = mpsc::channel(16);
        write_stream(generation, "s1", &StreamSender::new(7, outbound)).await;
        let mut messages = Vec::new();
        while let Ok((key, message)) = socket.try_recv() {
            assert_eq!(key, 7);
            messages.push(serde_json::from_slice::<Value>(&message).unwrap());
        }
        let kinds: Vec<&str> = messages
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["chunk", "chunk", "chunk", "done"], "{messages:?}");
        assert_eq!(messages[0]["data"]["choices"][0]["text"], "ok");
        assert_eq!(messages[1]["data"]["choices"][0]["finish_reason"], "stop");
        assert_eq!(messages[2]["data"]["usage"]["completion_tokens"], 1);
        assert!(messages.iter().all(|m| m["id"] == "s1"));
    }

    #[tokio::test]
    async fn a_slow_consumer_end_is_one_error_message_for_the_stream() {
        let (events, generation, _streams) = scripted(Endpoint::Chat, false);
        events
            .send(StreamEvent::SlowConsumer {
                limit: Duration::from_millis(300),
            })
            .await
            .unwrap();
        let (outbound, mut socket) = mpsc::channel(16);
        write_stream(generation, "s2", &StreamSender::new(1, outbound)).await;
        let (_, role) = socket.try_recv().unwrap();
        assert!(String::from_utf8_lossy(&role).contains("assistant"));
        let (_, error) = socket.try_recv().unwrap();
        let error: Value = serde_json::from_slice(&error).unwrap();
        assert_eq!(error["type"], "error");
        assert_eq!(error["id"], "s2");
        assert_eq!(error["error"]["code"], "stream_not_read");
        assert!(socket.try_recv().is_err(), "nothing after the error");
    }
}
