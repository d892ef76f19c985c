//! Sluice's control plane: everything that decides, nothing that does I/O on
//! the network or links llama.cpp. Fast to compile and fast to test.
#![forbid(unsafe_code)]

pub mod admission;
pub mod clock;
pub mod config;
pub mod flags;
pub mod governor;
pub mod hints;
pub mod policy;
pub mod rate;
pub mod registry;
pub mod sketch;
pub mod speculation;
pub mod sync;
pub mod window;
