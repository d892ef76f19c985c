//! Writers, between the API layer and the pipeline: each pulls a
//! [`Generation`]'s chunks and frames them for one transport (SSE, a JSON
//! body, WebSocket messages), accounting what it wrote and how long the
//! client held it up. They know the OpenAI framing, not axum.

pub mod json;
pub mod sse;
pub mod ws;

use std::time::Duration;

use sluice_core::clock::unix_seconds;

use crate::openai::framing::{ChunkFramer, Framing};
use crate::pipeline::{Generation, PreEngineTimes};

/// Response header: where the time before the engine went.
pub const SERVER_TIMING: &str = "server-timing";
/// Response header: the prompt's prefix hash, for routing by cached prefix.
pub const PREFIX_HINT: &str = "x-sluice-prefix-hint";

/// The headers every HTTP answer of a generation carries.
pub fn response_headers(generation: &Generation) -> [(&'static str, String); 2] {
    [
        (SERVER_TIMING, server_timing(&generation.times)),
        (PREFIX_HINT, format!("{:016x}", generation.prefix_hint)),
    ]
}

/// The framer for `generation`'s chunks, created now.
fn framer(generation: &Generation, framing: Framing) -> ChunkFramer {
    ChunkFramer::new(
        generation.endpoint,
        &generation.id,
        unix_seconds(),
        &generation.model,
        generation.include_usage,
        framing,
    )
}

fn server_timing(times: &PreEngineTimes) -> String {
    format!(
        "tokenize;dur={:.3}, queue;dur={:.3}",
        millis(times.tokenize),
        millis(times.queue)
    )
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
