//! The admin API and SIGHUP reload, on the real binary: flags change
//! atomically at run time, a bad config file changes nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN_KEY: &str = "admin-key-for-tests-0123";

struct Server {
    child: Child,
    base: String,
    log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Waits for a log line containing `needle`.
    fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .log
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return;
            }
        }
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn config_yaml(port: u16, rollout_percent: f64, kill_switch: bool) -> String {
    format!(
        "server:\n  port: {port}\n  admin_api_key: {ADMIN_KEY}\n\
         model:\n  path: {}\n\
         engine:\n  max_sequences: 4\n  context_per_sequence: 256\n\
         governor:\n  max_streams: 4\n\
         flags:\n  prefix_cache:\n    rollout_percent: {rollout_percent}\n    kill_switch: {kill_switch}\n",
        common::model_path().display()
    )
}

fn start(config_path: &std::path::Path, port: u16) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(config_path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
    };
    server.wait_for_log("model loaded");
    server
}

async fn admin_state(server: &Server) -> Value {
    common::client()
        .get(format!("{}/admin/state", server.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn flags_change_through_the_admin_api_and_sighup_and_bad_files_change_nothing() {
    let dir = std::env::temp_dir().join(format!("sluice-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("runtime.yaml");
    let port = common::free_port();
    std::fs::write(&config_path, config_yaml(port, 100.0, false)).unwrap();
    let server = start(&config_path, port);

    let state = admin_state(&server).await;
    assert_eq!(state["flags"]["prefix_cache"]["rollout_percent"], 100.0);
    assert_eq!(state["protocol"]["http2_enabled"], true);

    // SIGHUP applies the file's flags.
    std::fs::write(&config_path, config_yaml(port, 25.0, true)).unwrap();
    server.hangup();
    server.wait_for_log("SIGHUP: reloaded");
    let state = admin_state(&server).await;
    assert_eq!(state["flags"]["prefix_cache"]["rollout_percent"], 25.0);
    assert_eq!(state["flags"]["prefix_cache"]["kill_switch"], true);

    // A file that does not validate changes nothing.
    std::fs::write(&config_path, config_yaml(port, 250.0, false)).unwrap();
    server.hangup();
    server.wait_for_log("SIGHUP: config not reloaded");
    let state = admin_state(&server).await;
    assert_eq!(state["flags"]["prefix_cache"]["rollout_percent"], 25.0);

    // The admin API replaces one flag.
    let client = common::client();
    let url = format!("{}/admin/flags/prefix_cache", server.base);
    let changed = client
        .put(&url)
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"enabled": true, "rollout_percent": 50, "kill_switch": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let state = admin_state(&server).await;
    assert_eq!(state["flags"]["prefix_cache"]["rollout_percent"], 50.0);
    assert_eq!(state["flags"]["prefix_cache"]["kill_switch"], false);

    let out_of_range = client
        .put(&url)
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"rollout_percent": 101}))
        .send()
        .await
        .unwrap();
    assert_eq!(out_of_range.status(), 400);
    let unknown = client
        .put(format!("{}/admin/flags/warp_drive", server.base))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["param"], "name");
    let unauthenticated = client
        .put(&url)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(
        admin_state(&server).await["flags"]["prefix_cache"]["rollout_percent"],
        50.0
    );
}

async fn metrics(server: &Server) -> String {
    common::metrics_text_at(&server.base).await
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn set_prefix_cache(server: &Server, flag: Value) {
    let response = common::client()
        .put(format!("{}/admin/flags/prefix_cache", server.base))
        .bearer_auth(ADMIN_KEY)
        .json(&flag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn complete(server: &Server, prompt: &str) {
    let response = common::client()
        .post(format!("{}/v1/completions", server.base))
        .json(&json!({
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "prompt": prompt,
            "max_tokens": 2,
            // A sampled first token may be end-of-text, and a request with no
            // token records no TTFT.
            "ignore_eos": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_prefix_cache_flag_decides_per_request_and_labels_the_cohort() {
    let dir = std::env::temp_dir().join(format!("sluice-admin-flag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("runtime.yaml");
    let port = common::free_port();
    std::fs::write(&config_path, config_yaml(port, 100.0, false)).unwrap();
    let server = start(&config_path, port);
    let prompt = "The lighthouse keeper climbed the stairs every evening, counting each \
                  step, and at the top he lit the lamp that guided the ships home.";
    let hits = "sluice:prefix_cache_hits_total";
    let baseline =
        r#"sluice:cohort_time_to_first_token_seconds_count{flag="prefix_cache",cohort="baseline"}"#;
    let canary =
        r#"sluice:cohort_time_to_first_token_seconds_count{flag="prefix_cache",cohort="canary"}"#;

    set_prefix_cache(&server, json!({"kill_switch": true})).await;
    let before = metrics(&server).await;
    complete(&server, prompt).await;
    complete(&server, prompt).await;
    let after = metrics(&server).await;
    assert_eq!(
        sample(&after, hits),
        sample(&before, hits),
        "killed: no reuse"
    );
    assert_eq!(sample(&after, baseline) - sample(&before, baseline), 2.0);

    set_prefix_cache(&server, json!({"rollout_percent": 100})).await;
    complete(&server, prompt).await;
    let on = metrics(&server).await;
    assert_eq!(sample(&on, hits) - sample(&after, hits), 1.0, "on: reuse");
    assert_eq!(sample(&on, canary) - sample(&after, canary), 1.0);
}
