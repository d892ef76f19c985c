//! Transport: HTTP/2 over TLS with ALPN (and its fallback to HTTP/1.1), the
//! run-time protocol switch, h2c from curl, and the WebSocket gateway
//! running several streams on one socket.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{ENGINE_EXCLUSIVE, metric, parse_stream, server};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice::app::RunningServer;
use sluice_core::config::TlsConfig;
use tokio_tungstenite::tungstenite::Message;

const ADMIN_KEY: &str = "test-admin-key-0123456789";

struct TlsServer {
    server: RunningServer,
    cert_pem: String,
}

/// A TLS server with a fresh self-signed certificate for `localhost`.
async fn tls_server() -> TlsServer {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let dir = std::env::temp_dir().join(format!(
        "sluice-tls-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_path: PathBuf = dir.join("cert.pem");
    let key_path: PathBuf = dir.join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let mut config = common::test_config();
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    config.server.admin_api_key = Some(ADMIN_KEY.to_owned());
    config.server.tls = Some(TlsConfig {
        cert_path,
        key_path,
    });
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    TlsServer { server, cert_pem }
}

fn tls_client(cert_pem: &str, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(120));
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    builder.build().unwrap()
}

/// A short streamed chat that must finish; returns the HTTP version used.
async fn short_chat(client: &reqwest::Client, url: &str) -> reqwest::Version {
    let response = client
        .post(url)
        .json(&chat_request("Hello!", 4))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let version = response.version();
    assert!(
        parse_stream(&response.text().await.unwrap())
            .finish_reason
            .is_some()
    );
    version
}

fn chat_request(content: &str, max_tokens: u32) -> Value {
    json!({
        "model": server_model(),
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": true,
    })
}

fn server_model() -> &'static str {
    "SmolLM2-135M-Instruct.Q4_1"
}

