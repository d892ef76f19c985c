//! The stream registry on the real server: a live stream is listed with its
//! state, protocol and tokens, and each way a stream ends (completion,
//! rejection, client disconnect, WebSocket cancel) is counted once, under
//! its own reason, with the admission permit back; shutdown ends what is
//! left as `shutdown`.

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sluice::app::RunningServer;
use sluice_core::registry::EndReason;
use tokio_tungstenite::tungstenite::Message;

const ADMIN_KEY: &str = "registry-admin-key-0123";
const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

fn base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut config = common::test_config();
        config.server.admin_api_key = Some(ADMIN_KEY.to_owned());
        config.engine.max_sequences = 4;
        config.governor.max_streams = 4;
        common::spawn_server(config)
    })
}

async fn admin(path: &str) -> Value {
    let response = common::client()
        .get(format!("{}{path}", base()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

async fn ended(reason: &str) -> f64 {
    common::metric_at(
        base(),
        &format!("sluice:streams_ended_total{{reason=\"{reason}\"}}"),
    )
    .await
}

/// Polls until `condition` holds; fails after a minute.
async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::task::yield_now().await;
    }
}

/// Waits until no stream is live and admission holds no permit.
async fn wait_until_idle() {
    wait_until("every stream ended and its permit is back", async || {
        admin("/admin/streams").await["active"] == 0
            && admin("/admin/state").await["admission"]["active"] == 0
    })
    .await;
}

fn long_completion(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "prompt": "Write a long story about a river.",
        "max_tokens": 400,
        "ignore_eos": true,
        "stream": stream,
    })
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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

#[tokio::test]
async fn streams_are_listed_while_live_and_each_end_is_counted_once() {
    let client = common::client();

    // Completed, without streaming.
    let completed = ended("completed").await;
    let response = client
        .post(format!("{}/v1/completions", base()))
        .json(&json!({"model": MODEL, "prompt": "Hi.", "max_tokens": 3, "ignore_eos": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    wait_until("the completion is counted", async || {
        ended("completed").await == completed + 1.0
    })
    .await;

    // Rejected: invalid before it could run.
    let rejected = ended("rejected").await;
    let response = client
        .post(format!("{}/v1/completions", base()))
        .json(&json!({"model": MODEL, "prompt": "Hi.", "max_tokens": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(ended("rejected").await, rejected + 1.0);

    // Listed while it streams; disconnected when the client goes away.
    let disconnected = ended("disconnected").await;
    let response = client
        .post(format!("{}/v1/completions", base()))
        .json(&long_completion(true))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    let listing = admin("/admin/streams").await;
    assert_eq!(listing["active"], 1, "{listing}");
    assert_eq!(listing["by_state"]["streaming"], 1, "{listing}");
    let stream = &listing["streams"][0];
    assert_eq!(stream["state"], "streaming");
    assert_eq!(stream["protocol"], "h1");
    assert_eq!(stream["tenant"], "default");
    assert!(stream["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(stream["tokens"].as_u64().unwrap() >= 1, "{stream}");
    assert_eq!(
        common::metric_at(base(), "sluice:streams{state=\"streaming\"}").await,
        1.0
    );
    drop(body);
    wait_until_idle().await;
    assert_eq!(ended("disconnected").await, disconnected + 1.0);
    assert!(common::metric_at(base(), "sluice:stream_blocked_seconds_count").await >= 2.0);

    // Cancelled by the client over a WebSocket: counted as a cancel, not
    // as a disconnect.
    let cancelled = ended("cancelled").await;
    let url = format!("{}/v1/ws", base().replace("http://", "ws://"));
    let mut socket = tokio_tungstenite::connect_async(url).await.unwrap().0;
    let request = json!({
        "type": "request",
        "id": "long",
        "path": "/v1/completions",
        "body": long_completion(true),
    });
    socket
        .send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let first = next_json(&mut socket).await;
    assert_eq!(first["type"], "chunk", "{first}");
    let listing = admin("/admin/streams").await;
    assert_eq!(listing["streams"][0]["protocol"], "ws", "{listing}");
    let cancel = json!({"type": "cancel", "id": "long"});
    socket
        .send(Message::Text(cancel.to_string().into()))
        .await
        .unwrap();
    while next_json(&mut socket).await["type"] != "cancelled" {}
    wait_until_idle().await;
    assert_eq!(ended("cancelled").await, cancelled + 1.0);
    assert_eq!(ended("disconnected").await, disconnected + 1.0);
}

#[tokio::test]
async fn shutdown_ends_live_streams_as_shutdown_and_returns_their_permits() {
    let mut config = common::test_config();
    config.server.shutdown_grace_seconds = 0;
    config.engine.max_sequences = 2;
    config.governor.max_streams = 2;
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let streams = Arc::clone(server.pipeline.streams());
    let admission = Arc::clone(&server.admission);
    let response = common::client()
        .post(format!("http://{}/v1/completions", server.local_addr))
        .json(&long_completion(true))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert_eq!(streams.counts().active(), 1);

    server.shutdown();
    while let Some(chunk) = body.next().await {
        chunk.unwrap();
    }
    let counts = streams.counts();
    assert_eq!(counts.ended_with(EndReason::Shutdown), 1, "{counts:?}");
    assert_eq!(counts.active(), 0);
    assert_eq!(admission.snapshot().active, 0);
    server.wait().await.unwrap();
}
