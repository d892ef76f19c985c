//! sluice-bench: a streaming load generator for OpenAI-compatible servers
//! (Sluice, llama.cpp's llama-server, vLLM, ...) and a benchmark of Sluice's
//! engine without HTTP, driven by the same workloads.
#![forbid(unsafe_code)]

pub mod behaviour;
pub mod client;
pub mod environment;
pub mod load;
pub mod record;
pub mod report;
pub mod stats;
pub mod workload;
