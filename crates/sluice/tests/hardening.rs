//! A hostile or careless client against a real server: keys that cannot be
//! skipped, connections that cannot be held without sending anything,
//! bodies and headers that cannot grow without bound, names the server
//! does not answer for, and WebSockets that close with the right code.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice::app::RunningServer;
use sluice_core::config::{RuntimeConfig, TenantConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const KEY: &str = "sk-acme-0123456789";

/// Longest any bounded wait in these tests may take: far above every
/// limit they configure, so only a limit that does not work trips it.
const PATIENCE: Duration = Duration::from_secs(30);

fn config() -> RuntimeConfig {
    let mut config = common::test_config();
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    config.admission.tenants = vec![TenantConfig {
        name: "acme".to_owned(),
        api_keys: vec![KEY.to_owned()],
        weight: 1.0,
        max_concurrent: None,
        tokens_per_minute: None,
        priority: Default::default(),
    }];
    config
}

async fn start(config: RuntimeConfig) -> (RunningServer, String) {
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let base = format!("http://{}", server.local_addr);
    (server, base)
}

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": "Count from one to fifty."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

async fn post_with(base: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = common::client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(1, false));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads until the server closes the socket; false if it is still open
/// after `within`. Whatever the server wrote first is returned too.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> (bool, String) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let result = tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (result.is_ok(), String::from_utf8_lossy(&seen).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cannot_be_skipped_on_http_or_websocket() {
    let (server, base) = start(config()).await;
    for authorization in [
        None,
        Some("Bearer sk-unknown"),
        Some("bearer sk-unknown"),
        Some("Basic c2stYWNtZQ=="),
        Some("Bearer"),
    ] {
        let (status, body) = post_with(&base, authorization).await;
        assert_eq!(status, 401, "{authorization:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    }
    for authorization in [format!("Bearer {KEY}"), format!("bearer {KEY}")] {
        let (status, body) = post_with(&base, Some(&authorization)).await;
        assert_eq!(status, 200, "{authorization}: {body}");
    }

    let url = format!("{}/v1/ws", base.replace("http://", "ws://"));
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401);
        }
        other => panic!("a WebSocket upgrade without a key got {other:?}"),
    }
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slowloris_connections_are_closed_while_a_stream_runs() {
    const IDLE: usize = 1000;
    const SLOWLORIS: usize = 50;
    let mut config = config();
    config.server.require_api_key = Some(false);
    config.server.limits.first_byte_timeout_ms = 500;
    // The idle limit under the header limit: hyper's own header timer
    // also runs on an idle keep-alive connection, and at equal values it
    // raced the idle limit and sometimes closed the connection uncounted.
    config.server.limits.header_read_timeout_ms = 2000;
    config.server.limits.idle_timeout_ms = 1000;
    let (server, base) = start(config).await;
    let addr = server.local_addr;

    let stream = tokio::spawn({
        let base = base.clone();
        async move {
            let response = common::client()
                .post(format!("{base}/v1/chat/completions"))
                .json(&chat(48, true))
                .send()
                .await
                .unwrap();
            response.text().await.unwrap()
        }
    });
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let slowloris: Vec<_> = (0..SLOWLORIS)
        .map(|_| {
            tokio::spawn(async move {
                let mut socket = TcpStream::connect(addr).await.unwrap();
                socket
                    .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    .await
                    .unwrap();
                // One header byte every 100 ms: never a complete request.
                let closed = tokio::time::timeout(PATIENCE, async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if socket.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                closed.is_ok()
            })
        })
        .collect();
    for mut socket in idle {
        let (closed, _) = closed_within(&mut socket, PATIENCE).await;
        assert!(closed, "a silent connection outlived first_byte_timeout_ms");
    }
    for client in slowloris {
        assert!(
            client.await.unwrap(),
            "a slowloris connection outlived header_read_timeout_ms"
        );
    }
    let body = stream.await.unwrap();
    let streamed = common::parse_stream(&body);
    assert!(
        streamed.finish_reason.is_some(),
        "the running stream completed: {body}"
    );

    // A keep-alive connection that sent one request and then nothing.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (closed, answer) = closed_within(&mut socket, PATIENCE).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed,
        "an idle keep-alive connection outlived idle_timeout_ms"
    );

    let metrics = common::metrics_text_at(&base).await;
    for limit in ["first_byte", "header", "idle"] {
        let line = format!("sluice:connections_closed_by_limit_total{{limit=\"{limit}\"}}");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} in {metrics}"));
        assert!(count >= 1.0, "{line} {count}");
    }
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_counted() {
    let mut config = config();
    config.server.limits.max_connections = 4;
    let (server, base) = start(config).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.local_addr).await.unwrap());
    }
    let mut over = TcpStream::connect(server.local_addr).await.unwrap();
    let (closed, _) = closed_within(&mut over, Duration::from_secs(5)).await;
    assert!(closed, "the fifth connection was closed at accept");
    drop(held);
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            // The held sockets are gone; a scrape gets a connection again.
            if reqwest::get(format!("{base}/metrics")).await.is_ok() {
                return common::metric_at(&base, "sluice:connections_refused_total").await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert!(refused >= 1.0, "refused {refused}");
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_bodies_types_and_hosts_are_bounded() {
    let mut config = config();
    config.server.require_api_key = Some(false);
    config.server.limits.max_header_count = 20;
    config.server.limits.body_read_timeout_ms = 500;
    let (server, base) = start(config).await;
    let addr = server.local_addr;

    // Too many header fields: 431.
    let mut request = String::from("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..30 {
        request.push_str(&format!("x-filler-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let (_, answer) = closed_within(&mut socket, PATIENCE).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A body announced but never sent: 408 once the read deadline passes.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"",
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, socket.read(&mut answer))
        .await
        .expect("an answer before PATIENCE")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Not JSON: 415.
    let response = common::client()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "text/plain")
        .body(chat(1, false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);

    // A name the server does not answer for (DNS rebinding): 403.
    let response = common::client()
        .get(format!("{base}/v1/models"))
        .header("host", "rebound.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let mut request = format!("{}/v1/ws", base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403);
        }
        other => panic!("a cross-site WebSocket got {other:?}"),
    }
    server.shutdown();
    server.wait().await.unwrap();
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The close code the server sends, skipping other messages.
async fn close_code(socket: &mut Socket) -> CloseCode {
    tokio::time::timeout(PATIENCE, async {
        while let Some(message) = socket.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame.expect("a close frame with a code").code;
            }
        }
        panic!("the socket ended without a close frame");
    })
    .await
    .expect("a close frame before PATIENCE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_close_with_1009_when_too_big_and_1001_on_shutdown() {
    let mut config = config();
    config.server.require_api_key = Some(false);
    config.server.websocket.max_message_bytes = 4096;
    // Long enough that the stream below finishes inside the grace period
    // even on a loaded machine.
    config.server.shutdown_grace_seconds = 240;
    let (server, base) = start(config).await;
    let url = format!("{}/v1/ws", base.replace("http://", "ws://"));

    let mut socket = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0;
    let oversized = "x".repeat(8192);
    socket.send(Message::Text(oversized.into())).await.unwrap();
    assert_eq!(close_code(&mut socket).await, CloseCode::Size);

    // Shutdown with a stream running on a socket: the stream finishes,
    // then the socket closes as "going away".
    let mut socket = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0;
    let request = json!({
        "type": "request",
        "id": "s1",
        "path": "/v1/chat/completions",
        "body": chat(6, true),
    });
    socket
        .send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let first = socket.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"chunk\""), "{first}");
    server.shutdown();
    let mut last = String::new();
    let code = tokio::time::timeout(8 * PATIENCE, async {
        while let Some(message) = socket.next().await {
            match message.unwrap() {
                Message::Text(text) => last = text.to_string(),
                Message::Close(frame) => return frame.unwrap().code,
                _ => {}
            }
        }
        panic!("the socket ended without a close frame");
    })
    .await
    .unwrap();
    assert!(
        last.contains("\"done\""),
        "the running stream finished before the close; last message: {last}"
    );
    assert_eq!(code, CloseCode::Away);
    server.wait().await.unwrap();
}
