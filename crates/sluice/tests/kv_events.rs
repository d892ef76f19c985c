//! KV-cache events (`engine.kv_events`) read by an independent subscriber
//! (kv_events_subscriber.py: pyzmq and msgpack, installed by
//! scripts/setup.sh --test): every message decodes, and after a scripted
//! run the blocks it holds are exactly the engine's cached ones.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_core::config::KvEventsConfig;

const BLOCK: usize = 16;
const MAX_TOKENS: u64 = 16;

struct Subscriber {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Subscriber {
    fn start(endpoint: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kv_events_subscriber.py");
        let mut child = Command::new("python3")
            .args([script, endpoint])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/setup.sh --test installs pyzmq and msgpack)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let subscriber = Self {
            child,
            stdin,
            lines,
        };
        subscriber.next_line_starting("subscribed", Duration::from_secs(30));
        subscriber
    }

    /// The next line starting with `prefix`, skipping others; panics after
    /// `within`.
    fn next_line_starting(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no {prefix:?} line within {within:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("the subscriber exited"),
            }
        }
    }

    /// Whether a batch arrives within `within` (or has arrived unread).
    fn batch_within(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("batch") => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    fn dump(&mut self) -> Value {
        writeln!(self.stdin, "dump").unwrap();
        let line = self.next_line_starting("{", Duration::from_secs(10));
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "stop");
        let _ = self.child.wait();
    }
}

async fn complete(base: &str, prompt: &str, max_tokens: u64) -> Value {
    let response = common::client()
        .post(format!("{base}/v1/completions"))
        .json(&json!({
            "model": "SmolLM2-135M-Instruct.Q4_1",
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn prompt_ids(base: &str, prompt: &str) -> Vec<u64> {
    let body: Value = common::client()
        .post(format!("{base}/v1/completions/render"))
        .json(&json!({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": prompt}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body[0]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect()
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// The chains of blocks the subscriber holds, each as its token ids from
/// the first block on.
fn chains(dump: &Value) -> Vec<Vec<u64>> {
    let blocks = dump["blocks"].as_object().unwrap();
    let child_of: HashMap<&str, &str> = blocks
        .iter()
        .filter_map(|(hash, block)| Some((block["parent"].as_str()?, hash.as_str())))
        .collect();
    blocks
        .iter()
        .filter(|(_, block)| {
            block["parent"]
                .as_str()
                .is_none_or(|parent| !blocks.contains_key(parent))
        })
        .map(|(first, _)| {
            let mut tokens = Vec::new();
            let mut hash = first.as_str();
            loop {
                tokens.extend(
                    blocks[hash]["tokens"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|id| id.as_u64().unwrap()),
                );
                match child_of.get(hash) {
                    Some(child) => hash = child,
                    None => break,
                }
            }
            tokens
        })
        .collect()
}

#[tokio::test]
async fn an_independent_subscriber_holds_exactly_the_engines_cached_blocks() {
    let port = common::free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let mut config = common::test_config();
    // Two sequences: of four requests in a row, the last two stay cached.
    config.engine.max_sequences = 2;
    config.governor.max_streams = 2;
    config.engine.prep_tokens_per_step = 0;
    config.engine.kv_events = KvEventsConfig {
        enabled: true,
        endpoint: endpoint.clone(),
        pod: Some("pod-a".to_owned()),
    };
    let base = common::spawn_server(config);
    let mut subscriber = Subscriber::start(&endpoint);

    // A subscription takes effect a little after it connects: requests
    // until one's events arrive.
    let warm = "Warm-up: the canal keeper opens the upper gate and waits for the water.";
    let mut received = false;
    for _ in 0..50 {
        complete(&base, warm, 1).await;
        if subscriber.batch_within(Duration::from_millis(100)) {
            received = true;
            break;
        }
    }
    assert!(received, "no event reached the subscriber");

    let prompts: Vec<String> = ["one", "two", "three", "four"]
        .iter()
        .map(|n| {
            format!(
                "Request {n}: describe how a lock lifts a boat from the lower canal to the upper \
                 canal, step by step, naming each gate and valve as it opens."
            )
        })
        .collect();
    let mut held = Vec::new();
    for prompt in &prompts {
        let answer = complete(&base, prompt, MAX_TOKENS).await;
        assert_eq!(answer["usage"]["completion_tokens"], MAX_TOKENS);
        held.push(prompt_ids(&base, prompt).await);
    }
    let cached = gauge(
        &common::metrics_text_at(&base).await,
        "sluice:kv_cached_tokens",
    );
    // Each of the last two sequences holds its prompt and all but its last
    // generated token (the last is sampled, never decoded).
    let kv_lengths: Vec<usize> = held[2..]
        .iter()
        .map(|ids| ids.len() + MAX_TOKENS as usize - 1)
        .collect();
    assert_eq!(
        cached,
        kv_lengths.iter().sum::<usize>() as u64,
        "the engine's cache"
    );

    // The events of the last round may still be on their way: bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    let dump = loop {
        let dump = subscriber.dump();
        let blocks = dump["blocks"].as_object().unwrap().len();
        let expected: usize = kv_lengths.iter().map(|len| len / BLOCK).sum();
        if blocks == expected || Instant::now() > deadline {
            break dump;
        }
        subscriber.batch_within(Duration::from_millis(100));
    };
    assert_eq!(dump["errors"], json!([]), "every message decoded");
    assert_eq!(
        dump["topics"],
        json!(["kv@pod-a@SmolLM2-135M-Instruct.Q4_1"])
    );
    let sequences: Vec<u64> = dump["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "no batch lost: {sequences:?}"
    );
    // Exactly two chains: the last two requests' prompts, as many full
    // blocks as their cached tokens fill. The first two were evicted.
    let mut chains = chains(&dump);
    chains.sort_by_key(|tokens| tokens.first().copied());
    assert_eq!(chains.len(), 2, "{chains:?}");
    for (ids, len) in held[2..].iter().zip(&kv_lengths) {
        let chain = chains
            .iter()
            .find(|chain| chain.len() >= BLOCK && chain[..BLOCK] == ids[..BLOCK])
            .unwrap_or_else(|| panic!("no chain starts with the prompt {ids:?}"));
        assert_eq!(chain.len(), len / BLOCK * BLOCK);
        let prompt_blocks = ids.len() / BLOCK * BLOCK;
        assert_eq!(chain[..prompt_blocks], ids[..prompt_blocks]);
    }
    for ids in &held[..2] {
        assert!(
            chains.iter().all(|chain| chain[..BLOCK] != ids[..BLOCK]),
            "an evicted prompt's blocks are still held"
        );
    }
}