#[tokio::test]
async fn tls_alpn_picks_h2_falls_back_to_http1_and_switches_at_run_time() {
    let tls = tls_server().await;
    let addr = tls.server.local_addr;
    let url = format!("https://localhost:{}/v1/chat/completions", addr.port());

    // ALPN offers h2 and http/1.1: a client offering both gets h2.
    let h2_client = tls_client(&tls.cert_pem, addr, false);
    assert_eq!(short_chat(&h2_client, &url).await, reqwest::Version::HTTP_2);

    // A client offering only http/1.1 gets it.
    assert_eq!(
        short_chat(&tls_client(&tls.cert_pem, addr, true), &url).await,
        reqwest::Version::HTTP_11
    );

    // A stream open on HTTP/2 while the admin switches HTTP/2 off for new
    // connections keeps going to its end.
    let open_stream = h2_client
        .post(&url)
        .json(&chat_request("Tell me about the sea.", 24))
        .send()
        .await
        .unwrap();
    assert_eq!(open_stream.version(), reqwest::Version::HTTP_2);
    let admin = tls_client(&tls.cert_pem, addr, true);
    let admin_url = format!("https://localhost:{}/admin/protocol", addr.port());
    let refused = admin
        .put(&admin_url)
        .json(&json!({"http2_enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "the admin API needs its key");
    let switched = admin
        .put(&admin_url)
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"http2_enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(switched.status(), 200);
    let state: Value = admin
        .get(format!("https://localhost:{}/admin/state", addr.port()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["protocol"]["http2_enabled"], false);

    // A new client (new connection) offering h2 now gets http/1.1.
    assert_eq!(
        short_chat(&tls_client(&tls.cert_pem, addr, false), &url).await,
        reqwest::Version::HTTP_11
    );
    let open = parse_stream(&open_stream.text().await.unwrap());
    assert!(
        open.finish_reason.is_some(),
        "the stream open across the switch finished"
    );

    tls.server.shutdown();
    tls.server.wait().await.unwrap();
}

#[tokio::test]
async fn admin_endpoints_do_not_exist_without_a_key() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let response = common::client()
        .get(format!("{}/admin/state", server().base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn curl_streams_over_h2c_prior_knowledge() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let Ok(version) = std::process::Command::new("curl").arg("--version").output() else {
        eprintln!("curl not installed: skipping the curl h2c check");
        return;
    };
    if !String::from_utf8_lossy(&version.stdout).contains("HTTP2") {
        eprintln!("this curl lacks HTTP/2: skipping the curl h2c check");
        return;
    }
    let url = format!("{}/v1/chat/completions", server().base);
    let body = chat_request("Hello!", 4).to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--http2-prior-knowledge",
                "--write-out",
                "\nversion=%{http_version}",
                "-H",
                "content-type: application/json",
                "--data",
                &body,
                &url,
            ])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "curl failed: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (sse, version) = text.rsplit_once("\nversion=").unwrap();
    assert_eq!(version.trim(), "2");
    assert!(parse_stream(sse).finish_reason.is_some());
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_ws() -> Socket {
    let url = format!("{}/v1/ws", server().base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next JSON text message, skipping pings.
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), socket.next())
            .await
            .expect("a message within the deadline")
            .expect("socket open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send_json(socket: &mut Socket, value: Value) {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

fn ws_request(id: &str, content: &str, max_tokens: u32) -> Value {
    json!({
        "type": "request",
        "id": id,
        "path": "/v1/chat/completions",
        "body": {
            "model": server_model(),
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": true,
        },
    })
}

#[tokio::test]
async fn websocket_runs_three_streams_and_cancels_one() {
    let _alone = ENGINE_EXCLUSIVE.write().await;
    let cancellations_before = metric("sluice:engine_cancellations_total").await;
    let mut socket = connect_ws().await;
    send_json(&mut socket, ws_request("a", "Name a color.", 8)).await;
    send_json(&mut socket, ws_request("b", "Name a fruit.", 8)).await;
    send_json(&mut socket, ws_request("long", "Write a long story.", 400)).await;

    let mut text: std::collections::HashMap<String, String> = Default::default();
    let mut done = Vec::new();
    let mut cancelled = false;
    let mut acknowledged = false;
    while done.len() < 2 || !acknowledged {
        let message = next_json(&mut socket).await;
        let id = message["id"].as_str().unwrap().to_owned();
        match message["type"].as_str().unwrap() {
            "chunk" => {
                assert!(
                    !(acknowledged && id == "long"),
                    "nothing follows `cancelled`"
                );
                let data = &message["data"];
                assert_eq!(data["object"], "chat.completion.chunk");
                if let Some(piece) = data["choices"][0]["delta"]["content"].as_str() {
                    let entry = text.entry(id.clone()).or_default();
                    entry.push_str(piece);
                    // Once the long stream is under way, cancel it.
                    if id == "long" && entry.len() > 8 && !cancelled {
                        send_json(&mut socket, json!({"type": "cancel", "id": "long"})).await;
                        cancelled = true;
                    }
                }
            }
            "done" => {
                assert_ne!(id, "long", "the cancelled stream does not finish");
                done.push(id);
            }
            "cancelled" => {
                assert_eq!(id, "long");
                acknowledged = true;
            }
            other => panic!("unexpected message type {other}: {message}"),
        }
    }
    done.sort();
    assert_eq!(done, ["a", "b"]);
    assert!(!text["a"].is_empty() && !text["b"].is_empty());

    // The cancelled stream's sequence is freed while the socket stays open.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("sluice:num_requests_running").await != 0.0 {
        tokio::task::yield_now().await;
        assert!(Instant::now() < deadline, "sequence was not freed");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        metric("sluice:engine_cancellations_total").await,
        cancellations_before + 1.0
    );
    send_json(&mut socket, ws_request("after", "Hi.", 2)).await;
    loop {
        let message = next_json(&mut socket).await;
        assert_eq!(message["id"], "after");
        if message["type"] == "done" {
            break;
        }
        assert_eq!(message["type"], "chunk");
    }
}

#[tokio::test]
async fn malformed_websocket_messages_get_errors_and_the_socket_stays_open() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let mut socket = connect_ws().await;
    socket.send(Message::Text("not json".into())).await.unwrap();
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["id"], Value::Null);
    assert_eq!(reply["error"]["type"], "invalid_request_error");

    send_json(&mut socket, json!({"type": "launch", "id": "x"})).await;
    assert_eq!(next_json(&mut socket).await["type"], "error");

    socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await["type"], "error");

    let mut wrong_path = ws_request("p", "Hi.", 2);
    wrong_path["path"] = json!("/v1/embeddings");
    send_json(&mut socket, wrong_path).await;
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["id"], "p");
    assert_eq!(reply["error"]["param"], "path");

    let mut bad_body = ws_request("t", "Hi.", 2);
    bad_body["body"]["temperature"] = json!(9);
    send_json(&mut socket, bad_body).await;
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["id"], "t");
    assert_eq!(reply["error"]["param"], "temperature");

    send_json(&mut socket, json!({"type": "cancel", "id": "nope"})).await;
    assert_eq!(next_json(&mut socket).await["error"]["param"], "id");

    // Still serving.
    send_json(&mut socket, ws_request("ok", "Hi.", 2)).await;
    loop {
        let message = next_json(&mut socket).await;
        assert_eq!(message["id"], "ok");
        if message["type"] == "done" {
            break;
        }
        assert_eq!(message["type"], "chunk", "{message}");
    }
}

#[tokio::test]
async fn oversized_websocket_messages_end_that_socket_only() {
    let _shared = ENGINE_EXCLUSIVE.read().await;
    let mut socket = connect_ws().await;
    let huge = "x".repeat(2 * 1024 * 1024);
    // The server may drop the socket before the whole message is written.
    let _ = socket.send(Message::Text(huge.into())).await;
    loop {
        match socket.next().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Text(text))) => panic!("no reply to an oversized message: {text}"),
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
    // The server goes on serving other sockets.
    let mut socket = connect_ws().await;
    send_json(&mut socket, ws_request("next", "Hi.", 2)).await;
    loop {
        let message = next_json(&mut socket).await;
        if message["type"] == "done" {
            break;
        }
        assert_eq!(message["type"], "chunk", "{message}");
    }
}

#[tokio::test]
async fn idle_sse_streams_get_keepalive_comments() {
    let mut config = common::test_config();
    config.engine.max_sequences = 2;
    config.governor.max_streams = 2;
    config.governor.min_streams = 1;
    // Every gap between tokens (a decode step takes milliseconds) is
    // longer than this, so comments appear between the chunks.
    config.server.sse_keepalive_ms = 1;
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let body = common::client()
        .post(format!("http://{}/v1/chat/completions", server.local_addr))
        .json(&chat_request("Tell me about the sea.", 16))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains(": keep-alive\n\n"), "{body}");
    assert!(parse_stream(&body).finish_reason.is_some());
    server.shutdown();
    server.wait().await.unwrap();
}
