//! Drives a real Sluice server (real model) with the sluice-bench binary and
//! checks that the JSON report is complete and consistent.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_run_writes_a_consistent_report() {
    let (server, url) = common::start_server(8, 512).await;
    let out = std::env::temp_dir().join(format!("sluice-bench-e2e-{}", std::process::id()));

    common::run_bench(
        format!(
            "run --url {url} --api chat --concurrency 3 --requests 6 --prompt-words 20 \
         --prompt-spread 5 --max-tokens 8 --slo ttft=60s --transport h2c --connections 2 \
         --scrape-gauge sluice:governor_active_limit --name e2e"
        ),
        &out,
    )
    .await;

    let report = common::report(&out, "e2e");
    for field in [
        "command",
        "commit",
        "machine",
        "timestamp",
        "target",
        "workload",
        "plan",
        "summary",
        "timeline",
        "requests",
    ] {
        assert!(report.get(field).is_some(), "report has {field}");
    }
    assert!(out.join("e2e.svg").is_file());
    let summary = &report["summary"];
    let counts = &summary["counts"];
    let count = |name: &str| counts[name].as_u64().unwrap();
    assert_eq!(count("sent"), 6);
    assert_eq!(count("measured"), 6);
    assert_eq!(
        count("succeeded") + count("rejected") + count("errors"),
        count("measured")
    );
    assert_eq!(count("succeeded"), 6, "{summary}");
    let requests = report["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 6);
    let mut tokens = 0;
    for request in requests {
        let ttft = request["ttft_seconds"].as_f64().unwrap();
        let e2e = request["e2e_seconds"].as_f64().unwrap();
        assert!(ttft > 0.0 && ttft <= e2e, "TTFT {ttft} <= E2E {e2e}");
        let completion = request["usage_completion_tokens"].as_u64().unwrap();
        assert!((1..=8).contains(&completion));
        assert!(request["content_chunks"].as_u64().unwrap() <= completion);
        tokens += completion;
    }
    assert_eq!(summary["output_tokens"].as_u64().unwrap(), tokens);
    assert!(
        summary["ttft_seconds"]["max"].as_f64().unwrap()
            <= summary["e2e_seconds"]["max"].as_f64().unwrap()
    );
    assert_eq!(
        summary["goodput"]["requests_meeting_slo"].as_u64().unwrap(),
        6
    );
    assert_eq!(
        summary["connections_opened"].as_u64().unwrap(),
        2,
        "h2c pool of 2"
    );
    assert!(summary["wire_bytes_per_output_token"].as_f64().unwrap() > 0.0);
    let timeline = report["timeline"].as_array().unwrap();
    assert!(!timeline.is_empty());
    assert!(
        timeline
            .iter()
            .all(|point| point["server_gauge"].as_f64() == Some(8.0)),
        "the scraped governor limit is the configured 8 streams"
    );

    server.shutdown();
    server.wait().await.unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}
