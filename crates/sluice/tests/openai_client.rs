//! The official OpenAI Python client streams and completes against the
//! server (`pip install openai`; scripts/setup.sh --test installs it).

mod common;

use std::process::Command;

#[tokio::test]
async fn official_openai_python_client_works() {
    let server = common::server();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let base = server.base.clone();
    let model = server.model.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &base, &model])
            .output()
            .expect("python3 runs (scripts/setup.sh --test installs the client)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "openai client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
