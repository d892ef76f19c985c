//! Fuzz target: a YAML configuration file (src/config_yaml.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::config_yaml::run(data));
