//! Fuzz target: a chat or text completion request body (src/request.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::request::run(data));
