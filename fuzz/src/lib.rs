//! The bodies of Sluice's fuzz targets. Each takes arbitrary bytes, runs one
//! part of the server on them and panics when an invariant breaks, not only
//! when the code under test does. The cargo-fuzz binaries (`fuzz_targets/`)
//! and the stable corpus replay (`tests/corpus.rs`) both call them.

pub mod check;
pub mod chunk_framer;
pub mod config_yaml;
pub mod input;
pub mod request;
pub mod stop_matcher;
pub mod utf8_assembler;
pub mod ws_message;

/// Every target by name, as `fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: [(&str, fn(&[u8])); 6] = [
    ("request", request::run),
    ("ws_message", ws_message::run),
    ("config_yaml", config_yaml::run),
    ("stop_matcher", stop_matcher::run),
    ("utf8_assembler", utf8_assembler::run),
    ("chunk_framer", chunk_framer::run),
];
