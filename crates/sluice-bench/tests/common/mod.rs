//! What the end-to-end tests share: a real server on the test model, and
//! the sluice-bench binary run against it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sluice::app::RunningServer;
use sluice_core::config::RuntimeConfig;

fn model_path() -> PathBuf {
    std::env::var_os("SLUICE_TEST_MODEL").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    )
}

/// A ready server with `sequences` engine sequences (and as many streams)
/// of `context` tokens each, and its base URL.
pub async fn start_server(sequences: u32, context: u32) -> (RunningServer, String) {
    let mut config = RuntimeConfig::default();
    config.server.port = 0;
    config.model.path = model_path();
    config.engine.max_sequences = sequences;
    config.engine.context_per_sequence = context;
    config.engine.long_sequences = 0;
    config.governor.max_streams = sequences;
    // A fixed server to test the load generator against: no gate or
    // shedding moving with timing.
    config.governor.enabled = false;
    config.admission.deadline_shedding = false;
    let server = RunningServer::start(&config, None).await.unwrap();
    server.engine().wait_ready().await.unwrap();
    let url = format!("http://{}", server.local_addr);
    (server, url)
}

/// Runs `sluice-bench` with `args` (whitespace-separated) and `--out out`;
/// asserts it succeeded and returns its stdout.
pub async fn run_bench(args: String, out: &Path) -> String {
    let bench = env!("CARGO_BIN_EXE_sluice-bench");
    let out = out.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(bench)
            .args(args.split_whitespace())
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The JSON report of run `name` in `out`.
pub fn report(out: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(out.join(format!("{name}.json"))).unwrap()).unwrap()
}
