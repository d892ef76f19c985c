//! Fuzz target: StopMatcher over stop strings and text pieces (src/stop_matcher.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::stop_matcher::run(data));
