//! Fuzz target: a WebSocket client message (src/ws_message.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::ws_message::run(data));
