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
//! message over `server.websocket.max_message_bytes` ends the socket with
//! close code 1009; a client that does not take a message within
//! `send_timeout_ms` loses the socket; on shutdown the socket takes no new
//! requests, lets its streams finish and closes with 1001.
//!
//! Streams go through the same pipeline as SSE; the WebSocket writer
//! (`writers::ws`) frames them. This module owns the socket: the client's
//! messages, the shared outbound queue, pings.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{Extensions, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use sluice_core::config::ServerConfig;
use sluice_core::registry::{EndReason, Protocol};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::auth::TenantKeys;
use super::completions::Start;
use super::intake::PendingGate;
use crate::openai::ApiError;
use crate::openai::framing::{json_string, ws_error};
use crate::pipeline::{Endpoint, Pipeline};
use crate::writers::ws::{Outbound, StreamKey, StreamSender, write_stream};

/// Messages waiting to be written to one socket. When the client reads
/// slowly the stream tasks wait here, and their engine sequences park.
const OUTBOUND_MESSAGES: usize = 64;
/// Longest client stream id accepted, so ids cannot grow memory.
const MAX_STREAM_ID_BYTES: usize = 128;

pub async fn upgrade(
    State(pipeline): State<Arc<Pipeline>>,
    State(tenants): State<Arc<TenantKeys>>,
    State(intake): State<Arc<PendingGate>>,
    State(server): State<Arc<ServerConfig>>,
    headers: HeaderMap,
    connection: Extensions,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let tenant = tenants.tenant(&headers)?;
    pipeline.ready_model()?;
    let limits = &server.websocket;
    let socket = Socket {
        pipeline,
        server: Arc::clone(&server),
        intake,
        tenant,
        streams: Streams::default(),
        _connection: connection,
    };
    Ok(upgrade
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |websocket| socket.run(websocket))
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

/// What a client message asks for, parsed and checked before it touches
/// the socket's streams.
#[derive(Debug)]
pub enum ClientCommand {
    Start {
        id: String,
        endpoint: Endpoint,
        body: Value,
    },
    Cancel {
        id: String,
    },
    /// The message cannot be acted on: send this error, for the stream it
    /// names (none when it named no valid one).
    Refuse {
        id: Option<String>,
        error: ApiError,
    },
}

/// Parses one text message. Pure: whether a stream may start on this
/// socket (duplicate id, stream limit) is the socket's to say.
pub fn parse_client_message(text: &str) -> ClientCommand {
    match serde_json::from_str(text) {
        Ok(ClientMessage::Cancel { id }) => ClientCommand::Cancel { id },
        Ok(ClientMessage::Request { id, path, body }) => {
            let endpoint = match path.as_str() {
                "/v1/chat/completions" => Endpoint::Chat,
                "/v1/completions" => Endpoint::Completion,
                _ => {
                    let error = ApiError::invalid(
                        "path",
                        format!(
                            "Unknown path '{path}': use /v1/chat/completions or /v1/completions."
                        ),
                    );
                    return ClientCommand::Refuse {
                        id: Some(id),
                        error,
                    };
                }
            };
            if id.is_empty() || id.len() > MAX_STREAM_ID_BYTES {
                return ClientCommand::Refuse {
                    id: None,
                    error: ApiError::invalid(
                        "id",
                        format!("Stream ids must be 1 to {MAX_STREAM_ID_BYTES} bytes."),
                    ),
                };
            }
            ClientCommand::Start { id, endpoint, body }
        }
        Err(err) => ClientCommand::Refuse {
            id: None,
            error: ApiError::bad_request(format!(
                "Invalid message: {err}. Expected {{\"type\":\"request\",\"id\",\"path\",\"body\"}} or {{\"type\":\"cancel\",\"id\"}}."
            )),
        },
    }
}

/// The socket's running streams.
#[derive(Default)]
struct Streams {
    running: HashMap<String, (StreamKey, AbortHandle)>,
    tasks: JoinSet<(String, StreamKey)>,
    /// Cancelled streams whose messages may still sit in the outbound
    /// queue: they are dropped there, so nothing follows `cancelled`.
    cancelled: HashSet<StreamKey>,
}

/// One upgraded socket and the streams it runs.
struct Socket {
    pipeline: Arc<Pipeline>,
    server: Arc<ServerConfig>,
    intake: Arc<PendingGate>,
    tenant: String,
    streams: Streams,
    /// The upgrade request's extensions: they hold the connection's place
    /// under `server.limits.max_connections` for as long as the socket lives.
    _connection: Extensions,
}

/// Why the server closes a socket, as a close frame.
fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// A receive error that is the client's message being over the limit.
fn is_too_big(err: &axum::Error) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|err| matches!(err, tungstenite::Error::Capacity(_)))
}

fn text_message(text: impl Into<Utf8Bytes>) -> Message {
    Message::Text(text.into())
}

fn error_message(id: Option<&str>, error: &ApiError) -> Message {
    text_message(ws_error(id, error))
}

