//! `/v1/ws`: several chat/completion streams over one WebSocket.
//!
//! Client messages (text, JSON):
//! - `{"type":"request","id":"s1","path":"/v1/chat/completions","body":{…}}`
//!   starts a stream tagged `s1` (the body is the usual OpenAI request; it
//!   always streams);
//! - `{"type":"cancel","id":"s1"}` ends that stream and frees its sequence.
//!
//! Server messages: `{"type":"chunk","id":"s1","data":{…}}` with the same
//! chunk payloads as SSE, `{"type":"done","id":"s1"}`,
//! `{"type":"cancelled","id":"s1"}` and
//! `{"type":"error","id":"s1"|null,"error":{"message","type","param","code"}}`.
//! A malformed message gets an error message; the socket stays open. A
//! message over `server.websocket.max_message_bytes` ends the socket.
//!
//! Streams go through the same preparation, admission and generation driver
//! as SSE; only the framing differs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;
use sluice_core::registry::{EndReason, Protocol, StreamHandle};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::{AbortHandle, JoinSet};

use crate::api::error::ApiError;
use crate::api::sse::{ChunkFramer, Endpoint, Framing};
use crate::routes::{self, Chunk, ChunkSource};
use crate::server::AppState;

/// Messages waiting to be written to one socket. When the client reads
/// slowly the stream tasks wait here, and their engine sequences park.
const OUTBOUND_MESSAGES: usize = 64;
/// Longest client stream id accepted, so ids cannot grow memory.
const MAX_STREAM_ID_BYTES: usize = 128;

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let tenant = state.tenant(&headers)?;
    state.ready_model()?;
    let limits = &state.limits.websocket;
    Ok(upgrade
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| run_socket(state, tenant, socket))
        .into_response())
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Request {
        id: String,
        path: String,
        body: Value,
    },
    Cancel {
        id: String,
    },
}

/// A stream's internal key, its id in the stream registry: client ids may
/// be reused after a stream ends, keys not.
type StreamKey = u64;

/// The socket's running streams.
#[derive(Default)]
struct Streams {
    running: HashMap<String, (StreamKey, AbortHandle)>,
    tasks: JoinSet<(String, StreamKey)>,
    /// Cancelled streams whose messages may still sit in the outbound
    /// queue: they are dropped there, so nothing follows `cancelled`.
    cancelled: HashSet<StreamKey>,
}

type Outbound = mpsc::Sender<(StreamKey, Message)>;

