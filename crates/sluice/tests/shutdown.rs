//! Graceful shutdown: running streams get the grace period, then end with an
//! error event and `[DONE]`; the server stops and new connections fail.

mod common;

use futures::StreamExt;
use serde_json::json;
use sluice::app::RunningServer;

#[tokio::test]
async fn shutdown_ends_running_streams_cleanly_after_the_grace_period() {
    let mut config = common::test_config();
    config.server.shutdown_grace_seconds = 1;
    config.engine.max_sequences = 4;
    config.governor.max_streams = 4;
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let base = format!("http://{}", server.local_addr);
    let response = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "prompt": "Write a long essay about rivers.",
            "max_tokens": 480,
            "ignore_eos": true,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));

    server.shutdown();
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("shutting down"),
        "stream ended with an error event: {rest:?}"
    );
    assert!(rest.ends_with("data: [DONE]\n\n"));
    let addr = server.local_addr;
    server.wait().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}
