//! The HTTP side of the load generator: HTTP/1.1 (a new connection per
//! request, or a keep-alive pool) and h2c (many streams multiplexed over K
//! shared connections), with wire bytes counted per connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use crate::behaviour::ClientBehaviour;
use crate::record::RequestRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transport {
    /// HTTP/1.1; `keep_alive` false opens a new connection per request.
    Http1 { keep_alive: bool },
    /// HTTP/2 cleartext with prior knowledge over a pool of connections.
    H2c { connections: usize },
}

impl Transport {
    pub fn parse(text: &str, connections: usize) -> Result<Self, String> {
        match text {
            "h1" => Ok(Self::Http1 { keep_alive: true }),
            "h1-new" => Ok(Self::Http1 { keep_alive: false }),
            "h2c" => Ok(Self::H2c {
                connections: connections.max(1),
            }),
            other => Err(format!("unknown transport '{other}' (h1, h1-new, h2c)")),
        }
    }
}

/// Bytes moved on the wire, across every connection of a run.
#[derive(Debug, Default)]
pub struct WireCounters {
    pub read: AtomicU64,
    pub written: AtomicU64,
    pub connections: AtomicU64,
}

/// A TCP stream that counts the bytes through it.
struct Counted {
    inner: TcpStream,
    counters: Arc<WireCounters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.counters.read.fetch_add(read as u64, Ordering::Relaxed);
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &result {
            self.counters
                .written
                .fetch_add(*written as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type H1Sender = http1::SendRequest<Full<Bytes>>;
type H2Sender = http2::SendRequest<Full<Bytes>>;

pub struct HttpClient {
    host: String,
    port: u16,
    transport: Transport,
    /// Sent as `Authorization: Bearer …` (selects the tenant).
    api_key: Option<String>,
    pub wire: Arc<WireCounters>,
    idle_h1: Mutex<Vec<H1Sender>>,
    h2_pool: Vec<OnceCell<H2Sender>>,
    next_h2: AtomicUsize,
}

/// `http://host:port` → (host, port).
pub fn parse_base_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("'{url}' must start with http://"))?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("'{url}' must name a port"))?;
    let port = port
        .parse()
        .map_err(|_| format!("'{port}' is not a port number"))?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

enum Sender {
    H1(H1Sender),
    H2(H2Sender),
}

impl HttpClient {
    pub fn new(
        base_url: &str,
        transport: Transport,
        api_key: Option<String>,
    ) -> Result<Self, String> {
        let (host, port) = parse_base_url(base_url)?;
        let pool_size = match transport {
            Transport::H2c { connections } => connections,
            Transport::Http1 { .. } => 0,
        };
        Ok(Self {
            host,
            port,
            transport,
            api_key,
            wire: Arc::new(WireCounters::default()),
            idle_h1: Mutex::new(Vec::new()),
            h2_pool: (0..pool_size).map(|_| OnceCell::new()).collect(),
            next_h2: AtomicUsize::new(0),
        })
    }

    async fn connect(&self) -> io::Result<TokioIo<Counted>> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        self.wire.connections.fetch_add(1, Ordering::Relaxed);
        Ok(TokioIo::new(Counted {
            inner: stream,
            counters: Arc::clone(&self.wire),
        }))
    }

    /// A sender for the next request, and the connection set-up time when
    /// this request had to open one.
    async fn sender(&self) -> Result<(Sender, Option<f64>), String> {
        match self.transport {
            Transport::Http1 { keep_alive } => {
                if keep_alive {
                    let idle = self.idle_h1.lock().expect("pool lock").pop();
                    if let Some(sender) = idle.filter(|s| !s.is_closed()) {
                        return Ok((Sender::H1(sender), None));
                    }
                }
                let started = Instant::now();
                let io = self.connect().await.map_err(|err| err.to_string())?;
                let (sender, connection) =
                    http1::handshake(io).await.map_err(|err| err.to_string())?;
                tokio::spawn(connection);
                Ok((Sender::H1(sender), Some(started.elapsed().as_secs_f64())))
            }
            Transport::H2c { .. } => {
                let slot = self.next_h2.fetch_add(1, Ordering::Relaxed) % self.h2_pool.len();
                let mut opened = None;
                let sender = self.h2_pool[slot]
                    .get_or_try_init(|| async {
                        let started = Instant::now();
                        let io = self.connect().await.map_err(|err| err.to_string())?;
                        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                            .await
                            .map_err(|err| err.to_string())?;
                        tokio::spawn(connection);
                        opened = Some(started.elapsed().as_secs_f64());
                        Ok::<_, String>(sender)
                    })
                    .await?;
                Ok((Sender::H2(sender.clone()), opened))
            }
        }
    }

