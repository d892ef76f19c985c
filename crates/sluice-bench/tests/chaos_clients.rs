//! Chaos clients against a real Sluice server: slow readers read to the
//! end, disconnecting clients hang up after their chunk count and the
//! server sees them go, each record names its behaviour, and the server is
//! back at rest afterwards.

mod common;

use sluice_bench::client::{HttpClient, Transport};

/// The server's count of requests whose client went away.
async fn cancelled(url: &str) -> u64 {
    let client = HttpClient::new(url, Transport::Http1 { keep_alive: false }, None).unwrap();
    let text = client.get_text("/metrics").await.unwrap();
    text.lines()
        .find(|line| {
            line.starts_with("sluice:request_finished_total{") && line.contains("\"cancelled\"")
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_clients_are_recorded_and_leave_the_server_at_rest() {
    let (server, url) = common::start_server(4, 256).await;
    let out = std::env::temp_dir().join(format!("sluice-bench-chaos-{}", std::process::id()));

    // 32 tokens per stream, so a client that hangs up after at most 4
    // chunks always leaves the server mid-stream.
    let stdout = common::run_bench(
        format!(
        "run --url {url} --api completions --concurrency 4 --requests 12 --prompt-words 10 \
         --prompt-spread 2 --max-tokens 32 --ignore-eos --slow-reader-fraction 0.25 \
         --slow-reader-delay-ms 5 --disconnect-fraction 0.5 --disconnect-max-chunks 4 \
         --rest-gauges sluice:num_requests_running,sluice:num_requests_waiting,sluice:kv_tokens_in_use \
         --rest-timeout 30 --name chaos"),
        &out,
    )
    .await;
    assert!(
        stdout.contains("normal streams ended unclean: 0 of"),
        "{stdout}"
    );

    let report = common::report(&out, "chaos");
    let mut disconnects = 0;
    for request in report["requests"].as_array().unwrap() {
        let behaviour = &request["behaviour"];
        let chunks = request["content_chunks"].as_u64().unwrap();
        match behaviour["kind"].as_str().unwrap() {
            "disconnect" => {
                disconnects += 1;
                let after = behaviour["after_chunks"].as_u64().unwrap();
                assert!((1..=4).contains(&after), "{request}");
                assert_eq!(request["disconnected"], true, "{request}");
                assert_eq!(request["done"], false, "{request}");
                assert!(request["error"].is_null(), "{request}");
                assert!(chunks >= after && chunks < 32, "{request}");
            }
            "slow_reader" | "normal" => {
                assert_eq!(request["done"], true, "{request}");
                assert_eq!(request["disconnected"], false, "{request}");
                assert_eq!(request["usage_completion_tokens"], 32, "{request}");
            }
            other => panic!("unknown behaviour {other}"),
        }
    }
    let clients = &report["summary"]["clients"];
    assert_eq!(clients["disconnect"]["disconnected"], disconnects);
    assert_eq!(
        report["summary"]["counts"]["client_disconnects"],
        disconnects
    );
    assert_eq!(report["summary"]["counts"]["errors"], 0);
    assert!(disconnects > 0, "seed 1 picks some disconnecting clients");
    assert!(clients["slow_reader"]["sent"].as_u64().unwrap() > 0);
    assert_eq!(clients["well_behaved"]["unclean"], 0);

    let rest = &report["server_at_rest"];
    assert_eq!(rest["at_rest"], true, "{rest}");
    assert_eq!(rest["after"]["sluice:num_requests_running"], 0.0);
    assert_eq!(
        cancelled(&url).await,
        disconnects,
        "the server saw each disconnecting client go"
    );

    server.shutdown();
    server.wait().await.unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}