async fn run_socket(state: Arc<AppState>, tenant: String, mut socket: WebSocket) {
    let config = state.limits.websocket.clone();
    let (outbound, mut outbound_rx) = mpsc::channel(OUTBOUND_MESSAGES);
    let mut streams = Streams::default();
    let ping_interval = Duration::from_millis(config.ping_interval_ms);
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            message = socket.recv() => {
                let Some(Ok(message)) = message else { break };
                last_heard = Instant::now();
                let reply = match message {
                    Message::Text(text) => handle_text(
                        &state, &tenant, &config, text.as_str(), &mut streams, &outbound,
                    ),
                    Message::Binary(_) => Some(error_message(
                        None,
                        &ApiError::bad_request("Binary messages are not supported; send JSON text."),
                    )),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(reply) = reply
                    && socket.send(reply).await.is_err()
                {
                    break;
                }
            }
            Some((key, message)) = outbound_rx.recv() => {
                let stale = streams.cancelled.contains(&key);
                if outbound_rx.is_empty() {
                    streams.cancelled.clear();
                }
                if !stale && socket.send(message).await.is_err() {
                    break;
                }
            }
            Some(finished) = streams.tasks.join_next(), if !streams.tasks.is_empty() => {
                if let Ok((id, key)) = finished
                    && streams.running.get(&id).is_some_and(|(running, _)| *running == key)
                {
                    streams.running.remove(&id);
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > 2 * ping_interval {
                    tracing::debug!("websocket silent for two ping intervals: closing");
                    break;
                }
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
    // Dropping the tasks drops their generations: the engine frees the
    // sequences and the permits return.
    streams.tasks.abort_all();
}

fn handle_text(
    state: &Arc<AppState>,
    tenant: &str,
    config: &sluice_core::config::WebSocketConfig,
    text: &str,
    streams: &mut Streams,
    outbound: &Outbound,
) -> Option<Message> {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(err) => {
            return Some(error_message(
                None,
                &ApiError::bad_request(format!(
                    "Invalid message: {err}. Expected {{\"type\":\"request\",\"id\",\"path\",\"body\"}} or {{\"type\":\"cancel\",\"id\"}}."
                )),
            ));
        }
    };
    match message {
        ClientMessage::Cancel { id } => {
            let Some((key, task)) = streams.running.remove(&id) else {
                return Some(error_message(
                    Some(&id),
                    &ApiError::invalid("id", format!("No running stream has id '{id}'.")),
                ));
            };
            // Ended as the client's cancel before the abort drops it, which
            // would count as a disconnect.
            state.streams.end(key, EndReason::Cancelled);
            task.abort();
            streams.cancelled.insert(key);
            Some(text_message(format!(
                "{{\"type\":\"cancelled\",\"id\":{}}}",
                serde_json::to_string(&id).expect("strings serialize")
            )))
        }
        ClientMessage::Request { id, path, body } => {
            let endpoint = match path.as_str() {
                "/v1/chat/completions" => Endpoint::Chat,
                "/v1/completions" => Endpoint::Completion,
                _ => {
                    return Some(error_message(
                        Some(&id),
                        &ApiError::invalid(
                            "path",
                            format!(
                                "Unknown path '{path}': use /v1/chat/completions or /v1/completions."
                            ),
                        ),
                    ));
                }
            };
            if id.is_empty() || id.len() > MAX_STREAM_ID_BYTES {
                return Some(error_message(
                    None,
                    &ApiError::invalid(
                        "id",
                        format!("Stream ids must be 1 to {MAX_STREAM_ID_BYTES} bytes."),
                    ),
                ));
            }
            if streams.running.contains_key(&id) {
                return Some(error_message(
                    Some(&id),
                    &ApiError::invalid(
                        "id",
                        format!("A stream with id '{id}' is already running."),
                    ),
                ));
            }
            if streams.running.len() >= config.max_streams_per_socket {
                return Some(error_message(
                    Some(&id),
                    &ApiError::too_many_requests(
                        "rate_limit_exceeded",
                        "too_many_streams",
                        format!(
                            "This socket already runs {} streams, its limit.",
                            config.max_streams_per_socket
                        ),
                        1,
                    ),
                ));
            }
            let body = serde_json::to_vec(&body).expect("JSON values serialize");
            let registered = routes::register_stream(
                state,
                endpoint,
                tenant.to_owned(),
                Protocol::WebSocket,
                Instant::now(),
            );
            let key = registered.id();
            let stream = run_stream(
                Arc::clone(state),
                endpoint,
                id.clone(),
                body,
                registered,
                StreamSender {
                    key,
                    outbound: outbound.clone(),
                },
            );
            let task = streams.tasks.spawn(async move { (stream.await, key) });
            streams.running.insert(id, (key, task));
            None
        }
    }
}

/// Runs one stream to its end, sending its messages; returns its id.
async fn run_stream(
    state: Arc<AppState>,
    endpoint: Endpoint,
    id: String,
    body: Vec<u8>,
    mut stream: StreamHandle,
    outbound: StreamSender,
) -> String {
    let started = match routes::prepare_stream(&state, endpoint, &mut stream, &body).await {
        Ok(mut prepared) => {
            prepared.force_stream();
            routes::start(&state, prepared, stream).await
        }
        Err(error) => Err(error),
    };
    let started = match started {
        Ok(started) => started,
        Err(error) => {
            // The socket may be gone already; nothing to do then.
            outbound
                .send_message(error_message(Some(&id), &error))
                .await;
            return id;
        }
    };
    let framer = ChunkFramer::new(
        endpoint,
        &started.id,
        routes::unix_now(),
        &state.served_name,
        started.include_usage,
        Framing::WebSocket {
            stream_id: id.clone(),
        },
    );
    let include_usage = started.include_usage;
    let mut chunks = started.into_chunks();
    let mut out = BytesMut::new();
    framer.role(&mut out);
    let mut open = out.is_empty() || send(&outbound, &mut out, &mut chunks).await;
    while open {
        let Some(chunk) = chunks.next().await else {
            break;
        };
        open = match chunk {
            Chunk::Text(text) => {
                framer.text(&text, &mut out);
                send(&outbound, &mut out, &mut chunks).await
            }
            Chunk::Finish { reason, usage } => {
                framer.finish_chunk(reason, &mut out);
                if include_usage {
                    send(&outbound, &mut out, &mut chunks).await;
                    framer.usage_chunk(usage, &mut out);
                }
                send(&outbound, &mut out, &mut chunks).await;
                framer.done(&mut out);
                send(&outbound, &mut out, &mut chunks).await;
                false
            }
            Chunk::Error(error) => {
                framer.error(&error, &mut out);
                send(&outbound, &mut out, &mut chunks).await;
                false
            }
        };
    }
    id
}

/// One stream's side of the socket's outbound queue.
struct StreamSender {
    key: StreamKey,
    outbound: Outbound,
}

impl StreamSender {
    /// Queues a message, waiting while the queue is full (the client reads
    /// slowly). Returns how long it waited; `None` once the socket is gone.
    async fn send_message(&self, message: Message) -> Option<Duration> {
        match self.outbound.try_send((self.key, message)) {
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

/// Sends what `out` holds as one text message, accounting it to the
/// stream; false once the socket is gone.
async fn send(outbound: &StreamSender, out: &mut BytesMut, chunks: &mut ChunkSource) -> bool {
    let frame = out.split().freeze();
    chunks.wrote(frame.len());
    // Frames are built from `str`s only, so the check always passes.
    let Ok(text) = Utf8Bytes::try_from(frame) else {
        return false;
    };
    match outbound.send_message(Message::Text(text)).await {
        Some(waited) => {
            chunks.blocked(waited);
            true
        }
        None => false,
    }
}

fn text_message(text: String) -> Message {
    Message::Text(text.into())
}

fn error_message(id: Option<&str>, error: &ApiError) -> Message {
    let id = id.map_or_else(
        || "null".to_owned(),
        |id| serde_json::to_string(id).expect("strings serialize"),
    );
    text_message(format!(
        "{{\"type\":\"error\",\"id\":{id},\"error\":{}}}",
        error.object_json()
    ))
}