    /// Sends one streaming request and records what the client saw.
    pub async fn run_request(&self, path: &str, body: Bytes, record: &mut RequestRecord) {
        let started = Instant::now();
        let (sender, connect_time) = match self.sender().await {
            Ok(pair) => pair,
            Err(err) => {
                record.fail(format!("connect: {err}"), started.elapsed().as_secs_f64());
                return;
            }
        };
        record.connect_seconds = connect_time;
        let mut request = Request::post(path)
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.api_key {
            request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request
            .body(Full::new(body))
            .expect("request parts are valid");
        let response = match sender {
            Sender::H1(mut sender) => {
                let response = sender.send_request(request).await;
                let response = response.map(|response| (response, Some(sender)));
                response.map_err(|err| err.to_string())
            }
            Sender::H2(mut sender) => sender
                .send_request(request)
                .await
                .map(|response| (response, None))
                .map_err(|err| err.to_string()),
        };
        let (response, reusable) = match response {
            Ok(pair) => pair,
            Err(err) => {
                record.fail(format!("request: {err}"), started.elapsed().as_secs_f64());
                return;
            }
        };
        record.status = response.status().as_u16();
        record.retry_after_seconds = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let ok = response.status() == StatusCode::OK;
        let mut body = response.into_body();
        let mut sse = SseParser::default();
        let mut error_body = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(err) => {
                    record.fail(format!("body: {err}"), started.elapsed().as_secs_f64());
                    return;
                }
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            record.body_bytes += data.len() as u64;
            if !ok {
                error_body.extend_from_slice(data);
                continue;
            }
            let now = started.elapsed().as_secs_f64();
            for event in sse.push(data) {
                record.on_sse_event(&event, now);
            }
            if let ClientBehaviour::Disconnect { after_chunks } = record.behaviour
                && record.content_chunks >= after_chunks
                && !record.done
            {
                // Dropping the body mid-stream closes an HTTP/1.1 connection
                // and resets an HTTP/2 stream: the client is gone.
                record.disconnected = true;
                record.e2e_seconds = now;
                return;
            }
            if let Some(delay) = record.behaviour.read_delay() {
                tokio::time::sleep(delay).await;
            }
        }
        record.e2e_seconds = started.elapsed().as_secs_f64();
        if !ok {
            let message = serde_json::from_slice::<Value>(&error_body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&error_body).into_owned());
            record.error = Some(format!("HTTP {}: {message}", record.status));
        } else if !record.done {
            record.error = Some("stream ended without [DONE]".into());
        }
        if let (Transport::Http1 { keep_alive: true }, Some(sender)) = (self.transport, reusable) {
            self.idle_h1.lock().expect("pool lock").push(sender);
        }
    }
}

/// One cheap request's cost as the client saw it.
pub struct Probe {
    /// Connection set-up (TCP connect + protocol handshake), when this
    /// request opened a connection.
    pub connect_seconds: Option<f64>,
    pub total_seconds: f64,
}

impl HttpClient {
    /// A `GET`'s body as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, String> {
        let (body, _) = self.get(path).await?;
        String::from_utf8(body.to_vec()).map_err(|err| err.to_string())
    }

    /// A `GET` whose response is read whole: isolates what the transport
    /// costs per request, with no generation behind it.
    pub async fn probe(&self, path: &str) -> Result<Probe, String> {
        let started = Instant::now();
        let (_, connect_seconds) = self.get(path).await?;
        Ok(Probe {
            connect_seconds,
            total_seconds: started.elapsed().as_secs_f64(),
        })
    }

    async fn get(&self, path: &str) -> Result<(Bytes, Option<f64>), String> {
        let (sender, connect_seconds) = self.sender().await?;
        let request = Request::get(path)
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .body(Full::new(Bytes::new()))
            .expect("request parts are valid");
        let (response, reusable) = match sender {
            Sender::H1(mut sender) => {
                let response = sender.send_request(request).await;
                (response.map_err(|err| err.to_string())?, Some(sender))
            }
            Sender::H2(mut sender) => (
                sender
                    .send_request(request)
                    .await
                    .map_err(|err| err.to_string())?,
                None,
            ),
        };
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("HTTP {status}"));
        }
        if let (Transport::Http1 { keep_alive: true }, Some(sender)) = (self.transport, reusable) {
            self.idle_h1.lock().expect("pool lock").push(sender);
        }
        Ok((body, connect_seconds))
    }
}

/// Splits a byte stream into SSE `data:` payloads.
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(data);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event[..end]);
            for line in text.lines() {
                if let Some(payload) = line.strip_prefix("data:") {
                    events.push(payload.trim_start().to_owned());
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_reads_are_reassembled() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            parser.push(b":1}\n\ndata: [DO"),
            vec!["{\"a\":1}".to_owned()]
        );
        assert_eq!(
            parser.push(b"NE]\n\n: keep-alive\n\n"),
            vec!["[DONE]".to_owned()]
        );
    }

    #[test]
    fn base_urls_parse() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:8080/").unwrap(),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(parse_base_url("http://[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(parse_base_url("https://x:1").is_err());
        assert!(parse_base_url("http://x").is_err());
    }
}