impl Socket {
    async fn run(mut self, mut socket: WebSocket) {
        let (outbound, mut outbound_rx) = mpsc::channel::<(StreamKey, Bytes)>(OUTBOUND_MESSAGES);
        let limits = &self.server.websocket;
        let ping_interval = Duration::from_millis(limits.ping_interval_ms);
        let send_timeout = Duration::from_millis(limits.send_timeout_ms);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        let mut last_heard = Instant::now();
        let pipeline = Arc::clone(&self.pipeline);
        let mut draining = false;
        loop {
            let streams = &mut self.streams;
            if draining && streams.tasks.is_empty() && outbound_rx.is_empty() {
                // Every stream has ended and its last message is out.
                let bye = close(close_code::AWAY, "server shutting down");
                let _ = tokio::time::timeout(send_timeout, socket.send(bye)).await;
                break;
            }
            let reply = tokio::select! {
                message = socket.recv() => match message {
                    Some(Ok(message)) => {
                        last_heard = Instant::now();
                        match message {
                            Message::Text(text) => self.handle_text(text.as_str(), &outbound),
                            Message::Binary(_) => Some(error_message(
                                None,
                                &ApiError::bad_request("Binary messages are not supported; send JSON text."),
                            )),
                            Message::Close(_) => break,
                            Message::Ping(_) | Message::Pong(_) => None,
                        }
                    }
                    Some(Err(err)) if is_too_big(&err) => Some(close(
                        close_code::SIZE,
                        "message over server.websocket.max_message_bytes",
                    )),
                    _ => break,
                },
                Some((key, text)) = outbound_rx.recv() => {
                    let stale = streams.cancelled.contains(&key);
                    if outbound_rx.is_empty() {
                        streams.cancelled.clear();
                    }
                    // Writers build messages from `str`s only: always UTF-8.
                    match Utf8Bytes::try_from(text) {
                        Ok(text) if !stale => Some(Message::Text(text)),
                        _ => None,
                    }
                }
                Some(finished) = streams.tasks.join_next(), if !streams.tasks.is_empty() => {
                    if let Ok((id, key)) = finished
                        && streams.running.get(&id).is_some_and(|(running, _)| *running == key)
                    {
                        streams.running.remove(&id);
                    }
                    None
                }
                () = pipeline.draining(), if !draining => {
                    draining = true;
                    None
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > 2 * ping_interval {
                        tracing::debug!("websocket silent for two ping intervals: closing");
                        break;
                    }
                    Some(Message::Ping(Bytes::new()))
                }
            };
            let Some(message) = reply else { continue };
            let closing = matches!(message, Message::Close(_));
            match tokio::time::timeout(send_timeout, socket.send(message)).await {
                Ok(Ok(())) if !closing => {}
                Ok(_) => break,
                Err(_) => {
                    tracing::debug!("websocket client did not take a message in time: closing");
                    break;
                }
            }
        }
        // Dropping the tasks drops their generations: the engine frees the
        // sequences and the permits return.
        self.streams.tasks.abort_all();
    }

    fn handle_text(&mut self, text: &str, outbound: &Outbound) -> Option<Message> {
        match parse_client_message(text) {
            ClientCommand::Cancel { id } => Some(self.cancel(id)),
            ClientCommand::Start { id, endpoint, body } => {
                self.request(id, endpoint, body, outbound)
            }
            ClientCommand::Refuse { id, error } => Some(error_message(id.as_deref(), &error)),
        }
    }

    fn cancel(&mut self, id: String) -> Message {
        let Some((key, task)) = self.streams.running.remove(&id) else {
            return error_message(
                Some(&id),
                &ApiError::invalid("id", format!("No running stream has id '{id}'.")),
            );
        };
        // Ended as the client's cancel before the abort drops it, which
        // would count as a disconnect.
        self.pipeline.streams().end(key, EndReason::Cancelled);
        task.abort();
        self.streams.cancelled.insert(key);
        text_message(format!(
            "{{\"type\":\"cancelled\",\"id\":{}}}",
            json_string(&id)
        ))
    }

    /// Starts a stream, or says why not; `None` once it runs.
    fn request(
        &mut self,
        id: String,
        endpoint: Endpoint,
        body: Value,
        outbound: &Outbound,
    ) -> Option<Message> {
        if self.streams.running.contains_key(&id) {
            return Some(error_message(
                Some(&id),
                &ApiError::invalid("id", format!("A stream with id '{id}' is already running.")),
            ));
        }
        let max_streams = self.server.websocket.max_streams_per_socket;
        if self.streams.running.len() >= max_streams {
            return Some(error_message(
                Some(&id),
                &ApiError::too_many_requests(
                    "rate_limit_exceeded",
                    "too_many_streams",
                    format!("This socket already runs {max_streams} streams, its limit."),
                    1,
                ),
            ));
        }
        let pending = match self.intake.enter(&self.tenant) {
            Ok(pending) => pending,
            Err(error) => return Some(error_message(Some(&id), &error)),
        };
        let arrived_at = Instant::now();
        let stream = self.pipeline.register(
            endpoint,
            self.tenant.clone(),
            Protocol::WebSocket,
            arrived_at,
        );
        let key = stream.id();
        let start = Start {
            endpoint,
            arrived_at,
            force_stream: true,
        };
        let pipeline = Arc::clone(&self.pipeline);
        let server = Arc::clone(&self.server);
        let sender = StreamSender::new(key, outbound.clone());
        let stream_id = id.clone();
        let task = self.streams.tasks.spawn(async move {
            let body = body.to_string().into_bytes();
            let started = start.run(stream, &pipeline, &server, &body).await;
            drop(pending);
            match started {
                Ok(generation) => write_stream(generation, &stream_id, &sender).await,
                Err(error) => {
                    // The socket may be gone already; nothing to do then.
                    sender
                        .send(Bytes::from(ws_error(Some(&stream_id), &error)))
                        .await;
                }
            }
            (stream_id, key)
        });
        self.streams.running.insert(id, (key, task));
        None
    }
}
