//! Fuzz target: ChunkFramer writes, SSE and WebSocket (src/chunk_framer.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::chunk_framer::run(data));
