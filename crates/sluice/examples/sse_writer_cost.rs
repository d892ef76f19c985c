//! What the SSE writer costs per token: heap allocations (counted by a
//! wrapping global allocator) and CPU time, for Sluice's pre-serialised
//! framer writing into a reused buffer, next to the usual approach of
//! building a chunk struct and serialising it with `serde_json` per token.
//!
//! `cargo run --release -p sluice --example sse_writer_cost [tokens]`
//!
//! Both sides frame the same token texts (borrowed, so the engine's own
//! per-token `String` is outside the measurement) and drop each frame before
//! the next, as the transport does once it has written it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use sluice::openai::framing::{ChunkFramer, Framing};
use sluice::pipeline::Endpoint;

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Token texts as a chat model emits them, quotes and newlines included.
const TOKENS: &[&str] = &[
    " The",
    " river",
    " runs",
    " \"north\"",
    ",",
    "\n",
    " past",
    " the",
    " mill",
    " é",
    ".",
];

const ID: &str = "chatcmpl-5f2a9c01d3e4b7a800000001";
const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// Room reserved per frame, as the server's SSE writer does.
const FRAME_RESERVE: usize = 4096;

fn sluice_framer(tokens: usize) -> (u64, f64) {
    let framer = ChunkFramer::new(
        Endpoint::Chat,
        ID,
        1_700_000_000,
        MODEL,
        false,
        Framing::Sse,
    );
    let mut buffer = BytesMut::with_capacity(FRAME_RESERVE);
    let mut frame = |text: &str| -> Bytes {
        buffer.reserve(FRAME_RESERVE);
        framer.text(text, &mut buffer);
        buffer.split().freeze()
    };
    // Warm-up: the buffer's first split allocates its shared header once.
    for text in TOKENS {
        drop(black_box(frame(text)));
    }
    measure(tokens, |i| drop(black_box(frame(TOKENS[i % TOKENS.len()]))))
}

#[derive(Serialize)]
struct Delta<'a> {
    content: &'a str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'a str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
}

fn serde_json_per_chunk(tokens: usize) -> (u64, f64) {
    let frame = |text: &str| -> Bytes {
        let chunk = ChatChunk {
            id: ID,
            object: "chat.completion.chunk",
            created: 1_700_000_000,
            model: MODEL,
            choices: vec![Choice {
                index: 0,
                delta: Delta { content: text },
                logprobs: None,
                finish_reason: None,
            }],
        };
        let json = serde_json::to_string(&chunk).expect("chunks serialize");
        Bytes::from(format!("data: {json}\n\n"))
    };
    measure(tokens, |i| drop(black_box(frame(TOKENS[i % TOKENS.len()]))))
}

/// Allocations and nanoseconds per token over `tokens` frames.
fn measure(tokens: usize, mut frame: impl FnMut(usize)) -> (u64, f64) {
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..tokens {
        frame(i);
    }
    let elapsed = started.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    (allocations, elapsed.as_nanos() as f64 / tokens as f64)
}

fn main() {
    let tokens = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(2_000_000);
    let (framer_allocations, framer_ns) = sluice_framer(tokens);
    let (serde_allocations, serde_ns) = serde_json_per_chunk(tokens);
    println!("tokens framed per writer: {tokens}");
    println!("| writer | heap allocations per token | ns per token |");
    println!("|---|---|---|");
    println!(
        "| Sluice ChunkFramer, reused buffer | {:.3} | {framer_ns:.0} |",
        framer_allocations as f64 / tokens as f64
    );
    println!(
        "| serde_json struct per chunk | {:.3} | {serde_ns:.0} |",
        serde_allocations as f64 / tokens as f64
    );
}
