//! Fuzz target: Utf8Assembler over bytes cut into pieces (src/utf8_assembler.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::utf8_assembler::run(data));
